//! The send API's request and answer bodies (the message-service design's
//! shapes), with the OpenAPI schemas generated from them under `http`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Priority;

/// `POST /api/v1/messages`: one message to send now or at `scheduled_at`.
/// Exactly one of `content` and `template`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The recipient, E.164 (`+` and 8 to 15 digits).
    #[cfg_attr(feature = "http", schema(example = "+15551234567"))]
    pub recipient_phone: Option<String>,
    /// A free-form message: only inside WhatsApp's 24-hour window.
    pub content: Option<MessageContent>,
    /// Values of the `{placeholder}`s in `content.text` (strings, numbers or booleans).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "http", schema(value_type = Object))]
    pub variables: BTreeMap<String, Value>,
    /// A pre-approved template: the only kind allowed outside the window.
    pub template: Option<TemplateMessage>,
    /// When to send it (RFC 3339, in the future, at most 30 days ahead); absent: now.
    #[cfg_attr(feature = "http", schema(example = "2026-12-24T09:00:00Z"))]
    pub scheduled_at: Option<String>,
    /// The business number to send from; absent: the sender's default.
    pub phone_number_id: Option<String>,
    /// Sending priority (`Low`, `Normal`, `Urgent`); absent: `Normal`.
    #[cfg_attr(feature = "http", schema(value_type = Option<String>))]
    pub priority: Option<Priority>,
}

/// A text, or a media message with an optional caption.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MessageContent {
    /// The text (at most 4,096 characters once filled; a media caption at most 1,024).
    #[cfg_attr(feature = "http", schema(example = "Hi {name}, your order {order} is ready"))]
    pub text: Option<String>,
    /// A public URL of an image, document, audio or video.
    pub media_url: Option<String>,
    /// `image`, `document`, `audio` or `video`; absent: from the URL's extension.
    pub media_type: Option<String>,
}

/// A WhatsApp template message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TemplateMessage {
    /// The approved template's name.
    #[cfg_attr(feature = "http", schema(example = "order_ready"))]
    pub name: Option<String>,
    /// Its language code.
    #[cfg_attr(feature = "http", schema(example = "en_US"))]
    pub language: Option<String>,
    /// The Cloud API's `components` (`header`, `body`, `button`), sent as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "http", schema(value_type = Vec<Object>))]
    pub components: Vec<Value>,
}

/// `POST /api/v1/messages/batch`: up to 1,000 messages, each taken or refused on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The messages, each shaped like a `POST /api/v1/messages` body.
    #[cfg_attr(feature = "http", schema(value_type = Vec<SendRequest>))]
    pub messages: Vec<Value>,
}

/// What is wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// The field, dotted (`content.text`, `template.name`, `variables.name`).
    pub field: String,
    /// Why it was refused.
    pub message: String,
}

impl FieldError {
    /// An error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// The answer to an accepted message (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Accepted {
    /// The message's id, for `GET` and `DELETE /api/v1/messages/{id}`.
    pub id: String,
    /// `queued` or `scheduled`.
    pub status: String,
    /// When it is due, for a scheduled message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

/// One entry of a batch's answer, in the request's order: an id or the errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BatchEntry {
    /// The entry's position in the request.
    pub index: usize,
    /// The message's id, when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `queued` or `scheduled` when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The answer to a batch (202 when at least one was accepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BatchAccepted {
    /// Entries accepted.
    pub accepted: usize,
    /// Entries refused.
    pub rejected: usize,
    /// One per entry, in order.
    pub results: Vec<BatchEntry>,
}

/// One step of a message's status history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct StatusChange {
    /// `scheduled`, `queued`, `sent`, `delivered`, `read`, `failed` or `cancelled`.
    pub status: String,
    /// When (RFC 3339).
    pub at: String,
    /// WhatsApp's error code, for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// WhatsApp's error title (or our reason), for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A message with its status history (`GET /api/v1/messages/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct MessageView {
    /// The message's id.
    pub id: String,
    /// The recipient.
    pub recipient_phone: String,
    /// The business number it goes out from, when one was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// Where it is now.
    pub status: String,
    /// `text`, `media` or `template`.
    pub kind: String,
    /// Sends tried.
    pub attempts: u32,
    /// WhatsApp's id of the sent message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wamid: Option<String>,
    /// When it was accepted.
    pub created_at: String,
    /// When it is due, for a scheduled message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    /// Every status it had, oldest first.
    pub history: Vec<StatusChange>,
}

/// A page of `GET /api/v1/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct MessageList {
    /// Newest first.
    pub messages: Vec<MessageView>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
