//! `COMPLAINT`: open a ticket; a severe complaint is also flagged, escalated and
//! reported to sales.

use async_trait::async_trait;
use executors::actions;
use orchestrator::intent::names;
use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
use serde_json::json;

/// Handles `COMPLAINT` at confidence >= 0.5, before every other built-in
/// handler: an unhappy customer is never routed elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct ComplaintHandler;

#[async_trait]
impl IntentHandler for ComplaintHandler {
    fn intent(&self) -> &str {
        names::COMPLAINT
    }

    fn priority(&self) -> i32 {
        200
    }

    fn confidence_threshold(&self) -> f64 {
        0.5
    }

    async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        let severe = ctx.intent.entity_str("severity") == Some("high");
        let subject = match ctx.intent.entity_str("order_id") {
            Some(order) => format!("Complaint about order {order}"),
            None => "Customer complaint".to_owned(),
        };
        let reply = match (severe, crate::entities::spanish(&ctx.intent)) {
            (true, false) => {
                "We are very sorry about this. A supervisor has been alerted and will contact you personally as soon as possible."
            }
            (false, false) => {
                "We are sorry to hear that. We have opened a support ticket and our team will get back to you shortly."
            }
            (true, true) => {
                "Lamentamos mucho lo ocurrido. Un supervisor ya fue notificado y se comunicará contigo personalmente lo antes posible."
            }
            (false, true) => {
                "Lamentamos lo sucedido. Abrimos un ticket de soporte y nuestro equipo te responderá en breve."
            }
        };
        let mut outcome = IntentOutcome::reply(Reply::text(reply)).with_lead_stage(crate::stages::AT_RISK).with_action(
            actions::CREATE_SUPPORT_TICKET,
            json!({ "subject": subject, "priority": if severe { "urgent" } else { "normal" } }),
        );
        if severe {
            // A supervisor reviews it, and the customer's sales contact hears that the account is at risk.
            outcome = outcome
                .with_action(actions::FLAG_FOR_REVIEW, json!({ "reason": "high_severity_complaint" }))
                .with_action(actions::NOTIFY_SALES, json!({ "reason": "customer_at_risk" }))
                .escalated();
        }
        Ok(outcome)
    }
}
