//! Every setting of a running orchestrator in one value, read once at start
//! from the environment (and, in the consumer binary, the command line) by
//! clap, so `consumer --help` lists each variable with its default and the
//! README's configuration table is checked against the same list.
//!
//! [`Settings`] has a part per component; each part turns into the
//! component's own configuration ([`KafkaConfig`], [`RetryPolicy`],
//! [`CloudApiConfig`], ...). A value that does not parse is refused at
//! start with an error naming its variable; [`describe`] lists the values
//! in effect for the start-up log, secrets masked.
//!
//! ```no_run
//! let settings = orchestrator::settings::Settings::from_env()?;
//! let kafka = settings.kafka.config()?;
//! let retry = settings.pipeline.retry_policy();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches as _, Parser, ValueEnum};

use crate::config::{ConfigError, PipelineConfig};
use crate::http::auth::{JwtConfigError, JwtVerifier};
use crate::kafka::config::{PROPERTY_PREFIX, masked_pass_through};
use crate::kafka::{AiRouteSettings, IntentSource, KafkaConfig, ReplySettings};
use crate::outbound::cloud_api::{DEFAULT_API_URL, TokensError, parse_tokens};
use crate::outbound::{CloudApiConfig, RateSettings};
use crate::retry::RetryPolicy;
use crate::telemetry::TelemetryConfig;
use crate::webhook::forward::WebhookSettings;

/// A secret setting's value: printed as `****`, read with [`expose`](Self::expose).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the component that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

/// Every setting, a part per component. Its `Debug` masks the secrets.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Retries, leases, timeouts, where intents come from.
    #[command(flatten)]
    pub pipeline: PipelineSettings,
    /// The Kafka cluster and its clients.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// The Cloud API, WhatsApp's limits and the webhook's secrets.
    #[command(flatten)]
    pub whatsapp: WhatsAppSettings,
    /// The HTTP server and the process.
    #[command(flatten)]
    pub server: ServerSettings,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

/// Parses [`Settings`] alone, from the environment only.
#[derive(Parser)]
struct EnvOnly {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// Reads every setting from the environment; a value that does not
    /// parse is an error naming its variable.
    pub fn from_env() -> Result<Self, clap::Error> {
        EnvOnly::try_parse_from(["orchestrator"]).map(|only| only.settings)
    }

    /// Reads the settings from `vars` instead of the process environment
    /// (tests, or a service that keeps its configuration elsewhere).
    pub fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, clap::Error> {
        let vars: std::collections::BTreeMap<&str, &str> = vars.into_iter().collect();
        let mut command = EnvOnly::command();
        // Each variable becomes its argument's value; unset ones keep their defaults.
        let mut argv = vec!["orchestrator".to_owned()];
        for arg in command.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else { continue };
            if let Some(value) = env.to_str().and_then(|name| vars.get(name)) {
                argv.push(format!("--{long}={value}"));
            }
        }
        // Without the process environment: only `vars` count.
        command = command.mut_args(|arg| arg.env(None::<&str>));
        let matches = command.try_get_matches_from(argv)?;
        let mut settings = EnvOnly::from_arg_matches_mut(&mut matches.clone())?.settings;
        settings.kafka.properties = KafkaSettings::properties_in(vars.iter().map(|(k, v)| (*k, *v)));
        Ok(settings)
    }
}

/// Every environment variable [`Settings`] reads, with whether it is a
/// secret (its value never printed), in `--help` order.
pub fn variables() -> Vec<(String, bool)> {
    EnvOnly::command()
        .get_arguments()
        .filter_map(|arg| Some((arg.get_env()?.to_string_lossy().into_owned(), arg.is_hide_env_values_set())))
        .collect()
}

