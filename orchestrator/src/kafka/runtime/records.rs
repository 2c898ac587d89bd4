//! What the runtime handles: a delivery (fresh from Kafka, or kept in the
//! database while parked or waiting for the AI service) and what its bytes
//! decode to.

use rdkafka::message::OwnedMessage;

use crate::event::Envelope;
use crate::intent::Intent;
use crate::kafka::headers;
use crate::kafka::received::Received;
use crate::pipeline::Incoming;
use crate::store::{ParkedMessage, PendingClassification};

/// A message to handle, fresh from Kafka or drained from the parked table.
pub(super) struct Delivered {
    pub(super) record: Received,
    /// The intent already decided for it (by the AI service), not to be asked again.
    pub(super) intent: Option<Intent>,
}

impl std::ops::Deref for Delivered {
    type Target = Received;

    fn deref(&self) -> &Received {
        &self.record
    }
}

impl Delivered {
    pub(super) fn from_message(message: &OwnedMessage) -> Self {
        let intent = headers::value(message, headers::INTENT).and_then(|json| serde_json::from_str(&json).ok());
        Self { record: Received::of(message), intent }
    }

    pub(super) fn from_parked(parked: &ParkedMessage) -> Self {
        Self::stored(&parked.topic, parked.partition, parked.offset, &parked.key, &parked.payload)
    }

    pub(super) fn from_pending(pending: &PendingClassification, intent: Intent) -> Self {
        let mut delivered =
            Self::stored(&pending.topic, pending.partition, pending.offset, &pending.key, &pending.payload);
        delivered.intent = Some(intent);
        delivered
    }

    /// A message kept in the database (parked or pending), by its first coordinates.
    pub(super) fn stored(topic: &str, partition: i32, offset: i64, key: &str, payload: &str) -> Self {
        Self { record: Received::stored(topic, partition, offset, Some(key.to_owned()), payload), intent: None }
    }
}

/// What a delivery's bytes are, decoded once for parking and processing.
pub(super) enum Decoded {
    /// Not a valid envelope.
    Undecodable(crate::event::DecodeError),
    /// A valid envelope of a type this runtime does not process.
    NotInbound(crate::event::EventType),
    /// An inbound message, its intent not classified yet.
    Inbound(Box<Incoming>),
}

impl Decoded {
    pub(super) fn from(delivered: &Delivered) -> Self {
        match Envelope::decode(&delivered.payload) {
            Err(error) => Decoded::Undecodable(error),
            Ok(envelope) => {
                let event_type = envelope.event_type();
                match Incoming::from_owned_envelope(envelope, Intent::unknown()) {
                    Some(incoming) => Decoded::Inbound(Box::new(incoming)),
                    None => Decoded::NotInbound(event_type),
                }
            }
        }
    }

    /// The dedupe id, by the pipeline's own rule.
    pub(super) fn message_id(&self) -> Option<String> {
        match self {
            Decoded::Inbound(incoming) => Some(incoming.inbound.message_id(&incoming.event_id.to_string()).to_owned()),
            _ => None,
        }
    }
}
