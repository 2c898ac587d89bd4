//! The envelope every event travels in, and its fast decoder.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{
    AiProcessRequest, AiProcessResult, InteractionReceived, MessageFailed, MessageProcessed, MessageReceived,
    ResponseReady, topics,
};

/// Largest envelope [`Envelope::decode`] accepts; bigger payloads are rejected
/// unparsed. A WhatsApp message's envelope is a few KiB (text is capped at
/// 4096 characters, media travel as ids); the limit sits well above that and
/// well below Kafka's default 1 MB message size, so an oversized payload
/// can actually arrive and is refused before any parsing cost.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The kind of event an envelope carries (`event_type` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// An inbound WhatsApp message.
    MessageReceived,
    /// An inbound interactive reply.
    InteractionReceived,
    /// A reply ready to send.
    ResponseReady,
    /// A message that ended in the dead-letter queue.
    MessageFailed,
    /// A request to the AI service.
    AiProcessRequest,
    /// The AI service's answer.
    AiProcessResult,
    /// What became of a message (for live inboxes, `conversation.processed`).
    MessageProcessed,
}

impl EventType {
    /// Every event type, in wire order.
    pub const ALL: [EventType; 7] = [
        EventType::MessageReceived,
        EventType::InteractionReceived,
        EventType::ResponseReady,
        EventType::MessageFailed,
        EventType::AiProcessRequest,
        EventType::AiProcessResult,
        EventType::MessageProcessed,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageReceived => "MessageReceived",
            EventType::InteractionReceived => "InteractionReceived",
            EventType::ResponseReady => "ResponseReady",
            EventType::MessageFailed => "MessageFailed",
            EventType::AiProcessRequest => "AiProcessRequest",
            EventType::AiProcessResult => "AiProcessResult",
            EventType::MessageProcessed => "MessageProcessed",
        }
    }

    /// Parses a wire name; `None` for an unknown event type.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The topic events of this type are published to.
    pub fn topic(self) -> &'static str {
        match self {
            EventType::MessageReceived => topics::MESSAGES,
            EventType::InteractionReceived => topics::INTERACTIONS,
            EventType::ResponseReady => topics::RESPONSES,
            EventType::MessageFailed => topics::FAILURES,
            EventType::AiProcessRequest => topics::AI_REQUEST,
            EventType::AiProcessResult => topics::AI_RESULT,
            EventType::MessageProcessed => topics::PROCESSED,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed payload (`data`) of an envelope; its variant decides `event_type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EventData {
    /// See [`MessageReceived`].
    MessageReceived(MessageReceived),
    /// See [`InteractionReceived`].
    InteractionReceived(InteractionReceived),
    /// See [`ResponseReady`].
    ResponseReady(ResponseReady),
    /// See [`MessageFailed`].
    MessageFailed(MessageFailed),
    /// See [`AiProcessRequest`].
    AiProcessRequest(AiProcessRequest),
    /// See [`AiProcessResult`].
    AiProcessResult(AiProcessResult),
    /// See [`MessageProcessed`].
    MessageProcessed(MessageProcessed),
}

impl EventData {
    /// The `event_type` this payload is sent as.
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::MessageReceived(_) => EventType::MessageReceived,
            EventData::InteractionReceived(_) => EventType::InteractionReceived,
            EventData::ResponseReady(_) => EventType::ResponseReady,
            EventData::MessageFailed(_) => EventType::MessageFailed,
            EventData::AiProcessRequest(_) => EventType::AiProcessRequest,
            EventData::AiProcessResult(_) => EventType::AiProcessResult,
            EventData::MessageProcessed(_) => EventType::MessageProcessed,
        }
    }

    /// The user's phone number, the Kafka key, where the event carries one.
    pub fn phone(&self) -> Option<&str> {
        match self {
            EventData::MessageReceived(m) => Some(&m.from_phone),
            EventData::InteractionReceived(i) => Some(&i.from_phone),
            EventData::ResponseReady(r) => Some(&r.to_phone),
            EventData::MessageFailed(f) => Some(&f.phone),
            EventData::AiProcessRequest(r) => Some(&r.from_phone),
            EventData::AiProcessResult(_) => None,
            EventData::MessageProcessed(p) => Some(&p.phone),
        }
    }
}

/// Who produced an envelope and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Name of the producing component.
    #[serde(default)]
    pub processed_by: String,
    /// When the producer handled it.
    #[serde(default = "Utc::now", deserialize_with = "super::timestamp::deserialize")]
    pub processing_timestamp: DateTime<Utc>,
}

impl EventMetadata {
    /// Metadata stamped now by `processed_by`.
    pub fn now(processed_by: impl Into<String>) -> Self {
        Self { processed_by: processed_by.into(), processing_timestamp: Utc::now() }
    }
}

/// The JSON envelope every event travels in.
///
/// ```
/// use orchestrator::event::{Envelope, EventType};
/// let bytes = br#"{"event_id":"7d0c5b0e-8a55-4a57-9b0f-6d7f3a8f5c11","timestamp":"2025-01-02T12:00:00Z",
///   "event_type":"MessageReceived","version":"1.0","data":{"message_id":"wamid.1","from_phone":"+15551234567",
///   "message_type":"Text","content":{"Text":{"body":"hi"}},"received_at":"2025-01-02T12:00:00Z","metadata":{}},
///   "metadata":{"processed_by":"webhook_event_publisher","processing_timestamp":"2025-01-02T12:00:01Z"},
///   "attempt_count":1,"max_attempts":3}"#;
/// let envelope = Envelope::decode(bytes).unwrap();
/// assert_eq!(envelope.event_type(), EventType::MessageReceived);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id of this event (UUID v4).
    pub event_id: Uuid,
    /// When the event was created.
    pub timestamp: DateTime<Utc>,
    /// Schema version, `"1.0"`.
    pub version: String,
    /// The typed payload.
    pub data: EventData,
    /// Producer metadata.
    pub metadata: EventMetadata,
    /// 1 for the first delivery, raised on each retry.
    pub attempt_count: u32,
    /// Attempts allowed before the dead-letter queue; `None` uses the retry
    /// policy's. Always written on the wire (the integration guide's models
    /// require it): `None` is written as [`default_max_attempts`].
    pub max_attempts: Option<u32>,
}

