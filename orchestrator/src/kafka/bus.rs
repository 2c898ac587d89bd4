//! `KafkaEventBus`: publish typed events and subscribe handlers to them, as
//! the seed guide uses it.
//!
//! ```no_run
//! use orchestrator::event::MessageReceived;
//! use orchestrator::kafka::bus::{KafkaEventBus, ProcessingResult, SubscriptionConfig};
//! use orchestrator::kafka::KafkaConfig;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = KafkaEventBus::new(KafkaConfig::from_env()?)?;
//! let subscription = bus.subscribe::<MessageReceived, _>(
//!     SubscriptionConfig { consumer_group: "crm-sync".into(), ..Default::default() },
//!     |message: MessageReceived| async move {
//!         println!("{} wrote to us", message.from_phone);
//!         ProcessingResult::Success
//!     },
//! )?;
//! # subscription.stop().await; Ok(()) }
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::watch;

use super::{KafkaConfig, PublishError, Publisher, headers};
use crate::event::{Envelope, Event};
use crate::pipeline::PROCESSED_BY;

/// What a subscriber's handler made of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessingResult {
    /// Done: move on.
    Success,
    /// Failed, may work later: retried in place with backoff, up to the
    /// subscription's `max_retries`, then dead-lettered.
    Retry(String),
    /// Will never work: sent to `<topic>.dlq` at once.
    DeadLetter(String),
    /// Not for this subscriber: move on.
    Skip,
}

/// Handles events of type `E`; closures `Fn(E) -> impl Future<Output = ProcessingResult>` are handlers.
#[async_trait]
pub trait EventHandler<E>: Send + Sync + 'static {
    /// Handles one event.
    async fn handle(&self, event: E) -> ProcessingResult;
}

#[async_trait]
impl<E, F, Fut> EventHandler<E> for F
where
    E: Event,
    F: Fn(E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ProcessingResult> + Send,
{
    async fn handle(&self, event: E) -> ProcessingResult {
        self(event).await
    }
}

/// How to subscribe.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    /// Consumer group (each group gets every event once).
    pub consumer_group: String,
    /// Topic to read; default: the event type's topic.
    pub topic: Option<String>,
    /// Retries of a `Retry` result before dead-lettering.
    pub max_retries: u32,
    /// First retry delay; doubles each time.
    pub retry_delay: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            consumer_group: "whatsapp-orchestrator-subscriber".to_owned(),
            topic: None,
            max_retries: 3,
            retry_delay: Duration::from_millis(500),
        }
    }
}

/// A running subscription; stop it to commit and leave the group.
pub struct Subscription {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), KafkaError>>,
}

impl Subscription {
    /// Stops consuming after the current event, commits, and returns the loop's result.
    pub async fn stop(self) -> Result<(), KafkaError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }
}

/// Publishes and subscribes to the design's topics.
pub struct KafkaEventBus {
    config: KafkaConfig,
    publisher: Publisher,
}

impl KafkaEventBus {
    /// A bus on `config`'s cluster (`KAFKA_BOOTSTRAP_SERVERS` must be set;
    /// [`super::EmbeddedKafka`] gives one in process).
    pub fn new(config: KafkaConfig) -> Result<Self, KafkaError> {
        if config.bootstrap_servers.is_none() {
            return Err(KafkaError::ClientCreation("KAFKA_BOOTSTRAP_SERVERS is not set".to_owned()));
        }
        let publisher = Publisher::new(&config)?;
        Ok(Self { config, publisher })
    }

    /// Publishes an event in a fresh envelope to its type's topic, keyed by phone.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(i32, i64), PublishError> {
        self.publisher.publish(&Envelope::new(event.into_data(), PROCESSED_BY)).await
    }

    /// Publishes a ready envelope (keeps its id, metadata and attempt count).
    pub async fn publish_envelope(&self, envelope: &Envelope) -> Result<(i32, i64), PublishError> {
        self.publisher.publish(envelope).await
    }

    /// Runs `handler` for every event of type `E` on the subscription's
    /// topic, one at a time, in order. Offsets are stored once an event is
    /// handled (or dead-lettered); events of other types and undecodable
    /// bytes are dead-lettered with the reason.
    pub fn subscribe<E, H>(&self, subscription: SubscriptionConfig, handler: H) -> Result<Subscription, KafkaError>
    where
        E: Event,
        H: EventHandler<E>,
    {
        let topic = subscription.topic.clone().unwrap_or_else(|| E::TYPE.topic().to_owned());
        let consumer: StreamConsumer = self.config.consumer_config(&subscription.consumer_group).create()?;
        consumer.subscribe(&[&topic])?;
        let (stop, stopped) = watch::channel(false);
        let worker = SubscriptionLoop {
            consumer,
            publisher: self.publisher.clone(),
            handler: Arc::new(handler),
            config: subscription,
            topic,
            _event: PhantomData::<fn() -> E>,
        };
        Ok(Subscription { stop, task: tokio::spawn(worker.run(stopped)) })
    }
}

struct SubscriptionLoop<E, H> {
    consumer: StreamConsumer,
    publisher: Publisher,
    handler: Arc<H>,
    config: SubscriptionConfig,
    topic: String,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event, H: EventHandler<E>> SubscriptionLoop<E, H> {
    async fn run(self, mut stopped: watch::Receiver<bool>) -> Result<(), KafkaError> {
        loop {
            let received = tokio::select! {
                _ = stopped.wait_for(|s| *s) => break,
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, "subscription receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let payload = message.payload().unwrap_or_default();
            let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned());
            let result = match Envelope::decode(payload) {
                Ok(envelope) => match E::from_data(envelope.data) {
                    Some(event) => self.handle(event).await,
                    None => ProcessingResult::DeadLetter(format!("expected {} events on {}", E::TYPE, self.topic)),
                },
                Err(error) => ProcessingResult::DeadLetter(error.to_string()),
            };
            if let ProcessingResult::DeadLetter(reason) = &result {
                let offset = message.offset().to_string();
                let partition = message.partition().to_string();
                let sent = self
                    .publisher
                    .send(
                        &format!("{}.dlq", self.topic),
                        key.as_deref(),
                        payload,
                        &[
                            (headers::SOURCE_TOPIC, self.topic.as_bytes()),
                            (headers::SOURCE_PARTITION, partition.as_bytes()),
                            (headers::SOURCE_OFFSET, offset.as_bytes()),
                            (headers::CONSUMER_GROUP, self.config.consumer_group.as_bytes()),
                            (headers::ERROR, reason.as_bytes()),
                        ],
                    )
                    .await;
                if let Err(error) = sent {
                    // Not stored: the event comes back after a restart rather than being lost.
                    tracing::error!(%error, "dead-lettering failed; stopping the subscription");
                    break;
                }
            }
            // store_offset_from_message stores offset + 1, the next to read.
            if let Err(error) = self.consumer.store_offset_from_message(&message) {
                tracing::debug!(%error, "subscription offset not stored");
            }
        }
        super::commit_and_leave(&self.consumer).await
    }

    /// Runs the handler, retrying `Retry` results with doubling delays.
    async fn handle(&self, event: E) -> ProcessingResult {
        let mut delay = self.config.retry_delay;
        let mut retries = 0;
        loop {
            match self.handler.handle(event.clone()).await {
                ProcessingResult::Retry(reason) if retries >= self.config.max_retries => {
                    return ProcessingResult::DeadLetter(format!("gave up after {retries} retries: {reason}"));
                }
                ProcessingResult::Retry(reason) => {
                    tracing::info!(%reason, retries, "subscriber asked to retry");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    retries += 1;
                }
                other => return other,
            }
        }
    }
}
