//! `MessageProcessed`: what became of a message, for live inboxes. Every
//! finished attempt (completed, retried, dead-lettered) and every delivery
//! status of a message we sent is one, on its own topic
//! (`conversation.processed`), read by `/api/v1/stream`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessedKind {
    /// Handled: its actions ran and its reply (if any) is on its way.
    Completed,
    /// This attempt failed; another is scheduled.
    Retried,
    /// Parked in the dead-letter queue.
    DeadLettered,
    /// WhatsApp reported a delivery status of a message we sent.
    Status,
}

/// One finished message or delivery status, as an inbox shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageProcessed {
    /// The organisation; streams are filtered by it.
    pub tenant_id: String,
    /// The customer's phone (the Kafka key).
    pub phone: String,
    /// The inbound message's id; for a status, the `outbound_messages` key
    /// of the message sent (the message replied to, or `api:<id>`).
    pub message_id: String,
    /// What happened.
    pub kind: ProcessedKind,
    /// `inbound` (a customer's message) or `outbound` (a status of ours).
    pub direction: crate::store::Direction,
    /// The inbound message's text (or its kind, `[image]`).
    #[serde(default)]
    pub text: Option<String>,
    /// The intent it was handled with.
    #[serde(default)]
    pub intent: Option<String>,
    /// The actions that ran.
    #[serde(default)]
    pub actions: Vec<String>,
    /// The reply's text, when there is one.
    #[serde(default)]
    pub reply: Option<String>,
    /// For `status`: `sent`, `delivered`, `read` or `failed`.
    #[serde(default)]
    pub status: Option<String>,
    /// Why it failed (retried, dead-lettered, a failed delivery).
    #[serde(default)]
    pub error: Option<String>,
    /// The attempt it was (1-based).
    #[serde(default)]
    pub attempt: u32,
    /// When it happened.
    #[serde(deserialize_with = "super::timestamp::deserialize")]
    pub occurred_at: DateTime<Utc>,
}

impl MessageProcessed {
    /// A delivery status (`sent`, `delivered`, `read`, `failed`) of the
    /// message we sent under `message_id` (its `outbound_messages` key).
    pub fn status(tenant_id: &str, phone: &str, message_id: &str, status: &str, error: Option<String>) -> Self {
        let mut event = Self::new(tenant_id, phone, message_id, ProcessedKind::Status);
        event.status = Some(status.to_owned());
        event.error = error;
        event
    }

    /// An event for `message_id` of `phone` (given its `+` when it has
    /// none, as the conversations are keyed) in `tenant_id`, happening now;
    /// the rest is filled in by the caller.
    pub fn new(tenant_id: &str, phone: &str, message_id: &str, kind: ProcessedKind) -> Self {
        let direction = if kind == ProcessedKind::Status {
            crate::store::Direction::Outbound
        } else {
            crate::store::Direction::Inbound
        };
        Self {
            tenant_id: tenant_id.to_owned(),
            phone: crate::store::conversation_phone(phone),
            message_id: message_id.to_owned(),
            kind,
            direction,
            text: None,
            intent: None,
            actions: Vec::new(),
            reply: None,
            status: None,
            error: None,
            attempt: 1,
            occurred_at: Utc::now(),
        }
    }
}
