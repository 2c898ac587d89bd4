//! `ResponseReady`: a reply for the response sender to deliver.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The WhatsApp message kind of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResponseType {
    /// Plain text.
    Text,
    /// Buttons or a list.
    Interactive,
    /// An image, video, audio or document.
    Media,
    /// A pre-approved template.
    Template,
}

/// How urgently a reply should be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Priority {
    /// Can wait.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Escalated: send first.
    Urgent,
}

/// A reply button.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    /// Id returned in the `InteractionReceived` when tapped.
    pub id: String,
    /// Label (WhatsApp allows 20 characters).
    pub title: String,
}

/// A row of a list message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRow {
    /// Id returned when chosen.
    pub id: String,
    /// Label.
    pub title: String,
    /// Second line.
    #[serde(default)]
    pub description: Option<String>,
}

/// A titled group of list rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSection {
    /// Section title.
    pub title: String,
    /// Its rows.
    pub rows: Vec<ListRow>,
}

/// What a reply says, externally tagged: `{"Text":{"message":".."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponseContent {
    /// Plain text.
    Text {
        /// The text.
        message: String,
    },
    /// Text with up to three reply buttons.
    Interactive {
        /// The text above the buttons.
        body_text: String,
        /// The buttons.
        buttons: Vec<Button>,
    },
    /// Text with a button opening a list.
    List {
        /// The text above the button.
        body_text: String,
        /// Label of the button that opens the list.
        button_text: String,
        /// The list.
        sections: Vec<ListSection>,
    },
    /// A media message, by WhatsApp media id or public URL.
    Media {
        /// `image`, `video`, `audio` or `document`.
        media_type: String,
        /// WhatsApp media id.
        #[serde(default)]
        media_id: Option<String>,
        /// Public URL.
        #[serde(default)]
        url: Option<String>,
        /// Caption.
        #[serde(default)]
        caption: Option<String>,
    },
    /// A pre-approved template.
    Template {
        /// Template name.
        name: String,
        /// Language code, e.g. `en_US`.
        language: String,
        /// Body parameters, in order (text only; `components` says more).
        #[serde(default)]
        parameters: Vec<String>,
        /// The Cloud API's `template.components` as given (header, body and
        /// button parameters of any kind); when present, sent instead of
        /// `parameters`. Absent from the wire when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        components: Vec<serde_json::Value>,
    },
}

impl ResponseContent {
    /// What an inbox shows of it: its text, a caption, or its kind
    /// (`[image]`, `[template order_update]`).
    pub fn preview(&self) -> String {
        match self {
            ResponseContent::Text { message } => message.clone(),
            ResponseContent::Interactive { body_text, .. } | ResponseContent::List { body_text, .. } => {
                body_text.clone()
            }
            ResponseContent::Media { caption: Some(caption), .. } => caption.clone(),
            ResponseContent::Media { media_type, .. } => format!("[{media_type}]"),
            ResponseContent::Template { name, .. } => format!("[template {name}]"),
        }
    }

    /// Plain text content.
    pub fn text(message: impl Into<String>) -> Self {
        ResponseContent::Text { message: message.into() }
    }

    /// The `response_type` this content is sent as.
    pub fn response_type(&self) -> ResponseType {
        match self {
            ResponseContent::Text { .. } => ResponseType::Text,
            ResponseContent::Interactive { .. } | ResponseContent::List { .. } => ResponseType::Interactive,
            ResponseContent::Media { .. } => ResponseType::Media,
            ResponseContent::Template { .. } => ResponseType::Template,
        }
    }
}

/// `ResponseReady`: a reply to send to a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseReady {
    /// The message this answers.
    pub original_message_id: String,
    /// The recipient, E.164; the Kafka key.
    pub to_phone: String,
    /// The WhatsApp message kind.
    pub response_type: ResponseType,
    /// What to send.
    pub content: ResponseContent,
    /// When the reply was generated.
    #[serde(deserialize_with = "super::timestamp::deserialize")]
    pub generated_at: DateTime<Utc>,
    /// Sending priority.
    #[serde(default)]
    pub priority: Priority,
    /// Routing details (string map, optional on the wire): [`reply_meta::PHONE_NUMBER_ID`]
    /// (the business number the inbound message reached, which the reply
    /// goes out from), [`reply_meta::TENANT_ID`] and [`reply_meta::REPLY_INDEX`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Keys of [`ResponseReady::metadata`].
pub mod reply_meta {
    /// The WhatsApp business `phone_number_id` to send from.
    pub const PHONE_NUMBER_ID: &str = "phone_number_id";
    /// The tenant the reply belongs to.
    pub const TENANT_ID: &str = "tenant_id";
    /// Position of this reply among the replies to one message (`0` when absent):
    /// a producer that answers one message several times numbers its replies,
    /// since a reply is sent once per (tenant, original message, index).
    pub const REPLY_INDEX: &str = "reply_index";
}

impl ResponseReady {
    /// The business `phone_number_id` to send from, when the reply names one.
    pub fn business_number(&self) -> Option<&str> {
        self.metadata.get(reply_meta::PHONE_NUMBER_ID).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The tenant, when the reply names one.
    pub fn tenant(&self) -> Option<&str> {
        self.metadata.get(reply_meta::TENANT_ID).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The reply's position among the replies to its message (0 when unnumbered or unreadable).
    pub fn reply_index(&self) -> u32 {
        self.metadata.get(reply_meta::REPLY_INDEX).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }
}
