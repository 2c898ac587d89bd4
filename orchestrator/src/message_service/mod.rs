//! The message service: conversations the business starts. Messages sent
//! now, in batches or at a scheduled time, through the same reply path as
//! the orchestrator's answers (`conversation.responses`, the reply sender
//! with its rate limits, retries, dead letters and `outbound_messages`).
//!
//! | part | what it does |
//! | --- | --- |
//! | [`request`] | the request and answer bodies |
//! | [`validate`] | field-by-field checks, placeholders |
//! | [`MessageService`] | accept (idempotently, within the daily limit), publish, read, list, cancel |
//! | [`scheduler`] | publishes what is due, once, across replicas |
//!
//! The HTTP routes are [`crate::http::api`] (feature `http`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::event::{Envelope, EventData, ResponseContent, ResponseReady, reply_meta};
use crate::publish::Publish;
use crate::store::{
    ApiMessage, ApiMessageFilter, ApiMessages, Cancellation, Inserted, Insertion, NewApiMessage, OutboundStatus,
    StoreError,
};

pub mod request;
pub mod scheduler;
pub mod validate;

pub use request::{
    Accepted, BatchAccepted, BatchEntry, BatchRequest, FieldError, MessageContent, MessageList, MessageView,
    SendRequest, StatusChange, TemplateMessage,
};
pub use scheduler::{Scheduler, SchedulerSettings};

/// The most messages one batch request may carry.
pub const MAX_BATCH: usize = 1000;

/// Namespace of the ids derived from an `Idempotency-Key` (UUID v5).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2f0e_8d3a_4b5e_9a41_7c2d_0b6e_5f13);

/// How the service runs.
#[derive(Debug, Clone)]
pub struct MessageServiceSettings {
    /// Messages per organisation and UTC day; `None`: no limit.
    pub daily_limit: Option<u64>,
    /// How long after the request the scheduler publishes a message sent
    /// now whose own publish did not happen (failed, or its process died).
    pub publish_grace: Duration,
}

impl Default for MessageServiceSettings {
    fn default() -> Self {
        Self { daily_limit: Some(100_000), publish_grace: Duration::from_secs(30) }
    }
}

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Fields are wrong (400).
    #[error("the request is not valid")]
    Invalid(Vec<FieldError>),
    /// The `Idempotency-Key` was used before with another request (409).
    #[error("Idempotency-Key `{0}` was used with a different request")]
    IdempotencyConflict(String),
    /// The organisation's daily limit would be passed (429).
    #[error("the daily limit of {limit} messages is reached ({used} sent today)")]
    OverDailyLimit {
        /// Messages today before this request.
        used: u64,
        /// The limit.
        limit: u64,
        /// Until the next UTC day.
        retry_after: Duration,
    },
    /// No such message of the caller's organisation (404).
    #[error("no message `{0}`")]
    NotFound(String),
    /// The message belongs to another organisation (403).
    #[error("message `{0}` belongs to another organisation")]
    Forbidden(String),
    /// Too late to cancel (409).
    #[error("message `{id}` is {status}: too late to cancel")]
    TooLate {
        /// The message.
        id: String,
        /// Its status.
        status: String,
    },
    /// The database failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Accepts, publishes, reads, lists and cancels the send API's messages.
#[derive(Clone)]
pub struct MessageService {
    store: Arc<dyn ApiMessages>,
    publisher: Arc<dyn Publish>,
    settings: MessageServiceSettings,
}

/// A message checked and given its id, ready to store.
struct Prepared {
    message: NewApiMessage,
    reply: ResponseReady,
}

impl MessageService {
    /// A service storing in `store` and publishing to `conversation.responses` through `publisher`.
    pub fn new(store: Arc<dyn ApiMessages>, publisher: Arc<dyn Publish>, settings: MessageServiceSettings) -> Self {
        Self { store, publisher, settings }
    }

    /// Where the messages are kept.
    pub fn store(&self) -> &Arc<dyn ApiMessages> {
        &self.store
    }

