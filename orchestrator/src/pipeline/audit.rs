//! The rows a completed message leaves behind: its `lead_activities` audit
//! trail and its reply's routing details.

use serde_json::json;

use crate::context::MessageContext;
use crate::event::reply_meta;
use crate::handler::IntentOutcome;
use crate::saga::StepOutcome;
use crate::store::NewActivity;

/// The audit trail of a completed message.
pub(super) fn activities(
    ctx: &MessageContext,
    handler: &str,
    outcome: &IntentOutcome,
    steps: &[StepOutcome],
) -> Vec<NewActivity> {
    let lead_id = ctx.lead_id().to_owned();
    let mut rows = Vec::with_capacity(steps.len() + 2);
    rows.push(NewActivity {
        lead_id: lead_id.clone(),
        activity_type: "message_handled".to_owned(),
        details: json!({
            "intent": ctx.intent.name,
            "confidence": ctx.intent.confidence,
            "handler": handler,
            "actions": outcome.actions.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
            "attempt": ctx.attempt,
            "replied": outcome.response.is_some(),
        }),
    });
    rows.extend(
        steps.iter().map(|step| NewActivity::action_executed(&lead_id, &step.action, step.step_index, &step.output)),
    );
    if outcome.escalate {
        rows.push(NewActivity {
            lead_id,
            activity_type: "escalated".to_owned(),
            details: json!({ "intent": ctx.intent.name, "handler": handler }),
        });
    }
    rows
}

/// A reply's routing details: the tenant, and the business number the
/// message arrived on, which the reply goes out from.
pub(super) fn reply_metadata(ctx: &MessageContext) -> std::collections::BTreeMap<String, String> {
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(reply_meta::TENANT_ID.to_owned(), ctx.tenant_id.clone());
    if let Some(number) = ctx.inbound.business_number() {
        metadata.insert(reply_meta::PHONE_NUMBER_ID.to_owned(), number.to_owned());
    }
    metadata
}
