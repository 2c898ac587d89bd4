//! Load benchmark of the send API: how many messages per second it accepts
//! (`POST /api/v1/messages` one by one, or `/batch`) and delivers to
//! WhatsApp, with latency percentiles.
//!
//! Everything runs in this process, as the consumer runs it: the HTTP
//! server with JWT checks, the database (`DATABASE_URL`, default a fresh
//! SQLite file), the embedded Kafka broker, the reply sender, and a fake
//! Cloud API on loopback that answers at once (so the numbers are ours,
//! not Meta's). Each message goes to its own recipient, so WhatsApp's
//! per-recipient pacing does not enter; the sender's per-number rate is
//! raised to 10,000/s for the same reason (Meta's tiers end at 1,000).
//!
//! ```sh
//! cargo run --release --example send_bench -- --messages 20000 --mode batch --batch 500
//! cargo run --release --example send_bench -- --messages 20000 --mode single --concurrency 64
//! ```
//!
//! Prints accepted/s (the API's answers), delivered/s (the fake's
//! receipts), request latency (one HTTP request: a message, or a batch) and
//! acceptance-to-delivery latency percentiles; with `--urgent-every`, the
//! latter apart for `Urgent` and `Normal` messages:
//!
//! ```sh
//! cargo run --release --example send_bench -- --messages 4000 --max-rate 200 --urgent-every 50 --sender-in-flight 8192
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use orchestrator::http::auth::{JwtVerifier, mint_hs256};
use orchestrator::http::{self, ApiState};
use orchestrator::kafka::{EmbeddedKafka, KafkaConfig, Publisher, ReplySettings, ResponseSender};
use orchestrator::message_service::{MessageService, MessageServiceSettings};
use orchestrator::outbound::{CloudApiConfig, CloudApiSender, RateSettings};
use orchestrator::testing::fake_cloud_api::{FakeCloudApi, FakeSettings};
use orchestrator::{BreakerConfig, SqlStore};
use serde_json::{Value, json};
use tokio::sync::watch;

const SECRET: &[u8] = b"send-bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `POST /api/v1/messages`, one message per request.
    Single,
    /// `POST /api/v1/messages/batch`.
    Batch,
}

#[derive(Debug, Parser)]
#[command(about = "Load benchmark of the send API")]
struct Args {
    /// Messages to send.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// One request per message, or batches.
    #[arg(long, value_enum, default_value_t = Mode::Batch)]
    mode: Mode,
    /// Messages per batch request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The sender's sends per second per business number (default: far above what the API accepts).
    #[arg(long, default_value_t = 10_000.0)]
    max_rate: f64,
    /// Replies the sender holds at once (`REPLY_MAX_IN_FLIGHT`): those beyond it wait in Kafka,
    /// where an urgent one cannot overtake them.
    #[arg(long, default_value_t = 512)]
    sender_in_flight: usize,
    /// Every Nth message is `Urgent` (0: none): with a `--max-rate` below the
    /// offered load, shows how long an urgent message waits behind the rest.
    #[arg(long, default_value_t = 0)]
    urgent_every: usize,
}

