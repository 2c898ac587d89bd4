//! The consumer runtime: Kafka messages in, pipeline outcomes out.
//!
//! One consumer group reads the consumed topics and their `.retry` twins.
//! Each message's offset is stored only once it is finished (completed,
//! sent to retry, or dead-lettered), and the commit point is the lowest
//! offset still in flight, so nothing is skipped. Messages with the same key
//! (phone) run in arrival order; different keys run concurrently, bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::embedded::CONSUMED_TOPICS;
use super::headers;
use super::key_order::KeyChains;
use super::offsets::OffsetTracker;
use super::{KafkaConfig, PublishError, Publisher};
use crate::classifier::Classifier;
use crate::event::ResponseReady;
use crate::event::{Envelope, EventData};
use crate::pipeline::{DuplicateOf, Incoming, Orchestrator, Outcome, PROCESSED_BY, PipelineError};
use crate::store::{KeyParking, MessageKey, ParkCheck, ParkedMessage, SourceInfo};

/// The runtime could not start or keep consuming.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Worker counters (for health checks and logs).
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Messages completed.
    pub processed: AtomicU64,
    /// Messages that failed an attempt (retried or dead-lettered).
    pub failed: AtomicU64,
    /// Messages sent to a retry topic (retryable failure or deferral).
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Duplicates skipped.
    pub duplicates: AtomicU64,
}

