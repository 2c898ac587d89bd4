//! What the pipeline takes: a decoded message with its intent, and what a
//! dead letter needs to keep of it.

use uuid::Uuid;

use super::PROCESSED_BY;
use crate::context::Inbound;
use crate::event::{Envelope, EventData};
use crate::intent::Intent;
use crate::store::SourceInfo;

/// A decoded inbound message with its intent, ready for
/// [`Orchestrator::process`](super::Orchestrator::process).
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Id of the envelope that carried it.
    pub event_id: Uuid,
    /// The customer's message or interactive reply.
    pub inbound: Inbound,
    /// The intent to route it by (a placeholder until the runtime classified it).
    pub intent: Intent,
    /// `max_attempts` of the envelope; `None` uses the retry policy's.
    pub max_attempts: Option<u32>,
    /// Kafka coordinates, stored with a dead letter.
    pub source: Option<SourceInfo>,
    /// The original bytes, stored with a dead letter so it can be replayed as
    /// received; re-encoded from the message when absent.
    pub payload: Option<Vec<u8>>,
}

impl Incoming {
    /// A message with a fresh event id.
    pub fn new(inbound: Inbound, intent: Intent) -> Self {
        Self { event_id: Uuid::new_v4(), inbound, intent, max_attempts: None, source: None, payload: None }
    }

    /// The inbound message of an envelope; `None` when the envelope carries
    /// another event type.
    pub fn from_envelope(envelope: &Envelope, intent: Intent) -> Option<Self> {
        let inbound = match &envelope.data {
            EventData::MessageReceived(m) => Inbound::Message(m.clone()),
            EventData::InteractionReceived(i) => Inbound::Interaction(i.clone()),
            _ => return None,
        };
        Some(Self::carried(envelope.event_id, envelope.max_attempts, inbound, intent))
    }

    /// [`from_envelope`](Self::from_envelope), moving the message out of the
    /// envelope instead of copying it.
    pub fn from_owned_envelope(envelope: Envelope, intent: Intent) -> Option<Self> {
        let (event_id, max_attempts) = (envelope.event_id, envelope.max_attempts);
        let inbound = match envelope.data {
            EventData::MessageReceived(m) => Inbound::Message(m),
            EventData::InteractionReceived(i) => Inbound::Interaction(i),
            _ => return None,
        };
        Some(Self::carried(event_id, max_attempts, inbound, intent))
    }

    /// The message an envelope (`event_id`, `max_attempts`) carried.
    fn carried(event_id: Uuid, max_attempts: Option<u32>, inbound: Inbound, intent: Intent) -> Self {
        Self { event_id, inbound, intent, max_attempts, source: None, payload: None }
    }

    /// Adds Kafka coordinates.
    pub fn with_source(mut self, source: SourceInfo) -> Self {
        self.source = Some(source);
        self
    }

    /// Adds the original bytes.
    pub fn with_payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = Some(payload);
        self
    }

    pub(super) fn provenance(&self) -> Provenance<'_> {
        Provenance {
            event_id: self.event_id,
            max_attempts: self.max_attempts,
            source: self.source.as_ref(),
            payload: self.payload.as_deref(),
            inbound: &self.inbound,
        }
    }
}

/// What filing a message in the dead-letter queue needs of it, borrowed
/// from the [`Incoming`] or, once its message moved into the context, from both.
pub(super) struct Provenance<'a> {
    pub(super) event_id: Uuid,
    pub(super) max_attempts: Option<u32>,
    pub(super) source: Option<&'a SourceInfo>,
    pub(super) payload: Option<&'a [u8]>,
    pub(super) inbound: &'a Inbound,
}

impl Provenance<'_> {
    /// The bytes as received, or the message re-encoded when they were not kept.
    pub(super) fn envelope_bytes(&self) -> Vec<u8> {
        if let Some(payload) = self.payload {
            return payload.to_vec();
        }
        let data = match self.inbound {
            Inbound::Message(m) => EventData::MessageReceived(m.clone()),
            Inbound::Interaction(i) => EventData::InteractionReceived(i.clone()),
        };
        let mut envelope = Envelope::new(data, PROCESSED_BY);
        envelope.event_id = self.event_id;
        envelope.max_attempts = self.max_attempts;
        envelope.encode()
    }
}