impl Args {
    fn urgent(&self, i: usize) -> bool {
        self.urgent_every > 0 && i % self.urgent_every == self.urgent_every - 1
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(label: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!(
        "{label:<28} p50 {:>8.1} ms   p95 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms",
        percentile(&values, 0.50),
        percentile(&values, 0.95),
        percentile(&values, 0.99),
        percentile(&values, 1.0)
    );
}

fn recipient(i: usize) -> String {
    format!("+1555{i:07}")
}

fn body(args: &Args, i: usize) -> Value {
    let priority = if args.urgent(i) { "Urgent" } else { "Normal" };
    json!({ "recipient_phone": recipient(i), "content": { "text": "Hi {name}, your code is {code}" },
            "variables": { "name": "Ana", "code": i }, "priority": priority })
}

/// Sends requests `first..last` (messages, or batches of messages) and
/// returns each request's latency and when each message was accepted.
async fn client(
    url: String,
    token: String,
    args: Arc<Args>,
    next: Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<f64>, Vec<(usize, Instant)>) {
    let http = reqwest::Client::builder().pool_max_idle_per_host(4).build().unwrap();
    let per_request = if args.mode == Mode::Batch { args.batch } else { 1 };
    let (mut latencies, mut accepted) = (Vec::new(), Vec::new());
    loop {
        let first = next.fetch_add(per_request, std::sync::atomic::Ordering::Relaxed);
        if first >= args.messages {
            return (latencies, accepted);
        }
        let last = (first + per_request).min(args.messages);
        let (path, payload) = match args.mode {
            Mode::Single => ("/api/v1/messages", body(&args, first)),
            Mode::Batch => {
                let messages: Vec<Value> = (first..last).map(|i| body(&args, i)).collect();
                ("/api/v1/messages/batch", json!({ "messages": messages }))
            }
        };
        let started = Instant::now();
        let response = http
            .post(format!("{url}{path}"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(payload.to_string())
            .send()
            .await
            .expect("the API answers");
        let status = response.status();
        let answer = response.bytes().await.expect("a body");
        let done = Instant::now();
        assert_eq!(status.as_u16(), 202, "{}", String::from_utf8_lossy(&answer));
        latencies.push(done.duration_since(started).as_secs_f64() * 1000.0);
        accepted.extend((first..last).map(|i| (i, done)));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    // reqwest is built without a default TLS provider; these clients speak plain HTTP, but it insists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        let file = std::env::temp_dir().join(format!("send-bench-{}.db", uuid::Uuid::new_v4().simple()));
        format!("sqlite://{}?mode=rwc", file.display())
    });
    let db = orchestrator::db::connect(&url).await?;
    let kafka = EmbeddedKafka::start(8)?;
    let config = kafka.configure(KafkaConfig {
        consumer_group_id: format!("send-bench-{}", uuid::Uuid::new_v4().simple()),
        ..KafkaConfig::default()
    });
    let fake = FakeCloudApi::start(FakeSettings::default()).await?;
    let cloud = CloudApiConfig {
        token: "bench".into(),
        tokens: HashMap::new(),
        phone_number_id: "1234567890".into(),
        api_url: fake.url().to_owned(),
        timeout: Duration::from_secs(5),
    };
    let store = Arc::new(SqlStore::new(db.clone()));
    let whatsapp = Arc::new(CloudApiSender::new(cloud, BreakerConfig::default())?);
    let reply_settings = ReplySettings {
        rate: RateSettings {
            max_rate: args.max_rate,
            burst: (args.max_rate as u32).clamp(1, 10_000),
            ..RateSettings::default()
        },
        // Replies wait in process for their slot up to this long, not in the retry topic.
        max_rate_wait: Duration::from_secs(600),
        max_in_flight: args.sender_in_flight,
        ..ReplySettings::default()
    };
    let sender = ResponseSender::new(&config, whatsapp, store.clone(), reply_settings)?;
    let (stop, stopped) = watch::channel(false);
    let sender_task = tokio::spawn(sender.run(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let publisher = Publisher::new(&config)?;
    let service = MessageService::new(
        store.clone(),
        Arc::new(publisher),
        MessageServiceSettings { daily_limit: None, ..Default::default() },
    );
    let app = http::api::routes(ApiState::new(service, JwtVerifier::hs256(SECRET, "org_id"), None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    tokio::spawn(http::serve(listener, app, std::future::pending()));
    let token = mint_hs256(SECRET, "org_id", Some("bench"), "", Duration::from_secs(3600))?;
    // Warm-up: the consumer group joins, connections open.
    let warm = reqwest::Client::new()
        .post(format!("{api}/api/v1/messages"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({ "recipient_phone": "+19990000000", "content": { "text": "warm-up" } }).to_string())
        .send()
        .await?;
    assert_eq!(warm.status().as_u16(), 202);
    while fake.accepted().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let database = if url.starts_with("postgres") { "postgresql" } else { "sqlite" };
    println!(
        "send API: {} messages, mode {:?}{}, {} requests in flight, database {database}",
        args.messages,
        args.mode,
        if args.mode == Mode::Batch { format!(" of {}", args.batch) } else { String::new() },
        args.concurrency
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(client(api.clone(), token.clone(), args.clone(), next.clone())))
        .collect();
    let (mut request_latencies, mut accepted_at) = (Vec::new(), HashMap::with_capacity(args.messages));
    for client in clients {
        let (latencies, accepted) = client.await?;
        request_latencies.extend(latencies);
        accepted_at.extend(accepted);
    }
    let accept_time = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while fake.accepted().len() < args.messages + 1 {
        assert!(Instant::now() < deadline, "only {} of {} delivered", fake.accepted().len() - 1, args.messages);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliveries = fake.accepted();
    let last_delivery = deliveries.iter().map(|d| d.at).max().unwrap_or(started);
    let by_recipient: HashMap<String, usize> = (0..args.messages).map(|i| (recipient(i)[1..].to_owned(), i)).collect();
    let (mut delivery_latencies, mut urgent_latencies) = (Vec::with_capacity(args.messages), Vec::new());
    for delivery in &deliveries {
        let Some(&i) = by_recipient.get(delivery.to()) else { continue };
        let latency = delivery.at.saturating_duration_since(accepted_at[&i]).as_secs_f64() * 1000.0;
        if args.urgent(i) { urgent_latencies.push(latency) } else { delivery_latencies.push(latency) }
    }
    assert_eq!(deliveries.len(), args.messages + 1, "each message delivered once");
    let deliver_time = last_delivery.duration_since(started);
    println!(
        "accepted                     {:>8.0} msg/s ({} in {:.2} s)",
        args.messages as f64 / accept_time.as_secs_f64(),
        args.messages,
        accept_time.as_secs_f64()
    );
    println!(
        "delivered                    {:>8.0} msg/s (last at {:.2} s)",
        args.messages as f64 / deliver_time.as_secs_f64(),
        deliver_time.as_secs_f64()
    );
    summary("request latency", request_latencies);
    if urgent_latencies.is_empty() {
        summary("accepted-to-delivered", delivery_latencies);
    } else {
        summary("accepted-to-delivered Normal", delivery_latencies);
        summary("accepted-to-delivered Urgent", urgent_latencies);
    }
    let _ = stop.send(true);
    sender_task.await??;
    Ok(())
}
