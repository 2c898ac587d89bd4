//! Messages waiting for the external AI service's classification
//! (`INTENT_SOURCE=ai`): kept here, with the phone blocked behind them, so
//! the Kafka offset can move on and a restart loses nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::m20250101_000001_core_tables::index;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000005_ai_pending"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("ai_pending")
                    .if_not_exists()
                    // Sent as `processing_id` in `AiProcessRequest`; the result names it.
                    .col(string("processing_id").primary_key())
                    .col(string("key"))
                    .col(string("message_id"))
                    .col(string("topic"))
                    .col(integer("partition"))
                    .col(big_integer("offset"))
                    .col(text("payload"))
                    .col(timestamp_with_time_zone("requested_at"))
                    // Set while a worker finishes the message (result or timeout fallback).
                    .col(timestamp_with_time_zone_null("held_until"))
                    .to_owned(),
            )
            .await?;
        index(manager, "ai_pending", "ux_ai_pending_key_message", &["key", "message_id"], true).await?;
        index(manager, "ai_pending", "ix_ai_pending_requested_at", &["requested_at"], false).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("ai_pending").if_exists().to_owned()).await
    }
}
