//! End-to-end load benchmark: produces `MessageReceived` events (a realistic
//! mix of intents over many phones) to the embedded broker (or
//! `KAFKA_BOOTSTRAP_SERVERS`), runs the full pipeline on them in this
//! process against SQLite (a fresh file) or `DATABASE_URL`, and times every
//! message from its produce call to its reply on `conversation.responses`.
//!
//! In the same run it measures the two limits the pipeline sits between: a
//! bare rdkafka consumer reading the same messages and doing nothing (the
//! Kafka limit), and the rows an order message writes generated inside the
//! database, in transactions of 500 messages on as many connections as
//! cores (the database limit: the database's own, not a client's).
//!
//! With `--replies` it measures the reply path instead: `ResponseReady`
//! events (10,000 recipients) to the embedded broker, sent by the
//! `ResponseSender` to a fake Cloud API that answers in 100 ms and refuses
//! sends above `WHATSAPP_MAX_SEND_RATE` per business number (130429), as
//! WhatsApp does; each reply is timed from its produce call to its arrival
//! at the fake.
//!
//! ```sh
//! cargo run --release --example loadgen                         # 200,000 messages, as fast as they go
//! LOADGEN_MESSAGES=20000 cargo run --release --example loadgen  # fewer
//! cargo run --release --example loadgen -- --rate 5000          # open loop: 5,000 msg/s offered
//! cargo run --release --example loadgen -- --orders             # order messages only (two-step sagas)
//! cargo run --release --example loadgen -- --no-history         # without the inbox's conversation history
//! cargo run --release --example loadgen -- --external           # the built-in executors as external ones
//! cargo run --release --example loadgen -- --noop               # no-op executors, in-memory dedupe
//! cargo run --release --example loadgen -- --replies            # 20,000 replies, 80/s per number (250 s)
//! WHATSAPP_MAX_SEND_RATE=2000 cargo run --release --example loadgen -- --replies  # a higher tier's limit
//! ```
//!
//! The last line is machine-readable:
//! `RESULT msgs_per_sec=.. p50_ms=.. p99_ms=.. bare_consume_ratio=.. db_limit_ratio=..`, or with `--replies`
//! `RESULT replies_per_sec=.. p50_ms=.. p99_ms=.. throttled_130429=.. max_concurrency=..`

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use orchestrator::event::{
    Envelope, EventData, MessageContent, MessageReceived, MessageType, Priority, ResponseContent, ResponseReady,
    ResponseType, reply_meta, topics,
};
use orchestrator::kafka::{ConsumerRuntime, EmbeddedKafka, KafkaConfig, Publisher, ResponseSender, RuntimeSettings};
use orchestrator::outbound::{CloudApiConfig, CloudApiSender};
use orchestrator::store::KeyParking;
use orchestrator::testing::fake_cloud_api::{FakeCloudApi, FakeSettings};
use orchestrator::{
    ActionContext, ActionError, ActionExecutor, ActionOutput, BreakerConfig, ExecutorRegistry, KeywordClassifier,
    MemoryStore, Orchestrator, SqlStore, Store, async_trait,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, TopicPartitionList};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};

/// Load benchmark of the whole pipeline, or of the reply path (`--replies`).
#[derive(Debug, Parser)]
struct Args {
    /// Messages to send (default 200,000, 20,000 replies with `--replies`; `LOADGEN_MESSAGES` sets it too).
    #[arg(long, env = "LOADGEN_MESSAGES", default_value_t = 200_000, default_value_if("replies", "true", "20000"))]
    messages: usize,
    /// Distinct phones the messages come from (default 1,000; with `--replies`, 10,000 the replies go to).
    #[arg(long, default_value_t = 1_000, default_value_if("replies", "true", "10000"))]
    phones: usize,
    /// Open loop: offer this many messages per second instead of as many as possible.
    #[arg(long)]
    rate: Option<u64>,
    /// No-op executors and in-memory dedupe: the pipeline's own cost over Kafka's.
    #[arg(long)]
    noop: bool,
    /// Partitions of each topic on the embedded broker (32 with `--replies`).
    #[arg(long, default_value_t = 8, default_value_if("replies", "true", "32"))]
    partitions: i32,
    /// Skip the bare-consumer and batched-database limit measurements.
    #[arg(long)]
    no_limits: bool,
    /// Install the consumer's telemetry (logs to stderr at `RUST_LOG`, default
    /// info; the OpenTelemetry layer, exporting when `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is set): what tracing costs. Without it no subscriber is installed.
    #[arg(long)]
    telemetry: bool,
    /// The reply path instead: replies sent by the `ResponseSender` to a fake
    /// Cloud API (100 ms per call, `WHATSAPP_MAX_SEND_RATE` enforced).
    #[arg(long, conflicts_with = "noop")]
    replies: bool,
    /// Only order messages (two-step sagas: `create_order`, `notify_sales`), as the reliability suite sends.
    #[arg(long, conflicts_with = "replies")]
    orders: bool,
    /// Without the inbox's conversation history (`CONVERSATION_HISTORY=false`).
    #[arg(long)]
    no_history: bool,
    /// The built-in executors registered as external ones: each step its own
    /// write, behind a claim, with saga-log rows (what an executor calling
    /// another service costs the pipeline).
    #[arg(long, conflicts_with = "noop")]
    external: bool,
}

