//! `create_order`: records an order in `orders`; compensation cancels it.

use chrono::{DateTime, Utc};
use orchestrator::{ActionContext, ActionError};
use sea_orm::Set;
use serde_json::{Value, json};

use crate::effect::{Effect, EffectExecutor, EffectTable};

/// The `orders` table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A row of `orders`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
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
        /// Lead id, when known.
        pub lead_id: Option<String>,
        /// `[{"product": .., "quantity": ..}]`.
        pub items: Json,
        /// Free text.
        pub notes: Option<String>,
        /// `created` or `cancelled`.
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
    const DONE: &'static str = "created";
    const UNDONE: &'static str = "cancelled";
    const OUTPUT_ID: &'static str = "order_id";
}

/// Creates an order from `items` (`[{"product","quantity"}]`, or product
/// names) or a single `product` with `quantity`.
pub type CreateOrder = EffectExecutor<Entity>;

/// Normalises the parameters to `[{"product": String, "quantity": n}]`.
fn order_items(params: &Value) -> Result<Vec<Value>, ActionError> {
    let items: Vec<Value> = match (params.get("items"), params.get("product")) {
        (Some(Value::Array(items)), _) => items
            .iter()
            .map(|item| match item {
                Value::String(name) => Ok(json!({ "product": name, "quantity": 1 })),
                Value::Object(fields) => {
                    let product = fields
                        .get("product")
                        .or_else(|| fields.get("name"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| ActionError::permanent("an order item has no product"))?;
                    let quantity = fields.get("quantity").and_then(Value::as_u64).unwrap_or(1);
                    Ok(json!({ "product": product, "quantity": quantity }))
                }
                other => Err(ActionError::permanent(format!("order item {other} is neither a name nor an object"))),
            })
            .collect::<Result<_, _>>()?,
        (_, Some(Value::String(product))) => {
            vec![json!({ "product": product, "quantity": params.get("quantity").and_then(Value::as_u64).unwrap_or(1) })]
        }
        _ => Vec::new(),
    };
    if items.is_empty() {
        return Err(ActionError::permanent("create_order needs `items` or `product`"));
    }
    if items.iter().any(|item| item["quantity"] == json!(0)) {
        return Err(ActionError::permanent("order quantities must be at least 1"));
    }
    Ok(items)
}

impl Effect for Entity {
    const ACTION: &'static str = crate::actions::CREATE_ORDER;

    fn row(ctx: &ActionContext<'_>, key: String, now: DateTime<Utc>) -> Result<ActiveModel, ActionError> {
        let items = order_items(ctx.params)?;
        Ok(ActiveModel {
            idempotency_key: Set(key),
            tenant_id: Set(ctx.message.tenant_id.clone()),
            message_id: Set(ctx.message.message_id.clone()),
            phone: Set(ctx.message.phone().to_owned()),
            lead_id: Set(ctx.message.intent.lead_id.clone()),
            items: Set(Value::Array(items)),
            notes: Set(ctx.param_str("notes").map(str::to_owned)),
            status: Set(Entity::DONE.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
    }

    fn output(row: &Model) -> Value {
        json!({ Entity::OUTPUT_ID: row.id, "items": row.items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_normalised() {
        let items = order_items(&json!({ "items": ["tacos", { "name": "soda", "quantity": 2 }] })).unwrap();
        assert_eq!(items, vec![json!({"product":"tacos","quantity":1}), json!({"product":"soda","quantity":2})]);
        let single = order_items(&json!({ "product": "pizza", "quantity": 3 })).unwrap();
        assert_eq!(single, vec![json!({"product":"pizza","quantity":3})]);
    }

    #[test]
    fn missing_or_bad_items_are_permanent_errors() {
        for params in
            [json!({}), json!({ "items": [] }), json!({ "items": [42] }), json!({ "product": "x", "quantity": 0 })]
        {
            let error = order_items(&params).unwrap_err();
            assert!(!error.is_retryable(), "{params} should be a permanent error");
        }
    }
}
