//! Kafka settings from the environment, with the names and defaults of the
//! design, TLS and SASL, and any other librdkafka property passed through.
//!
//! Every client the crate makes (consumers, producers, the event bus, the
//! DLQ replayer, the admin client) starts from [`KafkaConfig::common`], so a
//! setting here reaches all of them. Precedence, lowest first: the named
//! `KAFKA_*` variables, then the `KAFKA_PROPERTIES_FILE`, then
//! `KAFKA_PROPERTY_<NAME>` variables (the most specific wins).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::ConfigError;

/// Kafka client settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`; `None` means "start the embedded broker".
    pub bootstrap_servers: Option<String>,
    /// `KAFKA_CONSUMER_GROUP_ID` (default `whatsapp-orchestrator`).
    pub consumer_group_id: String,
    /// `KAFKA_TIMEOUT_MS` (default 5000): produce queue and metadata timeout.
    pub timeout: Duration,
    /// `KAFKA_SECURITY_PROTOCOL`: `plaintext` (librdkafka's default when
    /// unset), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: Option<String>,
    /// SASL and TLS settings.
    pub security: KafkaSecurity,
    /// Any other librdkafka property (`KAFKA_PROPERTY_<NAME>`, `KAFKA_PROPERTIES_FILE`).
    pub properties: ClientProperties,
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
    /// `KAFKA_COMPRESSION_TYPE` (default [`DEFAULT_COMPRESSION`]).
    pub compression_type: String,
    /// `KAFKA_BATCH_SIZE`.
    pub batch_size: Option<u32>,
    /// `KAFKA_LINGER_MS`.
    pub linger_ms: Option<u32>,
}

/// The default codec: gzip, the one codec every client reads without
/// plugins (kafkajs, as the integration guide's Node.js consumer uses it,
/// reads only uncompressed and gzip batches). `KAFKA_COMPRESSION_TYPE=zstd`
/// is smaller and cheaper once every consumer supports it.
pub const DEFAULT_COMPRESSION: &str = "gzip";

/// SASL mechanisms this build supports (GSSAPI/Kerberos needs libsasl2 and is not built in).
pub const SASL_MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// Security protocols librdkafka knows.
pub const SECURITY_PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

/// SASL and TLS settings (`KAFKA_SASL_*`, `KAFKA_SSL_*`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KafkaSecurity {
    /// `KAFKA_SASL_MECHANISM`: one of [`SASL_MECHANISMS`].
    pub sasl_mechanism: Option<String>,
    /// `KAFKA_SASL_USERNAME`.
    pub sasl_username: Option<String>,
    /// `KAFKA_SASL_PASSWORD` (masked when printed).
    pub sasl_password: Option<Secret>,
    /// `KAFKA_SSL_CA_LOCATION`: CA bundle to verify the brokers with
    /// (librdkafka uses the system's store when unset).
    pub ssl_ca_location: Option<String>,
    /// `KAFKA_SSL_CERTIFICATE_LOCATION`: client certificate (mutual TLS).
    pub ssl_certificate_location: Option<String>,
    /// `KAFKA_SSL_KEY_LOCATION`: its private key.
    pub ssl_key_location: Option<String>,
}

/// A value that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"****\"")
    }
}

/// librdkafka properties passed through as given, in the order they apply.
/// Printed with the values of secret-looking names masked.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties(pub Vec<(String, String)>);

impl ClientProperties {
    /// Adds (or replaces) a property.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value.into()));
    }
}

impl std::fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(name, value)| (name, masked(name, value)))).finish()
    }
}

/// Whether a librdkafka property holds a secret (passwords, keys, tokens, JAAS configs).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "jaas", "key.pem", "keystore", "sasl.oauthbearer.config"]
        .iter()
        .any(|part| name.contains(part))
        || name == "ssl.key.pem"
}

pub(crate) fn masked<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret_property(name) { "****" } else { value }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: None,
            consumer_group_id: "whatsapp-orchestrator".to_owned(),
            timeout: Duration::from_millis(5000),
            security_protocol: None,
            security: KafkaSecurity::default(),
            properties: ClientProperties::default(),
            session_timeout_ms: 30_000,
            heartbeat_interval_ms: 3_000,
            max_poll_interval_ms: 300_000,
            fetch_min_bytes: None,
            fetch_max_wait_ms: None,
            acks: "all".to_owned(),
            retries: None,
            enable_idempotence: true,
            compression_type: DEFAULT_COMPRESSION.to_owned(),
            batch_size: None,
            linger_ms: None,
        }
    }
}

