//! Messages waiting for the external AI service's classification.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;

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