/// The settings in effect, as `(variable, value)` pairs for the start-up
/// log: each argument's value from `matches` (parsed with [`Settings`]
/// flattened in), secrets as `****`, unset options left out, and the
/// `KAFKA_PROPERTY_*` pass-throughs.
pub fn describe(matches: &ArgMatches, settings: &Settings) -> Vec<(String, String)> {
    let mut described = Vec::new();
    for arg in EnvOnly::command().get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let Ok(Some(values)) = matches.try_get_raw(arg.get_id().as_str()) else { continue };
        let value = values.map(|v| v.to_string_lossy()).collect::<Vec<_>>().join(",");
        let shown = match (arg.is_hide_env_values_set(), arg.get_id().as_str()) {
            // Where the database is matters in a log; only its password is secret.
            (true, "database_url") => mask_url_password(&value),
            (true, _) => "****".to_owned(),
            (false, _) => value,
        };
        described.push((env.to_string_lossy().into_owned(), shown));
    }
    for (name, value) in &settings.kafka.properties {
        described.push((name.clone(), masked_pass_through(name, value).to_owned()));
    }
    described
}

/// `scheme://user:****@host/...`: a URL with its password masked.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:****@{host}{}", &rest[authority_end..])
        }
        _ => url.to_owned(),
    }
}

/// The database.
#[derive(Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseSettings {
    /// SQLite or PostgreSQL (`postgres://user:pass@host/db`); migrations run at start.
    #[arg(long, env = "DATABASE_URL", default_value = crate::db::DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings").field("database_url", &mask_url_password(&self.database_url)).finish()
    }
}

/// Retries, leases, timeouts and where intents come from.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Pipeline")]
pub struct PipelineSettings {
    /// Retries after the first attempt, then the dead-letter queue.
    #[arg(long, env = "MAX_RETRIES", default_value_t = 3)]
    pub max_retries: u32,
    /// The first retry's delay in ms (the next ones are 5x and 15x it).
    #[arg(long, env = "RETRY_DELAY_MS", default_value_t = 1000)]
    pub retry_delay_ms: u64,
    /// How long a claim protects a message (ms); a crashed worker's messages
    /// are resumed after it. Renewed every third of it while working.
    #[arg(long, env = "CLAIM_LEASE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub claim_lease_ms: u64,
    /// The longest one action may take (ms), then a retryable timeout.
    #[arg(long, env = "ACTION_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub action_timeout_ms: u64,
    /// `keywords` (the built-in classifier) or `ai` (the AI service over Kafka).
    #[arg(long, env = "INTENT_SOURCE", default_value = "keywords", value_parser = parse_intent_source)]
    pub intent_source: IntentSource,
    /// With `ai`: how long to wait for a result (ms) before the keyword classifier answers.
    #[arg(long, env = "AI_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ai_timeout_ms: u64,
}

fn parse_intent_source(value: &str) -> Result<IntentSource, String> {
    value.parse()
}

impl PipelineSettings {
    /// The retry policy: `MAX_RETRIES` retries, the first after `RETRY_DELAY_MS`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::scaled(self.max_retries, Duration::from_millis(self.retry_delay_ms))
    }

    /// Leases and timeouts; the rest at their defaults.
    pub fn config(&self) -> PipelineConfig {
        PipelineConfig {
            claim_lease: Duration::from_millis(self.claim_lease_ms),
            action_timeout: Duration::from_millis(self.action_timeout_ms),
            ..PipelineConfig::default()
        }
    }

    /// The AI route's settings when `INTENT_SOURCE=ai`.
    pub fn ai_route(&self) -> Option<AiRouteSettings> {
        match self.intent_source {
            IntentSource::Classifier => None,
            IntentSource::Ai => {
                Some(AiRouteSettings { timeout: Duration::from_millis(self.ai_timeout_ms), ..Default::default() })
            }
        }
    }
}

/// A Kafka setting as `Debug` shows it: a secret's value masked.
macro_rules! shown {
    (hide_env_values, $value:expr) => {
        &$value.as_ref().map(|_| "****") as &dyn std::fmt::Debug
    };
    (, $value:expr) => {
        &$value as &dyn std::fmt::Debug
    };
}

