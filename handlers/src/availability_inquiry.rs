//! `AVAILABILITY_INQUIRY`: ask sales to confirm stock or a date.

use async_trait::async_trait;
use orchestrator::intent::names;
use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
use serde_json::json;

use crate::entities::{product, spanish};
use executors::actions;

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
        let es = spanish(&ctx.intent);
        let product = product(&ctx.intent);
        let date = ctx.intent.entity_str("date");
        let reply = if es {
            let what = product.as_deref().unwrap_or("eso");
            let when = date.map(|d| format!(" el {d}")).unwrap_or_default();
            format!("Déjame revisar si {what} está disponible{when}. Te respondemos en unos minutos.")
        } else {
            let what = product.as_deref().unwrap_or("that");
            let when = date.map(|d| format!(" on {d}")).unwrap_or_default();
            format!("Let me check whether {what} is available{when}. We will get back to you in a few minutes.")
        };
        let summary = format!(
            "Availability of {}{}",
            product.as_deref().unwrap_or("(not named)"),
            date.map(|d| format!(" on {d}")).unwrap_or_default()
        );
        Ok(IntentOutcome::reply(Reply::text(reply))
            .with_action(actions::NOTIFY_SALES, json!({ "reason": "availability_inquiry", "summary": summary }))
            .with_lead_stage(crate::stages::INTERESTED))
    }
}
