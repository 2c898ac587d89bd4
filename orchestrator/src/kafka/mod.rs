//! The Kafka side: configuration, the embedded broker, publishing, and the
//! consumer runtime that feeds the pipeline.

use rdkafka::error::KafkaError;

pub mod ai_route;
pub mod bus;
pub mod config;
pub mod embedded;
pub mod headers;
pub mod inbox_feed;
pub mod intake;
mod key_order;
mod offsets;
pub mod publisher;
mod received;
pub mod reply_sender;
pub mod runtime;
pub mod topics;
pub mod webhook_ingest;

pub use crate::stats::{ReplyStats, RuntimeStats};
pub use ai_route::{AiRouteSettings, IntentSource};
pub use bus::{EventHandler, KafkaEventBus, ProcessingResult, Subscription, SubscriptionConfig};
pub use config::KafkaConfig;
pub use embedded::{EMBEDDED_FETCH_WAIT_MS, EmbeddedKafka};
pub use inbox_feed::{FeedCursor, FeedError, InboxFeed};
pub use intake::{Intake, IntakeSettings, RecordHandler};
pub use publisher::{PublishError, Publisher};
pub use reply_sender::{ReplySettings, ResponseSender};
pub use runtime::{ConsumerRuntime, RuntimeError, RuntimeSettings};
pub use topics::{MissingTopics, all_topics};
pub use webhook_ingest::WebhookIngest;

/// Commits the stored offsets (nothing stored is fine), then leaves the
/// group with [`leave_group`]. A refused final commit is a warning, not a
/// failed shutdown: the records finished since the last commit are
/// delivered again (to this group's next owner of their partitions) and
/// dedupe skips them, so nothing is lost or done twice.
pub(crate) async fn commit_and_leave<C>(consumer: &rdkafka::consumer::StreamConsumer<C>)
where
    C: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::Consumer as _;
    use rdkafka::types::RDKafkaErrorCode::{IllegalGeneration, NoOffset, RebalanceInProgress, UnknownMemberId};
    match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(NoOffset)) => {}
        // The group is moving (another member joined or left as this one stops).
        Err(KafkaError::ConsumerCommit(code @ (RebalanceInProgress | IllegalGeneration | UnknownMemberId))) => {
            tracing::warn!(%code, "final commit refused while the group rebalances; the new owners redeliver");
        }
        // The broker is failing (timed out, gone): the same, later.
        Err(error) => {
            tracing::warn!(%error, "final commit failed; the records finished since the last commit are redelivered")
        }
    }
    leave_group(consumer).await;
}

/// Leaves the consumer group before the consumer is dropped: unsubscribes,
/// then serves the consumer until its assignment is revoked. Dropping a
/// consumer with a revocation still queued makes librdkafka's close run the
/// rebalance inside `rd_kafka_assign`, which can wait forever (seen with the
/// mock cluster while other members were leaving too).
pub(crate) async fn leave_group<C>(consumer: &rdkafka::consumer::StreamConsumer<C>)
where
    C: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::Consumer as _;
    consumer.unsubscribe();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if consumer.assignment().map_or(true, |assigned| assigned.count() == 0) {
            return;
        }
        // Messages still buffered are dropped unprocessed and uncommitted: redelivered later.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), consumer.recv()).await;
    }
    tracing::warn!("consumer still had partitions assigned after leaving the group");
}
