//! Inbound events: messages and interactive replies from WhatsApp users.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The WhatsApp message kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageType {
    /// Plain text.
    Text,
    /// A picture.
    Image,
    /// A voice note or audio file.
    Audio,
    /// A video.
    Video,
    /// A file.
    Document,
    /// A shared location.
    Location,
    /// A shared contact card.
    Contact,
    /// A sticker.
    Sticker,
}

/// What a message carries, externally tagged: `{"Text":{"body":"hi"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MessageContent {
    /// A text body.
    Text {
        /// The text.
        body: String,
    },
    /// An image, audio, video, document or sticker, by WhatsApp media id.
    Media {
        /// WhatsApp's media id.
        media_id: String,
        /// Caption, when the user wrote one.
        #[serde(default)]
        caption: Option<String>,
        /// MIME type, when known.
        #[serde(default)]
        mime_type: Option<String>,
    },
    /// A shared location.
    Location {
        /// Degrees north.
        latitude: f64,
        /// Degrees east.
        longitude: f64,
        /// Place name.
        #[serde(default)]
        name: Option<String>,
        /// Street address.
        #[serde(default)]
        address: Option<String>,
    },
    /// A shared contact.
    Contact {
        /// Display name.
        name: String,
        /// The contact's phone number.
        #[serde(default)]
        phone_number: Option<String>,
        /// The contact's e-mail.
        #[serde(default)]
        email: Option<String>,
    },
}

impl MessageContent {
    /// The text a classifier can read: the body, a caption, or a place name.
    pub fn text(&self) -> Option<&str> {
        match self {
            MessageContent::Text { body } => Some(body),
            MessageContent::Media { caption, .. } => caption.as_deref(),
            MessageContent::Location { name, .. } => name.as_deref(),
            MessageContent::Contact { .. } => None,
        }
    }
}

/// `MessageReceived`: a message a user sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageReceived {
    /// WhatsApp's message id (`wamid...`), the dedupe key.
    pub message_id: String,
    /// The sender, E.164 (`+15551234567`); the Kafka key.
    pub from_phone: String,
    /// The message kind.
    pub message_type: MessageType,
    /// The content.
    pub content: MessageContent,
    /// When WhatsApp received it.
    #[serde(deserialize_with = "super::timestamp::deserialize")]
    pub received_at: DateTime<Utc>,
    /// Free string map; `context_message_id` when replying to a message,
    /// `tenant_id` to pick the tenant.
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// The kind of interactive reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InteractionType {
    /// A reply button was tapped.
    ButtonReply,
    /// A list row was chosen.
    ListReply,
}

/// What the user chose, externally tagged: `{"Button":{"id":..,"title":..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Selection {
    /// A reply button.
    Button {
        /// The button id we sent.
        id: String,
        /// Its title.
        title: String,
    },
    /// A list row.
    List {
        /// The row id we sent.
        id: String,
        /// Its title.
        title: String,
        /// Its description.
        #[serde(default)]
        description: Option<String>,
    },
}

impl Selection {
    /// The id of the chosen button or row.
    pub fn id(&self) -> &str {
        match self {
            Selection::Button { id, .. } | Selection::List { id, .. } => id,
        }
    }

    /// The title of the chosen button or row.
    pub fn title(&self) -> &str {
        match self {
            Selection::Button { title, .. } | Selection::List { title, .. } => title,
        }
    }
}

/// `InteractionReceived`: a user answered an interactive message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractionReceived {
    /// The message the user answered.
    pub original_message_id: String,
    /// The user, E.164; the Kafka key.
    pub from_phone: String,
    /// Button or list.
    pub interaction_type: InteractionType,
    /// What was chosen.
    pub selection: Selection,
    /// When WhatsApp received it.
    #[serde(deserialize_with = "super::timestamp::deserialize")]
    pub received_at: DateTime<Utc>,
    /// WhatsApp's id of the reply itself (optional, newer producers send it);
    /// the dedupe key when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}
