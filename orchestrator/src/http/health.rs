//! `GET /health` (live probes of Kafka and the database, breaker states,
//! worker and reply-sender counters; 503 when a probe fails) and `GET /health/live` (no probes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Map, Value, json};

use crate::breaker::{BreakerRegistry, BreakerState};
use crate::kafka::{Publisher, ReplyStats, RuntimeStats};

/// How long one probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/health` looks at; every part is optional.
#[derive(Clone, Default)]
pub struct HealthState {
    /// Kafka, probed with a metadata request.
    pub kafka: Option<Publisher>,
    /// The database, probed with `SELECT 1`.
    pub database: Option<DatabaseConnection>,
    /// Circuit breakers whose states are reported.
    pub breakers: Option<Arc<BreakerRegistry>>,
    /// The consumer runtime's counters.
    pub stats: Option<Arc<RuntimeStats>>,
    /// The reply sender's counters.
    pub replies: Option<Arc<ReplyStats>>,
    started: Option<Instant>,
}

impl HealthState {
    /// A state that reports uptime from now.
    pub fn new() -> Self {
        Self { started: Some(Instant::now()), ..Self::default() }
    }
}

/// The routes `/health` and `/health/live`.
pub fn routes(state: HealthState) -> Router {
    Router::new().route("/health", get(health)).route("/health/live", get(live)).with_state(state)
}

async fn live() -> Json<Value> {
    Json(json!({ "status": "ok", "timestamp": Utc::now() }))
}

/// A probe's result: latency on success, the error on failure.
async fn probe<F, E>(check: F) -> (bool, Value)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let result = tokio::time::timeout(PROBE_TIMEOUT, check).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(Ok(())) => (true, json!({ "status": "ok", "latency_ms": latency_ms })),
        Ok(Err(error)) => (false, json!({ "status": "failed", "latency_ms": latency_ms, "error": error.to_string() })),
        Err(_) => (
            false,
            json!({ "status": "failed", "latency_ms": latency_ms, "error": format!("no answer within {PROBE_TIMEOUT:?}") }),
        ),
    }
}

async fn health(State(state): State<HealthState>) -> (StatusCode, Json<Value>) {
    let kafka = async {
        match &state.kafka {
            Some(publisher) => Some(probe(publisher.probe(PROBE_TIMEOUT)).await),
            None => None,
        }
    };
    let database = async {
        match &state.database {
            Some(db) => Some(probe(async { db.execute_unprepared("SELECT 1").await.map(|_| ()) }).await),
            None => None,
        }
    };
    let (kafka, database) = tokio::join!(kafka, database);
    let mut checks = Map::new();
    let mut failing = Vec::new();
    for (name, result) in [("kafka", kafka), ("database", database)] {
        if let Some((ok, detail)) = result {
            if !ok {
                failing.push(name);
            }
            checks.insert(name.to_owned(), detail);
        }
    }
    let breakers = state.breakers.as_ref().map(|b| b.snapshot()).unwrap_or_default();
    let any_open = breakers.iter().any(|(_, s)| *s != BreakerState::Closed);
    let breaker_states: Map<String, Value> =
        breakers.into_iter().map(|(name, s)| (name, Value::from(s.as_str()))).collect();
    let workers = state.stats.as_ref().map(|stats| {
        let [processed, failed, retried, dead_lettered, duplicates] = stats.snapshot();
        json!({
            "processed": processed,
            "failed": failed,
            "retried": retried,
            "deadLettered": dead_lettered,
            "duplicates": duplicates,
        })
    });
    let sender = state.replies.as_ref().map(|stats| {
        let [sent, retried, deferred, dead_lettered, duplicates] = stats.snapshot();
        json!({
            "sent": sent,
            "retried": retried,
            "deferred": deferred,
            "deadLettered": dead_lettered,
            "duplicates": duplicates,
            "inFlight": crate::metrics::metrics().replies_in_flight.get(),
        })
    });
    let (code, status) = match (failing.is_empty(), any_open) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
        // A downstream is out, but this service works: messages wait for it.
        (true, true) => (StatusCode::OK, "degraded"),
        (true, false) => (StatusCode::OK, "ok"),
    };
    let mut body = json!({
        "status": status,
        "timestamp": Utc::now(),
        "uptime_seconds": state.started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        "version": env!("CARGO_PKG_VERSION"),
        "checks": checks,
        "circuit_breakers": breaker_states,
        "workers": workers,
        "sender": sender,
    });
    if !failing.is_empty() {
        let reasons: Vec<String> = failing
            .iter()
            .map(|name| format!("{name}: {}", body["checks"][*name]["error"].as_str().unwrap_or("failed")))
            .collect();
        body["reason"] = Value::from(reasons.join("; "));
    }
    (code, Json(body))
}
