//! Per-key (per-phone) order across retries: blocking a key and parking its
//! later messages.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;

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
