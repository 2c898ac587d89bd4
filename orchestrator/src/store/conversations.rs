//! The inbox's history: conversations (organisation + customer phone) and
//! their messages, written by the store in the pipeline's own transactions
//! (see [`ConversationTurn`]) and read by `/api/v1/conversations`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::StoreError;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the customer.
    Inbound,
    /// To the customer: a reply, or a message the business started.
    Outbound,
}

impl Direction {
    /// The `direction` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    pub(crate) fn parse(value: &str) -> Self {
        if value == "outbound" { Direction::Outbound } else { Direction::Inbound }
    }
}

/// One message of a thread, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadEntry {
    /// Which way it went.
    pub direction: Direction,
    /// Inbound: the message id. Outbound: the `outbound_messages` key (the
    /// message replied to, or the send API's id), with `reply_index`.
    pub message_id: String,
    /// Position among the replies to one message (0 for inbound and API messages).
    pub reply_index: u32,
    /// What the thread shows.
    pub text: Option<String>,
    /// The intent it was handled with (inbound).
    pub intent: Option<String>,
}

/// What one completed message adds to its conversation: the message and
/// its reply. The store writes it with the completion, once.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationTurn {
    /// The customer's phone.
    pub phone: String,
    /// The inbound message, then the reply, if any.
    pub entries: Vec<ThreadEntry>,
}

/// A conversation in the inbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conversation {
    /// The organisation.
    pub tenant_id: String,
    /// The customer's phone.
    pub phone: String,
    /// When its latest message was written.
    pub last_message_at: DateTime<Utc>,
    /// Which way the latest went.
    pub last_direction: Direction,
    /// The latest message's text.
    pub last_preview: Option<String>,
    /// Inbound messages since the thread was last read.
    pub unread: u32,
    /// Messages in the thread.
    pub message_count: u32,
}

/// A message of a thread, with its delivery status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadMessage {
    /// Position in the history (pages go by it).
    pub id: i64,
    /// Which way it went.
    pub direction: Direction,
    /// See [`ThreadEntry::message_id`].
    pub message_id: String,
    /// What the thread shows.
    pub text: Option<String>,
    /// The intent it was handled with (inbound).
    pub intent: Option<String>,
    /// Inbound: `received`, or `dead_lettered` while its message waits in
    /// the dead-letter queue. Outbound: its `outbound_messages` status
    /// (`queued`, `sent`, `delivered`, `read`, `failed`, ...), or `pending`
    /// before the sender has taken it.
    pub status: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// A phone as conversations are keyed by it: E.164 with its `+` (a producer
/// may leave it out); empty stays empty.
pub fn conversation_phone(phone: &str) -> String {
    let phone = phone.trim();
    match phone.starts_with('+') || phone.is_empty() {
        true => phone.to_owned(),
        false => format!("+{phone}"),
    }
}

/// Where a page of conversations starts: before this (time, phone); the
/// time at full precision, since a batch writes many conversations at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationCursor {
    /// The last conversation's `last_message_at`.
    pub at: DateTime<Utc>,
    /// Its organisation and phone (ties).
    pub tenant_id: String,
    /// Its phone.
    pub phone: String,
}

impl ConversationCursor {
    /// The page after `last`, the last conversation of one.
    pub fn after(last: &Conversation) -> Self {
        Self { at: last.last_message_at, tenant_id: last.tenant_id.clone(), phone: last.phone.clone() }
    }

    /// The opaque text the API hands out.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let raw = format!(
            "{}\n{}\n{}",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            self.tenant_id,
            self.phone
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Reads [`encode`](Self::encode)'s text; `None` when it is not one.
    pub fn decode(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut parts = raw.splitn(3, '\n');
        let at = DateTime::parse_from_rfc3339(parts.next()?).ok()?.with_timezone(&Utc);
        Some(Self { at, tenant_id: parts.next()?.to_owned(), phone: parts.next()?.to_owned() })
    }
}

/// The inbox's reads.
#[async_trait]
pub trait Conversations: Send + Sync {
    /// Conversations latest first: one organisation's, or every one's
    /// (`tenant: None`), after `before`.
    async fn conversations(
        &self,
        tenant: Option<&str>,
        before: Option<&ConversationCursor>,
        limit: u64,
    ) -> Result<Vec<Conversation>, StoreError>;

    /// A thread's messages, newest first, with ids below `before`.
    async fn thread(
        &self,
        tenant: &str,
        phone: &str,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<ThreadMessage>, StoreError>;

    /// Marks a thread read; `false` when there is no such conversation.
    async fn mark_read(&self, tenant: &str, phone: &str) -> Result<bool, StoreError>;
}
