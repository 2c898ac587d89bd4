//! `create_support_ticket`: opens a ticket in `support_tickets`; compensation closes it.

use chrono::{DateTime, Utc};
use orchestrator::{ActionContext, ActionError};
use sea_orm::Set;
use serde_json::{Value, json};

use crate::effect::{Effect, EffectExecutor, EffectTable};

/// The `support_tickets` table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A row of `support_tickets`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "support_tickets")]
    pub struct Model {
        /// Row id.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// `<tenant>:<message_id>:<run>:<step>`.
        #[sea_orm(unique)]
        pub idempotency_key: String,
        /// Tenant.
        pub tenant_id: String,
        /// The message that caused it.
        pub message_id: String,
        /// Customer phone.
        pub phone: String,
        /// Ticket title.
        pub subject: String,
        /// What the customer said.
        pub description: String,
        /// `low`, `normal`, `high` or `urgent`.
        pub priority: String,
        /// `open` or `closed`.
        pub status: String,
        /// Created.
        pub created_at: DateTimeUtc,
        /// Last change.
        pub updated_at: DateTimeUtc,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use entity::{ActiveModel, Column, Entity, Model};

impl EffectTable for Entity {
    const STATUS: Column = Column::Status;
    const UPDATED_AT: Column = Column::UpdatedAt;
    const IDEMPOTENCY_KEY: Column = Column::IdempotencyKey;
    const DONE: &'static str = "open";
    const UNDONE: &'static str = "closed";
    const OUTPUT_ID: &'static str = "ticket_id";
}

/// Ticket priorities accepted in `priority`.
pub const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];

/// Opens a support ticket: `subject` (default "Customer complaint"),
/// `description` (default: the message text), `priority` (default `normal`).
pub type CreateSupportTicket = EffectExecutor<Entity>;

impl Effect for Entity {
    const ACTION: &'static str = crate::actions::CREATE_SUPPORT_TICKET;

    fn row(ctx: &ActionContext<'_>, key: String, now: DateTime<Utc>) -> Result<ActiveModel, ActionError> {
        let priority = ctx.param_str("priority").unwrap_or("normal");
        if !PRIORITIES.contains(&priority) {
            return Err(ActionError::permanent(format!("ticket priority `{priority}` is not one of {PRIORITIES:?}")));
        }
        let description =
            ctx.param_str("description").or_else(|| ctx.message.inbound.text()).unwrap_or("(no text)").to_owned();
        Ok(ActiveModel {
            idempotency_key: Set(key),
            tenant_id: Set(ctx.message.tenant_id.clone()),
            message_id: Set(ctx.message.message_id.clone()),
            phone: Set(ctx.message.phone().to_owned()),
            subject: Set(ctx.param_str("subject").unwrap_or("Customer complaint").to_owned()),
            description: Set(description),
            priority: Set(priority.to_owned()),
            status: Set(Entity::DONE.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
    }

    fn output(row: &Model) -> Value {
        json!({ Entity::OUTPUT_ID: row.id, "priority": row.priority })
    }
}
