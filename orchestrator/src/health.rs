//! What `/health` reports, independent of the HTTP server: live probes of
//! the dependencies (each a [`Probe`]), breaker states, and the worker's and
//! reply sender's counters, in the webhook-worker design's shape, which
//! monitors already parse: `{"status", "timestamp", "uptime", "checks":
//! {name: {"status", "latencyMs", "error"?, "statusCode"?}}, "worker":
//! {"running", "metrics": {"processed", "failed", "retried",
//! "deadLettered"}}}`, plus `circuit_breakers`, `sender`, `message_service`
//! (`activeBatches`, `scheduledDue`: messages due and not yet published) and `version`.
//! The route is [`crate::http::health`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Map, Value, json};

use crate::breaker::{BreakerRegistry, BreakerState};
use crate::stats::{ReplyStats, RuntimeStats};

/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A failed probe: what went wrong, and the upstream status when there was one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ProbeFailure {
    /// The upstream HTTP status, when the dependency answered.
    pub status_code: Option<u16>,
    /// What went wrong.
    pub error: String,
}

impl ProbeFailure {
    /// A failure described by `error`, without an upstream status.
    pub fn of(error: impl std::fmt::Display) -> Self {
        Self { status_code: None, error: error.to_string() }
    }
}

/// A dependency `/health` asks whether it answers.
#[async_trait]
pub trait Probe: Send + Sync {
    /// Succeeds when the dependency answered as expected.
    async fn probe(&self) -> Result<(), ProbeFailure>;
}

#[async_trait]
impl<P: Probe + ?Sized> Probe for Arc<P> {
    async fn probe(&self) -> Result<(), ProbeFailure> {
        P::probe(self).await
    }
}

#[async_trait]
impl Probe for DatabaseConnection {
    async fn probe(&self) -> Result<(), ProbeFailure> {
        self.execute_unprepared("SELECT 1").await.map(|_| ()).map_err(ProbeFailure::of)
    }
}

/// What `/health` looks at; every part is optional.
#[derive(Clone, Default)]
pub struct HealthState {
    /// Dependencies probed on every request, by check name (`kafka`,
    /// `database`, `whatsapp_cloud_api`, ...); one failing makes it 503.
    pub probes: Vec<(&'static str, Arc<dyn Probe>)>,
    /// Circuit breakers whose states are reported.
    pub breakers: Option<Arc<BreakerRegistry>>,
    /// The consumer runtime's counters.
    pub stats: Option<Arc<RuntimeStats>>,
    /// The reply sender's counters.
    pub replies: Option<Arc<ReplyStats>>,
    /// The send API: its batches in progress and the scheduled messages due.
    pub message_service: Option<crate::message_service::MessageService>,
    started: Option<Instant>,
}

impl HealthState {
    /// A state that reports uptime from now.
    pub fn new() -> Self {
        Self { started: Some(Instant::now()), ..Self::default() }
    }

    /// Probes `probe` as check `name`.
    pub fn probe(mut self, name: &'static str, probe: impl Probe + 'static) -> Self {
        self.probes.push((name, Arc::new(probe)));
        self
    }
}

/// A probe's result: latency on success, the error (and upstream status) on failure.
async fn run_probe(probe: &dyn Probe) -> (bool, Value) {
    let started = Instant::now();
    let result = tokio::time::timeout(PROBE_TIMEOUT, probe.probe()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let failure = match result {
        Ok(Ok(())) => return (true, json!({ "status": "ok", "latencyMs": latency_ms })),
        Ok(Err(failure)) => failure,
        Err(_) => ProbeFailure::of(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    let mut detail = json!({ "status": "failed", "latencyMs": latency_ms, "error": failure.error });
    if let Some(code) = failure.status_code {
        detail["statusCode"] = Value::from(code);
    }
    (false, detail)
}

/// The report: `healthy` is false when a probe failed (the route answers 503).
pub async fn report(state: &HealthState) -> (bool, Value) {
    let results = futures_util::future::join_all(state.probes.iter().map(|(_, p)| run_probe(p.as_ref()))).await;
    let mut checks = Map::new();
    let mut failing = Vec::new();
    for ((name, _), (ok, detail)) in state.probes.iter().zip(results) {
        if !ok {
            failing.push(*name);
        }
        checks.insert((*name).to_owned(), detail);
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
    let message_service = match &state.message_service {
        Some(service) => Some(message_service_report(service).await),
        None => None,
    };
    let status = match (failing.is_empty(), any_open) {
        (false, _) => "unhealthy",
        // A downstream is out, but this service works: messages wait for it.
        (true, true) => "degraded",
        (true, false) => "ok",
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
        "message_service": message_service,
    });
    if !failing.is_empty() {
        let reasons: Vec<String> = failing
            .iter()
            .map(|name| format!("{name}: {}", body["checks"][*name]["error"].as_str().unwrap_or("failed")))
            .collect();
        body["reason"] = Value::from(reasons.join("; "));
    }
    (failing.is_empty(), body)
}

/// The send API's part: batches in progress, and messages due and not yet
/// published (a number that keeps growing means the scheduler is behind or down).
async fn message_service_report(service: &crate::message_service::MessageService) -> Value {
    let active = crate::metrics::metrics().message_service_active_batches.get();
    match tokio::time::timeout(PROBE_TIMEOUT, service.due_count()).await {
        Ok(Ok(due)) => json!({ "activeBatches": active, "scheduledDue": due }),
        Ok(Err(error)) => json!({ "activeBatches": active, "scheduledDue": null, "error": error.to_string() }),
        Err(_) => json!({ "activeBatches": active, "scheduledDue": null, "error": "no answer in time" }),
    }
}