/// The `max_attempts` written for an envelope that sets none: the process's
/// retry policy's (4 unless [`set_default_max_attempts`] said otherwise),
/// which is what the consumers of this process apply when they read it back.
pub fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets [`default_max_attempts`] (at start, from the retry policy's
/// `max_attempts`: `MAX_RETRIES` + 1).
pub fn set_default_max_attempts(attempts: u32) {
    DEFAULT_MAX_ATTEMPTS.store(attempts.max(1), std::sync::atomic::Ordering::Relaxed);
}

static DEFAULT_MAX_ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(4);

/// Why bytes could not be turned into an [`Envelope`]. Every variant is a
/// `SerializationError` in the dead-letter queue.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload exceeds [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {size} bytes exceeds the {limit} byte limit")]
    Oversized {
        /// Size received.
        size: usize,
        /// Size allowed.
        limit: usize,
    },
    /// Not JSON, or the envelope's own fields are missing or mistyped.
    #[error("malformed envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    /// `event_type` names no known event.
    #[error("unknown event type `{0}`")]
    UnknownEventType(String),
    /// `data` does not match its `event_type`.
    #[error("invalid {event_type} data: {source}")]
    InvalidData {
        /// The declared event type.
        event_type: EventType,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl Envelope {
    /// A new envelope for `data`, with a fresh id, stamped now, first
    /// attempt of [`default_max_attempts`].
    pub fn new(data: EventData, processed_by: impl Into<String>) -> Self {
        let now = Utc::now();
        Self {
            event_id: Uuid::new_v4(),
            timestamp: now,
            version: "1.0".to_owned(),
            data,
            metadata: EventMetadata { processed_by: processed_by.into(), processing_timestamp: now },
            attempt_count: 1,
            max_attempts: Some(default_max_attempts()),
        }
    }

    /// The event type of the payload.
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// Decodes wire bytes, borrowing the payload instead of building a JSON tree.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(DecodeError::Oversized { size: bytes.len(), limit: MAX_PAYLOAD_BYTES });
        }
        let raw: RawEnvelope<'_, &RawValue> = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        raw.into_envelope()
    }

    /// Encodes to wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs and strings into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            event_id: &'a Uuid,
            timestamp: &'a DateTime<Utc>,
            event_type: EventType,
            version: &'a str,
            data: &'a EventData,
            metadata: &'a EventMetadata,
            attempt_count: u32,
            max_attempts: u32,
        }
        Wire {
            event_id: &self.event_id,
            timestamp: &self.timestamp,
            event_type: self.event_type(),
            version: &self.version,
            data: &self.data,
            metadata: &self.metadata,
            attempt_count: self.attempt_count,
            max_attempts: self.max_attempts.unwrap_or_else(default_max_attempts),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A JSON tree works with every deserializer; `decode` is the fast path.
        let raw = RawEnvelope::<'de, serde_json::Value>::deserialize(deserializer)?;
        raw.into_envelope().map_err(D::Error::custom)
    }
}

