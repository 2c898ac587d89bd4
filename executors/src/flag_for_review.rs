//! `flag_for_review`: asks a person to look at the conversation, in
//! `review_flags`; compensation clears the flag.

use async_trait::async_trait;
use chrono::Utc;
use orchestrator::{ActionContext, ActionError, ActionExecutor, ActionOutput};
use sea_orm::{DatabaseConnection, Set};
use serde_json::json;

use crate::effect::{EffectRows, EffectTable};

/// The `review_flags` table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A row of `review_flags`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "review_flags")]
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
        /// Why (`unknown_intent`, `high_severity_complaint`, ...).
        pub reason: String,
        /// Extra structured details.
        pub details: Option<Json>,
        /// `flagged` or `cleared`.
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
    const DONE: &'static str = "flagged";
    const UNDONE: &'static str = "cleared";
    const OUTPUT_ID: &'static str = "flag_id";
}

/// Flags a conversation for human review: `reason` (required), `details`.
#[derive(Debug, Clone)]
pub struct FlagForReview {
    rows: EffectRows<Entity>,
}

impl FlagForReview {
    /// Writes to `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { rows: EffectRows::new(db) }
    }
}

#[async_trait]
impl ActionExecutor for FlagForReview {
    fn name(&self) -> &str {
        crate::actions::FLAG_FOR_REVIEW
    }

    async fn execute(&self, ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        let reason =
            ctx.param_str("reason").ok_or_else(|| ActionError::permanent("flag_for_review needs a `reason`"))?;
        let key = ctx.idempotency_key();
        let now = Utc::now();
        let row = ActiveModel {
            idempotency_key: Set(key.clone()),
            tenant_id: Set(ctx.message.tenant_id.clone()),
            message_id: Set(ctx.message.message_id.clone()),
            phone: Set(ctx.message.phone().to_owned()),
            reason: Set(reason.to_owned()),
            details: Set(ctx.params.get("details").cloned()),
            status: Set(Entity::DONE.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        let flag = self.rows.insert_once(row).await?;
        Ok(ActionOutput(json!({ Entity::OUTPUT_ID: flag.id })))
    }

    async fn compensate(&self, ctx: &ActionContext<'_>, _output: &ActionOutput) -> Result<(), ActionError> {
        self.rows.undo(&ctx.idempotency_key()).await
    }

    async fn compensate_unknown(&self, ctx: &ActionContext<'_>) -> Result<(), ActionError> {
        self.rows.undo(&ctx.idempotency_key()).await
    }
}