/// Declares the Kafka client variables once: each becomes an optional
/// argument and is handed to [`KafkaConfig::from_vars`] by its name, which
/// validates it.
macro_rules! kafka_variables {
    ($( $(#[doc = $doc:literal])* $field:ident = $env:literal $(, $secret:ident)? ;)*) => {
        /// The Kafka cluster and its clients (validated by [`KafkaConfig::from_vars`]).
        #[derive(Clone, Args)]
        #[command(next_help_heading = "Kafka")]
        pub struct KafkaSettings {
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env $(, $secret = true)?)]
                pub $field: Option<String>,
            )*
            /// Create the design's missing topics at start instead of refusing to start.
            #[arg(long, env = "KAFKA_CREATE_TOPICS", default_value_t = false, action = ArgAction::Set,
                  value_parser = BoolishValueParser::new())]
            pub create_topics: bool,
            /// Partitions of topics created at start (-1: the cluster's default).
            #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 12, allow_negative_numbers = true)]
            pub topic_partitions: i32,
            /// Replicas of topics created at start (-1: the cluster's default).
            #[arg(long, env = "KAFKA_TOPIC_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
            pub topic_replication_factor: i32,
            /// `KAFKA_PROPERTY_<NAME>` pass-throughs (any librdkafka property,
            /// dots as underscores), read from the environment at start.
            #[arg(skip = KafkaSettings::properties_in(std::env::vars()))]
            pub properties: Vec<(String, String)>,
        }

        impl std::fmt::Debug for KafkaSettings {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("KafkaSettings")
                    $( .field(stringify!($field), shown!($($secret)?, self.$field)) )*
                    .field("create_topics", &self.create_topics)
                    .field("topic_partitions", &self.topic_partitions)
                    .field("topic_replication_factor", &self.topic_replication_factor)
                    .field("properties", &self.properties.iter().map(|(name, value)| {
                        (name, masked_pass_through(name, value))
                    }).collect::<Vec<_>>())
                    .finish()
            }
        }

        impl KafkaSettings {
            /// The set variables by name, as [`KafkaConfig::from_vars`] reads them.
            fn variables(&self) -> Vec<(String, String)> {
                let mut vars = Vec::new();
                $( if let Some(value) = &self.$field { vars.push(($env.to_owned(), value.clone())); } )*
                vars
            }
        }
    };
}

kafka_variables! {
    /// The cluster (`host:port,...`); unset starts the embedded broker.
    kafka_bootstrap_servers = "KAFKA_BOOTSTRAP_SERVERS";
    /// Consumer group [default: whatsapp-orchestrator]; the reply sender uses `<id>-sender`.
    kafka_consumer_group_id = "KAFKA_CONSUMER_GROUP_ID";
    /// Produce queue timeout in ms [default: 5000].
    kafka_timeout_ms = "KAFKA_TIMEOUT_MS";
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` [default: plaintext].
    kafka_security_protocol = "KAFKA_SECURITY_PROTOCOL";
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER` (required with a `sasl_*` protocol).
    kafka_sasl_mechanism = "KAFKA_SASL_MECHANISM";
    /// SASL user (PLAIN and SCRAM).
    kafka_sasl_username = "KAFKA_SASL_USERNAME";
    /// SASL password (PLAIN and SCRAM).
    kafka_sasl_password = "KAFKA_SASL_PASSWORD", hide_env_values;
    /// CA bundle the brokers' certificates are checked against [default: the system's].
    kafka_ssl_ca_location = "KAFKA_SSL_CA_LOCATION";
    /// Client certificate (mutual TLS).
    kafka_ssl_certificate_location = "KAFKA_SSL_CERTIFICATE_LOCATION";
    /// Client key (mutual TLS).
    kafka_ssl_key_location = "KAFKA_SSL_KEY_LOCATION";
    /// A librdkafka properties file (`name=value` lines), as cloud consoles hand them out.
    kafka_properties_file = "KAFKA_PROPERTIES_FILE";
    /// [default: 30000]
    kafka_session_timeout_ms = "KAFKA_SESSION_TIMEOUT_MS";
    /// [default: 3000]
    kafka_heartbeat_interval_ms = "KAFKA_HEARTBEAT_INTERVAL_MS";
    /// [default: 300000]
    kafka_max_poll_interval_ms = "KAFKA_MAX_POLL_INTERVAL_MS";
    /// [default: librdkafka's]
    kafka_fetch_min_bytes = "KAFKA_FETCH_MIN_BYTES";
    /// [default: librdkafka's; 10 on the embedded broker]
    kafka_fetch_max_wait_ms = "KAFKA_FETCH_MAX_WAIT_MS";
    /// [default: all]
    kafka_acks = "KAFKA_ACKS";
    /// [default: librdkafka's]
    kafka_retries = "KAFKA_RETRIES";
    /// [default: true]
    kafka_enable_idempotence = "KAFKA_ENABLE_IDEMPOTENCE";
    /// The codec of what we publish [default: gzip, which every client reads].
    kafka_compression_type = "KAFKA_COMPRESSION_TYPE";
    /// [default: librdkafka's]
    kafka_batch_size = "KAFKA_BATCH_SIZE";
    /// [default: librdkafka's]
    kafka_linger_ms = "KAFKA_LINGER_MS";
}

