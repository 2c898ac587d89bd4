//! The send API's messages (`POST /api/v1/messages`) are rows of
//! `outbound_messages` too, with what a conversation started by the
//! business needs beside a reply's columns: the public id, the request's
//! hash (a retried `Idempotency-Key` with another body is refused), when it
//! is scheduled, and the scheduler's claim on publishing it. `api_usage`
//! counts each organisation's messages per day for its daily limit.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::m20250101_000001_core_tables::index;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000011_api_messages"
    }
}

/// Columns added to `outbound_messages`, one statement each (SQLite alters one column at a time).
fn columns() -> Vec<ColumnDef> {
    vec![
        // The id the API answers (a UUID); NULL for replies to inbound messages.
        string_null("api_message_id"),
        // SHA-256 of the request as accepted.
        string_null("request_hash"),
        // When a scheduled message is due.
        timestamp_with_time_zone_null("scheduled_at"),
        // Until it is published to conversation.responses: when the scheduler
        // publishes it (the due time, or shortly after the request for one the
        // API could not publish itself). NULL once published.
        timestamp_with_time_zone_null("dispatch_due_at"),
        // A scheduler publishing it now holds it until then, with this random token.
        timestamp_with_time_zone_null("dispatch_lease_until"),
        big_integer_null("dispatch_token"),
        // When it was published to conversation.responses.
        timestamp_with_time_zone_null("dispatched_at"),
        // When `DELETE /api/v1/messages/{id}` cancelled it.
        timestamp_with_time_zone_null("cancelled_at"),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for mut column in columns() {
            manager.alter_table(Table::alter().table("outbound_messages").add_column(&mut column).to_owned()).await?;
        }
        index(manager, "outbound_messages", "ux_outbound_messages_api_id", &["api_message_id"], true).await?;
        // The scheduler's `WHERE dispatch_due_at <= now`: published rows leave it NULL.
        index(manager, "outbound_messages", "ix_outbound_messages_dispatch_due", &["dispatch_due_at"], false).await?;
        // `GET /api/v1/messages`: an organisation's messages, newest first.
        index(manager, "outbound_messages", "ix_outbound_messages_tenant_id", &["tenant_id", "id"], false).await?;
        manager
            .create_table(
                Table::create()
                    .table("api_usage")
                    .if_not_exists()
                    .col(string("tenant_id"))
                    // UTC day, `YYYY-MM-DD`.
                    .col(string("day"))
                    // One of a few rows per organisation and day, so concurrent requests do not queue on one.
                    .col(integer("shard"))
                    .col(big_integer("messages"))
                    .primary_key(Index::create().col("tenant_id").col("day").col("shard"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("api_usage").if_exists().to_owned()).await?;
        for name in
            ["ux_outbound_messages_api_id", "ix_outbound_messages_dispatch_due", "ix_outbound_messages_tenant_id"]
        {
            manager.drop_index(Index::drop().name(name).table("outbound_messages").to_owned()).await?;
        }
        for column in columns() {
            let name = column.get_column_name();
            manager.alter_table(Table::alter().table("outbound_messages").drop_column(name).to_owned()).await?;
        }
        Ok(())
    }
}
