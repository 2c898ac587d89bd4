//! The embedded broker: librdkafka's mock cluster, in process.
//!
//! It speaks the Kafka protocol on a local TCP port, so `kcat` or any client
//! can talk to it, but it keeps nothing on disk and only about the last
//! 5 MiB (or 100,000 messages) of each partition.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use super::KafkaConfig;
use super::topics::all_topics;

/// Fetch wait for clients of the embedded broker (see [`EmbeddedKafka::configure`]).
pub const EMBEDDED_FETCH_WAIT_MS: u32 = 10;

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
