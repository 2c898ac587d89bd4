//! `flag_for_review`: asks a person to look at the conversation, in
//! `review_flags`; compensation clears the flag.

use chrono::{DateTime, Utc};
use orchestrator::{ActionContext, ActionError};
use sea_orm::Set;
use serde_json::{Value, json};

use crate::effect::{Effect, EffectExecutor, EffectTable};

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

use entity::{ActiveModel, Column, Entity, Model};

impl EffectTable for Entity {
    const STATUS: Column = Column::Status;
    const UPDATED_AT: Column = Column::UpdatedAt;
    const IDEMPOTENCY_KEY: Column = Column::IdempotencyKey;
    const DONE: &'static str = "flagged";
    const UNDONE: &'static str = "cleared";
    const OUTPUT_ID: &'static str = "flag_id";
}

/// Flags a conversation for human review: `reason` (required), `details`.
pub type FlagForReview = EffectExecutor<Entity>;

impl Effect for Entity {
    const ACTION: &'static str = crate::actions::FLAG_FOR_REVIEW;

    fn row(ctx: &ActionContext<'_>, key: String, now: DateTime<Utc>) -> Result<ActiveModel, ActionError> {
        let reason =
            ctx.param_str("reason").ok_or_else(|| ActionError::permanent("flag_for_review needs a `reason`"))?;
        Ok(ActiveModel {
            idempotency_key: Set(key),
            tenant_id: Set(ctx.message.tenant_id.clone()),
            message_id: Set(ctx.message.message_id.clone()),
            phone: Set(ctx.message.phone().to_owned()),
            reason: Set(reason.to_owned()),
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