impl KafkaSettings {
    /// The client configuration; an invalid value is an error naming its variable.
    pub fn config(&self) -> Result<KafkaConfig, ConfigError> {
        KafkaConfig::from_vars(self.variables().into_iter().chain(self.properties.iter().cloned()))
    }

    /// The `KAFKA_PROPERTY_*` variables among `vars`.
    fn properties_in<K: AsRef<str>, V: AsRef<str>>(vars: impl IntoIterator<Item = (K, V)>) -> Vec<(String, String)> {
        let mut properties: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.as_ref().starts_with(PROPERTY_PREFIX))
            .map(|(name, value)| (name.as_ref().to_owned(), value.as_ref().to_owned()))
            .collect();
        properties.sort();
        properties
    }
}

/// The Cloud API, WhatsApp's limits, the reply sender and the webhook's secrets.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "WhatsApp")]
pub struct WhatsAppSettings {
    /// The Cloud API token for numbers without their own; with
    /// `WHATSAPP_PHONE_NUMBER_ID` replies are sent, else logged (dry run).
    #[arg(long, env = "WHATSAPP_TOKEN", hide_env_values = true)]
    pub whatsapp_token: Option<Secret>,
    /// The number replies that name none go out from.
    #[arg(long, env = "WHATSAPP_PHONE_NUMBER_ID")]
    pub whatsapp_phone_number_id: Option<String>,
    /// Tokens of numbers that have their own: `phone_number_id=token,...`.
    #[arg(long, env = "WHATSAPP_TOKENS", hide_env_values = true)]
    pub whatsapp_tokens: Option<Secret>,
    /// The Cloud API base URL.
    #[arg(long, env = "WHATSAPP_API_URL", default_value = DEFAULT_API_URL)]
    pub whatsapp_api_url: String,
    /// Messages per second per business number (Meta's default tier; up to 1,000 on higher ones).
    #[arg(long, env = "WHATSAPP_MAX_SEND_RATE", default_value_t = 80.0, value_parser = parse_rate)]
    pub whatsapp_max_send_rate: f64,
    /// Per recipient: sends back to back, then one per `WHATSAPP_RECIPIENT_INTERVAL_MS`.
    #[arg(long, env = "WHATSAPP_RECIPIENT_BURST", default_value_t = 45, value_parser = clap::value_parser!(u32).range(1..))]
    pub whatsapp_recipient_burst: u32,
    /// Per recipient: one send per this many ms after the burst (WhatsApp's pair rate).
    #[arg(long, env = "WHATSAPP_RECIPIENT_INTERVAL_MS", default_value_t = 6000)]
    pub whatsapp_recipient_interval_ms: u64,
    /// Replies being sent at once.
    #[arg(long, env = "REPLY_MAX_IN_FLIGHT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub reply_max_in_flight: u32,
    /// Answers Meta's webhook subscription check; unset refuses it.
    #[arg(long, env = "WHATSAPP_VERIFY_TOKEN", hide_env_values = true)]
    pub whatsapp_verify_token: Option<Secret>,
    /// Checks `X-Hub-Signature-256` on every webhook POST; unset: not checked (logged).
    #[arg(long, env = "WHATSAPP_APP_SECRET", hide_env_values = true)]
    pub whatsapp_app_secret: Option<Secret>,
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("must be a positive number of messages per second".to_owned()),
    }
}

