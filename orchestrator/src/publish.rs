//! Where events and raw records go, whatever carries them: the
//! [`Publish`] trait the dead-letter replay and the webhook write through.
//! Kafka's [`Publisher`](crate::kafka::Publisher) is the shipped one; a
//! test or another transport implements the trait.

use async_trait::async_trait;

use crate::event::Envelope;

/// A record was not acknowledged by the transport.
#[derive(Debug, thiserror::Error)]
#[error("publishing to {topic} failed: {source}")]
pub struct PublishError {
    /// The topic.
    pub topic: String,
    /// The transport's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
    missing_topic: bool,
}

impl PublishError {
    /// A failure to publish to `topic`; `missing_topic` when the transport
    /// says the topic does not exist.
    pub fn new(topic: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>, missing_topic: bool) -> Self {
        Self { topic: topic.to_owned(), source: source.into(), missing_topic }
    }

    /// The cluster does not have the topic (auto-creation off): retrying
    /// cannot help until someone creates it.
    pub fn is_missing_topic(&self) -> bool {
        self.missing_topic
    }
}

/// Publishes records: bytes with headers to a topic, keyed (by phone, for
/// events), acknowledged before the future resolves.
#[async_trait]
pub trait Publish: Send + Sync {
    /// Sends `payload` with `headers` to `topic` under `key`.
    async fn send_record(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), PublishError>;

    /// Queues a notification for live inboxes (`MessageProcessed`) without
    /// waiting for it; a transport that feeds no inbox ignores it.
    fn announce(&self, envelope: &Envelope) {
        let _ = envelope;
    }

    /// Publishes an event to its type's topic, keyed by its phone number.
    async fn publish_event(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let topic = envelope.event_type().topic();
        self.send_record(topic, envelope.data.phone(), &envelope.encode(), &[]).await
    }
}
