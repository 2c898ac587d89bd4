//! `GET /metrics`: Prometheus text format.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::breaker::BreakerRegistry;

/// The route; with `breakers`, `circuit_breaker_state` is refreshed on each scrape.
pub fn routes(breakers: Option<Arc<BreakerRegistry>>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(breakers)
}

async fn scrape(State(breakers): State<Option<Arc<BreakerRegistry>>>) -> impl IntoResponse {
    if let Some(breakers) = &breakers {
        crate::metrics::metrics().observe_breakers(breakers);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render())
}
