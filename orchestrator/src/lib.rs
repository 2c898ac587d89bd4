//! # WhatsApp Orchestrator: the core
//!
//! Turns an inbound WhatsApp message and its intent into effects: it
//! deduplicates, validates, picks an [`IntentHandler`] by priority and
//! confidence, runs the handler's actions as a saga (each through its
//! executor's circuit breaker, compensating on failure, logged durably so a
//! crashed run resumes), retries with backoff or parks the message in the
//! dead-letter queue, and returns the reply to publish.
//!
//! The parts, each replaceable:
//!
//! | part | trait / type |
//! | --- | --- |
//! | wire format | [`event::Envelope`] and the event types |
//! | deciding what to do | [`IntentHandler`], [`HandlerRegistry`] |
//! | doing it | [`ActionExecutor`], [`ExecutorRegistry`] |
//! | doing it safely | [`SagaRunner`], [`CircuitBreaker`], [`RetryPolicy`] |
//! | remembering | [`Store`] ([`SqlStore`], [`MemoryStore`]), [`DeadLetterQueue`] |
//! | the pipeline | [`Orchestrator`] |
//! | settings | `settings::Settings` (feature `cli`) |
//!
//! Handler and executor authors need only `use orchestrator::prelude::*;`.
//!
//! ## Vocabulary
//!
//! One name per thing a message becomes on its way through:
//!
//! | name | what it is |
//! | --- | --- |
//! | notification | Meta's webhook POST body; [`webhook::NotifiedMessage`] is one of its messages |
//! | record | bytes on a Kafka topic (rdkafka's `OwnedMessage`); the runtime keeps a record's bytes and coordinates as `Received`, and a record it is handling (with any intent decided earlier) as `Delivered` |
//! | event | a decoded [`event::Envelope`] and its [`event::EventData`] |
//! | [`Inbound`] | the customer's message or interactive reply inside an inbound event |
//! | [`Incoming`] | an [`Inbound`] with its [`Intent`] and where it came from: what [`Orchestrator::process`] takes |
//! | [`MessageContext`] | an [`Incoming`] once claimed: tenant, attempt, saga run; what handlers and executors see |
//! | [`store::Claim`] | the store's answer to claiming a message (the webhook's publish-once check answers a [`webhook::recent::Turn`]) |
//! | [`Outcome`] | what became of a message: [`Outcome::Completed`] now, a duplicate of one `Done` before, retried, deferred or dead-lettered |
//! | action | one step of a handler's plan, named by its executor (`executors::actions`) |
//! | reply | a [`event::ResponseReady`] on `conversation.responses`, sent by the reply sender |

pub mod breaker;
pub mod classifier;
pub mod coalesce;
pub mod config;
pub mod context;
pub mod db;
pub mod dlq;
pub mod event;
pub mod executor;
pub mod executor_registry;
pub mod handler;
pub mod handler_registry;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod intent;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod local;
pub mod maintenance;
mod mask;
pub mod message_service;
pub mod metrics;
pub mod outbound;
pub mod pipeline;
pub mod publish;
pub mod retry;
pub mod saga;
#[cfg(feature = "cli")]
pub mod settings;
pub mod stats;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
pub mod webhook;

pub use breaker::{BreakerConfig, BreakerError, BreakerRegistry, BreakerState, CircuitBreaker};
pub use classifier::{Classifier, ClassifyError, KeywordClassifier};
pub use config::{ConfigError, PipelineConfig};
pub use context::{Inbound, MessageContext};
pub use executor::{ActionContext, ActionError, ActionExecutor, ActionOutput};
pub use executor_registry::ExecutorRegistry;
pub use handler::{ActionRequest, HandlerError, IntentHandler, IntentOutcome, Reply};
pub use handler_registry::HandlerRegistry;
pub use intent::Intent;
pub use local::{LocalExecutor, LocalStep};
pub(crate) use mask::mask_phone;
pub use pipeline::{
    BuildError, Completed, DeadLettered, DuplicateOf, Incoming, LeadStage, Orchestrator, OrchestratorBuilder, Outcome,
    PipelineError,
};
pub use retry::{RetryDecision, RetryPolicy};
pub use saga::{SagaReport, SagaRunner, StepFailure};
pub use store::{DeadLetterQueue, MemoryStore, SqlStore, Store, StoreError};

/// `#[async_trait]`, for implementing the crate's async traits.
pub use async_trait::async_trait;

/// What a handler or executor author needs, in one import:
/// `use orchestrator::prelude::*;`.
pub mod prelude {
    pub use crate::async_trait;
    pub use crate::context::{Inbound, MessageContext};
    pub use crate::executor::{ActionContext, ActionError, ActionExecutor, ActionOutput};
    pub use crate::executor_registry::ExecutorRegistry;
    pub use crate::handler::{ActionRequest, HandlerError, IntentHandler, IntentOutcome, Reply};
    pub use crate::handler_registry::HandlerRegistry;
    pub use crate::intent::Intent;
    pub use crate::local::LocalExecutor;
    pub use serde_json::{Value, json};
}