/// A blank value counts as unset, as it always has for these variables.
fn set(value: Option<&str>) -> Option<String> {
    value.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

/// A secret's value, unless unset or blank.
fn set_secret(value: &Option<Secret>) -> Option<String> {
    set(value.as_ref().map(Secret::expose))
}

impl WhatsAppSettings {
    /// The Cloud API configuration; `None` (dry run) unless both the token
    /// and the default number are set.
    pub fn cloud_api(&self) -> Result<Option<CloudApiConfig>, TokensError> {
        let tokens = parse_tokens(&set_secret(&self.whatsapp_tokens).unwrap_or_default())?;
        let (Some(token), Some(phone_number_id)) =
            (set_secret(&self.whatsapp_token), set(self.whatsapp_phone_number_id.as_deref()))
        else {
            return Ok(None);
        };
        Ok(Some(CloudApiConfig {
            token,
            tokens,
            phone_number_id,
            api_url: self.whatsapp_api_url.trim().to_owned(),
            timeout: Duration::from_secs(10),
        }))
    }

    /// WhatsApp's throughput and pair-rate limits.
    pub fn rate(&self) -> RateSettings {
        let defaults = RateSettings::default();
        RateSettings {
            max_rate: self.whatsapp_max_send_rate,
            min_rate: defaults.min_rate.min(self.whatsapp_max_send_rate),
            recipient_burst: self.whatsapp_recipient_burst,
            recipient_interval: Duration::from_millis(self.whatsapp_recipient_interval_ms),
            ..defaults
        }
    }

    /// The reply sender's settings, retrying with `retry`.
    pub fn reply(&self, retry: RetryPolicy) -> ReplySettings {
        ReplySettings {
            max_in_flight: self.reply_max_in_flight as usize,
            retry,
            rate: self.rate(),
            ..Default::default()
        }
    }

    /// The webhook's secrets.
    pub fn webhook(&self) -> WebhookSettings {
        WebhookSettings {
            verify_token: set_secret(&self.whatsapp_verify_token),
            app_secret: set_secret(&self.whatsapp_app_secret),
            ..WebhookSettings::default()
        }
    }
}

/// The HTTP server and the process.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerSettings {
    /// Where the HTTP server listens (webhook, /health, /metrics, /admin, /api/v1).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8000")]
    pub http_addr: SocketAddr,
    /// Bearer token of the DLQ admin API; unset (and no JWT key): the /admin routes are off.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Secret of HS256 JWTs: they open /api/v1 (admin-scoped ones /admin too).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// PEM public key of RS256 or ES256 JWTs, instead of JWT_SECRET.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// Algorithm of the public key's JWTs: RS256 or ES256.
    #[arg(long, env = "JWT_ALGORITHM", default_value = "RS256")]
    pub jwt_algorithm: String,
    /// The JWT claim naming the caller's organisation (the tenant).
    #[arg(long, env = "JWT_ORG_CLAIM", default_value = "org_id")]
    pub jwt_org_claim: String,
    /// Send API requests per second per organisation, in each process (0: unlimited).
    #[arg(long, env = "API_RATE_LIMIT_PER_SECOND", default_value_t = 100)]
    pub api_rate_limit_per_second: u32,
    /// Send API requests an organisation may make at once after a quiet spell (0: the per-second rate).
    #[arg(long, env = "API_RATE_LIMIT_BURST", default_value_t = 0)]
    pub api_rate_limit_burst: u32,
    /// Send API messages per organisation and UTC day, over all processes (0: unlimited).
    #[arg(long, env = "API_DAILY_MESSAGE_LIMIT", default_value_t = 100_000)]
    pub api_daily_message_limit: u64,
    /// Run the scheduler of send API messages here (any number of replicas may).
    #[arg(long, env = "SCHEDULER_ENABLED", default_value_t = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub scheduler_enabled: bool,
    /// How often the scheduler looks for due messages (ms).
    #[arg(long, env = "SCHEDULER_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub scheduler_interval_ms: u64,
    /// Write the inbox's conversation history (off: about three rows fewer per message, and an empty inbox).
    #[arg(long, env = "CONVERSATION_HISTORY", default_value_t = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub conversation_history: bool,
    /// Live inbox streams (`/api/v1/stream`) this process serves at once; each reads Kafka itself.
    #[arg(long, env = "STREAM_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub stream_max_connections: u64,
    /// Read edge-function webhook requests from `whatsapp.webhook.inbound`.
    #[arg(long, env = "WEBHOOK_INBOUND_ENABLED", default_value_t = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub webhook_inbound_enabled: bool,
    /// How long a SIGTERM may take (ms); then the process exits regardless.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub shutdown_grace_ms: u64,
}

