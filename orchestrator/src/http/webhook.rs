//! `GET /webhook` (Meta's subscription check) and `POST /webhook` (Cloud API
//! notifications): each message is published to Kafka keyed by phone, and
//! the answer is 200 only once Kafka acknowledged all of them (503
//! otherwise, so WhatsApp delivers the notification again).
//!
//! A message this process already published is not published again when
//! Meta redelivers it ([`RecentMessageIds`]); across replicas, and past the
//! set's capacity, the pipeline still deduplicates by message id.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use tracing::Instrument as _;

use crate::config::env_parse;
use crate::event::{Envelope, EventData, topics};
use crate::kafka::Publisher;
use crate::store::DeliveryStatuses;
use crate::webhook::recent::{Claim, RecentMessageIds};
use crate::webhook::{InboundEvent, Notification, PayloadError, parse, verify_signature};

/// Largest body accepted (WhatsApp's notifications are far smaller).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `processed_by` of the events the webhook publishes.
pub const PROCESSED_BY: &str = "webhook_event_publisher";

/// Secrets and limits of the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `WHATSAPP_VERIFY_TOKEN`: answers Meta's subscription check; unset refuses it.
    pub verify_token: Option<String>,
    /// `WHATSAPP_APP_SECRET`: when set, every POST must carry a valid `X-Hub-Signature-256`.
    pub app_secret: Option<String>,
    /// How long a POST waits for Kafka's acknowledgements before answering
    /// 503 (WhatsApp gives up on a webhook after about 20 s).
    pub publish_timeout: std::time::Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self { verify_token: None, app_secret: None, publish_timeout: std::time::Duration::from_secs(10) }
    }
}

impl WebhookSettings {
    /// `WHATSAPP_VERIFY_TOKEN` and `WHATSAPP_APP_SECRET`.
    pub fn from_env() -> Self {
        let read = |name: &'static str| env_parse::<String>(name, String::new()).ok().filter(|v| !v.is_empty());
        Self { verify_token: read("WHATSAPP_VERIFY_TOKEN"), app_secret: read("WHATSAPP_APP_SECRET"), ..Self::default() }
    }
}

/// What the webhook routes need.
#[derive(Clone)]
pub struct WebhookState {
    /// Its secrets.
    pub settings: WebhookSettings,
    /// Publishes the events.
    pub publisher: Publisher,
    /// Keeps delivery statuses.
    pub statuses: Arc<dyn DeliveryStatuses>,
    /// Ids of the messages recently published (or being published), so a
    /// redelivered message is published once; shared by clones of the state.
    pub recent: Arc<RecentMessageIds>,
}

impl WebhookState {
    /// A state with an empty [`RecentMessageIds`] of the default capacity.
    pub fn new(settings: WebhookSettings, publisher: Publisher, statuses: Arc<dyn DeliveryStatuses>) -> Self {
        Self { settings, publisher, statuses, recent: Arc::default() }
    }
}

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
    if let Some(secret) = &state.settings.app_secret {
        let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
        if let Err(error) = verify_signature(secret.as_bytes(), body, signature) {
            tracing::warn!(%error, "webhook refused");
            return (StatusCode::UNAUTHORIZED, "invalid signature");
        }
    }
    let notification = match parse(body) {
        Ok(notification) => notification,
        Err(PayloadError::WrongObject(object)) => {
            // Not ours to handle, and never will be: a non-2xx would only make Meta retry it for days.
            tracing::warn!(%object, "webhook notification for another object ignored");
            return (StatusCode::OK, "ignored");
        }
        Err(error) => {
            tracing::warn!(%error, "malformed webhook body");
            return (StatusCode::BAD_REQUEST, "malformed body");
        }
    };
    for reason in &notification.rejected {
        tracing::warn!(%reason, "webhook message entry skipped");
    }
    let forwarded = tokio::time::timeout(state.settings.publish_timeout, forward(state, &notification))
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

/// Publishes every message not published yet and records every status; all
/// must succeed.
async fn forward(state: &WebhookState, notification: &Notification) -> Result<(), String> {
    let publishes = notification.events.iter().map(|event| publish_once(state, event));
    let results = futures_util::future::join_all(publishes).await;
    if let Some(error) = results.into_iter().find_map(Result::err) {
        return Err(error);
    }
    for status in &notification.statuses {
        state.statuses.record_status(status).await.map_err(|e| e.to_string())?;
        crate::metrics::metrics().delivery_statuses.with_label_values(&[crate::metrics::label(&status.status)]).inc();
    }
    Ok(())
}

/// Publishes `event` unless this process already published it. When another
/// request is publishing it, waits for that request's outcome: answering 200
/// before it is on Kafka would lose it should that request fail. Cancelled
/// (the POST timed out, the client left) or failed, the reservation is
/// dropped, which releases the id for Meta's redelivery.
async fn publish_once(state: &WebhookState, event: &InboundEvent) -> Result<(), String> {
    let Some(id) = message_id(event) else { return publish(&state.publisher, event).await };
    loop {
        let published = match state.recent.reserve(id) {
            Claim::Reserved(reservation) => {
                publish(&state.publisher, event).await?;
                reservation.confirm();
                return Ok(());
            }
            Claim::Published => true,
            Claim::InFlight(other) => other.published().await,
        };
        if published {
            break;
        }
        // The other request failed and released it: publish it here.
    }
    tracing::debug!(message_id = %id, "webhook message already published");
    crate::metrics::metrics().webhook_duplicates.inc();
    Ok(())
}

/// WhatsApp's id of the message, the dedupe key (an interaction from an old
/// producer may lack one: it is always published).
fn message_id(event: &InboundEvent) -> Option<&str> {
    match event {
        InboundEvent::Message(m) => Some(m.message_id.as_str()),
        InboundEvent::Interaction(i) => i.message_id.as_deref(),
        InboundEvent::Other(o) => Some(o.message_id.as_str()),
    }
    .filter(|id| !id.is_empty())
}

async fn publish(publisher: &Publisher, event: &InboundEvent) -> Result<(), String> {
    let business = match event {
        InboundEvent::Message(m) => m.metadata.get("phone_number_id").map(String::as_str),
        InboundEvent::Other(o) => o.metadata.get("phone_number_id").map(String::as_str),
        InboundEvent::Interaction(_) => None,
    };
    crate::metrics::metrics()
        .messages_received
        .with_label_values(&[business.map_or("unknown", crate::metrics::label), "webhook"])
        .inc();
    let result = match event {
        InboundEvent::Message(message) => {
            publisher.publish(&Envelope::new(EventData::MessageReceived(message.clone()), PROCESSED_BY)).await
        }
        InboundEvent::Interaction(interaction) => {
            publisher.publish(&Envelope::new(EventData::InteractionReceived(interaction.clone()), PROCESSED_BY)).await
        }
        InboundEvent::Other(other) => {
            // No event type models it: WhatsApp's message object as sent, on a
            // topic of its own; the business number it reached rides in a header.
            let bytes = serde_json::to_vec(&other.raw).map_err(|e| e.to_string())?;
            let number = other.metadata.get("phone_number_id").map(String::as_bytes).unwrap_or_default();
            let headers = [(crate::kafka::headers::PHONE_NUMBER_ID, number)];
            publisher.send(topics::WEBHOOK_UNHANDLED, Some(&other.from_phone), &bytes, &headers).await
        }
    };
    result.map(|_| ()).map_err(|e| e.to_string())
}
