//! Durable state of the pipeline: dedupe claims, the saga log, the dead-letter
//! queue, the lead audit trail and the record of every reply sent.
//!
//! [`SqlStore`] keeps it in SQLite or PostgreSQL through sea-orm;
//! [`MemoryStore`] keeps it in memory (tests, benchmarks, embedding without a
//! database).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::event::FailureType;

mod delivery;
mod guarded;
mod memory;
pub mod outbound;
mod sql;

pub use delivery::{DeliveryStatus, DeliveryStatuses};
pub use guarded::{DATABASE_BREAKER, DATABASE_BREAKER_CONFIG, GuardedStore};
pub use memory::MemoryStore;
pub use outbound::{
    AttemptFailure, OutboundMessage, OutboundMessages, OutboundReply, OutboundStatus, ReplyKey, ReplyLease, SendClaim,
};
pub use sql::SqlStore;

/// A std duration as a chrono one, saturating (leases, TTLs and delays are far below the limit).
pub(crate) fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Identifies a message for deduplication: ids are unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// The tenant.
    pub tenant_id: String,
    /// The message id.
    pub message_id: String,
}

impl MessageKey {
    /// A key.
    pub fn new(tenant_id: impl Into<String>, message_id: impl Into<String>) -> Self {
        Self { tenant_id: tenant_id.into(), message_id: message_id.into() }
    }
}

/// A held claim on a message: only its holder may renew it, log steps, and
/// complete, release or dead-letter the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The message.
    pub key: MessageKey,
    /// Random per claim; fenced writes check it.
    pub token: i64,
}

impl Lease {
    /// A lease with a fresh random token.
    pub fn new(key: MessageKey) -> Self {
        // Any random 64 bits will do; a v4 UUID is already at hand.
        let token = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
        Self { key, token }
    }
}

/// The answer to a claim on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker may process the message.
    Acquired {
        /// The lease to pass to every write about the message.
        lease: Lease,
        /// Attempt number (1-based), kept in the database across restarts.
        /// Taking over from a worker that died counts as a new attempt, so a
        /// message that keeps killing its worker still reaches the DLQ.
        attempt: u32,
        /// Saga run number; equal to the previous claim's when resuming a run
        /// whose worker died.
        run: u32,
    },
    /// The message was already processed successfully.
    Completed,
    /// The message was dead-lettered and not replayed since.
    DeadLettered,
    /// Another worker holds a live lease on it.
    Busy {
        /// When that lease runs out.
        lease_expires_at: DateTime<Utc>,
    },
}

impl Claim {
    /// `(attempt, run)` when acquired.
    pub fn acquired(&self) -> Option<(u32, u32)> {
        match self {
            Claim::Acquired { attempt, run, .. } => Some((*attempt, *run)),
            _ => None,
        }
    }
}

/// The state of a saga step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepStatus {
    /// About to execute.
    Started,
    /// Executed successfully.
    Succeeded,
    /// Failed (nothing to undo for this step).
    Failed,
    /// Undone after a later step failed.
    Compensated,
    /// Undoing failed: needs a person.
    CompensationFailed,
}

impl StepStatus {
    /// The value of the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Started => "started",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Compensated => "compensated",
            StepStatus::CompensationFailed => "compensation_failed",
        }
    }

    /// Parses a `status` value.
    pub fn parse(value: &str) -> Option<Self> {
        [
            StepStatus::Started,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Compensated,
            StepStatus::CompensationFailed,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

/// One entry of the saga log (append-only: each transition is a row).
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Position in the saga, 0-based.
    pub step_index: u32,
    /// Action name.
    pub action: String,
    /// New status.
    pub status: StepStatus,
    /// The executor's output (with `Succeeded`).
    pub output: Option<Value>,
    /// The error (with `Failed` and `CompensationFailed`).
    pub error: Option<String>,
    /// Whether the error was retryable (with `Failed`).
    pub retryable: Option<bool>,
    /// When it was recorded.
    pub at: DateTime<Utc>,
}

impl StepRecord {
    /// A record stamped now with no output or error.
    pub fn new(step_index: u32, action: &str, status: StepStatus) -> Self {
        Self {
            step_index,
            action: action.to_owned(),
            status,
            output: None,
            error: None,
            retryable: None,
            at: Utc::now(),
        }
    }
}

/// A row for `lead_activities`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewActivity {
    /// The lead.
    pub lead_id: String,
    /// What happened, e.g. `message_handled`, `action_executed`, `escalated`.
    pub activity_type: String,
    /// Details as JSON.
    pub details: Value,
}

