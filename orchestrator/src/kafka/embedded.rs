//! The embedded broker: librdkafka's mock cluster, in process.
//!
//! It speaks the Kafka protocol on a local TCP port, so `kcat` or any client
//! can talk to it, but it keeps nothing on disk and only about the last
//! 5 MiB (or 100,000 messages) of each partition.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::event::topics;

/// Topics the consumer runtime reads, each with a `.retry` and `.dlq` twin.
pub const CONSUMED_TOPICS: [&str; 2] = [topics::MESSAGES, topics::INTERACTIONS];

/// Every topic of the design: the seven event topics, and for each consumed
/// topic its `.retry` and `.dlq` topics.
pub fn all_topics() -> Vec<String> {
    let mut all: Vec<String> = [
        topics::MESSAGES,
        topics::INTERACTIONS,
        topics::RESPONSES,
        topics::FAILURES,
        topics::AI_REQUEST,
        topics::AI_RESULT,
        topics::WEBHOOK_INBOUND,
    ]
    .iter()
    .map(|t| (*t).to_owned())
    .collect();
    for topic in CONSUMED_TOPICS {
        all.push(format!("{topic}.retry"));
        all.push(format!("{topic}.dlq"));
    }
    all
}

/// A running in-process broker; it stops when dropped.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap_servers: String,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster with every topic of [`all_topics`]
    /// created with `partitions` partitions.
    pub fn start(partitions: i32) -> rdkafka::error::KafkaResult<Self> {
        let cluster = MockCluster::new(1)?;
        for topic in all_topics() {
            cluster.create_topic(&topic, partitions, 1)?;
        }
        let bootstrap_servers = cluster.bootstrap_servers();
        Ok(Self { cluster, bootstrap_servers })
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// The mock cluster, for fault injection and extra topics.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka").field("bootstrap_servers", &self.bootstrap_servers).finish()
    }
}
