//! A user's own intent handler, action executor, classifier and WhatsApp
//! sender, registered in code next to the built-in ones and running in the
//! consumer runtime on the embedded defaults (in-process broker, SQLite
//! `./orchestrator.db` or `DATABASE_URL`). It sends a few messages, prints
//! each reply the runtime produces, and exits.
//!
//! ```sh
//! cargo run --example custom_handler
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use orchestrator::event::{Envelope, EventData, MessageContent, MessageReceived, MessageType, ResponseContent};
use orchestrator::kafka::{ConsumerRuntime, EmbeddedKafka, Publisher, ReplySettings, ResponseSender, RuntimeSettings};
use orchestrator::outbound::{SendError, Sent, WhatsAppSender};
use orchestrator::{
    ActionContext, ActionError, ActionExecutor, ActionOutput, Classifier, ClassifyError, HandlerError, Inbound, Intent,
    IntentHandler, IntentOutcome, KeywordClassifier, MessageContext, Orchestrator, Reply, SqlStore, async_trait,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Answers loyalty questions and credits a welcome bonus.
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

/// Recognises loyalty questions, and asks the built-in classifier otherwise.
struct LoyaltyAwareClassifier;

#[async_trait]
impl Classifier for LoyaltyAwareClassifier {
    async fn classify(&self, inbound: &Inbound) -> Result<Intent, ClassifyError> {
        let text = inbound.text().unwrap_or_default().to_lowercase();
        if text.contains("points") || text.contains("puntos") {
            return Ok(Intent::new("LOYALTY_POINTS", 0.9));
        }
        KeywordClassifier.classify(inbound).await
    }
}

/// Instead of calling WhatsApp, hands each reply to `main` to print.
struct PrintingSender(mpsc::UnboundedSender<String>);

#[async_trait]
impl WhatsAppSender for PrintingSender {
    async fn send(&self, response: &orchestrator::event::ResponseReady) -> Result<Sent, SendError> {
        let text = match &response.content {
            ResponseContent::Text { message } => message.clone(),
            other => format!("{other:?}"),
        };
        let _ = self.0.send(format!("to {}: {text}", orchestrator::telemetry::mask_phone(&response.to_phone)));
        Ok(Sent::default())
    }
}

fn message(phone: &str, body: &str) -> Envelope {
    Envelope::new(
        EventData::MessageReceived(MessageReceived {
            message_id: format!("wamid.custom-{}", uuid::Uuid::new_v4().simple()),
            from_phone: phone.to_owned(),
            message_type: MessageType::Text,
            content: MessageContent::Text { body: body.to_owned() },
            received_at: Utc::now(),
            metadata: Default::default(),
        }),
        "custom_handler_example",
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kafka_broker = EmbeddedKafka::start(4)?;
    let settings = orchestrator::settings::Settings::from_env()?;
    let kafka = kafka_broker.configure(settings.kafka.config()?);
    let db = orchestrator::db::connect(&settings.database.database_url).await?;
    let store = Arc::new(SqlStore::new(db.clone()));

    // The registries: built-ins plus the user's own, in code.
    let mut handlers = handlers::builtin();
    handlers.register(Arc::new(LoyaltyHandler));
    let executors = executors::builtin(&db).with(AwardPoints::default());
    let orchestrator = Orchestrator::builder().handlers(handlers).executors(executors).store(store.clone()).build()?;

    let runtime = ConsumerRuntime::new(
        &kafka,
        Arc::new(orchestrator),
        Arc::new(LoyaltyAwareClassifier),
        store.clone(),
        RuntimeSettings::default(),
    )?;
    let (replies_tx, mut replies) = mpsc::unbounded_channel();
    let sender = ResponseSender::new(&kafka, Arc::new(PrintingSender(replies_tx)), store, ReplySettings::default())?;
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let consumer = tokio::spawn(runtime.run(until_stopped(stopped.clone())));
    let replier = tokio::spawn(sender.run(until_stopped(stopped)));

    let publisher = Publisher::new(&kafka)?;
    let sent = [
        ("+15551234567", "How many points do I have?"),
        ("+15551234567", "I want to order 2 tacos"),
        ("+5215512345678", "¿Cuántos puntos tengo?"),
    ];
    for (phone, text) in sent {
        println!("from {}: {text}", orchestrator::telemetry::mask_phone(phone));
        publisher.publish(&message(phone, text)).await?;
    }
    for _ in 0..sent.len() {
        match tokio::time::timeout(Duration::from_secs(30), replies.recv()).await {
            Ok(Some(reply)) => println!("{reply}"),
            _ => return Err("no reply within 30 s".into()),
        }
    }

    let _ = stop.send(true);
    consumer.await??;
    replier.await??;
    Ok(())
}
