//! `UNKNOWN`, the fallback: apologise and flag the conversation for a person.

use async_trait::async_trait;
use executors::actions;
use orchestrator::intent::names;
use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
use serde_json::json;

/// Takes every message no other handler accepts (unknown intent, or
/// confidence below a handler's threshold).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnknownHandler;

#[async_trait]
impl IntentHandler for UnknownHandler {
    fn intent(&self) -> &str {
        names::UNKNOWN
    }

    fn priority(&self) -> i32 {
        i32::MIN
    }

    fn confidence_threshold(&self) -> f64 {
        0.0
    }

    fn can_handle(&self, _ctx: &MessageContext) -> bool {
        true
    }

    async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        Ok(IntentOutcome::reply(Reply::text(if crate::entities::spanish(&ctx.intent) {
            "¡Gracias por tu mensaje! No logré entenderlo; un miembro de nuestro equipo te responderá."
        } else {
            "Thanks for your message! I did not quite get that; a member of our team will get back to you."
        }))
        .with_action(
            actions::FLAG_FOR_REVIEW,
            json!({ "reason": "unknown_intent",
                    "details": { "intent": ctx.intent.name, "confidence": ctx.intent.confidence } }),
        ))
    }
}
