//! A failure fingerprint on each dead letter (failure type + the error with
//! ids and numbers taken out), so operators see and replay groups of
//! entries that failed for the same cause.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::m20250101_000001_core_tables::index;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000007_dlq_fingerprint"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table("dead_letter_queue").add_column(string_null("fingerprint")).to_owned())
            .await?;
        index(manager, "dead_letter_queue", "ix_dlq_fingerprint_status", &["fingerprint", "status"], false).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name("ix_dlq_fingerprint_status").table("dead_letter_queue").to_owned())
            .await?;
        manager.alter_table(Table::alter().table("dead_letter_queue").drop_column("fingerprint").to_owned()).await
    }
}
