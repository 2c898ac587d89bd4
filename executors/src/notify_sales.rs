//! `notify_sales`: queues a note for the sales team in `sales_notifications`;
//! compensation retracts it.

use chrono::{DateTime, Utc};
use orchestrator::{ActionContext, ActionError};
use sea_orm::Set;
use serde_json::{Value, json};

use crate::effect::{Effect, EffectExecutor, EffectTable};

/// The `sales_notifications` table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A row of `sales_notifications`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "sales_notifications")]
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
        /// Why sales should look (`new_order`, `pricing_inquiry`, ...).
        pub reason: String,
        /// One-line summary for the sales person.
        pub summary: String,
        /// Extra structured details.
        pub details: Option<Json>,
        /// `sent` or `retracted`.
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
    const DONE: &'static str = "sent";
    const UNDONE: &'static str = "retracted";
    const OUTPUT_ID: &'static str = "notification_id";
}

/// Notifies sales: `reason` (required), `summary` (default: the message
/// text), `details` (any JSON).
pub type NotifySales = EffectExecutor<Entity>;

impl Effect for Entity {
    const ACTION: &'static str = crate::actions::NOTIFY_SALES;

    fn row(ctx: &ActionContext<'_>, key: String, now: DateTime<Utc>) -> Result<ActiveModel, ActionError> {
        let reason = ctx.param_str("reason").ok_or_else(|| ActionError::permanent("notify_sales needs a `reason`"))?;
        let summary = ctx.param_str("summary").or_else(|| ctx.message.inbound.text()).unwrap_or("(no text)").to_owned();
        Ok(ActiveModel {
            idempotency_key: Set(key),
            tenant_id: Set(ctx.message.tenant_id.clone()),
            message_id: Set(ctx.message.message_id.clone()),
            phone: Set(ctx.message.phone().to_owned()),
            reason: Set(reason.to_owned()),
            summary: Set(summary),
            details: Set(ctx.params.get("details").cloned()),
            status: Set(Entity::DONE.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
    }

    fn output(row: &Model) -> Value {
        json!({ Entity::OUTPUT_ID: row.id })
    }
}
