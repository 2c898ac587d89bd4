//! Assembling an [`Orchestrator`] from its parts.

use std::sync::Arc;

use super::Orchestrator;
use crate::breaker::{BreakerConfig, BreakerRegistry, CircuitBreaker};
use crate::config::PipelineConfig;
use crate::executor_registry::ExecutorRegistry;
use crate::handler_registry::HandlerRegistry;
use crate::retry::RetryPolicy;
use crate::saga::SagaRunner;
use crate::store::{DATABASE_BREAKER, DATABASE_BREAKER_CONFIG, GuardedStore, Store};

/// A required part was not given to the builder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OrchestratorBuilder needs {0}")]
pub struct BuildError(&'static str);

/// Builds an [`Orchestrator`] from its parts.
#[derive(Default)]
pub struct OrchestratorBuilder {
    handlers: Option<HandlerRegistry>,
    executors: ExecutorRegistry,
    store: Option<Arc<dyn Store>>,
    retry: RetryPolicy,
    breaker_config: BreakerConfig,
    database_breaker: Option<BreakerConfig>,
    config: PipelineConfig,
}

impl OrchestratorBuilder {
    /// The intent handlers (required).
    pub fn handlers(mut self, handlers: HandlerRegistry) -> Self {
        self.handlers = Some(handlers);
        self
    }

    /// The action executors.
    pub fn executors(mut self, executors: ExecutorRegistry) -> Self {
        self.executors = executors;
        self
    }

    /// Where claims, the saga log and dead letters are kept (required).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// When to retry (default: 1 s, 5 s, 15 s, then the DLQ).
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Settings of every executor's circuit breaker.
    pub fn breaker_config(mut self, config: BreakerConfig) -> Self {
        self.breaker_config = config;
        self
    }

    /// Settings of the database's circuit breaker (the store's calls go
    /// through it); [`DATABASE_BREAKER_CONFIG`] unless set.
    pub fn database_breaker_config(mut self, config: BreakerConfig) -> Self {
        self.database_breaker = Some(config);
        self
    }

    /// Leases, timeouts, default tenant.
    pub fn config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// The orchestrator.
    pub fn build(self) -> Result<Orchestrator, BuildError> {
        let store = self.store.ok_or(BuildError("a store"))?;
        let handlers = self.handlers.ok_or(BuildError("a handler registry"))?;
        let breakers = Arc::new(BreakerRegistry::new(self.breaker_config));
        let database =
            Arc::new(CircuitBreaker::new(DATABASE_BREAKER, self.database_breaker.unwrap_or(DATABASE_BREAKER_CONFIG)));
        breakers.adopt(database.clone());
        // Every executor's breaker exists from the start, so health lists
        // them all, also those of local executors whose trailing steps never
        // go through one (the database breaker guards the completion).
        for name in self.executors.names() {
            breakers.get(name);
        }
        let store: Arc<dyn Store> = Arc::new(GuardedStore::new(store, database));
        let executors = Arc::new(self.executors);
        let saga = SagaRunner::new(executors.clone(), breakers.clone(), store.clone(), self.config.action_timeout);
        Ok(Orchestrator { handlers, executors, saga, store, breakers, retry: self.retry, config: self.config })
    }
}
