//! `KafkaEventBus`: publish typed events and subscribe handlers to them, as
//! the seed guide uses it.
//!
//! ```no_run
//! use orchestrator::event::MessageReceived;
//! use orchestrator::kafka::bus::{KafkaEventBus, ProcessingResult, SubscriptionConfig};
//! use orchestrator::settings::Settings;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = KafkaEventBus::new(Settings::from_env()?.kafka.config()?)?;
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
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;

use super::intake::{Intake, IntakeSettings, RecordHandler, until_ok};
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
    /// Events handled at once. Events with the same key (the phone) always
    /// run one after another in order; 1, the default, handles the whole
    /// subscription in order.
    pub max_in_flight: usize,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            consumer_group: "whatsapp-orchestrator-subscriber".to_owned(),
            topic: None,
            max_retries: 3,
            retry_delay: Duration::from_millis(500),
            max_in_flight: 1,
        }
    }
}

/// A running subscription; stop it to commit and leave the group.
pub struct Subscription {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), KafkaError>>,
}

impl Subscription {
    /// Stops fetching, lets the events in flight finish (up to the intake's
    /// grace period), commits, leaves the group and returns the loop's result.
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
    /// topic, on the same consumer machinery as the orchestrator's own
    /// consumers ([`Intake`]): events with one key in order, up to
    /// `max_in_flight` at once, offsets committed below the lowest unfinished
    /// event, a graceful drain on stop. Events of other types and
    /// undecodable bytes are dead-lettered to `<topic>.dlq` with the reason.
    pub fn subscribe<E, H>(&self, subscription: SubscriptionConfig, handler: H) -> Result<Subscription, KafkaError>
    where
        E: Event,
        H: EventHandler<E>,
    {
        let topic = subscription.topic.clone().unwrap_or_else(|| E::TYPE.topic().to_owned());
        let settings = IntakeSettings { max_in_flight: subscription.max_in_flight.max(1), ..IntakeSettings::default() };
        let intake = Intake::new(&self.config, &subscription.consumer_group, settings)?;
        let (stop, mut stopped) = watch::channel(false);
        let worker = Arc::new(SubscriptionWorker {
            publisher: self.publisher.clone(),
            handler,
            config: subscription,
            topic: topic.clone(),
            _event: PhantomData::<fn() -> E>,
        });
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            intake.run(&[topic], worker, shutdown).await
        });
        Ok(Subscription { stop, task })
    }
}

/// One subscription's [`RecordHandler`]: decodes, runs the subscriber's
/// handler with in-place retries, dead-letters what cannot be handled.
struct SubscriptionWorker<E, H> {
    publisher: Publisher,
    handler: H,
    config: SubscriptionConfig,
    topic: String,
    _event: PhantomData<fn() -> E>,
}

#[async_trait]
impl<E: Event, H: EventHandler<E>> RecordHandler for SubscriptionWorker<E, H> {
    async fn handle(&self, record: OwnedMessage) {
        let payload = record.payload().unwrap_or_default();
        let (result, attempts) = match Envelope::decode(payload) {
            Ok(envelope) => match E::from_data(envelope.data) {
                Some(event) => self.handle_event(event).await,
                None => (ProcessingResult::DeadLetter(format!("expected {} events on {}", E::TYPE, self.topic)), 1),
            },
            Err(error) => (ProcessingResult::DeadLetter(error.to_string()), 1),
        };
        if let ProcessingResult::DeadLetter(reason) = result {
            self.dead_letter(&record, attempts, &reason).await;
        }
    }
}

impl<E: Event, H: EventHandler<E>> SubscriptionWorker<E, H> {
    /// Runs the handler, retrying `Retry` results with doubling delays; the
    /// result and the attempts it took.
    async fn handle_event(&self, event: E) -> (ProcessingResult, u32) {
        let mut delay = self.config.retry_delay;
        let mut attempts = 1;
        loop {
            match self.handler.handle(event.clone()).await {
                ProcessingResult::Retry(reason) if attempts > self.config.max_retries => {
                    let retries = attempts - 1;
                    return (
                        ProcessingResult::DeadLetter(format!("gave up after {retries} retries: {reason}")),
                        attempts,
                    );
                }
                ProcessingResult::Retry(reason) => {
                    tracing::info!(%reason, attempts, topic = %self.topic, "subscriber asked to retry");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempts += 1;
                }
                other => return (other, attempts),
            }
        }
    }

    /// Copies the record to `<topic>.dlq` with where it came from and why;
    /// retried until the broker takes it, so the offset is never committed
    /// past an event that is neither handled nor dead-lettered.
    async fn dead_letter(&self, record: &OwnedMessage, attempts: u32, reason: &str) {
        let origin = headers::Origin::of(record);
        let attempts = attempts.to_string();
        let dlq_headers = origin.dead_letter_headers(&self.config.consumer_group, &attempts, reason);
        let dlq_topic = format!("{}.dlq", self.topic);
        let (key, payload) = (record.key().map(|k| String::from_utf8_lossy(k).into_owned()), record.payload());
        until_ok("dead-lettering a subscriber's event", || {
            self.publisher.send(&dlq_topic, key.as_deref(), payload.unwrap_or_default(), &dlq_headers)
        })
        .await;
        tracing::warn!(topic = %self.topic, reason, "event dead-lettered");
    }
}