    /// Accepts one message for `tenant`: stored, then published (or left for
    /// the scheduler when scheduled). With an `idempotency_key`, a repeated
    /// request answers as the first did and sends nothing again.
    pub async fn send(
        &self,
        tenant: &str,
        request: &SendRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, ServiceError> {
        let now = Utc::now();
        let checked = validate::check(request, now).map_err(ServiceError::Invalid)?;
        let id = message_id(tenant, idempotency_key, None);
        let prepared = self.prepare(tenant, id, request, checked, now);
        let mut answers = self.accept(tenant, vec![prepared]).await?;
        match answers.pop() {
            Some(Ok(accepted)) => Ok(accepted),
            Some(Err(_)) => Err(ServiceError::IdempotencyConflict(idempotency_key.unwrap_or_default().to_owned())),
            None => {
                Err(StoreError::Corrupt { table: "outbound_messages", reason: "no answer for the message".into() }
                    .into())
            }
        }
    }

    /// Accepts up to [`MAX_BATCH`] messages, each checked on its own: the
    /// answer has an id or errors per entry, in order. With an
    /// `idempotency_key`, entry `i` is idempotent under `key` and `i`.
    pub async fn send_batch(
        &self,
        tenant: &str,
        entries: &[serde_json::Value],
        idempotency_key: Option<&str>,
    ) -> Result<BatchAccepted, ServiceError> {
        if entries.is_empty() || entries.len() > MAX_BATCH {
            let message = format!("1 to {MAX_BATCH} messages, not {}", entries.len());
            return Err(ServiceError::Invalid(vec![FieldError::new("messages", message)]));
        }
        let now = Utc::now();
        let mut results: Vec<BatchEntry> = Vec::with_capacity(entries.len());
        let mut prepared = Vec::with_capacity(entries.len());
        let mut positions = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let errors = match serde_path_to_error::deserialize::<_, SendRequest>(entry) {
                Ok(request) => match validate::check(&request, now) {
                    Ok(checked) => {
                        let id = message_id(tenant, idempotency_key, Some(index));
                        prepared.push(self.prepare(tenant, id, &request, checked, now));
                        positions.push(index);
                        Vec::new()
                    }
                    Err(errors) => errors,
                },
                Err(error) => {
                    let path = error.path().to_string();
                    let field =
                        if path == "." { format!("messages[{index}]") } else { format!("messages[{index}].{path}") };
                    vec![FieldError::new(field, error.into_inner().to_string())]
                }
            };
            results.push(BatchEntry { index, id: None, status: None, errors });
        }
        let answers = if prepared.is_empty() { Vec::new() } else { self.accept(tenant, prepared).await? };
        for (index, answer) in positions.into_iter().zip(answers) {
            let entry = &mut results[index];
            match answer {
                Ok(accepted) => {
                    entry.id = Some(accepted.id);
                    entry.status = Some(accepted.status);
                }
                Err(conflict) => entry.errors.push(conflict),
            }
        }
        let rejected = results.iter().filter(|r| r.id.is_none()).count();
        let metrics = crate::metrics::metrics();
        metrics.message_service_processed.with_label_values(&["invalid"]).inc_by(rejected as u64);
        Ok(BatchAccepted { accepted: results.len() - rejected, rejected, results })
    }

    fn prepare(
        &self,
        tenant: &str,
        id: String,
        request: &SendRequest,
        checked: validate::Checked,
        now: DateTime<Utc>,
    ) -> Prepared {
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert(reply_meta::TENANT_ID.to_owned(), tenant.to_owned());
        if let Some(number) = &request.phone_number_id {
            metadata.insert(reply_meta::PHONE_NUMBER_ID.to_owned(), number.clone());
        }
        let reply = ResponseReady {
            original_message_id: format!("api:{id}"),
            to_phone: checked.recipient_phone.clone(),
            response_type: checked.content.response_type(),
            content: checked.content,
            generated_at: now,
            priority: request.priority.unwrap_or_default(),
            metadata,
        };
        let dispatch_due_at =
            checked.scheduled_at.unwrap_or(now + crate::store::to_chrono(self.settings.publish_grace));
        let message = NewApiMessage {
            id,
            tenant_id: tenant.to_owned(),
            recipient_phone: checked.recipient_phone,
            phone_number_id: request.phone_number_id.clone(),
            payload: serde_json::to_string(&reply).unwrap_or_default(),
            preview: reply.content.preview(),
            request_hash: request_hash(request),
            scheduled_at: checked.scheduled_at,
            dispatch_due_at,
        };
        Prepared { message, reply }
    }