/// What a message says, and how often (per 100 messages).
const MIX: [(u32, &str); 7] = [
    (40, "Hi, I want to order 2 tacos and 1 soda"),
    (15, "How much is the family pizza?"),
    (10, "Do you have vegan burgers available tomorrow?"),
    (10, "My last order arrived late"),
    (5, "This is the worst service, terrible! My order arrived broken"),
    (10, "Please call me tomorrow morning"),
    (10, "hello there"),
];

fn body(i: usize) -> &'static str {
    // A fixed shuffle of the mix so neighbours differ.
    let mut slot = ((i * 37) % 100) as u32;
    for (share, text) in MIX {
        if slot < share {
            return text;
        }
        slot -= share;
    }
    MIX[0].1
}

fn envelope(run: &str, i: usize, phones: usize) -> Envelope {
    message(run, i, phones, body(i))
}

/// An order only (`--orders`): `create_order` then `notify_sales`, as the reliability suite sends.
fn order_envelope(run: &str, i: usize, phones: usize) -> Envelope {
    message(run, i, phones, MIX[0].1)
}

/// Message `i` of `run`, saying `text`.
fn message(run: &str, i: usize, phones: usize, text: &str) -> Envelope {
    Envelope::new(
        EventData::MessageReceived(MessageReceived {
            message_id: format!("wamid.lg.{run}.{i}"),
            from_phone: format!("+1555{:07}", i % phones),
            message_type: MessageType::Text,
            content: MessageContent::Text { body: text.to_owned() },
            received_at: Utc::now(),
            metadata: HashMap::new(),
        }),
        "loadgen",
    )
}

/// The business number the replies go out from.
const BUSINESS_NUMBER: &str = "1555000000";

/// Reply `i` of `run` (the fake sees its index in the text).
fn reply_envelope(run: &str, i: usize, phones: usize) -> Envelope {
    Envelope::new(
        EventData::ResponseReady(ResponseReady {
            original_message_id: format!("wamid.lg.{run}.{i}"),
            to_phone: format!("+1555{:07}", i % phones),
            response_type: ResponseType::Text,
            content: ResponseContent::text(format!("#{i} Got it: 2 tacos and 1 soda, ready in 20 minutes.")),
            generated_at: Utc::now(),
            priority: Priority::Normal,
            metadata: BTreeMap::from([(reply_meta::PHONE_NUMBER_ID.to_owned(), BUSINESS_NUMBER.to_owned())]),
        }),
        "loadgen",
    )
}

/// The index of a reply from its text.
fn reply_index(text: &str) -> Option<usize> {
    text.strip_prefix('#')?.split(' ').next()?.parse().ok()
}

/// Builds event `i` of a run over `phones` phones.
type Make = fn(&str, usize, usize) -> Envelope;

/// Messages sent and answered before the clock starts: the group join and
/// the first connections are not part of the measurement.
const WARMUP: usize = 200;

/// Produce times and reply times, in microseconds since the start.
struct Timeline {
    start: Instant,
    produced: Vec<AtomicU64>,
    replied: Vec<AtomicU64>,
    replies: AtomicUsize,
}

