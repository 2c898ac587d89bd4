//! Handling one record: continuing its trace, waiting out a retry copy's
//! due time, classifying it, and running it through the pipeline.

use chrono::{DateTime, Utc};
use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument as _;

use super::act::outcome_label;
use super::records::{Decoded, Delivered};
use super::{RecordHandler, Worker, until_ok};
use crate::event::topics;
use crate::intent::Intent;
use crate::kafka::headers;
use crate::pipeline::{Incoming, Outcome, PipelineError};

#[async_trait::async_trait]
impl RecordHandler for Worker {
    async fn handle(&self, message: OwnedMessage) {
        crate::metrics::metrics().in_flight.inc();
        self.handle_traced(message).await;
        crate::metrics::metrics().in_flight.dec();
    }
}

impl Worker {
    pub(super) async fn handle_traced(&self, message: OwnedMessage) {
        let span = tracing::info_span!(
            "kafka.message",
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            trace_id = tracing::field::Empty,
            replay_of = tracing::field::Empty,
        );
        let traceparent = headers::value(&message, crate::telemetry::TRACEPARENT);
        crate::telemetry::continue_trace(&span, traceparent.as_deref());
        span.record("trace_id", crate::telemetry::trace_id_of(&span));
        if let Some(dlq_id) = headers::value(&message, crate::dlq::REPLAY_OF_HEADER) {
            span.record("replay_of", dlq_id);
            // A replay continues the original trace and also links to the attempt that gave up.
            if let Some(original) = &traceparent {
                crate::telemetry::link_trace(&span, original);
            }
        }
        self.handle_in_span(message).instrument(span).await;
    }

    pub(super) async fn handle_in_span(&self, message: OwnedMessage) {
        if message.topic() == topics::AI_RESULT {
            self.on_ai_result(&message).await;
        } else {
            if let Some(due) =
                headers::value(&message, headers::DUE_AT).and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
            {
                // A retry copy waits for its due time; only its key waits with it.
                let wait = (due.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            self.deliver(Delivered::from_message(&message)).await;
        }
    }

    /// Classifies, processes and acts on one delivery. `None` when it was
    /// handed to the AI service instead: its key is blocked behind it until
    /// the result (or the timeout) finishes it.
    pub(super) async fn settle(&self, delivered: &Delivered, decoded: &Decoded) -> Option<Outcome> {
        let intent = match (decoded, &delivered.intent, &self.ai) {
            (Decoded::Inbound(_), Some(intent), _) => intent.clone(),
            // A message the database cannot store is refused by the pipeline, not stored as pending.
            (Decoded::Inbound(incoming), None, Some(ai))
                if crate::validate::storable(&incoming.inbound, &incoming.intent).is_ok() =>
            {
                until_ok("requesting a classification", || self.request_classification(ai, delivered, incoming)).await;
                crate::metrics::metrics().outcomes.with_label_values(&["awaiting_ai"]).inc();
                return None;
            }
            (Decoded::Inbound(incoming), None, _) => self.classify(incoming).await,
            // Rejected without an intent.
            _ => Intent::unknown(),
        };
        let message_id = decoded.message_id();
        let outcome = until_ok("processing", || self.process(delivered, decoded, &intent)).await;
        until_ok("publishing the outcome", || self.act(delivered, message_id.as_deref(), &outcome, &intent)).await;
        self.announce(delivered, decoded, &outcome, &intent);
        crate::metrics::metrics().outcomes.with_label_values(&[outcome_label(&outcome)]).inc();
        Some(outcome)
    }

    pub(super) async fn classify(&self, incoming: &Incoming) -> Intent {
        self.classifier.classify(&incoming.inbound).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "classifier failed, using UNKNOWN");
            Intent::unknown()
        })
    }

    pub(super) async fn process(
        &self,
        delivered: &Delivered,
        decoded: &Decoded,
        intent: &Intent,
    ) -> Result<Outcome, PipelineError> {
        let payload = delivered.payload.as_slice();
        let source = delivered.source();
        let incoming = match decoded {
            Decoded::Undecodable(error) => {
                return self.orchestrator.reject_undecodable(payload, Some(source), error).await;
            }
            Decoded::NotInbound(event_type) => {
                let reason = format!("{event_type} events are not processed from {}", source.topic);
                return self
                    .orchestrator
                    .reject(payload, Some(source), crate::event::FailureType::ValidationError, reason)
                    .await;
            }
            Decoded::Inbound(incoming) => incoming,
        };
        let mut incoming = incoming.as_ref().clone().with_source(source).with_payload(payload.to_vec());
        incoming.intent = intent.clone();
        self.orchestrator.process(incoming).await
    }
}
