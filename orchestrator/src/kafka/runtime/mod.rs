//! The consumer runtime: Kafka messages in, pipeline outcomes out.
//!
//! One consumer group reads the consumed topics and their `.retry` twins.
//! Each message's offset is stored only once it is finished (completed,
//! sent to retry, or dead-lettered), and the commit point is the lowest
//! offset still in flight, so nothing is skipped. Messages with the same key
//! (phone) run in arrival order; different keys run concurrently, bounded.
//! With the AI route ([`ConsumerRuntime::with_ai_route`]) it also reads
//! `ai.process.result` and finishes messages with the AI's intents.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument as _;

mod ai;

use super::ai_route::{AiRoute, AiRouteSettings};
use super::headers;
use super::intake::{Intake, IntakeSettings, RecordHandler, until_ok};
use super::received::Received;
use super::topics::CONSUMED_TOPICS;
use super::{KafkaConfig, PublishError, Publisher};
use crate::classifier::Classifier;
use crate::event::{Envelope, EventData, ResponseReady, topics};
use crate::intent::Intent;
use crate::pipeline::{DuplicateOf, Incoming, Orchestrator, Outcome, PROCESSED_BY, PipelineError};
use crate::stats::RuntimeStats;
use crate::store::{KeyParking, MessageKey, ParkCheck, ParkedMessage, PendingClassification, PendingClassifications};

/// The runtime could not start or keep consuming.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Tunables of the runtime (see [`IntakeSettings`]).
pub type RuntimeSettings = IntakeSettings;

/// Consumes the conversation topics and drives the [`Orchestrator`].
pub struct ConsumerRuntime {
    intake: Intake,
    worker: Worker,
}

/// Everything a message task needs.
struct Worker {
    publisher: Publisher,
    orchestrator: Arc<Orchestrator>,
    /// Classifies messages; with the AI route, only those whose result is overdue.
    classifier: Arc<dyn Classifier>,
    ai: Option<AiRoute>,
    parking: Arc<dyn KeyParking>,
    stats: Arc<RuntimeStats>,
    group_id: String,
}

impl ConsumerRuntime {
    /// A runtime on `config` (bootstrap servers set), subscribed on
    /// [`run`](Self::run). `parking` keeps per-phone order across retries
    /// (usually the same store the orchestrator uses).
    pub fn new(
        config: &KafkaConfig,
        orchestrator: Arc<Orchestrator>,
        classifier: Arc<dyn Classifier>,
        parking: Arc<dyn KeyParking>,
        settings: RuntimeSettings,
    ) -> Result<Self, RuntimeError> {
        let intake = Intake::new(config, &config.consumer_group_id, settings)?;
        let worker = Worker {
            publisher: Publisher::new(config)?,
            orchestrator,
            classifier,
            ai: None,
            parking,
            stats: Arc::new(RuntimeStats::default()),
            group_id: config.consumer_group_id.clone(),
        };
        Ok(Self { intake, worker })
    }

    /// Takes intents from the external AI service (see [`super::ai_route`]):
    /// messages wait in `pending` for their `AiProcessResult`, and the
    /// runtime's classifier finishes those whose result is overdue.
    pub fn with_ai_route(mut self, pending: Arc<dyn PendingClassifications>, settings: AiRouteSettings) -> Self {
        self.worker.ai = Some(AiRoute { pending, settings });
        self
    }

    /// The worker counters.
    pub fn stats(&self) -> Arc<RuntimeStats> {
        self.worker.stats.clone()
    }

    /// Topics read: the consumed topics and their retry topics, and
    /// `ai.process.result` with the AI route.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> =
            CONSUMED_TOPICS.iter().flat_map(|t| [(*t).to_owned(), format!("{t}.retry")]).collect();
        if self.worker.ai.is_some() {
            topics.push(topics::AI_RESULT.to_owned());
        }
        topics
    }

    /// Consumes until `shutdown` resolves, then stops fetching, finishes (or
    /// after the grace period abandons) in-flight messages, commits what is
    /// finished and flushes the producer.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), RuntimeError> {
        let topics = self.topics();
        let Self { intake, worker } = self;
        let worker = Arc::new(worker);
        worker.stats.set_running(true);
        let (stop_sweeping, sweeping) = tokio::sync::watch::channel(false);
        let sweeper = worker.ai.clone().map(|ai| tokio::spawn(worker.clone().sweep_overdue(ai, sweeping)));
        let shutdown = async move {
            shutdown.await;
            let _ = stop_sweeping.send(true);
        };
        let consumed = intake.run(&topics, worker.clone(), shutdown).await;
        worker.stats.set_running(false);
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        // Every copy was acknowledged before its offset was stored; flush any stragglers.
        worker.publisher.flush(Duration::from_secs(10))?;
        if let Err(error) = consumed {
            tracing::warn!(%error, "final commit failed");
        }
        tracing::info!("consumer stopped");
        Ok(())
    }
}

/// A message to handle, fresh from Kafka or drained from the parked table.
struct Delivered {
    record: Received,
    /// The intent already decided for it (by the AI service), not to be asked again.
    intent: Option<Intent>,
}

