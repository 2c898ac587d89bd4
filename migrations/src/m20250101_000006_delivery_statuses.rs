//! Delivery statuses of the messages we sent (`statuses[]` of the webhook:
//! sent, delivered, read, failed), one row per message and status.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::m20250101_000001_core_tables::index;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000006_delivery_statuses"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("delivery_statuses")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("message_id"))
                    .col(string("recipient_phone"))
                    .col(string("status"))
                    .col(text_null("error"))
                    .col(string_null("phone_number_id"))
                    .col(timestamp_with_time_zone("status_at"))
                    .col(timestamp_with_time_zone("received_at"))
                    .to_owned(),
            )
            .await?;
        // WhatsApp retries webhooks: the same status of the same message is kept once.
        index(manager, "delivery_statuses", "ux_delivery_statuses_message_status", &["message_id", "status"], true)
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("delivery_statuses").if_exists().to_owned()).await
    }
}
