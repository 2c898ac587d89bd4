//! Delivering replies: consume `conversation.responses` and hand each
//! `ResponseReady` to a [`WhatsAppSender`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tracing::Instrument as _;

use super::KafkaConfig;
use crate::event::{Envelope, EventData, ResponseContent, ResponseReady, topics};
use crate::retry::RetryPolicy;

/// Sending one reply failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying (timeout, 5xx, rate limit).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Will fail again (bad number, rejected template).
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Delivers replies to WhatsApp users.
#[async_trait]
pub trait WhatsAppSender: Send + Sync {
    /// Sends one reply.
    async fn send(&self, response: &ResponseReady) -> Result<(), SendError>;
}

/// The default sender: logs the message it would send and sends nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRunSender;

#[async_trait]
impl WhatsAppSender for DryRunSender {
    async fn send(&self, response: &ResponseReady) -> Result<(), SendError> {
        let text = match &response.content {
            ResponseContent::Text { message } => message.clone(),
            ResponseContent::Interactive { body_text, buttons } => {
                let titles: Vec<&str> = buttons.iter().map(|b| b.title.as_str()).collect();
                format!("{body_text} {titles:?}")
            }
            other => format!("{other:?}"),
        };
        tracing::info!(
            to = %crate::mask_phone(&response.to_phone),
            in_reply_to = %response.original_message_id,
            priority = ?response.priority,
            %text,
            "dry run (no WHATSAPP_TOKEN): would send this reply"
        );
        Ok(())
    }
}

/// Consumes `conversation.responses` in its own consumer group and sends
/// each reply, retrying retryable failures; offsets are stored once a reply
/// was sent or given up on.
pub struct ResponseSender {
    consumer: StreamConsumer,
    sender: Arc<dyn WhatsAppSender>,
    retry: RetryPolicy,
}

impl ResponseSender {
    /// A sender on `config`'s cluster, in group `<consumer group>-sender`.
    pub fn new(config: &KafkaConfig, sender: Arc<dyn WhatsAppSender>) -> Result<Self, KafkaError> {
        let group = format!("{}-sender", config.consumer_group_id);
        let consumer: StreamConsumer = config.consumer_config(&group).create()?;
        let retry =
            RetryPolicy::steps(vec![Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(5)]);
        Ok(Self { consumer, sender, retry })
    }

    /// Sends replies until `shutdown` resolves, then commits.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), KafkaError> {
        self.consumer.subscribe(&[topics::RESPONSES])?;
        tokio::pin!(shutdown);
        loop {
            let received = tokio::select! {
                _ = &mut shutdown => break,
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "responses receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let span = tracing::info_span!("reply.send", trace_id = tracing::field::Empty);
            let traceparent = super::headers::value(&message, crate::telemetry::TRACEPARENT);
            crate::telemetry::continue_trace(&span, traceparent.as_deref());
            span.record("trace_id", crate::telemetry::trace_id_of(&span));
            match Envelope::decode(message.payload().unwrap_or_default()) {
                Ok(Envelope { data: EventData::ResponseReady(response), .. }) => {
                    let sent = (|| self.sender.send(&response))
                        .retry(&self.retry)
                        .when(|e| matches!(e, SendError::Retryable(_)))
                        .instrument(span)
                        .await;
                    if let Err(error) = sent {
                        tracing::error!(%error, in_reply_to = %response.original_message_id, "reply not delivered");
                    }
                }
                Ok(other) => {
                    tracing::warn!(event_type = %other.event_type(), "ignoring a non-reply on the responses topic")
                }
                Err(error) => tracing::warn!(%error, "ignoring an undecodable reply"),
            }
            if let Err(error) = self.consumer.store_offset_from_message(&message) {
                tracing::debug!(%error, "reply offset not stored");
            }
        }
        if let Err(error) = super::commit_and_leave(&self.consumer).await {
            tracing::warn!(%error, "final commit of the response sender failed");
        }
        Ok(())
    }
}
