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
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
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
use crate::event::{Envelope, EventData};
use crate::pipeline::{Incoming, Orchestrator, Outcome, PROCESSED_BY, PipelineError};
use crate::store::SourceInfo;

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

/// Everything a message task needs.
struct Worker {
    consumer: StreamConsumer,
    publisher: Publisher,
    orchestrator: Arc<Orchestrator>,
    classifier: Arc<dyn Classifier>,
    offsets: OffsetTracker,
    stats: Arc<RuntimeStats>,
    group_id: String,
}

impl ConsumerRuntime {
    /// A runtime on `config` (bootstrap servers set), subscribed on [`run`](Self::run).
    pub fn new(
        config: &KafkaConfig,
        orchestrator: Arc<Orchestrator>,
        classifier: Arc<dyn Classifier>,
        settings: RuntimeSettings,
    ) -> Result<Self, RuntimeError> {
        let worker = Worker {
            consumer: config.consumer_config(&config.consumer_group_id).create()?,
            publisher: Publisher::new(config)?,
            orchestrator,
            classifier,
            offsets: OffsetTracker::default(),
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
        match self.worker.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "final commit failed"),
        }
        self.worker.publisher.flush(Duration::from_secs(10))?;
        self.worker.consumer.unsubscribe();
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

impl Worker {
    async fn handle(&self, message: OwnedMessage) {
        let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
        if let Some(due) = header(&message, headers::DUE_AT).and_then(|v| DateTime::parse_from_rfc3339(&v).ok()) {
            // A retry copy waits for its due time; only its key waits with it.
            let wait = (due.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        let outcome = until_ok("processing", || self.process(&message)).await;
        until_ok("publishing the outcome", || self.act(&message, &outcome)).await;
        if let Some(next) = self.offsets.finish(&topic, partition, offset)
            && let Err(error) = self.consumer.store_offset(&topic, partition, next)
        {
            // The partition was revoked meanwhile: its new owner redelivers, the deduper skips.
            tracing::debug!(%error, topic, partition, "offset not stored");
        }
    }

    async fn process(&self, message: &OwnedMessage) -> Result<Outcome, PipelineError> {
        let payload = message.payload().unwrap_or_default();
        let source = SourceInfo {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        };
        let envelope = match Envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(error) => return self.orchestrator.reject_undecodable(payload, Some(source), &error).await,
        };
        let inbound = match &envelope.data {
            EventData::MessageReceived(m) => crate::context::Inbound::Message(m.clone()),
            EventData::InteractionReceived(i) => crate::context::Inbound::Interaction(i.clone()),
            other => {
                let reason = format!("{} events are not processed from {}", other.event_type(), source.topic);
                return self
                    .orchestrator
                    .reject(payload, Some(source), crate::event::FailureType::ValidationError, reason)
                    .await;
            }
        };
        let intent = match self.classifier.classify(&inbound).await {
            Ok(intent) => intent,
            Err(error) => {
                tracing::warn!(%error, "classifier failed, using UNKNOWN");
                crate::intent::Intent::unknown()
            }
        };
        let incoming = Incoming::from_envelope(&envelope, intent)
            .unwrap_or_else(|| unreachable!("inbound checked above"))
            .with_source(source)
            .with_payload(payload.to_vec());
        self.orchestrator.process(incoming).await
    }

    /// Publishes what the outcome calls for. Safe to repeat.
    async fn act(&self, message: &OwnedMessage, outcome: &Outcome) -> Result<(), PublishError> {
        let payload = message.payload().unwrap_or_default();
        let base_topic = message.topic().trim_end_matches(".retry");
        let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned());
        match outcome {
            Outcome::Completed(done) => {
                if let Some(response) = &done.response {
                    let reply = Envelope::new(EventData::ResponseReady(response.clone()), PROCESSED_BY);
                    self.publisher.publish(&reply).await?;
                }
                RuntimeStats::bump(&self.stats.processed);
            }
            Outcome::Duplicate(_) => RuntimeStats::bump(&self.stats.duplicates),
            Outcome::RetryScheduled { next_attempt, due_at, .. } => {
                let copy = retry_copy(payload, Some(*next_attempt));
                self.send_retry(message, base_topic, key.as_deref(), &copy, due_at).await?;
                RuntimeStats::bump(&self.stats.failed);
                RuntimeStats::bump(&self.stats.retried);
            }
            Outcome::Deferred { due_at, .. } => {
                let copy = retry_copy(payload, None);
                self.send_retry(message, base_topic, key.as_deref(), &copy, due_at).await?;
                RuntimeStats::bump(&self.stats.retried);
            }
            Outcome::DeadLettered(dead) => {
                let attempts = dead.event.attempt_count.to_string();
                let error = format!("{}: {}", dead.failure_type, dead.reason);
                let (source_topic, source_partition, source_offset) = self.origin(message);
                self.publisher
                    .send(
                        &format!("{base_topic}.dlq"),
                        key.as_deref(),
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

    async fn send_retry(
        &self,
        message: &OwnedMessage,
        base_topic: &str,
        key: Option<&str>,
        copy: &[u8],
        due_at: &DateTime<Utc>,
    ) -> Result<(), PublishError> {
        let due = due_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (source_topic, source_partition, source_offset) = self.origin(message);
        self.publisher
            .send(
                &format!("{base_topic}.retry"),
                key,
                copy,
                &[
                    (headers::DUE_AT, due.as_bytes()),
                    (headers::SOURCE_TOPIC, source_topic.as_bytes()),
                    (headers::SOURCE_PARTITION, source_partition.as_bytes()),
                    (headers::SOURCE_OFFSET, source_offset.as_bytes()),
                ],
            )
            .await
            .map(|_| ())
    }

    /// Where the message first entered: its own coordinates, or those a retry copy carries.
    fn origin(&self, message: &OwnedMessage) -> (String, String, String) {
        match header(message, headers::SOURCE_TOPIC) {
            Some(topic) => (
                topic,
                header(message, headers::SOURCE_PARTITION).unwrap_or_default(),
                header(message, headers::SOURCE_OFFSET).unwrap_or_default(),
            ),
            None => (message.topic().to_owned(), message.partition().to_string(), message.offset().to_string()),
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
