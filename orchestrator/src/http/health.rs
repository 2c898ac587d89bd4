//! `GET /health` (live probes of Kafka, the database and the Cloud API,
//! breaker states, worker and reply-sender counters; 503 when a probe
//! fails) and `GET /health/live` (no probes).
//!
//! The body has the webhook-worker design's shape, which monitors already
//! parse: `{"status", "timestamp", "uptime", "checks": {name: {"status",
//! "latencyMs", "error"?, "statusCode"?}}, "worker": {"running", "metrics":
//! {"processed", "failed", "retried", "deadLettered"}}}`, plus
//! `circuit_breakers`, `sender` and `version`.

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
use crate::outbound::{CloudApiSender, ProbeFailure};

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
    /// The WhatsApp Cloud API, probed with an authenticated GET of the default number.
    pub cloud_api: Option<Arc<CloudApiSender>>,
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

/// Why a probe failed: the error, and the upstream status when there was one.
struct Failure {
    error: String,
    status_code: Option<u16>,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Self { error: error.to_string(), status_code: None }
    }
}

/// A probe's result: latency on success, the error (and upstream status) on failure.
async fn probe<F>(check: F) -> (bool, Value)
where
    F: std::future::Future<Output = Result<(), Failure>>,
{
    let started = Instant::now();
    let result = tokio::time::timeout(PROBE_TIMEOUT, check).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let failure = match result {
        Ok(Ok(())) => return (true, json!({ "status": "ok", "latencyMs": latency_ms })),
        Ok(Err(failure)) => failure,
        Err(_) => Failure { error: format!("no answer within {PROBE_TIMEOUT:?}"), status_code: None },
    };
    let mut detail = json!({ "status": "failed", "latencyMs": latency_ms, "error": failure.error });
    if let Some(code) = failure.status_code {
        detail["statusCode"] = Value::from(code);
    }
    (false, detail)
}

async fn health(State(state): State<HealthState>) -> (StatusCode, Json<Value>) {
    let kafka = async {
        match &state.kafka {
            Some(publisher) => Some(probe(async { Ok(publisher.probe(PROBE_TIMEOUT).await?) }).await),
            None => None,
        }
    };
    let database = async {
        match &state.database {
            Some(db) => Some(probe(async { Ok(db.execute_unprepared("SELECT 1").await.map(|_| ())?) }).await),
            None => None,
        }
    };
    let cloud_api = async {
        match &state.cloud_api {
            Some(api) => Some(
                probe(async {
                    api.probe().await.map_err(|ProbeFailure { status_code, error }| Failure { error, status_code })
                })
                .await,
            ),
            None => None,
        }
    };
    let (kafka, database, cloud_api) = tokio::join!(kafka, database, cloud_api);
    let mut checks = Map::new();
    let mut failing = Vec::new();
    for (name, result) in [("kafka", kafka), ("database", database), ("whatsapp_cloud_api", cloud_api)] {
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
    let worker = state.stats.as_ref().map(|stats| {
        let [processed, failed, retried, dead_lettered, duplicates] = stats.snapshot();
        json!({
            "running": stats.is_running(),
            "metrics": {
                "processed": processed,
                "failed": failed,
                "retried": retried,
                "deadLettered": dead_lettered,
                "duplicates": duplicates,
            },
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
        "uptime": state.started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        "version": env!("CARGO_PKG_VERSION"),
        "checks": checks,
        "circuit_breakers": breaker_states,
        "worker": worker,
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
