//! `PRICING_INQUIRY`: ask sales to quote.

use async_trait::async_trait;
use orchestrator::intent::names;
use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
use serde_json::json;

use crate::entities::{product, spanish};
use executors::actions;

/// Handles `PRICING_INQUIRY` at confidence >= 0.6.
#[derive(Debug, Clone, Copy, Default)]
pub struct PricingInquiryHandler;

#[async_trait]
impl IntentHandler for PricingInquiryHandler {
    fn intent(&self) -> &str {
        names::PRICING_INQUIRY
    }

    fn priority(&self) -> i32 {
        80
    }

    fn confidence_threshold(&self) -> f64 {
        0.6
    }

    async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        let es = spanish(&ctx.intent);
        let (reply, summary) = match product(&ctx.intent) {
            Some(product) if es => (
                format!(
                    "¡Gracias por preguntar por {product}! Un asesor te enviará nuestros precios actuales en breve."
                ),
                format!("Price request for {product}"),
            ),
            Some(product) => (
                format!(
                    "Thanks for asking about {product}! A sales representative will send you our current prices shortly."
                ),
                format!("Price request for {product}"),
            ),
            None => (
                if es {
                    "¡Gracias por tu interés! ¿De qué producto quieres el precio?".to_owned()
                } else {
                    "Thanks for your interest! Which product would you like a price for?".to_owned()
                },
                "Price request (product not named)".to_owned(),
            ),
        };
        Ok(IntentOutcome::reply(Reply::text(reply))
            .with_action(actions::NOTIFY_SALES, json!({ "reason": "pricing_inquiry", "summary": summary }))
            .with_lead_stage(crate::stages::INTERESTED))
    }
}
