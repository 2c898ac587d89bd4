//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod kafka_wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use orchestrator::event::{MessageContent, MessageReceived, MessageType};
use orchestrator::{
    ActionContext, ActionError, ActionExecutor, ActionOutput, ActionRequest, BreakerConfig, ExecutorRegistry,
    HandlerError, HandlerRegistry, Inbound, Incoming, Intent, IntentHandler, IntentOutcome, MessageContext,
    Orchestrator, PipelineConfig, Reply, RetryPolicy, Store,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::json;

/// A text message from `phone`.
pub fn text(message_id: &str, phone: &str, body: &str) -> Inbound {
    Inbound::Message(MessageReceived {
        message_id: message_id.to_owned(),
        from_phone: phone.to_owned(),
        message_type: MessageType::Text,
        content: MessageContent::Text { body: body.to_owned() },
        received_at: Utc::now(),
        metadata: HashMap::new(),
    })
}

/// An incoming text message with an intent.
pub fn incoming(message_id: &str, intent: Intent) -> Incoming {
    Incoming::new(text(message_id, "+15551234567", "hello"), intent)
}

/// ORDER_REQUEST for two tacos.
pub fn order_intent() -> Intent {
    Intent::new("ORDER_REQUEST", 0.92).with_entity("products", json!([{ "name": "tacos", "quantity": 2 }]))
}

/// Ordered record of executor calls, shared by the executors of one test.
#[derive(Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<String>>>);

impl CallLog {
    pub fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self, entry: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|e| *e == entry).count()
    }
}

/// An executor that fails as scripted, logs every call, and can hang once
/// (to simulate a crash mid-step when the caller drops the future).
pub struct Scripted {
    name: &'static str,
    log: CallLog,
    failures: Mutex<VecDeque<ActionError>>,
    always_fail: Option<ActionError>,
    compensation_error: Option<ActionError>,
    hang_once: AtomicBool,
    compensation_hang_once: AtomicBool,
    hang_always: bool,
    delay: Duration,
}

impl Scripted {
    pub fn new(name: &'static str, log: &CallLog) -> Self {
        Self {
            name,
            log: log.clone(),
            failures: Mutex::new(VecDeque::new()),
            always_fail: None,
            compensation_error: None,
            hang_once: AtomicBool::new(false),
            compensation_hang_once: AtomicBool::new(false),
            hang_always: false,
            delay: Duration::ZERO,
        }
    }

    /// The next executions fail with these errors, then succeed.
    pub fn failing(self, errors: impl IntoIterator<Item = ActionError>) -> Self {
        *self.failures.lock().unwrap() = errors.into_iter().collect();
        self
    }

    /// Every execution fails with `error`.
    pub fn always_failing(mut self, error: ActionError) -> Self {
        self.always_fail = Some(error);
        self
    }

    /// Compensation fails with `error`.
    pub fn compensation_failing(mut self, error: ActionError) -> Self {
        self.compensation_error = Some(error);
        self
    }

    /// The first compensation never returns.
    pub fn compensation_hanging_once(self) -> Self {
        self.compensation_hang_once.store(true, Ordering::SeqCst);
        self
    }

    /// Every execution never returns.
    pub fn hanging_always(mut self) -> Self {
        self.hang_always = true;
        self
    }

    /// Every execution takes `delay` before it succeeds (or fails as scripted).
    pub fn taking(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The first execution never returns.
    pub fn hanging_once(self) -> Self {
        self.hang_once.store(true, Ordering::SeqCst);
        self
    }
}

#[async_trait]
impl ActionExecutor for Scripted {
    fn name(&self) -> &str {
        self.name
    }

    async fn execute(&self, ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        self.log.push(format!("execute {}", self.name));
        if self.hang_always || self.hang_once.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        if let Some(error) = &self.always_fail {
            return Err(error.clone());
        }
        if let Some(error) = self.failures.lock().unwrap().pop_front() {
            return Err(error);
        }
        Ok(ActionOutput(json!({ "by": self.name, "key": ctx.idempotency_key() })))
    }

