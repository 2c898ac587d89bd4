//! The send API's messages: rows of `outbound_messages` that a business
//! started (`POST /api/v1/messages`), with their idempotency, schedule,
//! cancellation and each organisation's daily count (`api_usage`).
//!
//! A message is stored before it is published to `conversation.responses`,
//! with a `dispatch_due_at`: its `scheduled_at`, or a short grace after the
//! request for one sent now. The API publishes a message sent now at once
//! and marks it dispatched; whatever is due and not dispatched (scheduled
//! messages, and those whose publish failed or whose process died first)
//! the scheduler claims, publishes and marks. The reply sender's claim in
//! `outbound_messages` then sends each once, however many copies arrive.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::outbound::OutboundStatus;
use super::{NewDeadLetter, StoreError};

/// A message the API accepted, to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiMessage {
    /// The public id (a UUID).
    pub id: String,
    /// The organisation.
    pub tenant_id: String,
    /// The recipient, E.164.
    pub recipient_phone: String,
    /// The business number to send from (`None`: the sender's default).
    pub phone_number_id: Option<String>,
    /// The `ResponseReady` to publish, as JSON.
    pub payload: String,
    /// What the conversation's history shows of it.
    pub preview: String,
    /// SHA-256 of the request, hex: a retry must carry the same request.
    pub request_hash: String,
    /// When it should go out; `None`: now.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When the scheduler publishes it if nobody has.
    pub dispatch_due_at: DateTime<Utc>,
}

/// A send API message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiMessage {
    /// The public id.
    pub id: String,
    /// The organisation.
    pub tenant_id: String,
    /// The recipient.
    pub recipient_phone: String,
    /// The business number it goes out from (`None`: the sender's default).
    pub phone_number_id: Option<String>,
    /// Where it is.
    pub status: OutboundStatus,
    /// Sends tried.
    pub attempt_count: u32,
    /// WhatsApp's id of the sent message.
    pub wamid: Option<String>,
    /// WhatsApp's error code of the last failure.
    pub error_code: Option<i64>,
    /// The last failure, readable (WhatsApp's title when it gave one).
    pub error: Option<String>,
    /// The `ResponseReady` it is sent as (JSON).
    pub payload: String,
    /// SHA-256 of the request, hex.
    pub request_hash: Option<String>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it is (or was) due, for a scheduled message.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When it was published to `conversation.responses`.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When WhatsApp accepted it.
    pub sent_at: Option<DateTime<Utc>>,
    /// When the webhook reported it delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the webhook reported it read.
    pub read_at: Option<DateTime<Utc>>,
    /// When it failed (dead-lettered, or reported failed).
    pub failed_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// What became of one message given to [`ApiMessages::insert_api_messages`].
#[derive(Debug, Clone, PartialEq)]
pub enum Insertion {
    /// Stored now.
    Created,
    /// A message with this id was stored before (a retried request): this one.
    Exists(Box<ApiMessage>),
}

/// The answer to [`ApiMessages::insert_api_messages`].
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// One answer per message, in order.
    Stored(Vec<Insertion>),
    /// The new messages would pass the organisation's daily limit: none was stored.
    OverDailyLimit {
        /// Messages counted today before this request.
        used: u64,
        /// The limit.
        limit: u64,
    },
}

/// A due message claimed by a scheduler, to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct DueMessage {
    /// The public id.
    pub id: String,
    /// The `ResponseReady` as JSON.
    pub payload: String,
}

/// A scheduler's claim on publishing some due messages.
#[derive(Debug, Clone, PartialEq)]
pub struct DueClaim {
    /// Random per claim; [`ApiMessages::mark_dispatched`] checks it.
    pub token: i64,
    /// The messages, earliest due first.
    pub messages: Vec<DueMessage>,
}

/// Filters of `GET /api/v1/messages`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiMessageFilter {
    /// Only this recipient.
    pub recipient: Option<String>,
    /// Only this status.
    pub status: Option<OutboundStatus>,
    /// Only those accepted at or after.
    pub since: Option<DateTime<Utc>>,
    /// Only those older than this row (the previous page's cursor).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: u64,
}

/// One page of messages, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiMessagePage {
    /// The messages.
    pub messages: Vec<ApiMessage>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<i64>,
}

/// The answer to [`ApiMessages::cancel_api_message`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cancellation {
    /// Cancelled now; it will not go out.
    Cancelled(Box<ApiMessage>),
    /// Too late: being sent, sent, failed or cancelled before.
    TooLate(Box<ApiMessage>),
    /// No such message of this organisation.
    NotFound,
}

/// Where the send API keeps its messages.
///
/// Contract: [`claim_due`](Self::claim_due) never hands one message to two
/// schedulers while the first one's claim lasts (several replicas may run
/// one); a message cancelled is never claimed, and one claimed and published
/// is no longer cancellable once the sender holds it.
#[async_trait]
pub trait ApiMessages: Send + Sync {
    /// Stores the messages not stored before (by id), in one transaction
    /// that also counts the new ones against `tenant`'s `daily_limit`. The
    /// count is spread over a few rows so concurrent requests do not queue
    /// on one; requests committing at the same instant see each other's
    /// counts only once committed, so together they may pass the limit by
    /// what they carry.
    async fn insert_api_messages(
        &self,
        tenant: &str,
        messages: &[NewApiMessage],
        daily_limit: Option<u64>,
    ) -> Result<Inserted, StoreError>;

    /// Claims up to `limit` messages due at `now` and not published, for `lease`;
    /// a scheduled one becomes `queued`.
    async fn claim_due(&self, now: DateTime<Utc>, limit: u64, lease: Duration) -> Result<DueClaim, StoreError>;

    /// Marks messages published to `conversation.responses`, so the
    /// scheduler leaves them: with `claim`, those the scheduler's claim
    /// token still holds; without, those the API published itself and no
    /// scheduler holds. Answers how many were marked.
    async fn mark_dispatched(&self, claim: Option<i64>, ids: &[String]) -> Result<u64, StoreError>;

    /// Files a claimed message that cannot be published (its stored
    /// request does not read back) in the dead-letter queue, in its
    /// organisation, and marks it `failed` with the entry's error, in one
    /// transaction, while `claim` still holds it; answers the entry's id
    /// (`None`: the claim was lost, nothing written).
    async fn dead_letter_due(&self, claim: i64, id: &str, entry: &NewDeadLetter) -> Result<Option<i64>, StoreError>;

    /// One message, whatever its organisation (the caller checks it).
    async fn api_message(&self, id: &str) -> Result<Option<ApiMessage>, StoreError>;

    /// An organisation's messages, newest first.
    async fn list_api_messages(&self, tenant: &str, filter: &ApiMessageFilter) -> Result<ApiMessagePage, StoreError>;

    /// Cancels a message of `tenant` that has not gone out (scheduled, or
    /// queued and not being sent).
    async fn cancel_api_message(&self, tenant: &str, id: &str) -> Result<Cancellation, StoreError>;

    /// Messages due at `now` and not yet published.
    async fn due_count(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}
