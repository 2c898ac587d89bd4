//! Reading the entities classifiers extract.

use orchestrator::Intent;
use serde_json::{Value, json};

/// Products named in `products` (names or `{"name"|"product","quantity"}`)
/// or `product` + `quantity`, as order items `{"product","quantity"}`.
pub(crate) fn order_items(intent: &Intent) -> Vec<Value> {
    let mut items = Vec::new();
    if let Some(Value::Array(products)) = intent.entities.get("products") {
        for product in products {
            match product {
                Value::String(name) if !name.trim().is_empty() => {
                    items.push(json!({ "product": name.trim(), "quantity": 1 }))
                }
                Value::Object(fields) => {
                    let name = fields.get("name").or_else(|| fields.get("product")).and_then(Value::as_str);
                    if let Some(name) = name.filter(|n| !n.trim().is_empty()) {
                        let quantity = fields.get("quantity").and_then(Value::as_u64).unwrap_or(1).max(1);
                        items.push(json!({ "product": name.trim(), "quantity": quantity }));
                    }
                }
                _ => {}
            }
        }
    }
    if items.is_empty()
        && let Some(name) = intent.entity_str("product").filter(|n| !n.trim().is_empty())
    {
        let quantity = intent.entities.get("quantity").and_then(Value::as_u64).unwrap_or(1).max(1);
        items.push(json!({ "product": name.trim(), "quantity": quantity }));
    }
    items
}

/// Whether to answer in Spanish: the classifier's `language` entity is `es`.
pub(crate) fn spanish(intent: &Intent) -> bool {
    intent.entity_str("language") == Some("es")
}

/// "2 x tacos, 1 x soda".
pub(crate) fn describe_items(items: &[Value]) -> String {
    items
        .iter()
        .map(|item| format!("{} x {}", item["quantity"], item["product"].as_str().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The product the user asks about: `product`, else the first of `products`.
pub(crate) fn product(intent: &Intent) -> Option<String> {
    intent
        .entity_str("product")
        .map(str::to_owned)
        .or_else(|| order_items(intent).first().and_then(|item| item["product"].as_str().map(str::to_owned)))
}