impl Timeline {
    fn new(n: usize) -> Self {
        Self {
            start: Instant::now(),
            produced: (0..n).map(|_| AtomicU64::new(0)).collect(),
            replied: (0..n).map(|_| AtomicU64::new(0)).collect(),
            replies: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Latencies (ms) of the first `n` messages that were replied, sorted.
    fn latencies(&self, n: usize) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .produced
            .iter()
            .zip(&self.replied)
            .take(n)
            .filter_map(|(p, r)| {
                let (p, r) = (p.load(Ordering::Relaxed), r.load(Ordering::Relaxed));
                (r > 0).then(|| r.saturating_sub(p) as f64 / 1000.0)
            })
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// CPU seconds (user + system) of this process, from /proc (Linux).
fn cpu_seconds() -> Option<f64> {
    process_cpu_seconds("self")
}

/// CPU seconds of this process's embedded broker: librdkafka's mock
/// cluster threads (`rdk:mock`), which a real broker would spend on
/// another machine (Linux; 0 on an external broker).
fn embedded_broker_cpu_seconds() -> Option<f64> {
    let mut seconds = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let is_mock = std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.starts_with("rdk:mock"));
        if is_mock {
            seconds += stat_cpu_seconds(&std::fs::read_to_string(path.join("stat")).ok()?)?;
        }
    }
    Some(seconds)
}

/// CPU seconds (user + system) of process `pid`, from /proc (Linux).
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU seconds from a `/proc/.../stat` line.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds of every PostgreSQL process on this machine (the server
/// and its backends), per pid: `None` when there is none (another host,
/// SQLite). A backend that exits during the run loses its share.
fn postgres_cpu() -> Option<HashMap<String, f64>> {
    let mut cpu = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres");
        if let Some(seconds) = is_postgres.then(|| process_cpu_seconds(&pid)).flatten() {
            cpu.insert(pid, seconds);
        }
    }
    (!cpu.is_empty()).then_some(cpu)
}

/// PostgreSQL's CPU seconds between two [`postgres_cpu`] readings
/// (backends started in between count from zero).
fn postgres_cpu_between(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> f64 {
    after.iter().map(|(pid, seconds)| seconds - before.get(pid).copied().unwrap_or(0.0)).sum()
}

/// The database's transactions and row writes so far (PostgreSQL's
/// `pg_stat_database`, for the current database): commits, inserted, updated.
async fn postgres_counters(db: &DatabaseConnection) -> Option<[i64; 3]> {
    if db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return None;
    }
    let sql = "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database WHERE datname = current_database()";
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.ok()??;
    Some([
        row.try_get("", "xact_commit").ok()?,
        row.try_get("", "tup_inserted").ok()?,
        row.try_get("", "tup_updated").ok()?,
    ])
}

/// Peak resident memory in MiB (VmHWM), from /proc (Linux).
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// Executors that do nothing: the pipeline's own cost.
struct Noop(&'static str);

#[async_trait]
impl ActionExecutor for Noop {
    fn name(&self) -> &str {
        self.0
    }

    async fn execute(&self, _ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        Ok(ActionOutput(serde_json::Value::Null))
    }

    async fn compensate(&self, _ctx: &ActionContext<'_>, _output: &ActionOutput) -> Result<(), ActionError> {
        Ok(())
    }
}

fn noop_executors() -> ExecutorRegistry {
    ["create_order", "notify_sales", "create_support_ticket", "flag_for_review"]
        .into_iter()
        .fold(ExecutorRegistry::new(), |registry, name| registry.with(Noop(name)))
}

/// A consumer assigned every partition of `topic` from the beginning (no group join).
fn assigned_reader(kafka: &KafkaConfig, topic: &str, partitions: i32) -> StreamConsumer {
    let consumer: StreamConsumer =
        kafka.consumer_config(&format!("loadgen-reader-{}", uuid::Uuid::new_v4().simple())).create().expect("reader");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, rdkafka::Offset::Beginning).expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// Reads `conversation.responses` and stamps each reply's message (other
/// runs' replies, on a shared cluster, are skipped by their id prefix).
fn spawn_reply_reader(
    kafka: &KafkaConfig,
    partitions: i32,
    run: String,
    timeline: Arc<Timeline>,
) -> tokio::task::JoinHandle<()> {
    let consumer = assigned_reader(kafka, topics::RESPONSES, partitions);
    let prefix = format!("wamid.lg.{run}.");
    tokio::spawn(async move {
        loop {
            let Ok(message) = consumer.recv().await else { continue };
            let Some(Ok(envelope)) = message.payload().map(Envelope::decode) else { continue };
            let EventData::ResponseReady(ResponseReady { original_message_id, .. }) = envelope.data else { continue };
            let Some(i) = original_message_id.strip_prefix(&prefix).and_then(|i| i.parse::<usize>().ok()) else {
                continue;
            };
            if i < timeline.replied.len() && timeline.replied[i].swap(timeline.now(), Ordering::Relaxed) == 0 {
                timeline.replies.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Produces every message, as fast as acknowledgements come or at `rate` per second.
async fn produce(publisher: &Publisher, run: &str, args: &Args, make: Make, timeline: &Timeline) {
    let batch = 1_000usize;
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < args.messages {
        let end = (sent + batch).min(args.messages);
        if let Some(rate) = args.rate {
            // Open loop: message i is due at i / rate seconds, whatever the pipeline does.
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let chunk = ((rate / 100).max(1) as usize).min(end - sent);
            send(publisher, run, args.phones, sent..sent + chunk, make, timeline).await;
            sent += chunk;
        } else {
            send(publisher, run, args.phones, sent..end, make, timeline).await;
            sent = end;
        }
    }
}

async fn send(
    publisher: &Publisher,
    run: &str,
    phones: usize,
    range: std::ops::Range<usize>,
    make: Make,
    timeline: &Timeline,
) {
    let sends = range.map(|i| {
        let envelope = make(run, i, phones);
        async move {
            timeline.produced[i].store(timeline.now(), Ordering::Relaxed);
            publisher.publish(&envelope).await
        }
    });
    for result in futures_util::future::join_all(sends).await {
        result.expect("produce");
    }
}

/// The Kafka limit: a bare consumer reads the same messages and does nothing.
async fn bare_consume_rate(kafka: &KafkaConfig, partitions: i32, expected: usize) -> f64 {
    // Assigned, not subscribed: no group join in the measurement.
    let consumer = assigned_reader(kafka, topics::MESSAGES, partitions);
    let mut read = 0usize;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while read < expected {
        match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                std::hint::black_box(message.payload());
                read += 1;
                last = Instant::now();
            }
            Ok(Err(_)) => {}
            Err(_) => break,
        }
    }
    let elapsed = first.map(|f| last.duration_since(f).as_secs_f64()).unwrap_or(f64::NAN);
    read as f64 / elapsed
}

/// Messages per transaction of the database limit, as a busy pipeline's batches.
const LIMIT_BATCH: usize = 500;

/// The database limit: what the database alone takes of the rows an order
/// message writes today (its claim row inserted completed with its reply,
/// the order, the sales notification, three lead activities, the lead's
/// stage, the message and its reply in the conversation's history and the
/// conversation's counts in one transaction, then the reply mark in
/// another), generated
/// inside the database from a series, `LIMIT_BATCH` messages per
/// transaction, on as many connections at once as the machine has cores.
/// No client builds the rows, so the limit is the database's own, not one
/// client's.
async fn db_limit_rate(db: &DatabaseConnection, run: &str, messages: usize) -> f64 {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (db, run, next) = (db.clone(), run.to_owned(), next.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(LIMIT_BATCH, Ordering::Relaxed);
                    if first >= messages {
                        break;
                    }
                    let last = (first + LIMIT_BATCH).min(messages) - 1;
                    write_limit_batch(&db, &run, first, last).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("database limit worker");
    }
    messages as f64 / started.elapsed().as_secs_f64()
}

/// Messages `first..=last` of the database limit, in two transactions.
async fn write_limit_batch(db: &DatabaseConnection, run: &str, first: usize, last: usize) {
    let backend = db.get_database_backend();
    let json = |text: &str| match backend {
        sea_orm::DatabaseBackend::Postgres => format!("CAST('{text}' AS jsonb)"),
        _ => format!("'{text}'"),
    };
    let series = format!("WITH RECURSIVE s(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM s WHERE i < {last})");
    let id = format!("'limit.{run}.' || i");
    let phone = "'+1555' || (i % 1000)";
    let reply = json(
        r#"{"original_message_id":"m","to_phone":"+15550000000","response_type":"text","content":{"type":"text","message":"Got it! Your order of 2 x tacos, 1 x soda is being prepared."},"priority":"normal"}"#,
    );
    let completion = [
        format!(
            "{series} INSERT INTO processed_messages (tenant_id, message_id, status, attempt_count, run_count, \
             claimed_at, completed_at, lease_token, expires_at, reply) \
             SELECT 'default', {id}, 'completed', 1, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, i, CURRENT_TIMESTAMP, \
             {reply} FROM s WHERE true ON CONFLICT (tenant_id, message_id) DO NOTHING"
        ),
        format!(
            "{series} INSERT INTO orders (idempotency_key, tenant_id, message_id, phone, items, status, created_at, \
             updated_at) SELECT {id} || ':0', 'default', {id}, {phone}, {}, 'created', CURRENT_TIMESTAMP, \
             CURRENT_TIMESTAMP FROM s",
            json(r#"[{"product":"tacos","quantity":2},{"product":"soda","quantity":1}]"#)
        ),
        format!(
            "{series} INSERT INTO sales_notifications (idempotency_key, tenant_id, message_id, phone, reason, summary, \
             status, created_at, updated_at) SELECT {id} || ':1', 'default', {id}, {phone}, 'new_order', \
             'I want to order 2 tacos and 1 soda', 'sent', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM s"
        ),
        format!(
            "{series}, t(kind) AS (SELECT 'message_handled' UNION ALL SELECT 'action_executed' UNION ALL \
             SELECT 'action_executed') INSERT INTO lead_activities (tenant_id, lead_id, message_id, activity_type, \
             details, created_at) SELECT 'default', {phone}, {id}, kind, {}, CURRENT_TIMESTAMP FROM s, t",
            json(r#"{"intent":"ORDER_REQUEST","confidence":0.9,"handler":"ORDER_REQUEST","attempt":1}"#)
        ),
        format!(
            "{series} INSERT INTO leads (tenant_id, lead_id, stage, updated_at) \
             SELECT 'default', {phone}, 'customer', CURRENT_TIMESTAMP FROM s WHERE true \
             ON CONFLICT (tenant_id, lead_id) DO UPDATE SET stage = excluded.stage, updated_at = excluded.updated_at"
        ),
        format!(
            "{series}, d(direction) AS (SELECT 'inbound' UNION ALL SELECT 'outbound') \
             INSERT INTO conversation_messages (tenant_id, phone, direction, message_id, reply_index, text, intent, \
             created_at) SELECT 'default', {phone}, direction, {id}, 0, 'I want to order 2 tacos and 1 soda', \
             'ORDER_REQUEST', CURRENT_TIMESTAMP FROM s, d WHERE true ON CONFLICT DO NOTHING"
        ),
        format!(
            "{series} INSERT INTO conversations (tenant_id, phone, last_message_at, last_direction, last_preview, \
             unread_count, message_count) SELECT 'default', {phone}, CURRENT_TIMESTAMP, 'outbound', \
             'Got it! Your order of 2 x tacos, 1 x soda is being prepared.', COUNT(*), 2 * COUNT(*) FROM s \
             GROUP BY {phone} ON CONFLICT (tenant_id, phone) DO UPDATE SET \
             last_message_at = excluded.last_message_at, last_direction = excluded.last_direction, \
             last_preview = excluded.last_preview, unread_count = conversations.unread_count + excluded.unread_count, \
             message_count = conversations.message_count + excluded.message_count"
        ),
    ];
    let mark = format!(
        "{series} UPDATE processed_messages SET reply_published_at = CURRENT_TIMESTAMP, reply = NULL \
         WHERE tenant_id = 'default' AND message_id IN (SELECT {id} FROM s)"
    );
    for statements in [&completion[..], std::slice::from_ref(&mark)] {
        let txn = db.begin().await.expect("begin");
        for sql in statements {
            txn.execute_raw(Statement::from_string(backend, sql.clone()))
                .await
                .unwrap_or_else(|e| panic!("database limit statement failed: {e}\n{sql}"));
        }
        txn.commit().await.expect("commit");
    }
}

/// mimalloc, as the example consumer: with glibc's malloc a fifth of the
/// pipeline's CPU went to allocation (its consolidation slow paths).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The consumer's settings, from the same variables.
    let settings = orchestrator::settings::Settings::from_env()?;
    let _telemetry =
        if args.telemetry { Some(orchestrator::telemetry::init(&settings.telemetry.config())?) } else { None };
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut kafka = settings.kafka.config()?;
    let _embedded = match &kafka.bootstrap_servers {
        // A new group reads the topic from its start: it would send every reply ever published there.
        Some(_) if args.replies => return Err("--replies runs on the embedded broker only".into()),
        Some(_) => None,
        None => {
            let embedded = EmbeddedKafka::start(args.partitions)?;
            kafka = embedded.configure(kafka);
            Some(embedded)
        }
    };
    kafka.consumer_group_id = format!("loadgen-{run}");
    let url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        format!("sqlite://{}?mode=rwc", std::env::temp_dir().join(format!("loadgen-{run}.db")).display())
    });
    let db = orchestrator::db::connect(&url).await?;
    if args.replies {
        return replies(&args, &kafka, &run, Arc::new(SqlStore::new(db)), url.split('?').next().unwrap_or(&url)).await;
    }
    let (store, parking): (Arc<dyn Store>, Arc<dyn KeyParking>) = if args.noop {
        let memory = Arc::new(MemoryStore::new());
        (memory.clone(), memory)
    } else {
        let sql = Arc::new(SqlStore::new(db.clone()).with_history(!args.no_history));
        (sql.clone(), sql)
    };
    let executors = match (args.noop, args.external) {
        (true, _) => noop_executors(),
        (false, true) => executors::builtin_external(&db),
        (false, false) => executors::builtin(&db),
    };
    let orchestrator = Arc::new(
        Orchestrator::builder()
            .handlers(handlers::builtin())
            .executors(executors)
            .store(store)
            .config(settings.pipeline.config())
            .build()?,
    );
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate} msg/s offered"),
        None => "closed loop, as fast as it goes".to_owned(),
    };
    let backend = if args.noop {
        "no-op executors, in-memory dedupe".to_owned()
    } else {
        url.split('?').next().unwrap_or(&url).to_owned()
    };
    eprintln!(
        "loadgen: {} messages over {} phones, {mode}; {backend}; {} CPUs",
        args.messages,
        args.phones,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Warm-up messages take the indexes after the measured ones.
    let timeline = Arc::new(Timeline::new(args.messages + WARMUP));
    let reader = spawn_reply_reader(&kafka, args.partitions, run.clone(), timeline.clone());
    let runtime = ConsumerRuntime::new(&kafka, orchestrator, Arc::new(KeywordClassifier), parking, {
        let mut settings = RuntimeSettings::default();
        if let Some(n) = std::env::var("LOADGEN_IN_FLIGHT").ok().and_then(|v| v.parse().ok()) {
            settings.max_in_flight = n;
        }
        settings
    })?;
    let stats = runtime.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consuming = tokio::spawn(runtime.run(async {
        let _ = stopped.await;
    }));
    let publisher = Publisher::new(&kafka)?;
    let make: Make = if args.orders { order_envelope } else { envelope };
    send(&publisher, &run, args.phones, args.messages..args.messages + WARMUP, make, &timeline).await;
    let warm = Instant::now();
    while timeline.replies.load(Ordering::Relaxed) < WARMUP {
        if warm.elapsed() > Duration::from_secs(60) {
            return Err("the warm-up messages were not answered within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    timeline.replies.store(0, Ordering::Relaxed);

    let cpu_before = cpu_seconds();
    let broker_before = embedded_broker_cpu_seconds();
    let postgres_before = postgres_cpu();
    let counters_before = postgres_counters(&db).await;
    let started = Instant::now();
    produce(&publisher, &run, &args, make, &timeline).await;
    let produced_in = started.elapsed();
    let limit = Duration::from_secs(600);
    while timeline.replies.load(Ordering::Relaxed) < args.messages && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_before.zip(cpu_seconds()).map(|(b, a)| a - b);
    let broker = broker_before.zip(embedded_broker_cpu_seconds()).map(|(b, a)| a - b);
    let postgres = postgres_before.zip(postgres_cpu()).map(|(b, a)| postgres_cpu_between(&b, &a));
    let replied = timeline.replies.load(Ordering::Relaxed);
    // Read after the last reply; the reply marks of the last batch may still be on their way.
    let counters = counters_before.zip(postgres_counters(&db).await);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), consuming).await;
    reader.abort();

    let latencies = timeline.latencies(args.messages);
    let rate = replied as f64 / elapsed.as_secs_f64();
    println!(
        "messages:    {replied} of {} replied in {:.2} s (produced in {:.2} s)",
        args.messages,
        elapsed.as_secs_f64(),
        produced_in.as_secs_f64()
    );
    println!("throughput:  {rate:.0} msg/s");
    println!(
        "latency:     p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms (produce call to reply on Kafka)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    let [processed, failed, retried, dead_lettered, duplicates] = stats.snapshot();
    println!(
        "pipeline:    {processed} completed, {failed} failed attempts, {retried} retried, {dead_lettered} dead-lettered, {duplicates} duplicates"
    );
    match cpu {
        Some(cpu) => println!(
            "cpu:         {:.3} s per 1,000 messages ({cpu:.1} s in all)",
            cpu * 1000.0 / replied.max(1) as f64
        ),
        None => println!("cpu:         n/a"),
    }
    if let Some(broker) = broker.filter(|b| *b > 0.0) {
        let without = cpu.unwrap_or(f64::NAN) - broker;
        println!(
            "cpu, broker: the embedded broker's threads {:.3} s of it per 1,000 messages; the rest {:.3} s",
            broker * 1000.0 / replied.max(1) as f64,
            without * 1000.0 / replied.max(1) as f64
        );
    }
    if let Some(postgres) = postgres {
        let ours = cpu.unwrap_or(f64::NAN);
        println!(
            "cpu, db:     PostgreSQL {:.3} s per 1,000 messages; with ours {:.3} s",
            postgres * 1000.0 / replied.max(1) as f64,
            (postgres + ours) * 1000.0 / replied.max(1) as f64
        );
    }
    if let Some((before, after)) = counters {
        let per = |i: usize| (after[i] - before[i]) as f64 / replied.max(1) as f64;
        println!(
            "database:    per message {:.2} transactions, {:.1} rows inserted, {:.1} rows updated",
            per(0),
            per(1),
            per(2)
        );
    }
    match peak_memory_mib() {
        Some(mib) => println!("memory:      {mib:.0} MiB peak resident"),
        None => println!("memory:      n/a"),
    }

    let (bare, db_limit) = if args.no_limits {
        (f64::NAN, f64::NAN)
    } else {
        let bare = bare_consume_rate(&kafka, args.partitions, args.messages).await;
        let db_limit = db_limit_rate(&db, &run, args.messages.min(50_000)).await;
        println!(
            "limits:      bare consumer {bare:.0} msg/s; the database alone, its rows generated server-side, {db_limit:.0} msg/s"
        );
        (bare, db_limit)
    };
    println!(
        "RESULT msgs_per_sec={rate:.0} p50_ms={:.2} p99_ms={:.2} bare_consume_ratio={:.3} db_limit_ratio={:.3}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        rate / bare,
        rate / db_limit
    );
    if replied < args.messages {
        return Err(format!("only {replied} of {} messages replied within {limit:?}", args.messages).into());
    }
    Ok(())
}

/// The reply path (`--replies`): replies produced to `conversation.responses`
/// (all of them before the sender starts, or at `--rate` once it runs), sent
/// by a [`ResponseSender`] to a fake Cloud API holding WhatsApp's limit.
async fn replies(
    args: &Args,
    kafka: &KafkaConfig,
    run: &str,
    store: Arc<SqlStore>,
    backend: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let settings = orchestrator::settings::Settings::from_env()?;
    let settings = settings.whatsapp.reply(settings.pipeline.retry_policy());
    let max_rate = settings.rate.max_rate;
    let fake = FakeCloudApi::start(FakeSettings {
        latency: Duration::from_millis(100),
        rate_limit: Some(max_rate),
        server_error_rate: 0.0,
        seed: 42,
    })
    .await?;
    let config = CloudApiConfig {
        token: "loadgen-token".to_owned(),
        tokens: HashMap::new(),
        phone_number_id: BUSINESS_NUMBER.to_owned(),
        api_url: fake.url().to_owned(),
        timeout: Duration::from_secs(10),
    };
    let whatsapp = Arc::new(CloudApiSender::new(config, BreakerConfig::default())?);
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate} replies/s offered"),
        None => "closed loop, all produced before the sender starts".to_owned(),
    };
    eprintln!(
        "loadgen: {} replies to {} phones, {mode}; limit {max_rate} msg/s, {} in flight; {backend}; {} CPUs",
        args.messages,
        args.phones,
        settings.max_in_flight,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let timeline = Timeline::new(args.messages + WARMUP);
    let publisher = Publisher::new(kafka)?;
    let start_sender = || -> Result<_, Box<dyn std::error::Error>> {
        let sender = ResponseSender::new(kafka, whatsapp.clone(), store.clone(), settings.clone())?;
        let stats = sender.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sending = tokio::spawn(sender.run(async {
            let _ = stopped.await;
        }));
        Ok((stats, stop, sending))
    };
    let (cpu_before, started, produced_in, expected, (stats, stop, sending)) = if args.rate.is_none() {
        let started = Instant::now();
        produce(&publisher, run, args, reply_envelope, &timeline).await;
        let produced_in = started.elapsed();
        let (cpu_before, started) = (cpu_seconds(), Instant::now());
        (cpu_before, started, produced_in, args.messages, start_sender()?)
    } else {
        // Warm-up replies (the indexes after the measured ones) wait for the group join.
        let sender = start_sender()?;
        send(&publisher, run, args.phones, args.messages..args.messages + WARMUP, reply_envelope, &timeline).await;
        let warm = Instant::now();
        while (fake.counts().accepted as usize) < WARMUP {
            if warm.elapsed() > Duration::from_secs(60) {
                return Err("the warm-up replies were not sent within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (cpu_before, started) = (cpu_seconds(), Instant::now());
        produce(&publisher, run, args, reply_envelope, &timeline).await;
        (cpu_before, started, started.elapsed(), args.messages + WARMUP, sender)
    };
    let limit = Duration::from_secs_f64(120.0 + 3.0 * args.messages as f64 / max_rate);
    while (fake.counts().accepted as usize) < expected && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_before.zip(cpu_seconds()).map(|(b, a)| a - b);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), sending).await;

    // Each measured reply's first arrival at the fake; a second one is a reply sent twice.
    let mut twice = 0usize;
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for send in fake.accepted() {
        let Some(i) = reply_index(send.text()).filter(|&i| i < args.messages) else { continue };
        let at = send.at.saturating_duration_since(timeline.start).as_micros().max(1) as u64;
        if timeline.replied[i].swap(at, Ordering::Relaxed) != 0 {
            twice += 1;
            continue;
        }
        timeline.replies.fetch_add(1, Ordering::Relaxed);
        first = Some(first.map_or(send.at, |f: Instant| f.min(send.at)));
        last = Some(last.map_or(send.at, |l: Instant| l.max(send.at)));
    }
    let sent = timeline.replies.load(Ordering::Relaxed);
    let span = first.zip(last).map_or(0.0, |(f, l)| l.duration_since(f).as_secs_f64());
    let rate = if sent > 1 && span > 0.0 { (sent - 1) as f64 / span } else { f64::NAN };
    let latencies = timeline.latencies(args.messages);
    let counts = fake.counts();
    let first_after = first.map_or(f64::NAN, |f| f.saturating_duration_since(started).as_secs_f64());
    let how = match args.rate {
        None => format!("the first {first_after:.2} s after the sender started; all produced before, in"),
        Some(_) => format!("after {WARMUP} warm-up replies; produced in"),
    };
    println!(
        "replies:     {sent} of {} sent, {span:.2} s from the first to the last ({how} {:.2} s)",
        args.messages,
        produced_in.as_secs_f64()
    );
    println!("throughput:  {rate:.0} replies/s (limit {max_rate} msg/s per business number)");
    println!(
        "latency:     p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms (produce call to arrival at the fake)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "fake:        {} accepted, {} refused over the rate (130429), {} other errors; at most {} calls at once",
        counts.accepted,
        counts.over_rate,
        counts.server_errors + counts.burst_throttled + counts.down + counts.scripted,
        fake.max_concurrency()
    );
    let [sent_stat, retried, deferred, dead_lettered, duplicates] = stats.snapshot();
    println!(
        "sender:      {sent_stat} sent, {retried} retried, {deferred} deferred, {dead_lettered} dead-lettered, \
         {duplicates} duplicates; {twice} sent twice"
    );
    match cpu {
        Some(cpu) => {
            println!("cpu:         {:.3} s per 1,000 replies ({cpu:.1} s in all)", cpu * 1000.0 / sent.max(1) as f64)
        }
        None => println!("cpu:         n/a"),
    }
    match peak_memory_mib() {
        Some(mib) => println!("memory:      {mib:.0} MiB peak resident"),
        None => println!("memory:      n/a"),
    }
    println!(
        "RESULT replies_per_sec={rate:.0} p50_ms={:.2} p99_ms={:.2} throttled_130429={} max_concurrency={}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        counts.over_rate,
        fake.max_concurrency()
    );
    if sent < args.messages {
        return Err(format!("only {sent} of {} replies sent within {limit:?}", args.messages).into());
    }
    Ok(())
}
