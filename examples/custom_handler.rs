//! A user's own intent handler and action executor, registered in code next
//! to the built-in ones, processing a few messages end to end on the embedded
//! defaults (SQLite `./orchestrator.db`, or `DATABASE_URL`).
//!
//! ```sh
//! cargo run --example custom_handler
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::Utc;
use orchestrator::event::{MessageContent, MessageReceived, MessageType, ResponseContent};
use orchestrator::store::{DlqFilter, DlqStatus, Page};
use orchestrator::{
    ActionContext, ActionError, ActionExecutor, ActionOutput, DeadLetterQueue, HandlerError, Inbound, Incoming, Intent,
    IntentHandler, IntentOutcome, MessageContext, Orchestrator, Outcome, Reply, SqlStore, async_trait,
};
use serde_json::json;

/// Answers "how many points do I have?" and credits a welcome bonus.
struct LoyaltyHandler;

#[async_trait]
impl IntentHandler for LoyaltyHandler {
    fn intent(&self) -> &str {
        "LOYALTY_POINTS"
    }

    fn priority(&self) -> i32 {
        150
    }

    fn confidence_threshold(&self) -> f64 {
        0.6
    }

    async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        let bonus = ctx.intent.entities.get("bonus").and_then(|b| b.as_i64()).unwrap_or(50);
        Ok(IntentOutcome::reply(Reply::text(format!("We added {bonus} welcome points to your card!")))
            .with_action("award_points", json!({ "points": bonus })))
    }
}

/// Credits points on a (here in-memory) loyalty ledger; compensation debits them.
#[derive(Default)]
struct AwardPoints {
    balance: AtomicI64,
}

#[async_trait]
impl ActionExecutor for AwardPoints {
    fn name(&self) -> &str {
        "award_points"
    }

    async fn execute(&self, ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        let points = ctx.params["points"].as_i64().ok_or_else(|| ActionError::permanent("points must be a number"))?;
        let balance = self.balance.fetch_add(points, Ordering::SeqCst) + points;
        Ok(ActionOutput(json!({ "points": points, "balance": balance })))
    }

    async fn compensate(&self, _ctx: &ActionContext<'_>, output: &ActionOutput) -> Result<(), ActionError> {
        let points = output.get("points").and_then(|p| p.as_i64()).unwrap_or(0);
        self.balance.fetch_sub(points, Ordering::SeqCst);
        Ok(())
    }
}

fn message(body: &str) -> Inbound {
    Inbound::Message(MessageReceived {
        message_id: format!("wamid.demo-{}", uuid::Uuid::new_v4().simple()),
        from_phone: "+15551234567".to_owned(),
        message_type: MessageType::Text,
        content: MessageContent::Text { body: body.to_owned() },
        received_at: Utc::now(),
        metadata: HashMap::new(),
    })
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Completed(done) => {
            let reply = match done.response.as_ref().map(|r| &r.content) {
                Some(ResponseContent::Text { message }) => message.clone(),
                Some(other) => format!("{other:?}"),
                None => "(no reply)".to_owned(),
            };
            let actions: Vec<&str> = done.steps.iter().map(|s| s.action.as_str()).collect();
            format!("completed by {} actions={actions:?} reply={reply:?}", done.handler)
        }
        Outcome::Duplicate(of) => format!("duplicate of a message already {of:?}"),
        Outcome::RetryScheduled { next_attempt, delay, reason, .. } => {
            format!("retry #{next_attempt} in {delay:?}: {reason}")
        }
        Outcome::Deferred { due_at, reason } => format!("deferred until {due_at}: {reason}"),
        Outcome::DeadLettered(dead) => {
            format!("dead-lettered #{} ({}): {}", dead.dlq_id, dead.failure_type, dead.reason)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = orchestrator::config::database_url();
    let db = orchestrator::db::connect(&url).await?;
    println!("database: {url} (migrated)");
    let store = Arc::new(SqlStore::new(db.clone()));

    let mut handlers = handlers::builtin();
    handlers.register(Arc::new(LoyaltyHandler));
    let executors = executors::builtin(&db).with(AwardPoints::default());
    let orchestrator = Orchestrator::builder()
        .handlers(handlers)
        .executors(executors)
        .store(store.clone())
        .retry_policy(orchestrator::RetryPolicy::from_env()?)
        .build()?;

    let order = Incoming::new(
        message("I'd like 2 tacos and a soda"),
        Intent::new("ORDER_REQUEST", 0.93).with_entity("products", json!([{ "name": "tacos", "quantity": 2 }, "soda"])),
    );
    let samples = vec![
        ("order", order.clone()),
        ("same order delivered again", order),
        (
            "loyalty (custom handler)",
            Incoming::new(message("how many points do I have?"), Intent::new("LOYALTY_POINTS", 0.8)),
        ),
        (
            "complaint",
            Incoming::new(
                message("my order never arrived"),
                Intent::new("COMPLAINT", 0.9).with_entity("severity", "high"),
            ),
        ),
        ("unknown", Incoming::new(message("asdfgh"), Intent::unknown())),
        ("order naming no product (asks)", Incoming::new(message("order!"), Intent::new("ORDER_REQUEST", 0.9))),
        (
            "bad phone number",
            Incoming::new(
                Inbound::Message(MessageReceived {
                    from_phone: "not a phone".into(),
                    ..match message("hi") {
                        Inbound::Message(m) => m,
                        _ => unreachable!(),
                    }
                }),
                Intent::unknown(),
            ),
        ),
    ];
    for (label, incoming) in samples {
        let outcome = orchestrator.process(incoming).await?;
        println!("{label:>40}: {}", describe(&outcome));
    }

    let failed = store
        .list(&DlqFilter { status: Some(DlqStatus::Failed), ..Default::default() }, Page { limit: 5, offset: 0 })
        .await?;
    println!("\nnewest failed dead letters (SELECT * FROM dead_letter_queue WHERE status = 'failed' ...):");
    for entry in failed {
        println!("  #{} {} {} {}", entry.id, entry.failure_type, entry.message_id.unwrap_or_default(), entry.error);
    }
    Ok(())
}
