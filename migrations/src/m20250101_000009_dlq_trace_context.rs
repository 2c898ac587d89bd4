//! The W3C `traceparent` of the attempt that dead-lettered a message, so a
//! replay continues the message's original trace.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000009_dlq_trace_context"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table("dead_letter_queue").add_column(string_null("trace_context")).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table("dead_letter_queue").drop_column("trace_context").to_owned()).await
    }
}
