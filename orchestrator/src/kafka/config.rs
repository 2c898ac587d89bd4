//! Kafka settings from the environment, with the names and defaults of the design.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::{ConfigError, env_parse};

/// Kafka client settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`; `None` means "start the embedded broker".
    pub bootstrap_servers: Option<String>,
    /// `KAFKA_CONSUMER_GROUP_ID` (default `whatsapp-orchestrator`).
    pub consumer_group_id: String,
    /// `KAFKA_TIMEOUT_MS` (default 5000): produce queue and metadata timeout.
    pub timeout: Duration,
    /// `KAFKA_SECURITY_PROTOCOL` (librdkafka's default, plaintext, when unset).
    pub security_protocol: Option<String>,
    /// `KAFKA_SESSION_TIMEOUT_MS` (default 30000).
    pub session_timeout_ms: u32,
    /// `KAFKA_HEARTBEAT_INTERVAL_MS` (default 3000).
    pub heartbeat_interval_ms: u32,
    /// `KAFKA_MAX_POLL_INTERVAL_MS` (default 300000).
    pub max_poll_interval_ms: u32,
    /// `KAFKA_FETCH_MIN_BYTES`.
    pub fetch_min_bytes: Option<u32>,
    /// `KAFKA_FETCH_MAX_WAIT_MS`.
    pub fetch_max_wait_ms: Option<u32>,
    /// `KAFKA_ACKS` (default `all`).
    pub acks: String,
    /// `KAFKA_RETRIES`.
    pub retries: Option<u32>,
    /// `KAFKA_ENABLE_IDEMPOTENCE` (default true).
    pub enable_idempotence: bool,
    /// `KAFKA_COMPRESSION_TYPE` (default `zstd`).
    pub compression_type: String,
    /// `KAFKA_BATCH_SIZE`.
    pub batch_size: Option<u32>,
    /// `KAFKA_LINGER_MS`.
    pub linger_ms: Option<u32>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: None,
            consumer_group_id: "whatsapp-orchestrator".to_owned(),
            timeout: Duration::from_millis(5000),
            security_protocol: None,
            session_timeout_ms: 30_000,
            heartbeat_interval_ms: 3_000,
            max_poll_interval_ms: 300_000,
            fetch_min_bytes: None,
            fetch_max_wait_ms: None,
            acks: "all".to_owned(),
            retries: None,
            enable_idempotence: true,
            compression_type: "zstd".to_owned(),
            batch_size: None,
            linger_ms: None,
        }
    }
}

fn env_string(name: &'static str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn env_optional(name: &'static str) -> Result<Option<u32>, ConfigError> {
    env_string(name)
        .map(|value| {
            value.parse().map_err(|e: std::num::ParseIntError| ConfigError { name, value, reason: e.to_string() })
        })
        .transpose()
}

impl KafkaConfig {
    /// Reads every `KAFKA_*` variable of the design.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            bootstrap_servers: env_string("KAFKA_BOOTSTRAP_SERVERS"),
            consumer_group_id: env_string("KAFKA_CONSUMER_GROUP_ID").unwrap_or(defaults.consumer_group_id),
            timeout: Duration::from_millis(env_parse("KAFKA_TIMEOUT_MS", 5000u64)?),
            security_protocol: env_string("KAFKA_SECURITY_PROTOCOL"),
            session_timeout_ms: env_parse("KAFKA_SESSION_TIMEOUT_MS", defaults.session_timeout_ms)?,
            heartbeat_interval_ms: env_parse("KAFKA_HEARTBEAT_INTERVAL_MS", defaults.heartbeat_interval_ms)?,
            max_poll_interval_ms: env_parse("KAFKA_MAX_POLL_INTERVAL_MS", defaults.max_poll_interval_ms)?,
            fetch_min_bytes: env_optional("KAFKA_FETCH_MIN_BYTES")?,
            fetch_max_wait_ms: env_optional("KAFKA_FETCH_MAX_WAIT_MS")?,
            acks: env_string("KAFKA_ACKS").unwrap_or(defaults.acks),
            retries: env_optional("KAFKA_RETRIES")?,
            enable_idempotence: env_parse("KAFKA_ENABLE_IDEMPOTENCE", true)?,
            compression_type: env_string("KAFKA_COMPRESSION_TYPE").unwrap_or(defaults.compression_type),
            batch_size: env_optional("KAFKA_BATCH_SIZE")?,
            linger_ms: env_optional("KAFKA_LINGER_MS")?,
        })
    }

    /// The same settings pointed at `servers`.
    pub fn with_bootstrap_servers(mut self, servers: impl Into<String>) -> Self {
        self.bootstrap_servers = Some(servers.into());
        self
    }

    fn common(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        if let Some(servers) = &self.bootstrap_servers {
            config.set("bootstrap.servers", servers);
        }
        if let Some(protocol) = &self.security_protocol {
            config.set("security.protocol", protocol);
        }
        config
    }

    /// Producer settings: idempotent, `acks`, compression, batching.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.common();
        config
            .set("acks", &self.acks)
            .set("enable.idempotence", self.enable_idempotence.to_string())
            .set("compression.type", &self.compression_type);
        if let Some(retries) = self.retries {
            config.set("retries", retries.to_string());
        }
        if let Some(batch) = self.batch_size {
            config.set("batch.size", batch.to_string());
        }
        if let Some(linger) = self.linger_ms {
            config.set("linger.ms", linger.to_string());
        }
        config
    }

    /// Consumer settings for `group`: offsets are stored by the runtime only
    /// for finished messages and committed in the background.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.common();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", self.heartbeat_interval_ms.to_string())
            .set("max.poll.interval.ms", self.max_poll_interval_ms.to_string());
        if let Some(bytes) = self.fetch_min_bytes {
            config.set("fetch.min.bytes", bytes.to_string());
        }
        if let Some(wait) = self.fetch_max_wait_ms {
            config.set("fetch.wait.max.ms", wait.to_string());
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let config = KafkaConfig::default();
        let producer = config.producer_config();
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("compression.type"), Some("zstd"));
        let consumer = config.with_bootstrap_servers("127.0.0.1:9092").consumer_config("g");
        assert_eq!(consumer.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("30000"));
        assert_eq!(consumer.get("heartbeat.interval.ms"), Some("3000"));
        assert_eq!(consumer.get("max.poll.interval.ms"), Some("300000"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
    }
}
