//! The embedded broker: librdkafka's mock cluster, in process.
//!
//! It speaks the Kafka protocol on a local TCP port, so `kcat` or any client
//! can talk to it, but it keeps nothing on disk and only about the last
//! 5 MiB (or 100,000 messages) of each partition.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use super::KafkaConfig;
use crate::event::topics;

/// Fetch wait for clients of the embedded broker (see [`EmbeddedKafka::configure`]).
pub const EMBEDDED_FETCH_WAIT_MS: u32 = 10;

/// Topics the consumer runtime reads, each with a `.retry` and `.dlq` twin.
pub const CONSUMED_TOPICS: [&str; 2] = [topics::MESSAGES, topics::INTERACTIONS];

/// Every topic read with a `.retry` and `.dlq` twin: the runtime's and the reply sender's.
pub const RETRIED_TOPICS: [&str; 3] = [topics::MESSAGES, topics::INTERACTIONS, topics::RESPONSES];

/// Every topic of the design: the seven event topics, and for each consumed
/// topic (replies too) its `.retry` and `.dlq` topics.
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
    for topic in RETRIED_TOPICS {
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

    /// `config` pointed at this broker. The mock answers a fetch only when
    /// its wait runs out, even when data arrived meanwhile (a real broker
    /// answers at once), so unless `config` sets a fetch wait it gets 10 ms
    /// instead of librdkafka's 500: each hop through the mock would
    /// otherwise add up to half a second of latency.
    pub fn configure(&self, mut config: KafkaConfig) -> KafkaConfig {
        config.fetch_max_wait_ms.get_or_insert(EMBEDDED_FETCH_WAIT_MS);
        config.with_bootstrap_servers(self.bootstrap_servers())
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
