//! What handlers and executors see of the message being processed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::{InteractionReceived, MessageReceived};
use crate::intent::Intent;

/// An inbound event the pipeline processes.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A text, media, location or contacts message.
    Message(MessageReceived),
    /// An interactive reply.
    Interaction(InteractionReceived),
}

impl Inbound {
    /// The dedupe key: the message id, or for an interaction its own id when
    /// sent, else the id of the event that carried it.
    pub fn message_id<'a>(&'a self, event_id: &'a str) -> &'a str {
        match self {
            Inbound::Message(m) => &m.message_id,
            Inbound::Interaction(i) => i.message_id.as_deref().unwrap_or(event_id),
        }
    }

    /// The user's phone number.
    pub fn phone(&self) -> &str {
        match self {
            Inbound::Message(m) => &m.from_phone,
            Inbound::Interaction(i) => &i.from_phone,
        }
    }

    /// Text a classifier or handler can read: a body, caption or chosen title.
    pub fn text(&self) -> Option<&str> {
        match self {
            Inbound::Message(m) => m.content.text(),
            Inbound::Interaction(i) => Some(i.selection.title()),
        }
    }

    /// What an inbox shows of it: its text, else its kind (`[image]`, `[contact]`).
    pub fn preview(&self) -> String {
        match (self.text(), self) {
            (Some(text), _) => text.to_owned(),
            (None, Inbound::Message(m)) => format!("[{}]", format!("{:?}", m.message_type).to_lowercase()),
            (None, Inbound::Interaction(_)) => "[interaction]".to_owned(),
        }
    }

    /// When WhatsApp received it.
    pub fn received_at(&self) -> DateTime<Utc> {
        match self {
            Inbound::Message(m) => m.received_at,
            Inbound::Interaction(i) => i.received_at,
        }
    }

    /// The business the message was sent to, from its metadata: `business_id`,
    /// else the WhatsApp `phone_number_id` it arrived on (set by the webhook).
    pub fn business_hint(&self) -> Option<&str> {
        match self {
            Inbound::Message(m) => {
                m.metadata.get("business_id").or_else(|| m.metadata.get("phone_number_id")).map(String::as_str)
            }
            Inbound::Interaction(_) => None,
        }
    }

    /// The WhatsApp business `phone_number_id` the message arrived on (set by
    /// the webhook); replies go out from it.
    pub fn business_number(&self) -> Option<&str> {
        match self {
            Inbound::Message(m) => m.metadata.get("phone_number_id").map(String::as_str).filter(|v| !v.is_empty()),
            Inbound::Interaction(_) => None,
        }
    }

    /// The tenant the message names in its metadata, if any.
    pub fn tenant_hint(&self) -> Option<&str> {
        match self {
            Inbound::Message(m) => m.metadata.get("tenant_id").map(String::as_str),
            Inbound::Interaction(_) => None,
        }
    }
}

/// A validated message with its intent, as handlers and executors see it.
#[derive(Debug, Clone)]
pub struct MessageContext {
    /// Id of the envelope that carried the message.
    pub event_id: Uuid,
    /// The resolved tenant.
    pub tenant_id: String,
    /// The dedupe key (see [`Inbound::message_id`]).
    pub message_id: String,
    /// The message itself.
    pub inbound: Inbound,
    /// The intent it was classified with (by the classifier or the AI service).
    pub intent: Intent,
    /// This attempt's number, 1-based.
    pub attempt: u32,
    /// Attempts allowed before the dead-letter queue.
    pub max_attempts: u32,
    /// Number of this run of the saga (every new attempt gets a new run; a
    /// resumed run keeps its number). Part of idempotency keys.
    pub run: u32,
}

impl MessageContext {
    /// The user's phone number.
    pub fn phone(&self) -> &str {
        self.inbound.phone()
    }

    /// The lead id: the classifier's, else the phone number.
    pub fn lead_id(&self) -> &str {
        self.intent.lead_id.as_deref().unwrap_or_else(|| self.inbound.phone())
    }
}
