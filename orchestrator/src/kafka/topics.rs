//! The design's topics as a whole: which exist, checking a cluster has
//! them, and creating them (`consumer topics create`).
//!
//! Clusters with topic auto-creation off (every managed one worth using)
//! need the topics made up front; a consumer that starts without them
//! exits naming the missing ones rather than stalling a phone on a publish
//! that can never succeed.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaConfig;
use crate::event::topics;

/// Topics the consumer runtime reads, each with a `.retry` and `.dlq` twin.
pub const CONSUMED_TOPICS: [&str; 2] = [topics::MESSAGES, topics::INTERACTIONS];

/// Every topic read with a `.retry` and `.dlq` twin: the runtime's and the reply sender's.
pub const RETRIED_TOPICS: [&str; 3] = [topics::MESSAGES, topics::INTERACTIONS, topics::RESPONSES];

/// Every topic of the design: the event topics, the webhook's raw and
/// unhandled topics, the live inbox's `conversation.processed`, each
/// retried topic's `.retry` and `.dlq`, and the edge-function topic's `.dlq`.
pub fn all_topics() -> Vec<String> {
    let mut all: Vec<String> = [
        topics::MESSAGES,
        topics::INTERACTIONS,
        topics::RESPONSES,
        topics::FAILURES,
        topics::AI_REQUEST,
        topics::AI_RESULT,
        topics::WEBHOOK_INBOUND,
        topics::WEBHOOK_UNHANDLED,
        topics::PROCESSED,
    ]
    .iter()
    .map(|t| (*t).to_owned())
    .collect();
    for topic in RETRIED_TOPICS {
        all.push(format!("{topic}.retry"));
        all.push(format!("{topic}.dlq"));
    }
    all.push(format!("{}.dlq", topics::WEBHOOK_INBOUND));
    all
}

/// Topics the cluster lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Kafka topics missing: {}. Create them with `consumer topics create` (or start with KAFKA_CREATE_TOPICS=true)",
    .0.join(", ")
)]
pub struct MissingTopics(pub Vec<String>);

/// Which of `wanted` the cluster does not have. Asks for the whole topic
/// list, which never creates a topic (naming one may, on clusters with
/// auto-creation on).
pub async fn missing_topics(
    config: &KafkaConfig,
    wanted: &[String],
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let consumer: BaseConsumer = config.admin_config().create()?;
    let wanted = wanted.to_vec();
    // A blocking librdkafka call: off the async workers.
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(None, timeout)?;
        let present: std::collections::HashSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        Ok(wanted.into_iter().filter(|t| !present.contains(t.as_str())).collect())
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

/// Fails with [`MissingTopics`] unless the cluster has every topic of `wanted`.
pub async fn require_topics(
    config: &KafkaConfig,
    wanted: &[String],
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let missing = missing_topics(config, wanted, timeout).await?;
    if missing.is_empty() { Ok(()) } else { Err(MissingTopics(missing).into()) }
}

/// Topics a publish of this process found missing (a cluster with
/// auto-creation off): every publisher reports here, whoever runs the
/// process watches it with [`missing_at_runtime`].
static MISSING_AT_RUNTIME: std::sync::LazyLock<tokio::sync::watch::Sender<Vec<String>>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(Vec::new()).0);

/// Records that a publish to `topic` failed because the cluster lacks it.
pub(crate) fn report_missing(topic: &str) {
    MISSING_AT_RUNTIME.send_if_modified(|missing| {
        let new = !missing.iter().any(|t| t == topic);
        if new {
            missing.push(topic.to_owned());
        }
        new
    });
}

/// Resolves once a publish of this process found a topic missing: retrying
/// cannot help, so the process should stop (nothing past the record is
/// committed) and say which topics to create.
pub async fn missing_at_runtime() -> MissingTopics {
    let mut missing = MISSING_AT_RUNTIME.subscribe();
    let found = missing.wait_for(|topics| !topics.is_empty()).await.map(|t| t.clone()).unwrap_or_default();
    MissingTopics(found)
}

/// How long `conversation.processed` keeps events: how long an inbox may be
/// away and still resume without missing any (`retention.ms` at creation).
pub const PROCESSED_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);

/// What creating one topic came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCreation {
    /// Created now.
    Created,
    /// It was there already.
    Existed,
    /// The cluster refused it.
    Failed(String),
}

/// Creates `names` with `partitions` partitions and `replication` replicas
/// each (topics already there are left as they are).
pub async fn create_topics(
    config: &KafkaConfig,
    names: &[String],
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> Result<Vec<(String, TopicCreation)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.admin_config().create()?;
    let retention = PROCESSED_RETENTION.as_millis().to_string();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
            // Notifications, not records of truth: kept for a bounded time.
            if name == topics::PROCESSED { topic.set("retention.ms", &retention) } else { topic }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin.create_topics(&new, &options).await?;
    Ok(results
        .into_iter()
        .map(|result| match result {
            Ok(name) => (name, TopicCreation::Created),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => (name, TopicCreation::Existed),
            Err((name, code)) => (name, TopicCreation::Failed(code.to_string())),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consumed_topic_has_its_retry_and_dead_letter_topics() {
        let all = all_topics();
        for topic in RETRIED_TOPICS {
            assert!(all.contains(&format!("{topic}.retry")) && all.contains(&format!("{topic}.dlq")), "{topic}");
        }
        assert!(all.contains(&"whatsapp.webhook.inbound.dlq".to_owned()));
        assert!(all.contains(&"whatsapp.webhook.unhandled".to_owned()));
        let unique: std::collections::HashSet<&String> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "no topic twice");
    }

    #[test]
    fn the_missing_topics_error_names_them_and_the_command() {
        let error = MissingTopics(vec!["conversation.messages".into(), "conversation.responses.dlq".into()]);
        let text = error.to_string();
        assert!(text.contains("conversation.messages, conversation.responses.dlq"), "{text}");
        assert!(text.contains("consumer topics create") && text.contains("KAFKA_CREATE_TOPICS=true"), "{text}");
    }
}
