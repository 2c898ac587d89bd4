//! `notify_sales`: queues a note for the sales team in `sales_notifications`;
//! compensation retracts it.

use async_trait::async_trait;
use chrono::Utc;
use orchestrator::{ActionContext, ActionError, ActionExecutor, ActionOutput};
use sea_orm::{DatabaseConnection, Set};
use serde_json::json;

use crate::effect::{EffectRows, EffectTable};

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

use entity::{ActiveModel, Column, Entity};

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
#[derive(Debug, Clone)]
pub struct NotifySales {
    rows: EffectRows<Entity>,
}

impl NotifySales {
    /// Writes to `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { rows: EffectRows::new(db) }
    }
}

#[async_trait]
impl ActionExecutor for NotifySales {
    fn name(&self) -> &str {
        crate::actions::NOTIFY_SALES
    }

    async fn execute(&self, ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        let reason = ctx.param_str("reason").ok_or_else(|| ActionError::permanent("notify_sales needs a `reason`"))?;
        let summary = ctx.param_str("summary").or_else(|| ctx.message.inbound.text()).unwrap_or("(no text)").to_owned();
        let key = ctx.idempotency_key();
        let now = Utc::now();
        let row = ActiveModel {
            idempotency_key: Set(key.clone()),
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
        };
        let notification = self.rows.insert_once(row).await?;
        Ok(ActionOutput(json!({ Entity::OUTPUT_ID: notification.id })))
    }

    async fn compensate(&self, ctx: &ActionContext<'_>, _output: &ActionOutput) -> Result<(), ActionError> {
        self.rows.undo(&ctx.idempotency_key()).await
    }

    async fn compensate_unknown(&self, ctx: &ActionContext<'_>) -> Result<(), ActionError> {
        self.rows.undo(&ctx.idempotency_key()).await
    }
}