impl std::ops::Deref for Delivered {
    type Target = Received;

    fn deref(&self) -> &Received {
        &self.record
    }
}

impl Delivered {
    fn from_message(message: &OwnedMessage) -> Self {
        let intent = headers::value(message, headers::INTENT).and_then(|json| serde_json::from_str(&json).ok());
        Self { record: Received::of(message), intent }
    }

    fn from_parked(parked: &ParkedMessage) -> Self {
        Self::stored(&parked.topic, parked.partition, parked.offset, &parked.key, &parked.payload)
    }

    fn from_pending(pending: &PendingClassification, intent: Intent) -> Self {
        let mut delivered =
            Self::stored(&pending.topic, pending.partition, pending.offset, &pending.key, &pending.payload);
        delivered.intent = Some(intent);
        delivered
    }

    /// A message kept in the database (parked or pending), by its first coordinates.
    fn stored(topic: &str, partition: i32, offset: i64, key: &str, payload: &str) -> Self {
        Self { record: Received::stored(topic, partition, offset, Some(key.to_owned()), payload), intent: None }
    }
}

/// The `outcome` label of `orchestrator_messages_total`.
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed(_) => "completed",
        Outcome::Duplicate(_) => "duplicate",
        Outcome::RetryScheduled { .. } => "retried",
        Outcome::Deferred { .. } => "deferred",
        Outcome::DeadLettered(_) => "dead_lettered",
    }
}

/// Whether the message is done with (no copy of it waits in retry).
fn is_final(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Completed(_) | Outcome::Duplicate(_) | Outcome::DeadLettered(_))
}

#[async_trait::async_trait]
impl RecordHandler for Worker {
    async fn handle(&self, message: OwnedMessage) {
        crate::metrics::metrics().in_flight.inc();
        self.handle_traced(message).await;
        crate::metrics::metrics().in_flight.dec();
    }
}

