//! The thin consumer binary: reads its configuration, builds the registries
//! and runs the library's Kafka runtime and response sender.
//!
//! With no `KAFKA_BOOTSTRAP_SERVERS` it starts an in-process broker (keeps
//! nothing on disk) and prints its address; with no `DATABASE_URL` it uses
//! `./orchestrator.db` (SQLite). `--demo` also produces a few sample
//! messages so the whole flow shows in the log.
//!
//! ```sh
//! cargo run --example consumer -- --demo
//! ```

use std::sync::Arc;

use chrono::Utc;
use orchestrator::event::{Envelope, EventData, MessageContent, MessageReceived, MessageType};
use orchestrator::kafka::{
    AiRouteSettings, CloudApiConfig, CloudApiSender, ConsumerRuntime, DryRunSender, EmbeddedKafka, KafkaConfig,
    Publisher, ResponseSender, RuntimeSettings, WhatsAppSender,
};
use orchestrator::{KeywordClassifier, Orchestrator, RetryPolicy, SqlStore};
use tokio::sync::watch;

/// Partitions of each topic on the embedded broker.
const EMBEDDED_PARTITIONS: i32 = 8;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn sample(phone: &str, body: &str) -> Envelope {
    Envelope::new(
        EventData::MessageReceived(MessageReceived {
            message_id: format!("wamid.demo-{}", uuid::Uuid::new_v4().simple()),
            from_phone: phone.to_owned(),
            message_type: MessageType::Text,
            content: MessageContent::Text { body: body.to_owned() },
            received_at: Utc::now(),
            metadata: Default::default(),
        }),
        "consumer_demo",
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let demo = std::env::args().any(|a| a == "--demo");
    let mut kafka = KafkaConfig::from_env()?;
    // Kept alive until the end of main: dropping it stops the broker.
    let _embedded = match &kafka.bootstrap_servers {
        Some(servers) => {
            tracing::info!(%servers, "using the Kafka cluster from KAFKA_BOOTSTRAP_SERVERS");
            None
        }
        None => {
            let embedded = EmbeddedKafka::start(EMBEDDED_PARTITIONS)?;
            tracing::info!(
                bootstrap_servers = %embedded.bootstrap_servers(),
                partitions = EMBEDDED_PARTITIONS,
                "embedded Kafka broker (librdkafka mock cluster) listening; it keeps nothing on disk"
            );
            kafka = kafka.with_bootstrap_servers(embedded.bootstrap_servers());
            Some(embedded)
        }
    };

    let url = orchestrator::config::database_url();
    let db = orchestrator::db::connect(&url).await?;
    tracing::info!(database = %url.split('@').next_back().unwrap_or(&url), "database ready, migrations applied");
    let store = Arc::new(SqlStore::new(db.clone()));
    let cleanup = orchestrator::maintenance::spawn_dedupe_cleanup(store.clone(), std::time::Duration::from_secs(3600));
    let orchestrator = Orchestrator::builder()
        .handlers(handlers::builtin())
        .executors(executors::builtin(&db))
        .store(store.clone())
        .retry_policy(RetryPolicy::from_env()?)
        .build()?;

    let mut runtime = ConsumerRuntime::new(
        &kafka,
        Arc::new(orchestrator),
        Arc::new(KeywordClassifier),
        store.clone(),
        RuntimeSettings::default(),
    )?;
    match AiRouteSettings::from_env()? {
        Some(ai) => {
            tracing::info!(
                timeout = ?ai.timeout,
                "INTENT_SOURCE=ai: intents come from the AI service (ai.process.request / ai.process.result); \
                 the keyword classifier answers when it is late"
            );
            runtime = runtime.with_ai_route(store, ai);
        }
        None => tracing::info!("intents from the built-in keyword classifier (INTENT_SOURCE=ai for the AI service)"),
    }
    let whatsapp: Arc<dyn WhatsAppSender> = match CloudApiConfig::from_env() {
        Some(cloud) => {
            tracing::info!(api_url = %cloud.api_url, "sending replies through the WhatsApp Cloud API");
            Arc::new(CloudApiSender::new(cloud, orchestrator::BreakerConfig::default())?)
        }
        None => {
            tracing::info!("WHATSAPP_TOKEN / WHATSAPP_PHONE_NUMBER_ID not set: replies are logged, not sent (dry run)");
            Arc::new(DryRunSender)
        }
    };
    let sender = ResponseSender::new(&kafka, whatsapp)?;
    let (stop, stopped) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let sender_task = tokio::spawn(sender.run(wait(stopped.clone())));

    if demo {
        let publisher = Publisher::new(&kafka)?;
        for (phone, text) in [
            ("+15551234567", "Hi! I want to order 2 tacos and 1 soda"),
            ("+5215512345678", "¿Cuánto cuesta la pizza familiar?"),
            ("+15551234567", "This is the worst service, my last order arrived broken"),
            ("+447700900123", "Please call me tomorrow morning"),
        ] {
            publisher.publish(&sample(phone, text)).await?;
        }
        publisher.send(orchestrator::event::topics::MESSAGES, Some("+15550000000"), b"{oops, not json", &[]).await?;
        tracing::info!("demo: produced 4 messages and 1 malformed one to conversation.messages");
    }

    let signal = tokio::spawn(async move {
        termination().await;
        tracing::info!("shutdown requested");
        let _ = stop.send(true);
    });
    runtime.run(wait(stopped)).await?;
    sender_task.await??;
    signal.abort();
    cleanup.abort();
    Ok(())
}