/// Environment variables, looked up by name (a map in tests, the process
/// environment otherwise).
struct Vars(BTreeMap<String, String>);

impl Vars {
    fn string(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.string(name)
            .map(|value| value.parse().map_err(|e: T::Err| ConfigError { name, reason: e.to_string(), value }))
            .transpose()
    }
}

/// `KAFKA_PROPERTY_SASL_OAUTHBEARER_CONFIG` names `sasl.oauthbearer.config`.
pub(crate) const PROPERTY_PREFIX: &str = "KAFKA_PROPERTY_";

/// The librdkafka property a `KAFKA_PROPERTY_*` variable names; `None` for other variables.
pub(crate) fn property_of(variable: &str) -> Option<String> {
    variable.strip_prefix(PROPERTY_PREFIX).map(|name| name.to_ascii_lowercase().replace('_', "."))
}

/// A `KAFKA_PROPERTY_*` variable's value as it may be printed: masked when its property is a secret.
pub(crate) fn masked_pass_through<'a>(variable: &str, value: &'a str) -> &'a str {
    masked(&property_of(variable).unwrap_or_default(), value)
}

impl KafkaConfig {
    /// Reads the settings from `vars` as if they were the environment.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars = Vars(vars.into_iter().collect());
        let defaults = Self::default();
        let security_protocol = vars.string("KAFKA_SECURITY_PROTOCOL").map(|p| p.to_ascii_lowercase());
        if let Some(protocol) = &security_protocol
            && !SECURITY_PROTOCOLS.contains(&protocol.as_str())
        {
            return Err(ConfigError {
                name: "KAFKA_SECURITY_PROTOCOL",
                value: protocol.clone(),
                reason: format!("expected one of {}", SECURITY_PROTOCOLS.join(", ")),
            });
        }
        let sasl_mechanism = vars.string("KAFKA_SASL_MECHANISM").map(|m| m.to_ascii_uppercase());
        if let Some(mechanism) = &sasl_mechanism
            && !SASL_MECHANISMS.contains(&mechanism.as_str())
        {
            return Err(ConfigError {
                name: "KAFKA_SASL_MECHANISM",
                value: mechanism.clone(),
                reason: format!("expected one of {} (GSSAPI is not built in)", SASL_MECHANISMS.join(", ")),
            });
        }
        let mut properties = ClientProperties::default();
        if let Some(path) = vars.string("KAFKA_PROPERTIES_FILE") {
            for (name, value) in read_properties_file(&path)? {
                properties.set(name, value);
            }
        }
        for (property, value) in vars.0.iter().filter_map(|(name, value)| Some((property_of(name)?, value))) {
            if property.is_empty() {
                continue;
            }
            properties.set(property, value.trim());
        }
        let config = Self {
            bootstrap_servers: vars.string("KAFKA_BOOTSTRAP_SERVERS"),
            consumer_group_id: vars.string("KAFKA_CONSUMER_GROUP_ID").unwrap_or(defaults.consumer_group_id),
            timeout: Duration::from_millis(vars.parse("KAFKA_TIMEOUT_MS")?.unwrap_or(5000)),
            security_protocol,
            security: KafkaSecurity {
                sasl_mechanism,
                sasl_username: vars.string("KAFKA_SASL_USERNAME"),
                sasl_password: vars.0.get("KAFKA_SASL_PASSWORD").filter(|p| !p.is_empty()).cloned().map(Secret),
                ssl_ca_location: vars.string("KAFKA_SSL_CA_LOCATION"),
                ssl_certificate_location: vars.string("KAFKA_SSL_CERTIFICATE_LOCATION"),
                ssl_key_location: vars.string("KAFKA_SSL_KEY_LOCATION"),
            },
            properties,
            session_timeout_ms: vars.parse("KAFKA_SESSION_TIMEOUT_MS")?.unwrap_or(defaults.session_timeout_ms),
            heartbeat_interval_ms: vars.parse("KAFKA_HEARTBEAT_INTERVAL_MS")?.unwrap_or(defaults.heartbeat_interval_ms),
            max_poll_interval_ms: vars.parse("KAFKA_MAX_POLL_INTERVAL_MS")?.unwrap_or(defaults.max_poll_interval_ms),
            fetch_min_bytes: vars.parse("KAFKA_FETCH_MIN_BYTES")?,
            fetch_max_wait_ms: vars.parse("KAFKA_FETCH_MAX_WAIT_MS")?,
            acks: vars.string("KAFKA_ACKS").unwrap_or(defaults.acks),
            retries: vars.parse("KAFKA_RETRIES")?,
            enable_idempotence: vars.parse("KAFKA_ENABLE_IDEMPOTENCE")?.unwrap_or(true),
            compression_type: vars.string("KAFKA_COMPRESSION_TYPE").unwrap_or(defaults.compression_type),
            batch_size: vars.parse("KAFKA_BATCH_SIZE")?,
            linger_ms: vars.parse("KAFKA_LINGER_MS")?,
        };
        config.check_sasl()?;
        Ok(config)
    }

    /// A SASL protocol needs a mechanism, and PLAIN and SCRAM need credentials:
    /// said at start, naming the variable, rather than as a broker-side
    /// authentication failure later.
    fn check_sasl(&self) -> Result<(), ConfigError> {
        let client = self.admin_config();
        let protocol = client.get("security.protocol").unwrap_or("plaintext").to_ascii_lowercase();
        if !protocol.starts_with("sasl") {
            return Ok(());
        }
        let missing = |name: &'static str, reason: String| Err(ConfigError { name, value: String::new(), reason });
        let Some(mechanism) = client.get("sasl.mechanisms").or(client.get("sasl.mechanism")) else {
            return missing(
                "KAFKA_SASL_MECHANISM",
                format!("required with security protocol {protocol} (one of {})", SASL_MECHANISMS.join(", ")),
            );
        };
        if !mechanism.eq_ignore_ascii_case("OAUTHBEARER") {
            if client.get("sasl.username").is_none() {
                return missing("KAFKA_SASL_USERNAME", format!("required with SASL mechanism {mechanism}"));
            }
            if client.get("sasl.password").is_none() {
                return missing("KAFKA_SASL_PASSWORD", format!("required with SASL mechanism {mechanism}"));
            }
        }
        Ok(())
    }

    /// The same settings pointed at `servers`.
    pub fn with_bootstrap_servers(mut self, servers: impl Into<String>) -> Self {
        self.bootstrap_servers = Some(servers.into());
        self
    }

    /// What every client gets: the cluster, its security, and the passed-through properties.
    pub fn common(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        if let Some(servers) = &self.bootstrap_servers {
            config.set("bootstrap.servers", servers);
        }
        if let Some(protocol) = &self.security_protocol {
            config.set("security.protocol", protocol);
        }
        let security = &self.security;
        let named = [
            ("sasl.mechanisms", security.sasl_mechanism.as_deref()),
            ("sasl.username", security.sasl_username.as_deref()),
            ("sasl.password", security.sasl_password.as_ref().map(|s| s.0.as_str())),
            ("ssl.ca.location", security.ssl_ca_location.as_deref()),
            ("ssl.certificate.location", security.ssl_certificate_location.as_deref()),
            ("ssl.key.location", security.ssl_key_location.as_deref()),
        ];
        for (name, value) in named {
            if let Some(value) = value {
                config.set(name, value);
            }
        }
        config
    }

    /// Applies the passed-through properties last, so they win.
    fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for (name, value) in &self.properties.0 {
            config.set(name, value);
        }
        config
    }

    /// Settings for an admin client (topic creation and checks).
    pub fn admin_config(&self) -> ClientConfig {
        self.finish(self.common())
    }

    /// Every property a client gets, values of secrets masked: for the log line at start.
    pub fn describe(&self) -> Vec<(String, String)> {
        // config_map is a BTreeMap: sorted by name.
        self.producer_config()
            .config_map()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), masked(name, value).to_owned()))
            .collect()
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
        self.finish(config)
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
        self.finish(config)
    }
}

