//! `PRICING_INQUIRY`: ask sales to quote.

use async_trait::async_trait;
use orchestrator::intent::names;
use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
use serde_json::json;

use crate::entities::product;

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
        let (reply, summary) = match product(&ctx.intent) {
            Some(product) => (
                format!(
                    "Thanks for asking about {product}! A sales representative will send you our current prices shortly."
                ),
                format!("Price request for {product}"),
            ),
            None => (
                "Thanks for your interest! Which product would you like a price for?".to_owned(),
                "Price request (product not named)".to_owned(),
            ),
        };
        Ok(IntentOutcome::reply(Reply::text(reply))
            .with_action("notify_sales", json!({ "reason": "pricing_inquiry", "summary": summary })))
    }
}
