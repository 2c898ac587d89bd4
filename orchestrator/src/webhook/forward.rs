//! What a webhook notification turns into, whichever way it arrived (a POST
//! to `/webhook`, or a record an edge function put on
//! `whatsapp.webhook.inbound`): the signature checked, the body parsed, each
//! message published once keyed by phone, each status recorded.

use std::sync::Arc;

use crate::event::{Envelope, EventData, FailureType, MessageProcessed, topics};
use crate::publish::Publish;
use crate::store::{DeliveryStatus, DeliveryStatuses, MovedMessage, NewDeadLetter, SourceInfo, Store};
use crate::webhook::recent::{RecentMessageIds, Turn};
use crate::webhook::{Notification, NotifiedMessage, PayloadError, SignatureError, parse, verify_signature};

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

/// What the webhook routes need.
#[derive(Clone)]
pub struct WebhookState {
    /// Its secrets.
    pub settings: WebhookSettings,
    /// Publishes the events.
    pub publisher: Arc<dyn Publish>,
    /// Keeps delivery statuses.
    pub statuses: Arc<dyn DeliveryStatuses>,
    /// Ids of the messages recently published (or being published), so a
    /// redelivered message is published once; shared by clones of the state.
    pub recent: Arc<RecentMessageIds>,
    /// Where entries of a notification that could not be read are filed
    /// (the `dead_letter_queue` table); without one they are only logged.
    pub dead_letters: Option<Arc<dyn Store>>,
}

impl WebhookState {
    /// A state with an empty [`RecentMessageIds`] of the default capacity.
    pub fn new(
        settings: WebhookSettings,
        publisher: impl Publish + 'static,
        statuses: Arc<dyn DeliveryStatuses>,
    ) -> Self {
        Self { settings, publisher: Arc::new(publisher), statuses, recent: Arc::default(), dead_letters: None }
    }

    /// Files unreadable entries in `store`'s dead-letter queue.
    pub fn with_dead_letters(mut self, store: Arc<dyn Store>) -> Self {
        self.dead_letters = Some(store);
        self
    }
}

/// Why a notification was refused before anything was published.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// `X-Hub-Signature-256` missing or wrong (an app secret is set).
    #[error("invalid signature: {0}")]
    Signature(#[from] SignatureError),
    /// Not JSON, or not a notification.
    #[error(transparent)]
    Malformed(PayloadError),
    /// A notification for another product (`object` is not `whatsapp_business_account`).
    #[error("webhook object `{0}` is not whatsapp_business_account")]
    WrongObject(String),
}

/// Checks the signature (when an app secret is set) and parses the body.
pub fn check(state: &WebhookState, signature: Option<&str>, body: &[u8]) -> Result<Notification, Refusal> {
    if let Some(secret) = &state.settings.app_secret {
        verify_signature(secret.as_bytes(), body, signature)?;
    }
    let notification = parse(body).map_err(|error| match error {
        PayloadError::WrongObject(object) => Refusal::WrongObject(object),
        other => Refusal::Malformed(other),
    })?;
    for reason in &notification.rejected {
        tracing::warn!(%reason, "webhook message entry skipped");
    }
    Ok(notification)
}

/// Files a notification with entries that could not be read (a message
/// without `from`, a status without `id`...) in the dead-letter queue: the
/// whole body, with every reason, so the skipped entries are not lost
/// while their siblings flow on. `source` names the record it came in, for
/// the edge-function path.
pub async fn file_rejected(
    state: &WebhookState,
    notification: &Notification,
    body: &[u8],
    source: Option<SourceInfo>,
) -> Result<(), String> {
    let Some(store) = state.dead_letters.as_ref().filter(|_| !notification.rejected.is_empty()) else {
        return Ok(());
    };
    let entry = NewDeadLetter {
        message_id: None,
        tenant_id: None,
        source,
        payload: body.to_vec(),
        failure_type: FailureType::ValidationError,
        error: format!("webhook entries skipped: {}", notification.rejected.join("; ")),
        attempt_count: 1,
        trace_context: crate::telemetry::current_traceparent(),
        conversation: None,
    };
    let id = store.dead_letter(None, &entry).await.map_err(|e| e.to_string())?;
    tracing::warn!(dlq_id = id, skipped = notification.rejected.len(), "webhook entries dead-lettered");
    crate::metrics::count_dead_letter(FailureType::ValidationError);
    Ok(())
}

