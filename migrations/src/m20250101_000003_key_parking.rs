//! Per-key ordering across retries: while a phone's message waits in the
//! retry topic, the phone is blocked and its later messages are parked here.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::m20250101_000001_core_tables::index;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000003_key_parking"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("key_blocks")
                    .if_not_exists()
                    .col(string("key").primary_key())
                    // The message waiting in retry that later ones must not overtake.
                    .col(string("holder_message_id"))
                    .col(timestamp_with_time_zone("blocked_at"))
                    // Written first by every transaction on the row: serialises park and unblock.
                    .col(timestamp_with_time_zone("touched_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("parked_messages")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("key"))
                    .col(string("message_id"))
                    .col(string("topic"))
                    .col(integer("partition"))
                    .col(big_integer("offset"))
                    .col(text("payload"))
                    .col(timestamp_with_time_zone("parked_at"))
                    .to_owned(),
            )
            .await?;
        index(manager, "parked_messages", "ix_parked_messages_key", &["key", "id"], false).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["parked_messages", "key_blocks"] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