/// Reads a Java-style properties file (`name=value` lines, `#` and `!`
/// comments), as Confluent Cloud and MSK hand them out.
fn read_properties_file(path: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let error = |reason: String| ConfigError { name: "KAFKA_PROPERTIES_FILE", value: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let mut properties = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((name, value)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            return Err(error(format!("line {}: expected name=value", number + 1)));
        };
        properties.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(properties)
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
        assert_eq!(producer.get("compression.type"), Some("gzip"), "the codec every client reads");
        let consumer = config.with_bootstrap_servers("127.0.0.1:9092").consumer_config("g");
        assert_eq!(consumer.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("30000"));
        assert_eq!(consumer.get("heartbeat.interval.ms"), Some("3000"));
        assert_eq!(consumer.get("max.poll.interval.ms"), Some("300000"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn sasl_and_tls_variables_reach_every_client_and_the_password_is_never_printed() {
        let config = KafkaConfig::from_vars(vars(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "broker-1.cloud:9092"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "orchestrator"),
            ("KAFKA_SASL_PASSWORD", "hunter2-secret"),
            ("KAFKA_SSL_CA_LOCATION", "/etc/ssl/certs/ca.pem"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", "/etc/kafka/client.pem"),
            ("KAFKA_SSL_KEY_LOCATION", "/etc/kafka/client.key"),
        ]))
        .unwrap();
        for client in [config.producer_config(), config.consumer_config("g"), config.admin_config()] {
            assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(client.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
            assert_eq!(client.get("sasl.username"), Some("orchestrator"));
            assert_eq!(client.get("sasl.password"), Some("hunter2-secret"));
            assert_eq!(client.get("ssl.ca.location"), Some("/etc/ssl/certs/ca.pem"));
            assert_eq!(client.get("ssl.certificate.location"), Some("/etc/kafka/client.pem"));
            assert_eq!(client.get("ssl.key.location"), Some("/etc/kafka/client.key"));
        }
        assert!(!format!("{config:?}").contains("hunter2"), "Debug masks the password");
        let described = config.describe();
        assert!(described.contains(&("sasl.password".to_owned(), "****".to_owned())));
        assert!(described.contains(&("sasl.username".to_owned(), "orchestrator".to_owned())));
    }

    #[test]
    fn any_librdkafka_property_passes_through_the_most_specific_winning() {
        let dir = std::env::temp_dir().join(format!("kafka-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("client.properties");
        std::fs::write(
            &file,
            "# from the cloud console\nsasl.oauthbearer.config=principal=svc secret=abc\n\
             socket.keepalive.enable = true\n! another comment\ncompression.type=lz4\n",
        )
        .unwrap();
        let config = KafkaConfig::from_vars(vars(&[
            ("KAFKA_PROPERTIES_FILE", file.to_str().unwrap()),
            ("KAFKA_COMPRESSION_TYPE", "snappy"),
            ("KAFKA_PROPERTY_COMPRESSION_TYPE", "zstd"),
            ("KAFKA_PROPERTY_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "none"),
            ("KAFKA_PROPERTY_CLIENT_ID", "orders-eu"),
        ]))
        .unwrap();
        let producer = config.producer_config();
        assert_eq!(producer.get("compression.type"), Some("zstd"), "variable over file over named setting");
        assert_eq!(producer.get("ssl.endpoint.identification.algorithm"), Some("none"));
        assert_eq!(producer.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(config.consumer_config("g").get("client.id"), Some("orders-eu"));
        assert!(!format!("{config:?}").contains("secret=abc"), "secret-looking properties are masked");
        assert!(config.describe().contains(&("sasl.oauthbearer.config".to_owned(), "****".to_owned())));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_security_settings_are_refused_naming_the_variable() {
        let error = |pairs: &[(&str, &str)]| KafkaConfig::from_vars(vars(pairs)).unwrap_err();
        assert_eq!(error(&[("KAFKA_SECURITY_PROTOCOL", "tls")]).name, "KAFKA_SECURITY_PROTOCOL");
        let gssapi = error(&[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"), ("KAFKA_SASL_MECHANISM", "GSSAPI")]);
        assert_eq!(gssapi.name, "KAFKA_SASL_MECHANISM");
        assert!(gssapi.reason.contains("GSSAPI is not built in"), "{gssapi}");
        assert_eq!(error(&[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")]).name, "KAFKA_SASL_MECHANISM");
        let no_password = error(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "u"),
        ]);
        assert_eq!(no_password.name, "KAFKA_SASL_PASSWORD");
        assert_eq!(error(&[("KAFKA_PROPERTIES_FILE", "/nonexistent/client.properties")]).name, "KAFKA_PROPERTIES_FILE");
        // OAUTHBEARER needs no username or password.
        let oauth = [("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"), ("KAFKA_SASL_MECHANISM", "OAUTHBEARER")];
        assert!(KafkaConfig::from_vars(vars(&oauth)).is_ok());
    }
}
