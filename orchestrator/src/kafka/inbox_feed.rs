//! The live inbox's feed: `MessageProcessed` events read from
//! `conversation.processed`, from where a client left off.
//!
//! Each stream reads every partition of the topic with a consumer of its
//! own (assigned, not in a group: nothing is committed), so every replica
//! serves every organisation's events and a reconnecting client resumes on
//! any of them. The position is a [`FeedCursor`]: the next offset of each
//! partition, handed to the client as the SSE event id and given back as
//! `Last-Event-ID`.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::KafkaConfig;
use crate::event::{Envelope, EventData, MessageProcessed, topics};

/// Where a stream stands: per partition, the offset of the next event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedCursor(pub BTreeMap<i32, i64>);

impl FeedCursor {
    /// `partition:offset` pairs, comma-separated (`0:15,1:3`).
    pub fn encode(&self) -> String {
        self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(",")
    }

    /// Reads [`encode`](Self::encode)'s text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut positions = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (partition, offset) =
                pair.split_once(':').ok_or_else(|| format!("`{pair}` is not partition:offset"))?;
            let partition: i32 = partition.parse().map_err(|_| format!("`{partition}` is not a partition"))?;
            let offset: i64 = offset.parse().map_err(|_| format!("`{offset}` is not an offset"))?;
            if partition < 0 || offset < 0 {
                return Err(format!("`{pair}` is negative"));
            }
            positions.insert(partition, offset);
        }
        Ok(Self(positions))
    }
}

/// One event of a stream, with the position after it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedItem {
    /// Where the stream stands once the client has this event.
    pub cursor: FeedCursor,
    /// The event.
    pub event: MessageProcessed,
}

/// A stream opened.
#[derive(Debug)]
pub struct FeedSubscription {
    /// Where it starts: give it to the client first, so it can resume even before any event.
    pub start: FeedCursor,
    /// Events kept no longer were asked for: some of what the client missed is gone.
    pub gap: bool,
    /// The events, in order per partition; ends when the feed fails.
    pub events: mpsc::Receiver<FeedItem>,
}

/// Why a stream could not open.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// As many streams as allowed are open.
    #[error("{0} live streams are open, the most this process serves")]
    Full(usize),
    /// The cluster has no such topic (`consumer topics create` makes it).
    #[error("Kafka topic {0} does not exist: create it with `consumer topics create`")]
    NoTopic(String),
    /// Kafka did not answer.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Opens streams of `conversation.processed`.
#[derive(Clone)]
pub struct InboxFeed {
    config: KafkaConfig,
    topic: String,
    slots: Arc<Semaphore>,
    max_streams: usize,
    /// Ends every stream when it turns true (the process is stopping).
    shutdown: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for InboxFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxFeed").field("topic", &self.topic).field("max_streams", &self.max_streams).finish()
    }
}

impl InboxFeed {
    /// Streams of [`topics::PROCESSED`] on `config`'s cluster, at most `max_streams` at once.
    pub fn new(config: &KafkaConfig, max_streams: usize) -> Self {
        Self::of_topic(config, topics::PROCESSED, max_streams)
    }

    /// Streams of another topic (tests).
    pub fn of_topic(config: &KafkaConfig, topic: &str, max_streams: usize) -> Self {
        let max_streams = max_streams.max(1);
        Self {
            config: config.clone(),
            topic: topic.to_owned(),
            slots: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            shutdown: None,
        }
    }