impl RuntimeStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(processed, failed, retried, dead_lettered, duplicates)` now.
    pub fn snapshot(&self) -> [u64; 5] {
        [&self.processed, &self.failed, &self.retried, &self.dead_lettered, &self.duplicates]
            .map(|c| c.load(Ordering::Relaxed))
    }
}

/// Tunables of the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSettings {
    /// Messages processed at once (over all keys).
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight messages before abandoning them
    /// (abandoned offsets are not committed: the messages are redelivered).
    pub shutdown_grace: Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self { max_in_flight: 256, shutdown_grace: Duration::from_secs(25) }
    }
}

/// Consumes the conversation topics and drives the [`Orchestrator`].
pub struct ConsumerRuntime {
    worker: Arc<Worker>,
    settings: RuntimeSettings,
}

/// Keeps offset tracking in step with the group's assignment.
struct RebalanceContext {
    offsets: Arc<OffsetTracker>,
}

impl rdkafka::ClientContext for RebalanceContext {}

impl rdkafka::consumer::ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        // Revoked: messages still running there finish (their effects happen
        // once, by dedupe and lease) but their offsets are not stored; the new
        // owner gets them again and skips or defers them.
        if let rdkafka::consumer::Rebalance::Revoke(partitions) = rebalance {
            for element in partitions.elements() {
                self.offsets.forget(element.topic(), element.partition());
            }
            tracing::info!(partitions = partitions.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Assign(partitions) = rebalance {
            for element in partitions.elements() {
                self.offsets.forget(element.topic(), element.partition());
            }
            tracing::info!(partitions = partitions.count(), "partitions assigned");
        }
    }
}

/// Everything a message task needs.
struct Worker {
    consumer: StreamConsumer<RebalanceContext>,
    publisher: Publisher,
    orchestrator: Arc<Orchestrator>,
    classifier: Arc<dyn Classifier>,
    parking: Arc<dyn KeyParking>,
    offsets: Arc<OffsetTracker>,
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
        let offsets = Arc::new(OffsetTracker::default());
        let context = RebalanceContext { offsets: offsets.clone() };
        let worker = Worker {
            consumer: config.consumer_config(&config.consumer_group_id).create_with_context(context)?,
            publisher: Publisher::new(config)?,
            orchestrator,
            classifier,
            parking,
            offsets,
            stats: Arc::new(RuntimeStats::default()),
            group_id: config.consumer_group_id.clone(),
        };
        Ok(Self { worker: Arc::new(worker), settings })
    }

    /// The worker counters.
    pub fn stats(&self) -> Arc<RuntimeStats> {
        self.worker.stats.clone()
    }

    /// Topics read: the consumed topics and their retry topics.
    pub fn topics() -> Vec<String> {
        CONSUMED_TOPICS.iter().flat_map(|t| [(*t).to_owned(), format!("{t}.retry")]).collect()
    }

    /// Consumes until `shutdown` resolves, then stops fetching, finishes (or
    /// after the grace period abandons) in-flight messages, commits what is
    /// finished and flushes the producer.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), RuntimeError> {
        let topics = Self::topics();
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.worker.consumer.subscribe(&topic_refs)?;
        tracing::info!(topics = ?topics, group = %self.worker.group_id, "consumer subscribed");
        let permits = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        let mut chains = KeyChains::default();
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let received = tokio::select! {
                _ = &mut shutdown => break,
                received = self.worker.consumer.recv() => received.map(|m| m.detach()),
            };
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.worker.offsets.start(message.topic(), message.partition(), message.offset());
            // Keyless messages are ordered per partition.
            let key = match message.key() {
                Some(key) => String::from_utf8_lossy(key).into_owned(),
                None => format!("{}/{}", message.topic(), message.partition()),
            };
            let link = chains.append(&key);
            let worker = self.worker.clone();
            tasks.spawn(async move {
                if let Some(previous) = link.previous {
                    let _ = previous.await;
                }
                worker.handle(message).await;
                let _ = link.done.send(());
                drop(permit);
            });
            while let Some(joined) = tasks.try_join_next() {
                if let Err(error) = joined {
                    tracing::error!(%error, "message task failed");
                }
            }
        }

        tracing::info!(in_flight = self.worker.offsets.in_flight(), "shutting down: finishing in-flight messages");
        let drained =
            tokio::time::timeout(self.settings.shutdown_grace, async { while tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(abandoned = tasks.len(), "grace period over: abandoning in-flight messages uncommitted");
            tasks.shutdown().await;
        }
        // Every copy was acknowledged before its offset was stored; flush any stragglers.
        self.worker.publisher.flush(Duration::from_secs(10))?;
        if let Err(error) = super::commit_and_leave(&self.worker.consumer).await {
            tracing::warn!(%error, "final commit failed");
        }
        tracing::info!("consumer stopped");
        Ok(())
    }
}

/// Infrastructure failures are retried in place with backoff: the message
/// must not be skipped, and only its key waits.
async fn until_ok<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) => {
                tracing::warn!(%error, ?delay, "{what} failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A message to handle, fresh from Kafka or drained from the parked table.
struct Delivered {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    payload: Vec<u8>,
    /// Where it first entered (a retry copy carries its original's coordinates).
    origin: (String, String, String),
}

impl Delivered {
    fn from_message(message: &OwnedMessage) -> Self {
        let origin = match header(message, headers::SOURCE_TOPIC) {
            Some(topic) => (
                topic,
                header(message, headers::SOURCE_PARTITION).unwrap_or_default(),
                header(message, headers::SOURCE_OFFSET).unwrap_or_default(),
            ),
            None => (message.topic().to_owned(), message.partition().to_string(), message.offset().to_string()),
        };
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: message.payload().unwrap_or_default().to_vec(),
            origin,
        }
    }

    fn from_parked(parked: &ParkedMessage) -> Self {
        Self {
            topic: parked.topic.clone(),
            partition: parked.partition,
            offset: parked.offset,
            key: Some(parked.key.clone()),
            payload: parked.payload.clone().into_bytes(),
            origin: (parked.topic.clone(), parked.partition.to_string(), parked.offset.to_string()),
        }
    }

    /// The topic without its `.retry` suffix.
    fn base_topic(&self) -> &str {
        self.topic.trim_end_matches(".retry")
    }

    fn source(&self) -> SourceInfo {
        SourceInfo { topic: self.topic.clone(), partition: self.partition, offset: self.offset, key: self.key.clone() }
    }
}

/// Whether the message is done with (no copy of it waits in retry).
fn is_final(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Completed(_) | Outcome::Duplicate(_) | Outcome::DeadLettered(_))
}

impl Worker {
    async fn handle(&self, message: OwnedMessage) {
        if let Some(due) = header(&message, headers::DUE_AT).and_then(|v| DateTime::parse_from_rfc3339(&v).ok()) {
            // A retry copy waits for its due time; only its key waits with it.
            let wait = (due.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        self.deliver(Delivered::from_message(&message)).await;
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        if let Some(next) = self.offsets.finish(topic, partition, offset)
            && let Err(error) = self.store_next_offset(topic, partition, next)
        {
            // The partition was revoked meanwhile: its new owner redelivers, the deduper skips.
            tracing::debug!(%error, topic, partition, "offset not stored");
        }
    }

    /// Stores `next`, the next offset to consume, for the background commit.
    /// Not `Consumer::store_offset`: librdkafka's `rd_kafka_offset_store`
    /// stores its argument plus one, which would skip a message at every
    /// commit point; `store_offsets` stores a partition list as given.
    fn store_next_offset(&self, topic: &str, partition: i32, next: i64) -> Result<(), KafkaError> {
        let mut list = rdkafka::TopicPartitionList::with_capacity(1);
        list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(next))?;
        self.consumer.store_offsets(&list)
    }

    /// Parks the message behind its phone's message in retry, or processes
    /// it; a holder that finished releases the messages parked behind it.
    async fn deliver(&self, delivered: Delivered) {
        let decoded = Decoded::from(&delivered);
        let message_id = decoded.message_id();
        let mut holder = false;
        if let (Some(key), Some(message_id)) = (&delivered.key, &message_id) {
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
                    tracing::info!(message_id, "parked behind an earlier message of the same phone in retry");
                    return;
                }
                ParkCheck::Open { holder: is_holder } => holder = is_holder,
            }
        }
        let outcome = until_ok("processing", || self.process(&delivered, &decoded)).await;
        until_ok("publishing the outcome", || self.act(&delivered, message_id.as_deref(), &outcome)).await;
        if holder
            && is_final(&outcome)
            && let Some(key) = &delivered.key
        {
            self.drain(key).await;
        }
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
            let outcome = until_ok("processing", || self.process(&delivered, &decoded)).await;
            until_ok("publishing the outcome", || self.act(&delivered, Some(&parked.message_id), &outcome)).await;
            until_ok("unparking", || self.parking.unpark(parked.id)).await;
            if !is_final(&outcome) {
                return;
            }
        }
    }

    async fn process(&self, delivered: &Delivered, decoded: &Decoded) -> Result<Outcome, PipelineError> {
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
        let intent = match self.classifier.classify(&incoming.inbound).await {
            Ok(intent) => intent,
            Err(error) => {
                tracing::warn!(%error, "classifier failed, using UNKNOWN");
                crate::intent::Intent::unknown()
            }
        };
        let mut incoming = incoming.as_ref().clone().with_source(source).with_payload(payload.to_vec());
        incoming.intent = intent;
        self.orchestrator.process(incoming).await
    }

    /// Publishes what the outcome calls for. Safe to repeat.
    async fn act(&self, delivered: &Delivered, message_id: Option<&str>, outcome: &Outcome) -> Result<(), ActError> {
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
                self.send_retry(delivered, message_id, &retry_copy(payload, Some(*next_attempt)), due_at).await?;
                RuntimeStats::bump(&self.stats.failed);
                RuntimeStats::bump(&self.stats.retried);
            }
            Outcome::Deferred { due_at, .. } => {
                self.send_retry(delivered, message_id, &retry_copy(payload, None), due_at).await?;
                RuntimeStats::bump(&self.stats.retried);
            }
            Outcome::DeadLettered(dead) => {
                let attempts = dead.event.attempt_count.to_string();
                let error = format!("{}: {}", dead.failure_type, dead.reason);
                let (source_topic, source_partition, source_offset) = &delivered.origin;
                self.publisher
                    .send(
                        &format!("{base_topic}.dlq"),
                        key,
                        payload,
                        &[
                            (headers::SOURCE_TOPIC, source_topic.as_bytes()),
                            (headers::SOURCE_PARTITION, source_partition.as_bytes()),
                            (headers::SOURCE_OFFSET, source_offset.as_bytes()),
                            (headers::CONSUMER_GROUP, self.group_id.as_bytes()),
                            (headers::ATTEMPTS, attempts.as_bytes()),
                            (headers::ERROR, error.as_bytes()),
                        ],
                    )
                    .await?;
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
    /// sends the retry copy.
    async fn send_retry(
        &self,
        delivered: &Delivered,
        message_id: Option<&str>,
        copy: &[u8],
        due_at: &DateTime<Utc>,
    ) -> Result<(), ActError> {
        if let (Some(key), Some(message_id)) = (&delivered.key, message_id) {
            self.parking.block(key, message_id).await?;
        }
        let due = due_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (source_topic, source_partition, source_offset) = &delivered.origin;
        self.publisher
            .send(
                &format!("{}.retry", delivered.base_topic()),
                delivered.key.as_deref(),
                copy,
                &[
                    (headers::DUE_AT, due.as_bytes()),
                    (headers::SOURCE_TOPIC, source_topic.as_bytes()),
                    (headers::SOURCE_PARTITION, source_partition.as_bytes()),
                    (headers::SOURCE_OFFSET, source_offset.as_bytes()),
                ],
            )
            .await?;
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
            Ok(envelope) => match Incoming::from_envelope(&envelope, crate::intent::Intent::unknown()) {
                Some(incoming) => Decoded::Inbound(Box::new(incoming)),
                None => Decoded::NotInbound(envelope.event_type()),
            },
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

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}
