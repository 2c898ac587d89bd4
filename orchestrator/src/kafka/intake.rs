//! The consumer machinery every Kafka consumer of the crate runs on: the
//! inbound runtime and the reply sender.
//!
//! [`Intake`] reads its topics and hands each record to a [`RecordHandler`].
//! Records with the same key run one after another in arrival order,
//! different keys concurrently up to a bound; a record's offset counts as
//! finished only once its handler returned, and the committed position is
//! the lowest offset still in flight, so nothing is skipped on a crash or a
//! rebalance. On shutdown it stops fetching, lets in-flight records finish
//! (abandoning them uncommitted after a grace period), commits and leaves
//! the group.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::KafkaConfig;
use super::key_order::KeyChains;
use super::offsets::OffsetTracker;

/// Handles one record. Called in key order; when it returns, the record is
/// finished (its offset may be committed), so a handler must not return
/// before the record's effects are durable or handed on (a retry copy, a
/// dead letter).
#[async_trait]
pub trait RecordHandler: Send + Sync + 'static {
    /// Handles one record.
    async fn handle(&self, record: OwnedMessage);
}

/// How an [`Intake`] runs.
#[derive(Debug, Clone, PartialEq)]
pub struct IntakeSettings {
    /// Records handled at once (over all keys).
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight records before abandoning them
    /// (abandoned offsets are not committed: the records are redelivered).
    pub shutdown_grace: Duration,
    /// How often librdkafka reports statistics (consumer lag for `/metrics`).
    pub statistics_interval: Duration,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            shutdown_grace: Duration::from_secs(25),
            statistics_interval: Duration::from_secs(5),
        }
    }
}

/// A group member that feeds records to a [`RecordHandler`] (see the module docs).
pub struct Intake {
    consumer: StreamConsumer<RebalanceContext>,
    offsets: Arc<OffsetTracker>,
    group_id: String,
    settings: IntakeSettings,
}

impl Intake {
    /// A consumer in `group` on `config`'s cluster (bootstrap servers set).
    pub fn new(config: &KafkaConfig, group: &str, settings: IntakeSettings) -> Result<Self, KafkaError> {
        let offsets = Arc::new(OffsetTracker::default());
        let context = RebalanceContext { offsets: offsets.clone() };
        let consumer = config
            .consumer_config(group)
            .set("statistics.interval.ms", settings.statistics_interval.as_millis().max(1).to_string())
            .create_with_context(context)?;
        Ok(Self { consumer, offsets, group_id: group.to_owned(), settings })
    }

    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// Reads `topics` until `shutdown` resolves, handing every record to
    /// `handler`; then drains, commits what is finished and leaves the group.
    pub async fn run<H: RecordHandler>(
        self,
        topics: &[String],
        handler: Arc<H>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), KafkaError> {
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topic_refs)?;
        tracing::info!(topics = ?topics, group = %self.group_id, "consumer subscribed");
        let intake = Arc::new(self);
        let permits = Arc::new(Semaphore::new(intake.settings.max_in_flight.max(1)));
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
                received = intake.consumer.recv() => received.map(|m| m.detach()),
            };
            let record = match received {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%error, group = %intake.group_id, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            intake.offsets.start(record.topic(), record.partition(), record.offset());
            // Keyless records are ordered per partition.
            let key = match record.key() {
                Some(key) => String::from_utf8_lossy(key).into_owned(),
                None => format!("{}/{}", record.topic(), record.partition()),
            };
            let link = chains.append(&key);
            let (intake, handler) = (intake.clone(), handler.clone());
            tasks.spawn(async move {
                if let Some(previous) = link.previous {
                    let _ = previous.await;
                }
                let (topic, partition, offset) = (record.topic().to_owned(), record.partition(), record.offset());
                handler.handle(record).await;
                intake.finish(&topic, partition, offset);
                let _ = link.done.send(());
                drop(permit);
            });
            while let Some(joined) = tasks.try_join_next() {
                if let Err(error) = joined {
                    tracing::error!(%error, "record task failed");
                }
            }
        }

        tracing::info!(in_flight = intake.offsets.in_flight(), group = %intake.group_id, "shutting down: finishing in-flight records");
        let grace = intake.settings.shutdown_grace;
        let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(abandoned = tasks.len(), "grace period over: abandoning in-flight records uncommitted");
            tasks.shutdown().await;
        }
        super::commit_and_leave(&intake.consumer).await;
        Ok(())
    }

    /// Marks a record finished and stores the new commit point, if it moved.
    fn finish(&self, topic: &str, partition: i32, offset: i64) {
        if let Some(next) = self.offsets.finish(topic, partition, offset)
            && let Err(error) = self.store_next_offset(topic, partition, next)
        {
            // The partition was revoked meanwhile: its new owner redelivers, and dedupe skips.
            tracing::debug!(%error, topic, partition, "offset not stored");
        }
    }

    /// Stores `next`, the next offset to consume, for the background commit.
    /// Not `Consumer::store_offset`: librdkafka's `rd_kafka_offset_store`
    /// stores its argument plus one, which would skip a record at every
    /// commit point; `store_offsets` stores a partition list as given.
    fn store_next_offset(&self, topic: &str, partition: i32, next: i64) -> Result<(), KafkaError> {
        let mut list = rdkafka::TopicPartitionList::with_capacity(1);
        list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(next))?;
        self.consumer.store_offsets(&list)
    }
}

/// Keeps offset tracking in step with the group's assignment, and reports lag.
struct RebalanceContext {
    offsets: Arc<OffsetTracker>,
}

impl rdkafka::ClientContext for RebalanceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of
    /// each partition this consumer fetches, for `kafka_consumer_lag`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag = &crate::metrics::metrics().consumer_lag;
        for (topic, stats) in &statistics.topics {
            // Partition -1 is librdkafka's internal queue.
            for (id, p) in stats.partitions.iter().filter(|(id, _)| **id >= 0) {
                let labels = [topic.as_str(), &id.to_string()];
                if p.fetch_state != "active" {
                    // Not (or no longer) fetched here: another member reports it.
                    let _ = lag.remove_label_values(&labels);
                    continue;
                }
                // librdkafka's own `consumer_lag` is -1 until this member has a position;
                // with none, everything from the log start is still to read.
                let position = [p.app_offset, p.committed_offset].into_iter().find(|o| *o >= 0).unwrap_or(p.lo_offset);
                if p.hi_offset >= 0 && position >= 0 {
                    lag.with_label_values(&labels).set((p.hi_offset - position).max(0));
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        // Revoked: records still running there finish (their effects happen
        // once, by dedupe and lease) but their offsets are not stored; the
        // new owner gets them again and skips or defers them.
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

/// Infrastructure failures are retried in place with backoff: the message
/// must not be skipped, and only its key waits.
pub(crate) async fn until_ok<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
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