    /// Ends every stream once `shutdown` turns true: an open stream never
    /// ends by itself, and a server stopping gracefully waits for its responses.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// A stream of the events of `tenant` (`None`: every organisation's),
    /// after `resume` (`None`: from now on). It stops when its receiver is dropped.
    pub async fn open(
        &self,
        tenant: Option<String>,
        resume: Option<FeedCursor>,
    ) -> Result<FeedSubscription, FeedError> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| FeedError::Full(self.max_streams))?;
        let group = format!("inbox-stream-{}", uuid::Uuid::new_v4().simple());
        let mut config = self.config.consumer_config(&group);
        config.set("enable.auto.commit", "false");
        let consumer: StreamConsumer = config.create()?;
        let (start, gap) = self.start_positions(resume.as_ref()).await?;
        let mut assignment = TopicPartitionList::new();
        for (&partition, &offset) in &start.0 {
            assignment.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        }
        consumer.assign(&assignment)?;
        let (tx, events) = mpsc::channel(256);
        tokio::spawn(forward(consumer, tenant, start.clone(), tx, self.shutdown.clone(), permit));
        crate::metrics::metrics().inbox_streams.inc();
        Ok(FeedSubscription { start, gap, events })
    }

    /// Per partition: where the client left off, kept within what the
    /// topic still holds (`gap` when it held less), or its end when new.
    async fn start_positions(&self, resume: Option<&FeedCursor>) -> Result<(FeedCursor, bool), FeedError> {
        let consumer: BaseConsumer = self.config.admin_config().create()?;
        let (topic, timeout, resume) = (self.topic.clone(), self.config.timeout, resume.cloned());
        // Blocking librdkafka calls: off the async workers.
        tokio::task::spawn_blocking(move || {
            // Every topic's metadata: naming one may create it, on clusters with auto-creation on.
            let metadata = consumer.fetch_metadata(None, timeout)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(FeedError::NoTopic(topic));
            }
            let (mut start, mut gap) = (BTreeMap::new(), false);
            for partition in partitions {
                let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
                let offset = match resume.as_ref() {
                    None => high,
                    // A partition the client never saw: all of it is new to it.
                    Some(resume) => match resume.0.get(&partition) {
                        None => low,
                        Some(&at) if at < low => {
                            gap = true;
                            low
                        }
                        Some(&at) => at.min(high),
                    },
                };
                start.insert(partition, offset);
            }
            Ok((FeedCursor(start), gap))
        })
        .await
        .unwrap_or(Err(FeedError::Kafka(KafkaError::Canceled)))
    }
}

/// Reads the assigned partitions and passes on `tenant`'s events until the
/// client leaves (the receiver is dropped) or Kafka fails.
async fn forward(
    consumer: StreamConsumer,
    tenant: Option<String>,
    mut cursor: FeedCursor,
    tx: mpsc::Sender<FeedItem>,
    mut shutdown: Option<watch::Receiver<bool>>,
    permit: OwnedSemaphorePermit,
) {
    loop {
        let record = tokio::select! {
            _ = tx.closed() => break,
            _ = stopping(&mut shutdown) => break,
            record = consumer.recv() => record,
        };
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%error, "live inbox stream: Kafka failed; the client reconnects and resumes");
                break;
            }
        };
        cursor.0.insert(record.partition(), record.offset() + 1);
        let Some(event) = record.payload().and_then(processed) else {
            tracing::warn!(
                partition = record.partition(),
                offset = record.offset(),
                "not a MessageProcessed event: skipped"
            );
            continue;
        };
        if tenant.as_deref().is_some_and(|tenant| tenant != event.tenant_id) {
            continue;
        }
        if tx.send(FeedItem { cursor: cursor.clone(), event }).await.is_err() {
            break;
        }
    }
    let _ = consumer.unassign();
    // Closing a consumer waits on the broker: off the async workers.
    tokio::task::spawn_blocking(move || drop(consumer));
    crate::metrics::metrics().inbox_streams.dec();
    drop(permit);
}

/// Resolves once the process stops (never without a shutdown signal).
async fn stopping(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        // A dropped sender means the process is going away too.
        Some(shutdown) => drop(shutdown.wait_for(|stop| *stop).await),
        None => std::future::pending().await,
    }
}

fn processed(payload: &[u8]) -> Option<MessageProcessed> {
    match Envelope::decode(payload).ok()?.data {
        EventData::MessageProcessed(event) => Some(event),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_refuses_nonsense() {
        let cursor = FeedCursor(BTreeMap::from([(0, 15), (1, 3), (31, 0)]));
        assert_eq!(cursor.encode(), "0:15,1:3,31:0");
        assert_eq!(FeedCursor::parse(&cursor.encode()).unwrap(), cursor);
        assert_eq!(FeedCursor::parse("").unwrap(), FeedCursor::default());
        for bad in ["0", "a:1", "0:b", "0:-1", "-1:0"] {
            assert!(FeedCursor::parse(bad).is_err(), "{bad}");
        }
    }
}
