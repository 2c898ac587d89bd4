//! The consumer runtime: Kafka messages in, pipeline outcomes out.
//!
//! One consumer group reads the consumed topics and their `.retry` twins.
//! Each message's offset is stored only once it is finished (completed,
//! sent to retry, or dead-lettered), and the commit point is the lowest
//! offset still in flight, so nothing is skipped. Messages with the same key
//! (phone) run in arrival order; different keys run concurrently, bounded.
//! With the AI route ([`ConsumerRuntime::with_ai_route`]) it also reads
//! `ai.process.result` and finishes messages with the AI's intents.
//!
//! | file | what it holds |
//! | --- | --- |
//! | `mod.rs` | [`ConsumerRuntime`]: its parts, topics, start and drain (the loop is [`Intake`]'s) |
//! | `records` | a delivery and what its bytes decode to |
//! | `handle` | one record: its trace, a retry copy's due time, classification, the pipeline |
//! | `parking` | per-phone order across retries: parking and draining |
//! | `act` | an outcome turned into Kafka records (reply, retry copy, dead letter) |
//! | `ai` | the external AI route's side: requests, results, the overdue sweeper |

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;

mod act;
mod ai;
mod handle;
mod parking;
mod records;

use super::ai_route::{AiRoute, AiRouteSettings};
use super::intake::{Intake, IntakeSettings, RecordHandler, until_ok};
use super::topics::CONSUMED_TOPICS;
use super::{KafkaConfig, Publisher};
use crate::classifier::Classifier;
use crate::event::topics;
use crate::pipeline::Orchestrator;
use crate::stats::RuntimeStats;
use crate::store::{KeyParking, PendingClassifications};

/// The runtime could not start or keep consuming.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Tunables of the runtime (see [`IntakeSettings`]).
pub type RuntimeSettings = IntakeSettings;

/// Consumes the conversation topics and drives the [`Orchestrator`].
pub struct ConsumerRuntime {
    intake: Intake,
    worker: Worker,
}

/// Everything a message task needs.
struct Worker {
    publisher: Publisher,
    orchestrator: Arc<Orchestrator>,
    /// Classifies messages; with the AI route, only those whose result is overdue.
    classifier: Arc<dyn Classifier>,
    ai: Option<AiRoute>,
    parking: Arc<dyn KeyParking>,
    stats: Arc<RuntimeStats>,
    group_id: String,
}

impl ConsumerRuntime {
    /// A runtime on `config` (bootstrap servers set), subscribed on
    /// [`run`](Self::run). `parking` keeps per-phone order across retries
    /// (usually the same store the orchestrator uses).
    pub fn new(
        config: &KafkaConfig,
        orchestrator: Arc<Orchestrator>,
        classifier: Arc<dyn Classifier>,
        parking: Arc<dyn KeyParking>,
        settings: RuntimeSettings,
    ) -> Result<Self, RuntimeError> {
        let intake = Intake::new(config, &config.consumer_group_id, settings)?;
        let worker = Worker {
            publisher: Publisher::new(config)?,
            orchestrator,
            classifier,
            ai: None,
            parking,
            stats: Arc::new(RuntimeStats::default()),
            group_id: config.consumer_group_id.clone(),
        };
        Ok(Self { intake, worker })
    }

    /// Takes intents from the external AI service (see [`super::ai_route`]):
    /// messages wait in `pending` for their `AiProcessResult`, and the
    /// runtime's classifier finishes those whose result is overdue.
    pub fn with_ai_route(mut self, pending: Arc<dyn PendingClassifications>, settings: AiRouteSettings) -> Self {
        self.worker.ai = Some(AiRoute { pending, settings });
        self
    }

    /// The worker counters.
    pub fn stats(&self) -> Arc<RuntimeStats> {
        self.worker.stats.clone()
    }

    /// Topics read: the consumed topics and their retry topics, and
    /// `ai.process.result` with the AI route.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> =
            CONSUMED_TOPICS.iter().flat_map(|t| [(*t).to_owned(), format!("{t}.retry")]).collect();
        if self.worker.ai.is_some() {
            topics.push(topics::AI_RESULT.to_owned());
        }
        topics
    }

    /// Consumes until `shutdown` resolves, then stops fetching, finishes (or
    /// after the grace period abandons) in-flight messages, commits what is
    /// finished and flushes the producer.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), RuntimeError> {
        let topics = self.topics();
        let Self { intake, worker } = self;
        let worker = Arc::new(worker);
        worker.stats.set_running(true);
        let (stop_sweeping, sweeping) = tokio::sync::watch::channel(false);
        let sweeper = worker.ai.clone().map(|ai| tokio::spawn(worker.clone().sweep_overdue(ai, sweeping)));
        let shutdown = async move {
            shutdown.await;
            let _ = stop_sweeping.send(true);
        };
        let consumed = intake.run(&topics, worker.clone(), shutdown).await;
        worker.stats.set_running(false);
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        // Every copy was acknowledged before its offset was stored; flush any stragglers.
        worker.publisher.flush(Duration::from_secs(10))?;
        consumed?;
        tracing::info!("consumer stopped");
        Ok(())
    }
}