impl ServerSettings {
    /// The admin token, when set and not blank.
    pub fn admin_token(&self) -> Option<String> {
        set_secret(&self.admin_token)
    }

    /// The JWT verifier: HS256 with `JWT_SECRET`, or `JWT_ALGORITHM` with the
    /// key in `JWT_PUBLIC_KEY_FILE`; `None` when neither is set.
    pub fn jwt(&self) -> Result<Option<JwtVerifier>, JwtSettingsError> {
        match (set_secret(&self.jwt_secret), &self.jwt_public_key_file) {
            (Some(_), Some(_)) => Err(JwtSettingsError::Both),
            (Some(secret), None) => Ok(Some(JwtVerifier::hs256(secret.as_bytes(), self.jwt_org_claim.clone()))),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|error| JwtSettingsError::Read(path.clone(), error))?;
                Ok(Some(JwtVerifier::public_key(&self.jwt_algorithm, &pem, self.jwt_org_claim.clone())?))
            }
            (None, None) => Ok(None),
        }
    }

    /// Each organisation's send API request rate; `None` when unlimited.
    pub fn api_rate(&self) -> Option<crate::http::api::RequestRate> {
        let per_second = std::num::NonZeroU32::new(self.api_rate_limit_per_second)?;
        let burst = std::num::NonZeroU32::new(self.api_rate_limit_burst).unwrap_or(per_second);
        Some(crate::http::api::RequestRate { per_second, burst })
    }

    /// The message service's settings (`API_DAILY_MESSAGE_LIMIT`).
    pub fn message_service(&self) -> crate::message_service::MessageServiceSettings {
        crate::message_service::MessageServiceSettings {
            daily_limit: (self.api_daily_message_limit > 0).then_some(self.api_daily_message_limit),
            ..Default::default()
        }
    }

    /// The scheduler's settings (`SCHEDULER_INTERVAL_MS`).
    pub fn scheduler(&self) -> crate::message_service::SchedulerSettings {
        crate::message_service::SchedulerSettings {
            interval: Duration::from_millis(self.scheduler_interval_ms),
            ..Default::default()
        }
    }

    /// `SHUTDOWN_GRACE_MS` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// The JWT settings cannot make a verifier.