/// The envelope with `data` still undecoded, so its type can be picked first.
#[derive(Deserialize)]
struct RawEnvelope<'a, D> {
    event_id: Uuid,
    #[serde(deserialize_with = "super::timestamp::deserialize")]
    timestamp: DateTime<Utc>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(default, borrow)]
    version: Option<Cow<'a, str>>,
    data: D,
    #[serde(default)]
    metadata: Option<EventMetadata>,
    #[serde(default = "first_attempt")]
    attempt_count: u32,
    #[serde(default)]
    max_attempts: Option<u32>,
}

fn first_attempt() -> u32 {
    1
}

/// Something `data` can be parsed from.
trait DataSource {
    fn parse<T: DeserializeOwned>(self) -> Result<T, serde_json::Error>;
}

impl DataSource for &RawValue {
    fn parse<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }
}

impl DataSource for serde_json::Value {
    fn parse<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self)
    }
}

impl<D: DataSource> RawEnvelope<'_, D> {
    fn into_envelope(self) -> Result<Envelope, DecodeError> {
        let event_type = EventType::parse(&self.event_type)
            .ok_or_else(|| DecodeError::UnknownEventType(self.event_type.clone().into_owned()))?;
        let invalid = |source| DecodeError::InvalidData { event_type, source };
        let data = match event_type {
            EventType::MessageReceived => EventData::MessageReceived(self.data.parse().map_err(invalid)?),
            EventType::InteractionReceived => EventData::InteractionReceived(self.data.parse().map_err(invalid)?),
            EventType::ResponseReady => EventData::ResponseReady(self.data.parse().map_err(invalid)?),
            EventType::MessageFailed => EventData::MessageFailed(self.data.parse().map_err(invalid)?),
            EventType::AiProcessRequest => EventData::AiProcessRequest(self.data.parse().map_err(invalid)?),
            EventType::AiProcessResult => EventData::AiProcessResult(self.data.parse().map_err(invalid)?),
            EventType::MessageProcessed => EventData::MessageProcessed(self.data.parse().map_err(invalid)?),
        };
        Ok(Envelope {
            event_id: self.event_id,
            timestamp: self.timestamp,
            version: self.version.map_or_else(|| "1.0".to_owned(), Cow::into_owned),
            data,
            metadata: self
                .metadata
                .unwrap_or_else(|| EventMetadata { processed_by: String::new(), processing_timestamp: self.timestamp }),
            attempt_count: self.attempt_count,
            max_attempts: self.max_attempts,
        })
    }
}
