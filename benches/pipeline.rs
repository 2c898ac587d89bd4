//! Messages through the whole pipeline with a two-step saga: one at a time
//! on the in-memory store (no database) and on SQLite (a temporary file,
//! WAL), and 64 at once on SQLite, where the store coalesces the claims,
//! saga-log rows and completions of concurrent messages into batches. With
//! `BENCH_DATABASE_URL` (a scratch PostgreSQL database) the same on PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orchestrator::event::{MessageContent, MessageReceived, MessageType};
use orchestrator::{
    ActionContext, ActionError, ActionExecutor, ActionOutput, ActionRequest, ExecutorRegistry, HandlerError,
    HandlerRegistry, Inbound, Incoming, Intent, IntentHandler, IntentOutcome, MemoryStore, MessageContext,
    Orchestrator, Outcome, Reply, SqlStore, Store,
};
use serde_json::json;

struct TwoSteps;

#[async_trait]
impl IntentHandler for TwoSteps {
    fn intent(&self) -> &str {
        "ORDER_REQUEST"
    }
    fn can_handle(&self, _ctx: &MessageContext) -> bool {
        true
    }
    async fn handle(&self, _ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        Ok(IntentOutcome {
            actions: vec![ActionRequest::new("reserve", json!({})), ActionRequest::new("confirm", json!({}))],
            response: Some(Reply::text("done")),
            escalate: false,
            lead_stage: None,
        })
    }
}

struct Noop(&'static str);

#[async_trait]
impl ActionExecutor for Noop {
    fn name(&self) -> &str {
        self.0
    }
    async fn execute(&self, _ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        Ok(ActionOutput(json!({ "ok": true })))
    }
    async fn compensate(&self, _ctx: &ActionContext<'_>, _output: &ActionOutput) -> Result<(), ActionError> {
        Ok(())
    }
}

fn orchestrator(store: Arc<dyn Store>) -> Orchestrator {
    Orchestrator::builder()
        .handlers(HandlerRegistry::new(TwoSteps))
        .executors(ExecutorRegistry::new().with(Noop("reserve")).with(Noop("confirm")))
        .store(store)
        .build()
        .expect("complete")
}

/// This run's prefix for message ids: a PostgreSQL database outlives a run.
fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

fn message(n: u64) -> Incoming {
    Incoming::new(
        Inbound::Message(MessageReceived {
            message_id: format!("wamid.bench-{}-{n}", run_id()),
            from_phone: "+15551234567".into(),
            message_type: MessageType::Text,
            content: MessageContent::Text { body: "2 tacos please".into() },
            received_at: Utc::now(),
            metadata: HashMap::new(),
        }),
        Intent::new("ORDER_REQUEST", 0.9),
    )
}

fn bench(c: &mut Criterion, name: &str, orch: Orchestrator, runtime: &tokio::runtime::Runtime) {
    let counter = AtomicU64::new(0);
    c.bench_function(name, |b| {
        b.to_async(runtime).iter(|| async {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let outcome = orch.process(message(n)).await.expect("store works");
            assert!(matches!(outcome, Outcome::Completed(_)));
        })
    });
}

/// `CONCURRENT` messages processed at once per iteration (throughput in messages).
fn bench_concurrent(c: &mut Criterion, name: &str, orch: Orchestrator, runtime: &tokio::runtime::Runtime) {
    const CONCURRENT: u64 = 64;
    let orch = Arc::new(orch);
    let counter = AtomicU64::new(1 << 40);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function("64_concurrent", |b| {
        b.to_async(runtime).iter(|| async {
            let first = counter.fetch_add(CONCURRENT, Ordering::Relaxed);
            let runs = (first..first + CONCURRENT).map(|n| {
                let orch = orch.clone();
                tokio::spawn(async move { orch.process(message(n)).await })
            });
            for run in futures_util::future::join_all(runs).await {
                assert!(matches!(run.expect("task").expect("store works"), Outcome::Completed(_)));
            }
        })
    });
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    bench(c, "pipeline_two_step_saga/memory", orchestrator(Arc::new(MemoryStore::new())), &runtime);

    let file = std::env::temp_dir().join(format!("orchestrator-bench-{}.db", std::process::id()));
    let db =
        runtime.block_on(orchestrator::db::connect(&format!("sqlite://{}?mode=rwc", file.display()))).expect("sqlite");
    bench(c, "pipeline_two_step_saga/sqlite", orchestrator(Arc::new(SqlStore::new(db.clone()))), &runtime);
    bench_concurrent(c, "pipeline_two_step_saga/sqlite", orchestrator(Arc::new(SqlStore::new(db))), &runtime);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }

    // The production target, when one is given (rows are left behind: use a scratch database).
    if let Ok(url) = std::env::var("BENCH_DATABASE_URL") {
        let db = runtime.block_on(orchestrator::db::connect(&url)).expect("BENCH_DATABASE_URL reachable");
        bench(c, "pipeline_two_step_saga/postgres", orchestrator(Arc::new(SqlStore::new(db.clone()))), &runtime);
        bench_concurrent(c, "pipeline_two_step_saga/postgres", orchestrator(Arc::new(SqlStore::new(db))), &runtime);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = pipeline
}
criterion_main!(benches);