#[derive(Debug, thiserror::Error)]
pub enum JwtSettingsError {
    /// Both a secret and a public key.
    #[error("set JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both")]
    Both,
    /// The key file cannot be read.
    #[error("JWT_PUBLIC_KEY_FILE {0}: {1}")]
    Read(std::path::PathBuf, std::io::Error),
    /// The key or algorithm is wrong.
    #[error(transparent)]
    Key(#[from] JwtConfigError),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[value(alias = "human")]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logs and traces")]
pub struct TelemetrySettings {
    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Which logs to write (`info`, `debug`, `orchestrator=debug,info`, ...).
    #[arg(long, env = "RUST_LOG", default_value = "info,rdkafka=warn,sqlx=warn")]
    pub rust_log: String,
    /// Set (to anything) to turn colours off on a terminal too.
    #[arg(long, env = "NO_COLOR")]
    pub no_color: Option<String>,
    /// An OTLP/HTTP collector (`http://127.0.0.1:4318`) to export traces to; unset exports nothing.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "whatsapp-orchestrator")]
    pub otel_service_name: String,
}

impl TelemetrySettings {
    /// The telemetry configuration (colours only on a terminal, without `NO_COLOR`).
    pub fn config(&self) -> TelemetryConfig {
        TelemetryConfig {
            service_name: self.otel_service_name.clone(),
            otlp_endpoint: set(self.otel_exporter_otlp_endpoint.as_deref()),
            json_logs: self.log_format == LogFormat::Json,
            ansi: std::io::IsTerminal::is_terminal(&std::io::stderr()) && set(self.no_color.as_deref()).is_none(),
            filter: self.rust_log.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_variables_take_the_documented_defaults() {
        let settings = Settings::from_vars([]).unwrap();
        let retry = settings.pipeline.retry_policy();
        assert_eq!((retry.max_retries(), retry.delay_before_retry(1)), (3, Some(Duration::from_secs(1))));
        assert_eq!(settings.pipeline.config(), PipelineConfig::default());
        assert!(settings.pipeline.ai_route().is_none());
        assert_eq!(settings.database.database_url, crate::db::DEFAULT_DATABASE_URL);
        assert_eq!(settings.server.http_addr, SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert!(settings.server.webhook_inbound_enabled);
        assert_eq!(settings.whatsapp.rate(), RateSettings::default());
        assert!(settings.whatsapp.cloud_api().unwrap().is_none(), "no token: dry run");
        let kafka = settings.kafka.config().unwrap();
        assert_eq!(kafka.bootstrap_servers, None);
        assert_eq!(kafka.consumer_group_id, KafkaConfig::default().consumer_group_id);
    }

    #[test]
    fn values_are_read_and_parsed() {
        let settings = Settings::from_vars([
            ("MAX_RETRIES", "5"),
            ("RETRY_DELAY_MS", "200"),
            ("CLAIM_LEASE_MS", "5000"),
            ("INTENT_SOURCE", "ai"),
            ("AI_TIMEOUT_MS", "2500"),
            ("KAFKA_BOOTSTRAP_SERVERS", "broker:9092"),
            ("KAFKA_PROPERTY_SOCKET_KEEPALIVE_ENABLE", "true"),
            ("WEBHOOK_INBOUND_ENABLED", "false"),
            ("WHATSAPP_TOKEN", "t0ken"),
            ("WHATSAPP_PHONE_NUMBER_ID", "123"),
            ("WHATSAPP_TOKENS", "456=other"),
            ("LOG_FORMAT", "JSON"),
        ])
        .unwrap();
        let retry = settings.pipeline.retry_policy();
        assert_eq!((retry.max_retries(), retry.delay_before_retry(1)), (5, Some(Duration::from_millis(200))));
        assert_eq!(settings.pipeline.config().claim_lease, Duration::from_secs(5));
        assert_eq!(settings.pipeline.ai_route().unwrap().timeout, Duration::from_millis(2500));
        assert!(!settings.server.webhook_inbound_enabled);
        let kafka = settings.kafka.config().unwrap();
        assert_eq!(kafka.bootstrap_servers.as_deref(), Some("broker:9092"));
        assert_eq!(kafka.admin_config().get("socket.keepalive.enable"), Some("true"));
        let cloud = settings.whatsapp.cloud_api().unwrap().unwrap();
        assert_eq!((cloud.token_for("123"), cloud.token_for("456")), ("t0ken", "other"));
        assert!(settings.telemetry.config().json_logs);
    }

    #[test]
    fn an_invalid_value_is_refused_naming_its_variable() {
        for (name, value) in [
            ("MAX_RETRIES", "three"),
            ("CLAIM_LEASE_MS", "0"),
            ("WHATSAPP_MAX_SEND_RATE", "-5"),
            ("HTTP_ADDR", "localhost"),
            ("INTENT_SOURCE", "oracle"),
            ("LOG_FORMAT", "xml"),
            ("WEBHOOK_INBOUND_ENABLED", "maybe"),
        ] {
            let error = Settings::from_vars([(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name), "{name}={value}: {error}");
        }
        // Kafka's values are checked by KafkaConfig, naming the variable too.
        let settings = Settings::from_vars([("KAFKA_SECURITY_PROTOCOL", "carrier_pigeon")]).unwrap();
        assert_eq!(settings.kafka.config().unwrap_err().name, "KAFKA_SECURITY_PROTOCOL");
    }

    #[test]
    fn jwt_settings_make_a_verifier_from_a_secret_or_a_key_file_and_refuse_both() {
        assert!(Settings::from_vars([]).unwrap().server.jwt().unwrap().is_none());
        let secret = Settings::from_vars([("JWT_SECRET", "k3y"), ("JWT_ORG_CLAIM", "tenant")]).unwrap();
        let verifier = secret.server.jwt().unwrap().expect("a verifier");
        let token = crate::http::auth::mint_hs256(b"k3y", "tenant", Some("acme"), "", Duration::from_secs(60)).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().organisation.as_deref(), Some("acme"));

        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/testdata/ec-public.pem");
        let es256 = Settings::from_vars([("JWT_PUBLIC_KEY_FILE", key), ("JWT_ALGORITHM", "ES256")]).unwrap();
        assert!(es256.server.jwt().unwrap().is_some());
        let wrong = Settings::from_vars([("JWT_PUBLIC_KEY_FILE", key), ("JWT_ALGORITHM", "HS999")]).unwrap();
        assert!(matches!(wrong.server.jwt(), Err(JwtSettingsError::Key(JwtConfigError::Algorithm(_)))));
        let both = Settings::from_vars([("JWT_SECRET", "k3y"), ("JWT_PUBLIC_KEY_FILE", key)]).unwrap();
        assert!(matches!(both.server.jwt(), Err(JwtSettingsError::Both)));
        let missing = Settings::from_vars([("JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem")]).unwrap();
        assert!(matches!(missing.server.jwt(), Err(JwtSettingsError::Read(..))));
    }

    #[test]
    fn described_settings_mask_secrets_and_name_every_variable() {
        let matches = EnvOnly::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from([
                "orchestrator",
                "--whatsapp-token=s3cret-token",
                "--kafka-sasl-password=hunter2",
                "--database-url=postgres://app:pw@db/app",
                "--max-retries=7",
            ])
            .unwrap();
        let mut settings = EnvOnly::from_arg_matches(&matches).unwrap().settings;
        settings.kafka.properties = vec![("KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_SECRET".into(), "xyz".into())];
        let described = describe(&matches, &settings);
        let text = format!("{described:?}");
        for secret in ["s3cret-token", "hunter2", ":pw@", "xyz"] {
            assert!(!text.contains(secret), "{secret} printed: {text}");
        }
        let value = |name: &str| described.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(value("MAX_RETRIES"), Some("7"));
        assert_eq!(value("WHATSAPP_TOKEN"), Some("****"));
        assert_eq!(value("RETRY_DELAY_MS"), Some("1000"), "defaults are listed too");
        assert_eq!(value("KAFKA_BOOTSTRAP_SERVERS"), None, "unset options are left out");
        assert_eq!(value("DATABASE_URL"), Some("postgres://app:****@db/app"), "where, without the password");
        // Debug output (a stray `{settings:?}`) masks them too.
        let debugged = format!("{settings:?}");
        for secret in ["s3cret-token", "hunter2", ":pw@", "xyz"] {
            assert!(!debugged.contains(secret), "{secret} in Debug: {debugged}");
        }
        assert!(debugged.contains("postgres://app:****@db/app"), "{debugged}");
        // Every variable described is one `variables()` lists.
        let known: Vec<String> = variables().into_iter().map(|(name, _)| name).collect();
        assert!(described.iter().all(|(name, _)| known.contains(name) || name.starts_with(PROPERTY_PREFIX)));
    }
}
