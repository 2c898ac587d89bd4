//! Database schema of WhatsApp Orchestrator as a sea-orm-migration crate.
//!
//! [`Migrator`] creates every table of the design: the orchestrator's own
//! (`processed_messages`, `dead_letter_queue`, `saga_steps`, `lead_activities`)
//! and the built-in executors' effect tables (`orders`, `support_tickets`,
//! `review_flags`, `sales_notifications`), the per-key ordering tables
//! (`key_blocks`, `parked_messages`), the messages waiting for the AI service
//! (`ai_pending`) and the delivery statuses of sent messages
//! (`delivery_statuses`), each lead's stage (`leads`), every reply and API message sent
//! (`outbound_messages`), each organisation's daily API usage (`api_usage`)
//! and the inbox's history (`conversations`, `conversation_messages`). Both
//! SQLite and PostgreSQL are supported; the orchestrator applies pending
//! migrations at start-up.
//!
//! ```no_run
//! use migrations::{Migrator, MigratorTrait};
//! # async fn run(db: &sea_orm_migration::sea_orm::DatabaseConnection) -> Result<(), sea_orm_migration::DbErr> {
//! Migrator::up(db, None).await?;
//! # Ok(()) }
//! ```

use sea_orm_migration::prelude::*;
pub use sea_orm_migration::prelude::{MigratorTrait, SchemaManager};

mod m20250101_000001_core_tables;
mod m20250101_000002_effect_tables;
mod m20250101_000003_key_parking;
mod m20250101_000004_reply_outbox;
mod m20250101_000005_ai_pending;
mod m20250101_000006_delivery_statuses;
mod m20250101_000007_dlq_fingerprint;
mod m20250101_000008_leads;
mod m20250101_000009_dlq_trace_context;
mod m20250101_000010_outbound_messages;
mod m20250101_000011_api_messages;
mod m20250101_000012_conversations;
mod m20250101_000013_hot_reply_marks;

/// Every migration of the project, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_core_tables::Migration),
            Box::new(m20250101_000002_effect_tables::Migration),
            Box::new(m20250101_000003_key_parking::Migration),
            Box::new(m20250101_000004_reply_outbox::Migration),
            Box::new(m20250101_000005_ai_pending::Migration),
            Box::new(m20250101_000006_delivery_statuses::Migration),
            Box::new(m20250101_000007_dlq_fingerprint::Migration),
            Box::new(m20250101_000008_leads::Migration),
            Box::new(m20250101_000009_dlq_trace_context::Migration),
            Box::new(m20250101_000010_outbound_messages::Migration),
            Box::new(m20250101_000011_api_messages::Migration),
            Box::new(m20250101_000012_conversations::Migration),
            Box::new(m20250101_000013_hot_reply_marks::Migration),
        ]
    }
}

/// Names of every table the migrations create, for tests and tooling.
pub const TABLES: &[&str] = &[
    "processed_messages",
    "dead_letter_queue",
    "saga_steps",
    "lead_activities",
    "orders",
    "support_tickets",
    "review_flags",
    "sales_notifications",
    "key_blocks",
    "parked_messages",
    "ai_pending",
    "delivery_statuses",
    "leads",
    "outbound_messages",
    "api_usage",
    "conversations",
    "conversation_messages",
];
