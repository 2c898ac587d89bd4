//! The record of every reply (`outbound_messages`): what makes a reply go
//! out once, and what an operator reads about it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{NewDeadLetter, StoreError};

/// Identifies a reply: each is sent once per tenant, original message and index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyKey {
    /// The tenant.
    pub tenant_id: String,
    /// The message the reply answers.
    pub original_message_id: String,
    /// Its position among the replies to that message (0 for the first or only one).
    pub reply_index: u32,
}

impl ReplyKey {
    /// The id a reply's dead-letter entry carries (`message_id` column):
    /// distinct from the inbound message's own id, so replaying one never
    /// reopens the other.
    pub fn dead_letter_id(&self) -> String {
        format!("reply:{}#{}", self.original_message_id, self.reply_index)
    }
}

/// A reply about to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundReply {
    /// Which reply.
    pub key: ReplyKey,
    /// The business number it goes out from (`None`: the sender's default).
    pub phone_number_id: Option<String>,
    /// The recipient.
    pub recipient_phone: String,
    /// The `ResponseReady` as JSON.
    pub payload: String,
}

/// A held claim on sending a reply: only its holder records the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLease {
    /// The reply's row.
    pub id: i64,
    /// Which reply.
    pub key: ReplyKey,
    /// Random per claim; fenced writes check it.
    pub token: i64,
}

/// The answer to [`OutboundMessages::claim_send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendClaim {
    /// This worker sends it now.
    Acquired {
        /// Pass it to the write that records the result.
        lease: ReplyLease,
        /// The attempt this is, 1-based, kept across restarts.
        attempt: u32,
    },
    /// Already sent (or further along: delivered, read): not again.
    AlreadySent {
        /// WhatsApp's id of the sent message.
        wamid: Option<String>,
    },
    /// Already dead-lettered and not replayed since.
    Failed,
    /// Not to be sent by this copy: cancelled through the send API, or
    /// scheduled for later (the scheduler publishes it when due).
    Withheld {
        /// `cancelled` or `scheduled`.
        status: OutboundStatus,
    },
    /// Another worker is sending it (or died doing so) until its lease runs out.
    Busy {
        /// When that lease runs out.
        lease_expires_at: DateTime<Utc>,
    },
}

/// Status of a reply or send API message (`status` column): a reply moves
/// from `queued` through `sent`, `delivered` and `read` (or to `failed`); a
/// scheduled message starts `scheduled`, and may be `cancelled` until it goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutboundStatus {
    /// Waiting to be sent (or between attempts).
    Queued,
    /// WhatsApp accepted it.
    Sent,
    /// Delivered to the phone.
    Delivered,
    /// Read.
    Read,
    /// Dead-lettered, or WhatsApp reported it failed.
    Failed,
    /// A send API message waiting for its `scheduled_at`.
    Scheduled,
    /// A send API message cancelled before it went out.
    Cancelled,
}

impl OutboundStatus {
    /// Every status.
    pub const ALL: [OutboundStatus; 7] = [
        OutboundStatus::Queued,
        OutboundStatus::Sent,
        OutboundStatus::Delivered,
        OutboundStatus::Read,
        OutboundStatus::Failed,
        OutboundStatus::Scheduled,
        OutboundStatus::Cancelled,
    ];

    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundStatus::Queued => "queued",
            OutboundStatus::Sent => "sent",
            OutboundStatus::Delivered => "delivered",
            OutboundStatus::Read => "read",
            OutboundStatus::Failed => "failed",
            OutboundStatus::Scheduled => "scheduled",
            OutboundStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a column value (or a webhook status).
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

/// A row of `outbound_messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// Row id.
    pub id: i64,
    /// Which reply.
    pub key: ReplyKey,
    /// The business number it went out from (`None`: the sender's default).
    pub phone_number_id: Option<String>,
    /// The recipient.
    pub recipient_phone: String,
    /// Where it is.
    pub status: OutboundStatus,
    /// Sends tried.
    pub attempt_count: u32,
    /// WhatsApp's id of the sent message.
    pub wamid: Option<String>,
    /// WhatsApp's error code of the last failure.
    pub error_code: Option<i64>,
    /// The last failure, readable.
    pub error: Option<String>,
    /// When it was first seen.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When WhatsApp accepted it.
    pub sent_at: Option<DateTime<Utc>>,
}

/// The result of a failed attempt, for [`OutboundMessages::release_send`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFailure<'a> {
    /// WhatsApp's error code.
    pub code: Option<i64>,
    /// What went wrong.
    pub error: &'a str,
    /// The attempt did not count (deferred: open breaker, rate limit, busy).
    pub refund: bool,
}

/// Every reply we send, and its fate.
///
/// Contract: [`claim_send`](Self::claim_send) is atomic across workers and
/// processes; the fenced writes change nothing (and answer
/// [`StoreError::LeaseLost`]) once the lease is no longer the caller's.
#[async_trait]
pub trait OutboundMessages: Send + Sync {
    /// Records the reply if new and claims sending it for `lease`: a new
    /// attempt. A reply already sent, dead-lettered or held by a live lease
    /// is not claimed.
    async fn claim_send(&self, reply: &OutboundReply, lease: Duration) -> Result<SendClaim, StoreError>;

    /// Records that WhatsApp accepted the reply, with the id it returned.
    async fn record_sent(&self, lease: &ReplyLease, wamid: Option<&str>) -> Result<(), StoreError>;

    /// Gives the reply back after an attempt that did not send it, keeping
    /// the error; it is sent again when its retry copy comes.
    async fn release_send(&self, lease: &ReplyLease, failure: &AttemptFailure<'_>) -> Result<(), StoreError>;

    /// Files `entry` in the dead-letter queue and, with a lease, marks the
    /// reply `failed` with its error, in one transaction; returns the entry's
    /// id. Replaying that entry (see [`super::DeadLetterQueue::mark`])
    /// makes the reply sendable again, attempts counted from zero.
    async fn fail_send(
        &self,
        lease: Option<&ReplyLease>,
        code: Option<i64>,
        entry: &NewDeadLetter,
    ) -> Result<i64, StoreError>;

    /// One reply's row.
    async fn outbound(&self, key: &ReplyKey) -> Result<Option<OutboundMessage>, StoreError>;
}
