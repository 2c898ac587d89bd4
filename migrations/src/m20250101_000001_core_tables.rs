//! The orchestrator's own tables: dedupe claims, dead letters, saga log, audit trail.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20250101_000001_core_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("processed_messages")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("tenant_id"))
                    .col(string("message_id"))
                    .col(string("status"))
                    // Attempts spent: the retry budget, kept across restarts and rebalances.
                    .col(integer("attempt_count"))
                    // Saga runs started: a resumed run keeps its number, a new attempt gets the next.
                    .col(integer("run_count"))
                    .col(timestamp_with_time_zone("claimed_at"))
                    // NULL when no run holds the claim: the next claim starts a new attempt.
                    .col(timestamp_with_time_zone_null("lease_expires_at"))
                    // Random per claim: only the holder may renew, log, complete or release.
                    .col(big_integer_null("lease_token"))
                    .col(timestamp_with_time_zone_null("completed_at"))
                    .col(timestamp_with_time_zone_null("dead_lettered_at"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "processed_messages",
            "ux_processed_messages_tenant_message",
            &["tenant_id", "message_id"],
            true,
        )
        .await?;
        index(manager, "processed_messages", "ix_processed_messages_expires_at", &["expires_at"], false).await?;

        manager
            .create_table(
                Table::create()
                    .table("dead_letter_queue")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string_null("message_id"))
                    .col(string_null("topic"))
                    .col(integer_null("partition"))
                    .col(big_integer_null("offset"))
                    .col(string_null("key"))
                    .col(text("payload"))
                    // `utf8` when `payload` is the original text, `base64` when the bytes were not UTF-8.
                    .col(string("payload_encoding"))
                    .col(string("failure_type"))
                    .col(text("error"))
                    .col(integer("attempt_count"))
                    .col(string("status"))
                    .col(integer("replay_count").default(0))
                    .col(string_null("tenant_id"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .to_owned(),
            )
            .await?;
        // Serves `WHERE status = 'failed' ORDER BY created_at DESC LIMIT 100`.
        index(manager, "dead_letter_queue", "ix_dlq_status_created_at", &["status", "created_at"], false).await?;
        index(
            manager,
            "dead_letter_queue",
            "ix_dlq_tenant_status_created_at",
            &["tenant_id", "status", "created_at"],
            false,
        )
        .await?;
        index(manager, "dead_letter_queue", "ix_dlq_failure_type_created_at", &["failure_type", "created_at"], false)
            .await?;
        index(manager, "dead_letter_queue", "ix_dlq_message_id", &["message_id"], false).await?;

        manager
            .create_table(
                Table::create()
                    .table("saga_steps")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("tenant_id"))
                    .col(string("message_id"))
                    .col(integer("run"))
                    .col(integer("step_index"))
                    .col(string("action"))
                    .col(string("status"))
                    .col(json_binary_null("output"))
                    .col(text_null("error"))
                    .col(boolean_null("retryable"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        index(manager, "saga_steps", "ix_saga_steps_message", &["tenant_id", "message_id", "run", "step_index"], false)
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("lead_activities")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("tenant_id"))
                    .col(string("lead_id"))
                    .col(string("message_id"))
                    .col(string("activity_type"))
                    .col(json_binary("details"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        index(manager, "lead_activities", "ix_lead_activities_lead", &["tenant_id", "lead_id", "created_at"], false)
            .await?;
        index(manager, "lead_activities", "ix_lead_activities_message", &["tenant_id", "message_id"], false).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["lead_activities", "saga_steps", "dead_letter_queue", "processed_messages"] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Creates an index on `columns` of `table`.
pub(crate) async fn index(
    manager: &SchemaManager<'_>,
    table: &'static str,
    name: &'static str,
    columns: &[&'static str],
    unique: bool,
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table).if_not_exists();
    for column in columns {
        stmt.col(*column);
    }
    if unique {
        stmt.unique();
    }
    manager.create_index(stmt.to_owned()).await
}
