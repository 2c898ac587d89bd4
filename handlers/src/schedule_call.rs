//! `SCHEDULE_CALL`: book the call when a time was given, else offer slots as buttons.

use async_trait::async_trait;
use executors::actions;
use orchestrator::event::{Button, ResponseContent};
use orchestrator::intent::names;
use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
use serde_json::json;

/// Handles `SCHEDULE_CALL` at confidence >= 0.6.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScheduleCallHandler;

/// The slot buttons offered when the user named no time.
pub const SLOTS: [(&str, &str); 3] =
    [("call_morning", "Morning"), ("call_afternoon", "Afternoon"), ("call_evening", "Evening")];

/// The same slots in Spanish (same ids).
pub const SLOTS_ES: [(&str, &str); 3] =
    [("call_morning", "Mañana"), ("call_afternoon", "Tarde"), ("call_evening", "Noche")];

#[async_trait]
impl IntentHandler for ScheduleCallHandler {
    fn intent(&self) -> &str {
        names::SCHEDULE_CALL
    }

    fn priority(&self) -> i32 {
        90
    }

    fn confidence_threshold(&self) -> f64 {
        0.6
    }

    async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        let es = crate::entities::spanish(&ctx.intent);
        match ctx.intent.entity_str("preferred_time") {
            Some(time) => Ok(IntentOutcome::reply(Reply::text(if es {
                format!("¡Perfecto! Te llamaremos {time}. Un asesor confirmará la hora exacta.")
            } else {
                format!("Great, we will call you {time}. A sales representative will confirm the exact time.")
            }))
            .with_action(
                actions::NOTIFY_SALES,
                json!({ "reason": "schedule_call", "summary": format!("Call requested for {time}"),
                        "details": { "preferred_time": time } }),
            )
            .with_lead_stage(crate::stages::CALL_SCHEDULED)),
            None => {
                let (body_text, slots) = if es {
                    ("¡Claro! ¿Cuándo quieres que te llamemos?", &SLOTS_ES)
                } else {
                    ("Sure! When would you like us to call you?", &SLOTS)
                };
                Ok(IntentOutcome::reply(Reply::content(ResponseContent::Interactive {
                    body_text: body_text.to_owned(),
                    buttons: slots
                        .iter()
                        .map(|(id, title)| Button { id: (*id).to_owned(), title: (*title).to_owned() })
                        .collect(),
                })))
            }
        }
    }
}
