//! `GET /webhook` (Meta's subscription check) and `POST /webhook` (Cloud API
//! notifications): each message is published to Kafka keyed by phone, and
//! the answer is 200 only once Kafka acknowledged all of them (503
//! otherwise, so WhatsApp delivers the notification again).
//!
//! A message this process already published is not published again when
//! Meta redelivers it ([`crate::webhook::RecentMessageIds`]); across
//! replicas, and past the set's capacity, the pipeline still deduplicates by
//! message id. What a notification turns into is [`crate::webhook::forward`],
//! shared with the edge-function path.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use tracing::Instrument as _;

pub use crate::webhook::forward::{PROCESSED_BY, WebhookSettings, WebhookState};
use crate::webhook::forward::{Refusal, check, file_rejected, forward};

/// Largest body accepted (WhatsApp's notifications are far smaller).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The routes `GET /webhook` and `POST /webhook` (bodies over 1 MiB get 413).
pub fn routes(state: WebhookState) -> Router {
    Router::new()
        .route("/webhook", get(verify).post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Meta's subscription check: echo `hub.challenge` when the token matches.
async fn verify(
    State(state): State<WebhookState>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let mode = query.get("hub.mode").map(String::as_str);
    let token = query.get("hub.verify_token").map(String::as_bytes);
    let expected = state.settings.verify_token.as_deref().map(str::as_bytes);
    let matches = match (token, expected) {
        (Some(token), Some(expected)) => crate::webhook::signature::secrets_match(token, expected),
        _ => false,
    };
    if mode == Some("subscribe") && matches {
        tracing::info!("webhook subscription verified");
        (StatusCode::OK, query.get("hub.challenge").cloned().unwrap_or_default())
    } else {
        tracing::warn!(mode = ?mode, "webhook subscription check refused");
        (StatusCode::FORBIDDEN, "verification failed".to_owned())
    }
}

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
    let span = tracing::info_span!("webhook", trace_id = tracing::field::Empty, status = tracing::field::Empty);
    let traceparent = headers.get(crate::telemetry::TRACEPARENT).and_then(|v| v.to_str().ok());
    crate::telemetry::continue_trace(&span, traceparent);
    span.record("trace_id", crate::telemetry::trace_id_of(&span));
    let (status, text) = handle(&state, &headers, &body).instrument(span.clone()).await;
    span.record("status", status.as_u16());
    crate::metrics::metrics().webhook_requests.with_label_values(&[status.as_str()]).inc();
    (status, text)
}

async fn handle(state: &WebhookState, headers: &HeaderMap, body: &[u8]) -> (StatusCode, &'static str) {
    let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    let notification = match check(state, signature, body) {
        Ok(notification) => notification,
        Err(Refusal::Signature(error)) => {
            tracing::warn!(%error, "webhook refused");
            return (StatusCode::UNAUTHORIZED, "invalid signature");
        }
        Err(Refusal::WrongObject(object)) => {
            // Not ours to handle, and never will be: a non-2xx would only make Meta retry it for days.
            tracing::warn!(%object, "webhook notification for another object ignored");
            return (StatusCode::OK, "ignored");
        }
        Err(Refusal::Malformed(error)) => {
            tracing::warn!(%error, "malformed webhook body");
            return (StatusCode::BAD_REQUEST, "malformed body");
        }
    };
    let stored = async {
        forward(state, &notification).await?;
        file_rejected(state, &notification, body, None).await
    };
    let forwarded = tokio::time::timeout(state.settings.publish_timeout, stored)
        .await
        .unwrap_or_else(|_| Err(format!("Kafka did not acknowledge within {:?}", state.settings.publish_timeout)));
    match forwarded {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(error) => {
            tracing::error!(%error, "webhook notification not stored; WhatsApp will deliver it again");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later")
        }
    }
}