/// Where a message came from on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceInfo {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key (the phone number).
    pub key: Option<String>,
}

/// A message to park in the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The message id, when it could be read.
    pub message_id: Option<String>,
    /// The tenant, when known.
    pub tenant_id: Option<String>,
    /// Kafka coordinates, when it came from Kafka.
    pub source: Option<SourceInfo>,
    /// The original bytes, to replay.
    pub payload: Vec<u8>,
    /// Why it failed.
    pub failure_type: FailureType,
    /// The error, readable.
    pub error: String,
    /// Attempts made.
    pub attempt_count: u32,
    /// The W3C `traceparent` of the attempt that gave up, to continue its trace on replay.
    pub trace_context: Option<String>,
}

/// Status of a dead-letter entry (`status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqStatus {
    /// Waiting for a person.
    Failed,
    /// Sent back for processing.
    Replayed,
    /// Thrown away on purpose.
    Discarded,
    /// Dealt with outside the system.
    Resolved,
}

impl DlqStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqStatus::Failed => "failed",
            DlqStatus::Replayed => "replayed",
            DlqStatus::Discarded => "discarded",
            DlqStatus::Resolved => "resolved",
        }
    }

    /// Parses a column value.
    pub fn parse(value: &str) -> Option<Self> {
        [DlqStatus::Failed, DlqStatus::Replayed, DlqStatus::Discarded, DlqStatus::Resolved]
            .into_iter()
            .find(|s| s.as_str() == value)
    }

    /// Whether an entry in this status may move to `next`. Only failed
    /// entries are replayed or discarded; failed or replayed ones resolved.
    pub fn can_become(self, next: DlqStatus) -> bool {
        matches!(
            (self, next),
            (DlqStatus::Failed, DlqStatus::Replayed)
                | (DlqStatus::Failed, DlqStatus::Discarded)
                | (DlqStatus::Failed, DlqStatus::Resolved)
                | (DlqStatus::Replayed, DlqStatus::Resolved)
        )
    }
}

/// A row of `dead_letter_queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// Message id, when known.
    pub message_id: Option<String>,
    /// Kafka coordinates, when known.
    pub source: Option<SourceInfo>,
    /// The original bytes.
    pub payload: Vec<u8>,
    /// Why it failed.
    pub failure_type: FailureType,
    /// The error.
    pub error: String,
    /// Attempts made.
    pub attempt_count: u32,
    /// Current status.
    pub status: DlqStatus,
    /// Times replayed.
    pub replay_count: u32,
    /// Tenant, when known.
    pub tenant_id: Option<String>,
    /// Groups entries that failed for the same cause (see [`failure_fingerprint`]).
    pub fingerprint: String,
    /// The W3C `traceparent` of the attempt that gave up.
    pub trace_context: Option<String>,
    /// When it was parked.
    pub created_at: DateTime<Utc>,
    /// Last status change.
    pub updated_at: DateTime<Utc>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DlqFilter {
    /// Only this status.
    pub status: Option<DlqStatus>,
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only this failure type.
    pub failure_type: Option<FailureType>,
    /// Only entries created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries with this failure fingerprint.
    pub fingerprint: Option<String>,
}

impl DlqFilter {
    /// A filter from text (query strings, command lines); an unknown status
    /// or failure type is refused with a readable reason.
    pub fn parse(
        status: Option<&str>,
        tenant_id: Option<&str>,
        failure_type: Option<&str>,
        since: Option<DateTime<Utc>>,
        fingerprint: Option<&str>,
    ) -> Result<Self, String> {
        let status = status.map(|s| DlqStatus::parse(s).ok_or_else(|| format!("unknown status `{s}`"))).transpose()?;
        let failure_type = failure_type
            .map(|f| FailureType::parse(f).ok_or_else(|| format!("unknown failure_type `{f}`")))
            .transpose()?;
        Ok(Self {
            status,
            tenant_id: tenant_id.map(str::to_owned),
            failure_type,
            since,
            fingerprint: fingerprint.map(str::to_owned),
        })
    }
}