impl Worker {
    async fn handle_traced(&self, message: OwnedMessage) {
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

    async fn handle_in_span(&self, message: OwnedMessage) {
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

    /// Parks the message behind its phone's message in retry, or processes
    /// it; a holder that finished releases the messages parked behind it.
    async fn deliver(&self, delivered: Delivered) {
        let decoded = Decoded::from(&delivered);
        if let Decoded::Inbound(incoming) = &decoded
            && delivered.topic == delivered.base_topic()
        {
            let business = incoming.inbound.business_hint().map_or("unknown", crate::metrics::label);
            crate::metrics::metrics().messages_received.with_label_values(&[business, "kafka"]).inc();
        }
        let message_id = decoded.message_id();
        let mut holder = false;
        // A message id with a NUL cannot be stored: such a message is refused
        // by the pipeline before any write, so it is not parked either.
        if let (Some(key), Some(message_id)) = (&delivered.key, message_id.as_ref().filter(|id| !id.contains('\0'))) {
            let parked = ParkedMessage {
                id: 0,
                key: key.clone(),
                message_id: message_id.clone(),
                topic: delivered.base_topic().to_owned(),
                partition: delivered.partition,
                offset: delivered.offset,
                // Decoded above, so it is UTF-8.
                payload: String::from_utf8_lossy(&delivered.payload).into_owned(),
            };
            match until_ok("checking the key's retry block", || self.parking.park_if_blocked(&parked)).await {
                ParkCheck::Parked => {
                    tracing::info!(
                        message_id,
                        "parked behind an earlier message of the same phone (in retry or waiting for the AI service)"
                    );
                    return;
                }
                ParkCheck::Open { holder: is_holder } => holder = is_holder,
            }
        }
        // Handed to the AI service: the key stays blocked behind it.
        let Some(outcome) = self.settle(&delivered, &decoded).await else { return };
        if holder
            && is_final(&outcome)
            && let Some(key) = &delivered.key
        {
            self.drain(key).await;
        }
    }

    /// Classifies, processes and acts on one delivery. `None` when it was
    /// handed to the AI service instead: its key is blocked behind it until
    /// the result (or the timeout) finishes it.
    async fn settle(&self, delivered: &Delivered, decoded: &Decoded) -> Option<Outcome> {
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
        crate::metrics::metrics().outcomes.with_label_values(&[outcome_label(&outcome)]).inc();
        Some(outcome)
    }

    async fn classify(&self, incoming: &Incoming) -> Intent {
        self.classifier.classify(&incoming.inbound).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "classifier failed, using UNKNOWN");
            Intent::unknown()
        })
    }

    /// Processes the messages parked under `key` in order, until one of them
    /// goes to retry (it then holds the key) or none is left (the block goes).
    async fn drain(&self, key: &str) {
        loop {
            let Some(parked) = until_ok("reading parked messages", || self.parking.next_parked(key)).await else {
                if until_ok("unblocking the key", || self.parking.unblock_if_empty(key)).await {
                    return;
                }
                continue;
            };
            let delivered = Delivered::from_parked(&parked);
            let decoded = Decoded::from(&delivered);
            let outcome = self.settle(&delivered, &decoded).await;
            until_ok("unparking", || self.parking.unpark(parked.id)).await;
            // In retry or waiting for the AI service: it holds the key now.
            if !outcome.as_ref().is_some_and(is_final) {
                return;
            }
        }
    }

    async fn process(
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

    /// Publishes what the outcome calls for. Safe to repeat.
    async fn act(
        &self,
        delivered: &Delivered,
        message_id: Option<&str>,
        outcome: &Outcome,
        intent: &Intent,
    ) -> Result<(), ActError> {
        let payload = delivered.payload.as_slice();
        let base_topic = delivered.base_topic();
        let key = delivered.key.as_deref();
        match outcome {
            Outcome::Completed(done) => {
                if let Some(response) = &done.response {
                    self.publish_reply(&done.key, response).await?;
                }
                RuntimeStats::bump(&self.stats.processed);
            }
            Outcome::Duplicate(DuplicateOf::ReplyPending { key, response }) => {
                // Completed by a worker that stopped before publishing its reply.
                self.publish_reply(key, response).await?;
                RuntimeStats::bump(&self.stats.duplicates);
            }
            Outcome::Duplicate(_) => RuntimeStats::bump(&self.stats.duplicates),
            Outcome::RetryScheduled { next_attempt, due_at, .. } => {
                let copy = retry_copy(payload, Some(*next_attempt));
                self.send_retry(delivered, message_id, &copy, due_at, intent).await?;
                RuntimeStats::bump(&self.stats.failed);
                RuntimeStats::bump(&self.stats.retried);
            }
            Outcome::Deferred { due_at, .. } => {
                self.send_retry(delivered, message_id, &retry_copy(payload, None), due_at, intent).await?;
                RuntimeStats::bump(&self.stats.retried);
            }
            Outcome::DeadLettered(dead) => {
                let attempts = dead.event.attempt_count.to_string();
                let error = format!("{}: {}", dead.failure_type, dead.reason);
                let dlq_headers = delivered.origin.dead_letter_headers(&self.group_id, &attempts, &error);
                self.publisher.send(&format!("{base_topic}.dlq"), key, payload, &dlq_headers).await?;
                let failed = Envelope::new(EventData::MessageFailed(dead.event.clone()), PROCESSED_BY);
                self.publisher.publish(&failed).await?;
                RuntimeStats::bump(&self.stats.failed);
                RuntimeStats::bump(&self.stats.dead_lettered);
            }
        }
        Ok(())
    }

    /// Publishes a reply and empties the message's outbox.
    async fn publish_reply(&self, key: &MessageKey, response: &ResponseReady) -> Result<(), ActError> {
        let reply = Envelope::new(EventData::ResponseReady(response.clone()), PROCESSED_BY);
        self.publisher.publish(&reply).await?;
        self.orchestrator.store().mark_reply_published(key).await?;
        Ok(())
    }

    /// Blocks the phone behind this message (its later messages park), then
    /// sends the retry copy; an intent from the AI service travels with it.
    async fn send_retry(
        &self,
        delivered: &Delivered,
        message_id: Option<&str>,
        copy: &[u8],
        due_at: &DateTime<Utc>,
        intent: &Intent,
    ) -> Result<(), ActError> {
        if let (Some(key), Some(message_id)) = (&delivered.key, message_id) {
            self.parking.block(key, message_id).await?;
        }
        let due = due_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut retry_headers = delivered.origin.retry_headers(&due);
        let decided = if self.ai.is_some() { serde_json::to_vec(intent).ok() } else { None };
        if let Some(decided) = &decided {
            retry_headers.push((headers::INTENT, decided.as_slice()));
        }
        let topic = format!("{}.retry", delivered.base_topic());
        self.publisher.send(&topic, delivered.key.as_deref(), copy, &retry_headers).await?;
        Ok(())
    }
}

/// Publishing an outcome failed: Kafka or the parking store.
#[derive(Debug, thiserror::Error)]
enum ActError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What a delivery's bytes are, decoded once for parking and processing.
enum Decoded {
    /// Not a valid envelope.
    Undecodable(crate::event::DecodeError),
    /// A valid envelope of a type this runtime does not process.
    NotInbound(crate::event::EventType),
    /// An inbound message, its intent not classified yet.
    Inbound(Box<Incoming>),
}

impl Decoded {
    fn from(delivered: &Delivered) -> Self {
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
    fn message_id(&self) -> Option<String> {
        match self {
            Decoded::Inbound(incoming) => Some(incoming.inbound.message_id(&incoming.event_id.to_string()).to_owned()),
            _ => None,
        }
    }
}

/// The envelope with `attempt_count` raised to `attempt` (when given); bytes
/// that do not decode are copied as they are.
fn retry_copy(payload: &[u8], attempt: Option<u32>) -> Vec<u8> {
    match (Envelope::decode(payload), attempt) {
        (Ok(mut envelope), Some(attempt)) => {
            envelope.attempt_count = attempt;
            envelope.encode()
        }
        _ => payload.to_vec(),
    }
}