    /// Stores the messages and publishes those due now; per message the
    /// answer, or the conflict of a reused idempotency key.
    async fn accept(
        &self,
        tenant: &str,
        prepared: Vec<Prepared>,
    ) -> Result<Vec<Result<Accepted, FieldError>>, ServiceError> {
        let metrics = crate::metrics::metrics();
        let rows: Vec<NewApiMessage> = prepared.iter().map(|p| p.message.clone()).collect();
        let insertions = match self.store.insert_api_messages(tenant, &rows, self.settings.daily_limit).await? {
            Inserted::Stored(insertions) => insertions,
            Inserted::OverDailyLimit { used, limit } => {
                metrics.message_service_processed.with_label_values(&["rate_limited"]).inc_by(rows.len() as u64);
                return Err(ServiceError::OverDailyLimit { used, limit, retry_after: until_next_utc_day(Utc::now()) });
            }
        };
        let mut to_publish = Vec::new();
        let mut answers = Vec::with_capacity(prepared.len());
        for (prepared, insertion) in prepared.into_iter().zip(insertions) {
            let new = &prepared.message;
            let answer = match insertion {
                Insertion::Created => {
                    let status = if new.scheduled_at.is_some() { "scheduled" } else { "queued" };
                    metrics.message_service_processed.with_label_values(&[status]).inc();
                    if new.scheduled_at.is_none() {
                        to_publish.push((new.id.clone(), prepared.reply));
                    }
                    Ok(first_answer(&new.id, new.scheduled_at))
                }
                Insertion::Exists(found) if found.request_hash.as_deref() != Some(new.request_hash.as_str()) => {
                    metrics.message_service_processed.with_label_values(&["conflict"]).inc();
                    Err(FieldError::new("Idempotency-Key", "used before with a different request"))
                }
                Insertion::Exists(found) => {
                    metrics.message_service_processed.with_label_values(&["duplicate"]).inc();
                    // Stored but never published (its first request died before): publish now.
                    if found.status == OutboundStatus::Queued
                        && found.dispatched_at.is_none()
                        && found.scheduled_at.is_none()
                    {
                        to_publish.push((new.id.clone(), prepared.reply));
                    }
                    Ok(first_answer(&found.id, found.scheduled_at))
                }
            };
            answers.push(answer);
        }
        self.publish_now(to_publish).await;
        Ok(answers)
    }

    /// Publishes replies and marks those acknowledged; the rest wait for the
    /// scheduler (their `dispatch_due_at`), so none is lost.
    async fn publish_now(&self, replies: Vec<(String, ResponseReady)>) {
        if replies.is_empty() {
            return;
        }
        let published = publish_replies(self.publisher.as_ref(), replies).await;
        if let Err(error) = self.store.mark_dispatched(None, &published).await {
            // Unmarked ones are published again by the scheduler; the sender's claim sends each once.
            tracing::warn!(%error, "published messages not marked");
        }
    }

    /// One message of `tenant`, with its status history.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<MessageView, ServiceError> {
        let message = self.owned(tenant, id).await?;
        Ok(view(&message))
    }

    /// `tenant`'s messages, newest first.
    pub async fn list(&self, tenant: &str, filter: &ApiMessageFilter) -> Result<MessageList, ServiceError> {
        let page = self.store.list_api_messages(tenant, filter).await?;
        Ok(MessageList {
            messages: page.messages.iter().map(view).collect(),
            next_cursor: page.next.map(|n| n.to_string()),
        })
    }

    /// Cancels a message of `tenant` that has not gone out.
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<MessageView, ServiceError> {
        self.owned(tenant, id).await?;
        match self.store.cancel_api_message(tenant, id).await? {
            Cancellation::Cancelled(message) => {
                crate::metrics::metrics().message_service_processed.with_label_values(&["cancelled"]).inc();
                Ok(view(&message))
            }
            Cancellation::TooLate(message) => {
                let status = if message.status == OutboundStatus::Queued {
                    "being sent".to_owned()
                } else {
                    message.status.as_str().to_owned()
                };
                Err(ServiceError::TooLate { id: id.to_owned(), status })
            }
            Cancellation::NotFound => Err(ServiceError::NotFound(id.to_owned())),
        }
    }

    /// Scheduled (and unpublished) messages due now: what the scheduler has to do.
    pub async fn due_count(&self) -> Result<u64, StoreError> {
        self.store.due_count(Utc::now()).await
    }

    async fn owned(&self, tenant: &str, id: &str) -> Result<ApiMessage, ServiceError> {
        match self.store.api_message(id).await? {
            None => Err(ServiceError::NotFound(id.to_owned())),
            Some(message) if message.tenant_id != tenant => Err(ServiceError::Forbidden(id.to_owned())),
            Some(message) => Ok(message),
        }
    }
}