/// Dead letters that failed for the same cause.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureGroup {
    /// The group's [`failure_fingerprint`].
    pub fingerprint: String,
    /// Their failure type.
    pub failure_type: FailureType,
    /// The error with ids and numbers taken out (see [`normalize_error`]).
    pub pattern: String,
    /// How many entries match.
    pub count: u64,
    /// The oldest entry's time.
    pub first_at: DateTime<Utc>,
    /// The newest entry's time.
    pub last_at: DateTime<Utc>,
}

/// An error message with what varies between occurrences of one cause taken
/// out: numbers become `#`, long hex/uuid-like tokens `*`, quoted text `'?'`.
pub fn normalize_error(error: &str) -> String {
    let mut out = String::with_capacity(error.len().min(256));
    let mut chars = error.chars().peekable();
    while let Some(c) = chars.next() {
        if out.len() >= 240 {
            break;
        }
        match c {
            '\'' | '"' | '`' => {
                // Quoted values (ids, names) vary; the quoting marks the spot.
                let mut closed = false;
                for next in chars.by_ref() {
                    if next == c {
                        closed = true;
                        break;
                    }
                }
                out.push_str(if closed { "'?'" } else { "'?" });
            }
            c if c.is_ascii_alphanumeric() => {
                let mut token = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_ascii_alphanumeric() || next == '-' || next == '_' || next == '.' {
                        token.push(next);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push_str(&normalize_token(&token));
            }
            c => out.push(c),
        }
    }
    out
}

fn normalize_token(token: &str) -> String {
    let digits = token.chars().filter(char::is_ascii_digit).count();
    let hexish = token.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if digits > 0 && token.len() >= 8 && (hexish || digits * 3 >= token.len()) {
        return "*".to_owned();
    }
    if digits == 0 {
        return token.to_owned();
    }
    // Mixed words keep their letters, numbers collapse: `step 2` and `step 3` group.
    let mut out = String::with_capacity(token.len());
    let mut in_number = false;
    for c in token.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}

/// The fingerprint of a failure: 16 hex digits of SHA-256 over the failure
/// type and the [`normalize_error`]ed message.
pub fn failure_fingerprint(failure_type: FailureType, error: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}|{}", failure_type.as_str(), normalize_error(error)).as_bytes(),
    );
    hex::encode(&digest.as_ref()[..8])
}

/// A page of results, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Rows to return.
    pub limit: u64,
    /// Rows to skip.
    pub offset: u64,
}

impl Default for Page {
    fn default() -> Self {
        Self { limit: 100, offset: 0 }
    }
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable; the caller should try again later.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// A row holds a value this version does not understand.
    #[error("unreadable row in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// No dead letter has this id.
    #[error("no dead-letter entry with id {0}")]
    NotFound(i64),
    /// The lease was taken over (it expired) or released: this worker must stop.
    #[error("lease on message {0} is no longer held by this worker")]
    LeaseLost(String),
    /// The status change is not allowed (e.g. replaying an entry already replayed).
    #[error("dead-letter entry {id} is {from}, it cannot become {to}")]
    InvalidTransition {
        /// Entry id.
        id: i64,
        /// Current status.
        from: &'static str,
        /// Requested status.
        to: &'static str,
    },
    /// The database failed repeatedly and its circuit breaker is open: the
    /// call was not made; try again after `retry_after`.
    #[error("the database is unavailable (circuit open, next probe in {retry_after:?})")]
    Unavailable {
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
}

impl StoreError {
    /// Whether this error says the database is failing (as opposed to an
    /// answer about a message: lease lost, not found, refused transition).
    pub fn is_outage(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Unavailable { .. })
    }
}

/// The state the pipeline keeps per message.
///
/// Contract for implementations: [`claim`](Store::claim) is atomic across
/// workers; [`complete`](Store::complete) and [`dead_letter`](Store::dead_letter)
/// are each one transaction.
#[async_trait]
pub trait Store: Send + Sync {
    /// Claims a message for processing with a lease. A message whose previous
    /// attempt released its claim starts a new attempt and run; one whose
    /// lease ran out without release (its worker died or stalled) is taken
    /// over: a new attempt, resuming the same run.
    async fn claim(&self, key: &MessageKey, lease: Duration) -> Result<Claim, StoreError>;

    /// Extends a held lease by `duration` from now; [`StoreError::LeaseLost`]
    /// when it is no longer held.
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError>;

