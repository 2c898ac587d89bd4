//! `GET /health` (the [`crate::health`] report; 503 when a probe fails)
//! and `GET /health/live` (no probes).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::Utc;
use serde_json::{Value, json};

pub use crate::health::HealthState;

/// The routes `/health` and `/health/live`.
pub fn routes(state: HealthState) -> Router {
    Router::new().route("/health", get(health)).route("/health/live", get(live)).with_state(state)
}

async fn live() -> Json<Value> {
    Json(json!({ "status": "ok", "timestamp": Utc::now() }))
}

async fn health(State(state): State<HealthState>) -> (StatusCode, Json<Value>) {
    let (healthy, body) = crate::health::report(&state).await;
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}