/// Publishes each `(id, reply)` to `conversation.responses`, all at once;
/// answers the ids Kafka acknowledged. A failure is logged: the message's
/// row stays due, and the scheduler publishes it later.
async fn publish_replies(publisher: &dyn Publish, replies: Vec<(String, ResponseReady)>) -> Vec<String> {
    let sends = replies.into_iter().map(|(id, reply)| async move {
        let envelope = Envelope::new(EventData::ResponseReady(reply), crate::pipeline::PROCESSED_BY);
        match publisher.publish_event(&envelope).await {
            Ok(()) => Some(id),
            Err(error) => {
                tracing::warn!(%error, %id, "message not published: the scheduler publishes it when due");
                None
            }
        }
    });
    futures_util::future::join_all(sends).await.into_iter().flatten().collect()
}

/// The id of a message: derived from the idempotency key (and batch
/// position) within the organisation, or random.
fn message_id(tenant: &str, idempotency_key: Option<&str>, index: Option<usize>) -> String {
    match idempotency_key {
        Some(key) => {
            let name = match index {
                Some(index) => format!("{tenant}\n{key}\n{index}"),
                None => format!("{tenant}\n{key}"),
            };
            uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
        }
        None => uuid::Uuid::new_v4().to_string(),
    }
}

/// SHA-256 of the request as parsed (so spacing does not matter), hex.
fn request_hash(request: &SendRequest) -> String {
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
}

fn first_answer(id: &str, scheduled_at: Option<DateTime<Utc>>) -> Accepted {
    Accepted {
        id: id.to_owned(),
        status: if scheduled_at.is_some() { "scheduled" } else { "queued" }.to_owned(),
        scheduled_at: scheduled_at.map(rfc3339),
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Time left in the current UTC day.
fn until_next_utc_day(now: DateTime<Utc>) -> Duration {
    let tomorrow = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    tomorrow.and_then(|t| (t - now).to_std().ok()).unwrap_or(Duration::from_secs(1))
}

/// A stored message as the API shows it, its history read off the row's timestamps.
pub fn view(message: &ApiMessage) -> MessageView {
    let mut history = Vec::new();
    let mut push = |status: &str, at: Option<DateTime<Utc>>| {
        if let Some(at) = at {
            history.push(StatusChange { status: status.to_owned(), at: rfc3339(at), error_code: None, error: None });
        }
    };
    match message.scheduled_at {
        Some(_) => {
            push("scheduled", Some(message.created_at));
            push("queued", message.dispatched_at);
        }
        None => push("queued", Some(message.created_at)),
    }
    push("sent", message.sent_at);
    push("delivered", message.delivered_at);
    push("read", message.read_at);
    push("cancelled", message.cancelled_at);
    if let Some(at) = message.failed_at {
        history.push(StatusChange {
            status: "failed".to_owned(),
            at: rfc3339(at),
            error_code: message.error_code,
            error: message.error.clone(),
        });
    }
    history.sort_by(|a, b| a.at.cmp(&b.at));
    let kind = serde_json::from_str::<ResponseReady>(&message.payload).map(|r| match r.content {
        ResponseContent::Template { .. } => "template",
        ResponseContent::Media { .. } => "media",
        _ => "text",
    });
    MessageView {
        id: message.id.clone(),
        recipient_phone: message.recipient_phone.clone(),
        phone_number_id: message.phone_number_id.clone(),
        status: message.status.as_str().to_owned(),
        kind: kind.unwrap_or("text").to_owned(),
        attempts: message.attempt_count,
        wamid: message.wamid.clone(),
        created_at: rfc3339(message.created_at),
        scheduled_at: message.scheduled_at.map(rfc3339),
        history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_an_idempotency_key_are_per_organisation_and_position() {
        let a = message_id("acme", Some("k1"), None);
        assert_eq!(a, message_id("acme", Some("k1"), None));
        assert_ne!(a, message_id("globex", Some("k1"), None));
        assert_ne!(message_id("acme", Some("k1"), Some(0)), message_id("acme", Some("k1"), Some(1)));
        assert_ne!(message_id("acme", None, None), message_id("acme", None, None));
    }

    #[test]
    fn the_day_ends_at_utc_midnight() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T23:59:30Z").unwrap().with_timezone(&Utc);
        assert_eq!(until_next_utc_day(now), Duration::from_secs(30));
    }
}