    /// Releases the claim after a failed attempt so a redelivery processes it
    /// again; `refund_attempt` gives the attempt back (it was deferred, not failed).
    async fn release(&self, lease: &Lease, refund_attempt: bool) -> Result<(), StoreError>;

    /// The saga log of one run, in recording order.
    async fn load_steps(&self, key: &MessageKey, run: u32) -> Result<Vec<StepRecord>, StoreError>;

    /// Appends to the saga log of one run, if the lease is still held.
    async fn record_step(&self, lease: &Lease, run: u32, step: &StepRecord) -> Result<(), StoreError>;

    /// Appends several rows to the saga log of one run, in order, if the
    /// lease is still held. The default appends them one by one; a store
    /// that can write them in one round trip (all or none) should.
    async fn record_steps(&self, lease: &Lease, run: u32, steps: &[StepRecord]) -> Result<(), StoreError> {
        for step in steps {
            self.record_step(lease, run, step).await?;
        }
        Ok(())
    }

    /// Marks the message processed, writes its audit trail and keeps its
    /// reply (the outbox), in one transaction, if the lease is still held.
    async fn complete(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&Value>,
    ) -> Result<(), StoreError>;

    /// [`complete`](Store::complete), and moves the message's lead (in the
    /// lease's tenant) to `lead.stage`. A store that can should do both in
    /// the completion's transaction (the SQL store does), so a crash cannot
    /// keep one without the other. The default completes, then calls
    /// [`set_lead_stage`](Store::set_lead_stage); a failure there costs the
    /// stage, never the message, and is reported as [`StageChange::NotRecorded`].
    async fn complete_moving_lead(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&Value>,
        lead: &StageMove,
    ) -> Result<StageChange, StoreError> {
        self.complete(lease, activities, ttl, reply).await?;
        Ok(match self.set_lead_stage(&lease.key.tenant_id, &lead.lead_id, &lead.stage).await {
            Ok(from) => StageChange::Moved { from },
            Err(error) => StageChange::NotRecorded { error: error.to_string() },
        })
    }

    /// The reply of a completed message that was never confirmed published.
    async fn pending_reply(&self, key: &MessageKey) -> Result<Option<Value>, StoreError>;

    /// Records that the message's reply was acknowledged by Kafka.
    async fn mark_reply_published(&self, key: &MessageKey) -> Result<(), StoreError>;

    /// Parks a message in the dead-letter queue and, when a lease is given,
    /// marks its claim dead-lettered so redeliveries skip it, in one
    /// transaction (refused with [`StoreError::LeaseLost`] if the lease is lost).
    async fn dead_letter(&self, lease: Option<&Lease>, entry: &NewDeadLetter) -> Result<i64, StoreError>;

    /// Deletes completed dedupe records whose TTL ran out; returns how many.
    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Moves a lead to `stage`; returns the stage it was in (`None` for a lead not seen before).
    async fn set_lead_stage(&self, tenant_id: &str, lead_id: &str, stage: &str) -> Result<Option<String>, StoreError>;
}

/// A lead's move to a stage, made with its message's completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMove {
    /// The lead (in the message's tenant).
    pub lead_id: String,
    /// The stage it moves to.
    pub stage: String,
}

/// What completing a message did to its lead's stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageChange {
    /// The lead is in the new stage; it was in `from` (`None`: a lead not seen before).
    Moved {
        /// The stage before.
        from: Option<String>,
    },
    /// The stage could not be recorded; the message is completed all the same.
    NotRecorded {
        /// Why.
        error: String,
    },
}

/// A message parked behind its key's message in retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// The Kafka key (phone).
    pub key: String,
    /// The message's dedupe id.
    pub message_id: String,
    /// Where it was consumed from.
    pub topic: String,
    /// Partition there.
    pub partition: i32,
    /// Offset there.
    pub offset: i64,
    /// The envelope as received (always UTF-8 JSON: it was decoded).
    pub payload: String,
}

/// The answer to [`KeyParking::park_if_blocked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkCheck {
    /// Another message of the key waits in retry: this one was parked behind it.
    Parked,
    /// Not blocked by another message; `holder` when this message is the
    /// key's holder (its retry copy), which drains the key when it finishes.
    Open {
        /// This message holds the key's block.
        holder: bool,
    },
}

