//! `AVAILABILITY_INQUIRY`: ask sales to confirm stock or a date.

use async_trait::async_trait;
use orchestrator::intent::names;
use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
use serde_json::json;

use crate::entities::product;

/// Handles `AVAILABILITY_INQUIRY` at confidence >= 0.6.
#[derive(Debug, Clone, Copy, Default)]
pub struct AvailabilityInquiryHandler;

#[async_trait]
impl IntentHandler for AvailabilityInquiryHandler {
    fn intent(&self) -> &str {
        names::AVAILABILITY_INQUIRY
    }

    fn priority(&self) -> i32 {
        80
    }

    fn confidence_threshold(&self) -> f64 {
        0.6
    }

    async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        let what = product(&ctx.intent).unwrap_or_else(|| "that".to_owned());
        let when = ctx.intent.entity_str("date").map(|d| format!(" on {d}")).unwrap_or_default();
        Ok(IntentOutcome::reply(Reply::text(format!(
            "Let me check whether {what} is available{when}. We will get back to you in a few minutes."
        )))
        .with_action(
            "notify_sales",
            json!({ "reason": "availability_inquiry", "summary": format!("Availability of {what}{when}") }),
        ))
    }
}
