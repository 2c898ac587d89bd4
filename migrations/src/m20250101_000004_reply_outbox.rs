//! The reply outbox: a completed message keeps its reply until Kafka
//! acknowledged it, so a crash between completion and publishing loses nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000004_reply_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        manager
            .alter_table(Table::alter().table("processed_messages").add_column(json_binary_null("reply")).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("processed_messages")
                    .add_column(timestamp_with_time_zone_null("reply_published_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in ["reply_published_at", "reply"] {
            manager.alter_table(Table::alter().table("processed_messages").drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