/// Per-key ordering across retries: a key (phone) whose message waits in
/// the retry topic is blocked, and its later messages are parked in order
/// until that message finishes.
#[async_trait]
pub trait KeyParking: Send + Sync {
    /// Parks `message` if its key is blocked by another message.
    async fn park_if_blocked(&self, message: &ParkedMessage) -> Result<ParkCheck, StoreError>;

    /// Blocks `key` with `message_id` as its holder (creating or moving the block).
    async fn block(&self, key: &str, message_id: &str) -> Result<(), StoreError>;

    /// The oldest message parked under `key`.
    async fn next_parked(&self, key: &str) -> Result<Option<ParkedMessage>, StoreError>;

    /// Forgets a parked message once it was handled.
    async fn unpark(&self, id: i64) -> Result<(), StoreError>;

    /// Removes the block when nothing is parked under `key`; `false` when
    /// something is (it was parked meanwhile: keep draining).
    async fn unblock_if_empty(&self, key: &str) -> Result<bool, StoreError>;

    /// The message holding `key`'s block, if it is blocked.
    async fn holder(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Blocks not touched since `before` (oldest first): `(key, holder)`.
    /// A block whose holder is gone for good (its worker died at the wrong
    /// moment) would hold its phone forever; sweepers lift such blocks.
    async fn stale_blocks(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<(String, String)>, StoreError>;
}

/// A message waiting for the external AI service's classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingClassification {
    /// Sent as `processing_id` in the request; the result names it.
    pub processing_id: String,
    /// The Kafka key (phone); blocked while the message waits.
    pub key: String,
    /// The message's dedupe id.
    pub message_id: String,
    /// Where it was consumed from.
    pub topic: String,
    /// Partition there.
    pub partition: i32,
    /// Offset there.
    pub offset: i64,
    /// The envelope as received (UTF-8 JSON: it was decoded).
    pub payload: String,
    /// When the classification was requested.
    pub requested_at: DateTime<Utc>,
}

/// Messages handed to the external AI service, kept until they are
/// finished with its result (or with the fallback classifier once it is
/// overdue). Taking a row is exclusive for a while, so a late result and
/// the timeout sweeper never finish the same message at once.
#[async_trait]
pub trait PendingClassifications: Send + Sync {
    /// Records `pending` unless its message (same key and message id)
    /// already waits; returns the row that waits and whether it is new.
    async fn register(&self, pending: &PendingClassification) -> Result<(PendingClassification, bool), StoreError>;

    /// Takes the row of `processing_id` for `hold`; `None` when it is gone
    /// (already finished) or another worker holds it.
    async fn take(&self, processing_id: &str, hold: Duration) -> Result<Option<PendingClassification>, StoreError>;

    /// Rows requested before `before` that no worker holds, oldest first.
    async fn overdue(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<PendingClassification>, StoreError>;

    /// Forgets a row once its message was finished.
    async fn resolve(&self, processing_id: &str) -> Result<(), StoreError>;

    /// Whether the message (`key`, `message_id`) still waits for its classification.
    async fn waiting(&self, key: &str, message_id: &str) -> Result<bool, StoreError>;
}

/// Operator access to the dead-letter queue (admin API, CLI).
#[async_trait]
pub trait DeadLetterQueue: Send + Sync {
    /// Entries matching `filter`, newest first.
    async fn list(&self, filter: &DlqFilter, page: Page) -> Result<Vec<DeadLetter>, StoreError>;

    /// One entry.
    async fn get(&self, id: i64) -> Result<Option<DeadLetter>, StoreError>;

    /// Moves an entry to `status` (see [`DlqStatus::can_become`]). Marking it
    /// `Replayed` raises `replay_count` and reopens the message's claim, with
    /// a fresh attempt count, so the replayed message is processed again.
    async fn mark(&self, id: i64, status: DlqStatus) -> Result<DeadLetter, StoreError>;

    /// Takes back a replay whose copy could not be sent: the entry is
    /// `failed` again (replay count lowered) and its message's claim
    /// dead-lettered again. Does nothing unless the entry is `replayed`.
    async fn undo_replay(&self, id: i64) -> Result<(), StoreError>;

    /// Entries matching `filter` grouped by fingerprint, largest group first.
    async fn groups(&self, filter: &DlqFilter, limit: u64) -> Result<Vec<FailureGroup>, StoreError>;
}
