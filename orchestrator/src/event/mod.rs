//! The Kafka wire format: the envelope and every event type of the design.
//!
//! Content enums are externally tagged (`{"Text":{"body":".."}}`), exactly as the
//! Python and Node services already parse them. Unknown fields are ignored and
//! optional fields may be missing (schema evolution).

mod ai;
mod envelope;
mod failure;
pub mod headers;
mod inbound;
mod processed;
mod response;
pub mod timestamp;

pub use ai::{AiProcessRequest, AiProcessResult};
pub use envelope::{
    DecodeError, Envelope, EventData, EventMetadata, EventType, MAX_PAYLOAD_BYTES, default_max_attempts,
    set_default_max_attempts,
};
pub use failure::{FailureType, MessageFailed};
pub use inbound::{InteractionReceived, InteractionType, MessageContent, MessageReceived, MessageType, Selection};
pub use processed::{MessageProcessed, ProcessedKind};
pub use response::{Button, ListRow, ListSection, Priority, ResponseContent, ResponseReady, ResponseType, reply_meta};

/// A typed event payload: which `event_type` it is and how it sits in [`EventData`].
pub trait Event: Clone + Send + Sync + 'static {
    /// Its `event_type`.
    const TYPE: EventType;
    /// The payload, if `data` is of this type.
    fn from_data(data: EventData) -> Option<Self>;
    /// Wraps the payload.
    fn into_data(self) -> EventData;
}

macro_rules! event_types {
    ($($name:ident),* $(,)?) => {$(
        impl Event for $name {
            const TYPE: EventType = EventType::$name;
            fn from_data(data: EventData) -> Option<Self> {
                match data {
                    EventData::$name(event) => Some(event),
                    _ => None,
                }
            }
            fn into_data(self) -> EventData {
                EventData::$name(self)
            }
        }

        impl From<$name> for EventData {
            fn from(event: $name) -> Self {
                EventData::$name(event)
            }
        }
    )*};
}

event_types!(
    MessageReceived,
    InteractionReceived,
    ResponseReady,
    MessageFailed,
    AiProcessRequest,
    AiProcessResult,
    MessageProcessed
);

/// Kafka topic names fixed by the design.
pub mod topics {
    /// Inbound WhatsApp messages.
    pub const MESSAGES: &str = "conversation.messages";
    /// Inbound interactive replies (buttons, lists).
    pub const INTERACTIONS: &str = "conversation.interactions";
    /// Replies ready to be sent to WhatsApp.
    pub const RESPONSES: &str = "conversation.responses";
    /// `MessageFailed` events for dead-lettered messages.
    pub const FAILURES: &str = "conversation.failures";
    /// Requests to the external AI service.
    pub const AI_REQUEST: &str = "ai.process.request";
    /// Results of the external AI service.
    pub const AI_RESULT: &str = "ai.process.result";
    /// Raw webhook requests an edge function publishes (`{id, headers, body, timestamp}`).
    pub const WEBHOOK_INBOUND: &str = "whatsapp.webhook.inbound";
    /// Message types the orchestrator does not handle, as WhatsApp sent them.
    pub const WEBHOOK_UNHANDLED: &str = "whatsapp.webhook.unhandled";
    /// `MessageProcessed` events: what became of each message, for live
    /// inboxes (`/api/v1/stream`); kept for a bounded time (see `consumer topics create`).
    pub const PROCESSED: &str = "conversation.processed";
}
