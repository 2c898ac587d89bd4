//! `ORDER_REQUEST`: create the order and tell sales; ask for details when no product was named.

use async_trait::async_trait;
use orchestrator::intent::names;
use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
use serde_json::json;

use crate::entities::{describe_items, order_items, spanish};
use executors::actions;

/// Handles `ORDER_REQUEST` at confidence >= 0.7.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderRequestHandler;

#[async_trait]
impl IntentHandler for OrderRequestHandler {
    fn intent(&self) -> &str {
        names::ORDER_REQUEST
    }

    fn priority(&self) -> i32 {
        100
    }

    fn confidence_threshold(&self) -> f64 {
        0.7
    }

    async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        let es = spanish(&ctx.intent);
        let items = order_items(&ctx.intent);
        if items.is_empty() {
            return Ok(IntentOutcome::reply(Reply::text(if es {
                "¡Con gusto tomamos tu pedido! ¿Qué productos quieres y cuántos de cada uno?"
            } else {
                "Happy to take your order! Which products would you like, and how many of each?"
            })));
        }
        let summary = describe_items(&items);
        Ok(IntentOutcome::reply(Reply::text(if es {
            format!("¡Gracias! Registramos tu pedido: {summary}. Un asesor de ventas te lo confirmará en breve.")
        } else {
            format!("Thanks! We have registered your order: {summary}. A sales representative will confirm it shortly.")
        }))
        .with_action(actions::CREATE_ORDER, json!({ "items": items }))
        .with_action(
            actions::NOTIFY_SALES,
            json!({ "reason": "new_order", "summary": format!("New order: {summary}") }),
        )
        .with_lead_stage(crate::stages::CUSTOMER))
    }
}