/// Publishes every message not published yet and records every status; all
/// must succeed.
pub async fn forward(state: &WebhookState, notification: &Notification) -> Result<(), String> {
    let publishes = notification.events.iter().map(|event| publish_once(state, event));
    let results = futures_util::future::join_all(publishes).await;
    if let Some(error) = results.into_iter().find_map(Result::err) {
        return Err(error);
    }
    for status in &notification.statuses {
        let moved = state.statuses.record_status(status).await.map_err(|e| e.to_string())?;
        crate::metrics::metrics().delivery_statuses.with_label_values(&[crate::metrics::label(&status.status)]).inc();
        if let Some(moved) = moved {
            state.publisher.announce(&status_event(status, &moved));
        }
    }
    Ok(())
}

/// A status that moved one of our messages forward, for live inboxes.
fn status_event(status: &DeliveryStatus, moved: &MovedMessage) -> Envelope {
    let mut event = MessageProcessed::status(
        &moved.tenant_id,
        &status.recipient_phone,
        &moved.message_id,
        &status.status,
        status.error.clone(),
    );
    event.occurred_at = status.timestamp;
    Envelope::new(EventData::MessageProcessed(event), crate::pipeline::PROCESSED_BY)
}

/// Publishes `event` unless this process already published it. When another
/// request is publishing it, waits for that request's outcome: answering 200
/// before it is on Kafka would lose it should that request fail. Cancelled
/// (the POST timed out, the client left) or failed, the reservation is
/// dropped, which releases the id for Meta's redelivery.
async fn publish_once(state: &WebhookState, event: &NotifiedMessage) -> Result<(), String> {
    let Some(id) = message_id(event) else { return publish(state.publisher.as_ref(), event).await };
    loop {
        let published = match state.recent.reserve(id) {
            Turn::Reserved(reservation) => {
                publish(state.publisher.as_ref(), event).await?;
                reservation.confirm();
                return Ok(());
            }
            Turn::Published => true,
            Turn::InFlight(other) => other.published().await,
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
fn message_id(event: &NotifiedMessage) -> Option<&str> {
    match event {
        NotifiedMessage::Message(m) => Some(m.message_id.as_str()),
        NotifiedMessage::Interaction(i) => i.message_id.as_deref(),
        NotifiedMessage::Other(o) => Some(o.message_id.as_str()),
    }
    .filter(|id| !id.is_empty())
}

async fn publish(publisher: &dyn Publish, event: &NotifiedMessage) -> Result<(), String> {
    let business = match event {
        NotifiedMessage::Message(m) => m.metadata.get("phone_number_id").map(String::as_str),
        NotifiedMessage::Other(o) => o.metadata.get("phone_number_id").map(String::as_str),
        NotifiedMessage::Interaction(_) => None,
    };
    crate::metrics::metrics()
        .messages_received
        .with_label_values(&[business.map_or("unknown", crate::metrics::label), "webhook"])
        .inc();
    let result = match event {
        NotifiedMessage::Message(message) => {
            publisher.publish_event(&Envelope::new(EventData::MessageReceived(message.clone()), PROCESSED_BY)).await
        }
        NotifiedMessage::Interaction(interaction) => {
            publisher
                .publish_event(&Envelope::new(EventData::InteractionReceived(interaction.clone()), PROCESSED_BY))
                .await
        }
        NotifiedMessage::Other(other) => {
            // No event type models it: WhatsApp's message object as sent, on a
            // topic of its own; the business number it reached rides in a header.
            let bytes = serde_json::to_vec(&other.raw).map_err(|e| e.to_string())?;
            let number = other.metadata.get("phone_number_id").map(String::as_bytes).unwrap_or_default();
            let headers = [(crate::event::headers::PHONE_NUMBER_ID, number)];
            publisher.send_record(topics::WEBHOOK_UNHANDLED, Some(&other.from_phone), &bytes, &headers).await
        }
    };
    result.map(|_| ()).map_err(|e| e.to_string())
}