    async fn compensate(&self, ctx: &ActionContext<'_>, output: &ActionOutput) -> Result<(), ActionError> {
        assert_eq!(output.get("key"), Some(&json!(ctx.idempotency_key())), "compensation got another step's output");
        self.log.push(format!("compensate {}", self.name));
        if self.compensation_hang_once.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        match &self.compensation_error {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    async fn compensate_unknown(&self, _ctx: &ActionContext<'_>) -> Result<(), ActionError> {
        self.log.push(format!("compensate_unknown {}", self.name));
        Ok(())
    }
}

/// A handler that accepts everything and plans fixed actions.
pub struct Plan(pub Vec<ActionRequest>);

/// A [`Plan`] of parameterless actions.
pub fn plan(actions: &[&str]) -> Plan {
    Plan(actions.iter().map(|a| ActionRequest::new(*a, json!({}))).collect())
}

#[async_trait]
impl IntentHandler for Plan {
    fn intent(&self) -> &str {
        "ANY"
    }

    fn can_handle(&self, _ctx: &MessageContext) -> bool {
        true
    }

    async fn handle(&self, _ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        Ok(IntentOutcome {
            actions: self.0.clone(),
            response: Some(Reply::text("done")),
            escalate: false,
            lead_stage: None,
        })
    }
}

/// Settings that keep tests fast: a short lease, quick retries.
pub fn fast_config() -> PipelineConfig {
    PipelineConfig {
        claim_lease: Duration::from_millis(300),
        action_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// An orchestrator with `handlers` and `executors` on `store`, the default retry schedule.
pub fn orchestrator(store: Arc<dyn Store>, handlers: HandlerRegistry, executors: ExecutorRegistry) -> Orchestrator {
    Orchestrator::builder()
        .handlers(handlers)
        .executors(executors)
        .store(store)
        .retry_policy(RetryPolicy::default())
        .breaker_config(BreakerConfig { failure_threshold: 100, open_timeout: Duration::from_secs(30) })
        .config(fast_config())
        .build()
        .expect("complete builder")
}

/// Simulates a worker dying mid-saga: processes `message` in a task and
/// aborts it (dropping the future where it waits) as soon as `log` holds
/// `entries` entries, i.e. once a hanging executor was reached.
pub async fn crash_when_logged(orch: Orchestrator, message: Incoming, log: &CallLog, entries: usize) {
    let orch = Arc::new(orch);
    let task = tokio::spawn({
        let orch = orch.clone();
        async move { orch.process(message).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.entries().len() < entries {
        assert!(!task.is_finished(), "the run ended before reaching the hang: {:?}", log.entries());
        assert!(std::time::Instant::now() < deadline, "hang point never reached: {:?}", log.entries());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
}

/// Client settings for the embedded broker: a short heartbeat so group
/// changes settle in about a second (see DEPENDENCY-NOTES).
pub fn kafka_config(kafka: &orchestrator::kafka::EmbeddedKafka, group: &str) -> orchestrator::kafka::KafkaConfig {
    kafka.configure(orchestrator::kafka::KafkaConfig {
        consumer_group_id: group.to_owned(),
        heartbeat_interval_ms: 300,
        session_timeout_ms: 6000,
        ..orchestrator::kafka::KafkaConfig::default()
    })
}

/// A consumer runtime running in a task until stopped.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Runs `runtime` in a task.
    pub fn start(runtime: orchestrator::kafka::ConsumerRuntime) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            runtime
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("runtime ran");
        });
        Self { stop, handle }
    }

    /// Shuts it down and waits until it has stopped (a hang fails the test).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(120), self.handle)
            .await
            .expect("the runtime did not shut down within 120 s")
            .expect("runtime task");
    }
}

/// Rows of `table` matching the SQL condition `filter`.
pub async fn count(db: &DatabaseConnection, table: &str, filter: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {filter}");
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql.clone()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .expect("a count row");
    row.try_get::<i64>("", "n").expect("count")
}

/// A plain-HTTP client for the tests' local servers. reqwest is built
/// without a default TLS provider; ring's is installed once for the process.
pub fn http_client() -> reqwest::Client {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::new()
}

/// A `MessageReceived` envelope with a text body.
pub fn message_received(id: &str, phone: &str, body: &str) -> orchestrator::event::Envelope {
    orchestrator::event::Envelope::new(
        orchestrator::event::EventData::MessageReceived(MessageReceived {
            message_id: id.to_owned(),
            from_phone: phone.to_owned(),
            message_type: MessageType::Text,
            content: MessageContent::Text { body: body.to_owned() },
            received_at: Utc::now(),
            metadata: HashMap::new(),
        }),
        "test",
    )
}

/// Reads `topic` from the start, in a fresh consumer group, until `want`
/// messages arrived or `wait` passed.
pub async fn read_within(
    kafka: &orchestrator::kafka::EmbeddedKafka,
    topic: &str,
    want: usize,
    wait: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::Consumer as _;
    let group = format!("reader-{}", uuid::Uuid::new_v4());
    let reader: rdkafka::consumer::StreamConsumer =
        kafka_config(kafka, &group).consumer_config(&group).create().unwrap();
    reader.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < want && std::time::Instant::now() < deadline {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), reader.recv()).await {
            got.push(message.detach());
        }
    }
    got
}

/// [`read_within`] 60 s.
pub async fn read(
    kafka: &orchestrator::kafka::EmbeddedKafka,
    topic: &str,
    want: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    read_within(kafka, topic, want, Duration::from_secs(60)).await
}

/// Waits until the consumer process at `http` answers `/health` with 200;
/// fails, with its log, when it exits first or takes over a minute.
pub async fn wait_until_healthy(http: &str, log: &std::path::Path, child: &mut tokio::process::Child) {
    let client = http_client();
    let started = std::time::Instant::now();
    while !client.get(format!("http://{http}/health")).send().await.is_ok_and(|r| r.status() == 200) {
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(60), "consumer did not start:\n{log_text}");
        assert!(child.try_wait().unwrap().is_none(), "consumer exited:\n{log_text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`wait_until_healthy`], then until `groups` consumer groups got their
/// partitions (the log's `partitions assigned` lines): `/health` answers
/// before the group join, which the embedded broker delays by seconds, and
/// a message sent before it waits that long.
pub async fn wait_until_consuming(http: &str, log: &std::path::Path, child: &mut tokio::process::Child, groups: usize) {
    wait_until_healthy(http, log, child).await;
    let started = std::time::Instant::now();
    loop {
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        if log_text.matches("partitions assigned").count() >= groups {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "consumer did not join its groups:\n{log_text}");
        assert!(child.try_wait().unwrap().is_none(), "consumer exited:\n{log_text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The compiled `consumer` example next to the running test binary
/// (`<target>/<profile>/deps/<test>` -> `<target>/<profile>/examples/consumer`).
pub fn consumer_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile =
        exe.parent().and_then(std::path::Path::parent).expect("the test binary lives in <target>/<profile>/deps");
    let binary = profile.join("examples").join(format!("consumer{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --example consumer` (plain `cargo test` builds it too)",
        binary.display()
    );
    binary
}
