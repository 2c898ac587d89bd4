//! The dead-letter queue's rows, filters and operator access.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::event::FailureType;

/// Where a message came from on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceInfo {
    /// The topic it was consumed from; replay sends the copy there (to the original, not its `.retry` twin).
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there, to find the original record.
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
    /// The customer's message in its conversation's history (in
    /// `tenant_id`), written with the entry by a store that keeps one.
    pub conversation: Option<super::ConversationTurn>,
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
    /// Groups entries that failed for the same cause (see [`failure_fingerprint`](crate::dlq::failure_fingerprint)).
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
    /// The group's [`failure_fingerprint`](crate::dlq::failure_fingerprint).
    pub fingerprint: String,
    /// Their failure type.
    pub failure_type: FailureType,
    /// The error with ids and numbers taken out (see [`normalize_error`](crate::dlq::normalize_error)).
    pub pattern: String,
    /// How many entries match.
    pub count: u64,
    /// The oldest entry's time.
    pub first_at: DateTime<Utc>,
    /// The newest entry's time.
    pub last_at: DateTime<Utc>,
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
