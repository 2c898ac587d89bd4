//! The inbox's history: each conversation (organisation + customer phone)
//! with its unread count, and its messages in order. Rows are written in
//! the same transactions as the pipeline's own (a message's completion, a
//! send API request), so the thread never disagrees with what happened; an
//! outbound message's delivery status is read from `outbound_messages`,
//! not copied.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::m20250101_000001_core_tables::index;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000012_conversations"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("conversations")
                    .if_not_exists()
                    .col(string("tenant_id"))
                    .col(string("phone"))
                    .col(timestamp_with_time_zone("last_message_at"))
                    // inbound | outbound
                    .col(string("last_direction"))
                    .col(text_null("last_preview"))
                    // Inbound messages since an operator last opened the thread.
                    .col(integer("unread_count"))
                    .col(integer("message_count"))
                    .primary_key(Index::create().col("tenant_id").col("phone"))
                    .to_owned(),
            )
            .await?;
        // `GET /api/v1/conversations`: an organisation's, latest first.
        index(manager, "conversations", "ix_conversations_latest", &["tenant_id", "last_message_at"], false).await?;
        manager
            .create_table(
                Table::create()
                    .table("conversation_messages")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("tenant_id"))
                    .col(string("phone"))
                    // inbound | outbound
                    .col(string("direction"))
                    // Inbound: the message's id. Outbound: its `outbound_messages`
                    // key (the message replied to, or the send API's id) with `reply_index`.
                    .col(string("message_id"))
                    .col(integer("reply_index"))
                    // What the thread shows: the text, a caption, or `[image]`.
                    .col(text_null("text"))
                    .col(string_null("intent"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        // Written once: a redelivered completion or a retried request adds nothing.
        index(
            manager,
            "conversation_messages",
            "ux_conversation_messages_key",
            &["tenant_id", "direction", "message_id", "reply_index"],
            true,
        )
        .await?;
        // A thread, paged by id.
        index(manager, "conversation_messages", "ix_conversation_messages_thread", &["tenant_id", "phone", "id"], false)
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("conversation_messages").if_exists().to_owned()).await?;
        manager.drop_table(Table::drop().table("conversations").if_exists().to_owned()).await
    }
}
