//! `outbound_messages`: every reply we send, once per (tenant, original
//! message, reply index), with its attempts, the `wamid` WhatsApp returned
//! and the latest delivery status the webhook reported for it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::m20250101_000001_core_tables::index;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000010_outbound_messages"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("outbound_messages")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("tenant_id"))
                    .col(string("original_message_id"))
                    .col(integer("reply_index"))
                    .col(string_null("phone_number_id"))
                    .col(string("recipient_phone"))
                    // queued | sent | delivered | read | failed
                    .col(string("status"))
                    .col(integer("attempt_count"))
                    .col(string_null("wamid"))
                    .col(big_integer_null("error_code"))
                    .col(text_null("error"))
                    // The dead-letter entry of a reply that failed for good: replaying it reopens the reply.
                    .col(big_integer_null("dead_letter_id"))
                    // The ResponseReady as sent (JSON).
                    .col(text("payload"))
                    // A worker sending it now holds it until the lease runs out.
                    .col(big_integer_null("lease_token"))
                    .col(timestamp_with_time_zone_null("lease_expires_at"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .col(timestamp_with_time_zone_null("sent_at"))
                    .col(timestamp_with_time_zone_null("delivered_at"))
                    .col(timestamp_with_time_zone_null("read_at"))
                    .col(timestamp_with_time_zone_null("failed_at"))
                    .to_owned(),
            )
            .await?;
        // A reply is sent once: redeliveries find its row.
        index(
            manager,
            "outbound_messages",
            "ux_outbound_messages_reply",
            &["tenant_id", "original_message_id", "reply_index"],
            true,
        )
        .await?;
        // The webhook's statuses[] find their reply by wamid.
        index(manager, "outbound_messages", "ix_outbound_messages_wamid", &["wamid"], false).await?;
        // `WHERE status = 'failed' ORDER BY created_at DESC`, and per-recipient history.
        index(manager, "outbound_messages", "ix_outbound_messages_status_created", &["status", "created_at"], false)
            .await?;
        index(
            manager,
            "outbound_messages",
            "ix_outbound_messages_recipient_created",
            &["recipient_phone", "created_at"],
            false,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("outbound_messages").if_exists().to_owned()).await
    }
}
