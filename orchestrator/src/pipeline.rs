//! The per-message pipeline: dedupe, validate, route, run the saga, decide.
//!
//! [`Orchestrator::process`] is the one entry point the Kafka runtime (or any
//! other transport) calls with a decoded message and its intent; it returns
//! what happened and what to publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::breaker::{BreakerConfig, BreakerRegistry, CircuitBreaker};
use crate::config::PipelineConfig;
use crate::context::{Inbound, MessageContext};
use crate::event::{DecodeError, Envelope, EventData, FailureType, MessageFailed, Priority, ResponseReady, reply_meta};
use crate::executor_registry::ExecutorRegistry;
use crate::handler::{HandlerError, IntentOutcome};
use crate::handler_registry::HandlerRegistry;
use crate::intent::Intent;
use crate::retry::{RetryDecision, RetryPolicy};
use crate::saga::{SagaReport, SagaRunner, StepOutcome};
use crate::store::{
    Claim, DATABASE_BREAKER, DATABASE_BREAKER_CONFIG, GuardedStore, Lease, MessageKey, NewActivity, NewDeadLetter,
    SourceInfo, StageChange, StageMove, Store, StoreError, to_chrono,
};
use crate::validate::validate;

/// `processed_by` stamped on events the orchestrator produces.
pub const PROCESSED_BY: &str = "whatsapp_orchestrator";

/// A decoded inbound message with its intent, ready for [`Orchestrator::process`].
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Id of the envelope that carried it.
    pub event_id: Uuid,
    /// The message.
    pub inbound: Inbound,
    /// Its intent.
    pub intent: Intent,
    /// `max_attempts` of the envelope; `None` uses the retry policy's.
    pub max_attempts: Option<u32>,
    /// Kafka coordinates, stored with a dead letter.
    pub source: Option<SourceInfo>,
    /// The original bytes, stored with a dead letter so it can be replayed as
    /// received; re-encoded from the message when absent.
    pub payload: Option<Vec<u8>>,
}

impl Incoming {
    /// A message with a fresh event id.
    pub fn new(inbound: Inbound, intent: Intent) -> Self {
        Self { event_id: Uuid::new_v4(), inbound, intent, max_attempts: None, source: None, payload: None }
    }

    /// The inbound message of an envelope; `None` when the envelope carries
    /// another event type.
    pub fn from_envelope(envelope: &Envelope, intent: Intent) -> Option<Self> {
        let inbound = match &envelope.data {
            EventData::MessageReceived(m) => Inbound::Message(m.clone()),
            EventData::InteractionReceived(i) => Inbound::Interaction(i.clone()),
            _ => return None,
        };
        Some(Self::carried(envelope.event_id, envelope.max_attempts, inbound, intent))
    }

    /// [`from_envelope`](Self::from_envelope), moving the message out of the
    /// envelope instead of copying it.
    pub fn from_owned_envelope(envelope: Envelope, intent: Intent) -> Option<Self> {
        let (event_id, max_attempts) = (envelope.event_id, envelope.max_attempts);
        let inbound = match envelope.data {
            EventData::MessageReceived(m) => Inbound::Message(m),
            EventData::InteractionReceived(i) => Inbound::Interaction(i),
            _ => return None,
        };
        Some(Self::carried(event_id, max_attempts, inbound, intent))
    }

    /// The message an envelope (`event_id`, `max_attempts`) carried.
    fn carried(event_id: Uuid, max_attempts: Option<u32>, inbound: Inbound, intent: Intent) -> Self {
        Self { event_id, inbound, intent, max_attempts, source: None, payload: None }
    }

    /// Adds Kafka coordinates.
    pub fn with_source(mut self, source: SourceInfo) -> Self {
        self.source = Some(source);
        self
    }

    /// Adds the original bytes.
    pub fn with_payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = Some(payload);
        self
    }

    fn provenance(&self) -> Provenance<'_> {
        Provenance {
            event_id: self.event_id,
            max_attempts: self.max_attempts,
            source: self.source.as_ref(),
            payload: self.payload.as_deref(),
            inbound: &self.inbound,
        }
    }
}

/// What filing a message in the dead-letter queue needs of it, borrowed
/// from the [`Incoming`] or, once its message moved into the context, from both.
struct Provenance<'a> {
    event_id: Uuid,
    max_attempts: Option<u32>,
    source: Option<&'a SourceInfo>,
    payload: Option<&'a [u8]>,
    inbound: &'a Inbound,
}

impl Provenance<'_> {
    /// The bytes as received, or the message re-encoded when they were not kept.
    fn envelope_bytes(&self) -> Vec<u8> {
        if let Some(payload) = self.payload {
            return payload.to_vec();
        }
        let data = match self.inbound {
            Inbound::Message(m) => EventData::MessageReceived(m.clone()),
            Inbound::Interaction(i) => EventData::InteractionReceived(i.clone()),
        };
        let mut envelope = Envelope::new(data, PROCESSED_BY);
        envelope.event_id = self.event_id;
        envelope.max_attempts = self.max_attempts;
        envelope.encode()
    }
}

/// A message was processed to the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// The message's dedupe key (to confirm its reply was published).
    pub key: MessageKey,
    /// Intent of the handler that took it.
    pub handler: String,
    /// The saga's steps.
    pub steps: Vec<StepOutcome>,
    /// Whether the handler escalated to a human.
    pub escalated: bool,
    /// The reply to publish on `conversation.responses`, if any.
    pub response: Option<ResponseReady>,
}

/// A message was parked in the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLettered {
    /// Row id in `dead_letter_queue`.
    pub dlq_id: i64,
    /// Why.
    pub failure_type: FailureType,
    /// The error, readable.
    pub reason: String,
    /// The event to publish on `conversation.failures`.
    pub event: MessageFailed,
}

/// Why a message was skipped as a duplicate.
#[derive(Debug, Clone, PartialEq)]
pub enum DuplicateOf {
    /// It was processed before.
    Completed,
    /// It was processed before, but its reply was never confirmed published
    /// (the worker stopped in between): publish it, then
    /// [`Store::mark_reply_published`].
    ReplyPending {
        /// The message's dedupe key.
        key: MessageKey,
        /// The reply kept in the outbox.
        response: Box<ResponseReady>,
    },
    /// It is in the dead-letter queue.
    DeadLettered,
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Processed; publish the reply.
    Completed(Completed),
    /// Already finished before: nothing was done.
    Duplicate(DuplicateOf),
    /// Failed with a retryable error: deliver it again at `due_at` as `next_attempt`.
    RetryScheduled {
        /// The attempt number of the next delivery.
        next_attempt: u32,
        /// Wait before it.
        delay: Duration,
        /// When it is due.
        due_at: DateTime<Utc>,
        /// The error.
        reason: String,
    },
    /// Not attempted (a circuit is open, or another worker holds it): deliver
    /// it again at `due_at`; no attempt was spent.
    Deferred {
        /// When to try again.
        due_at: DateTime<Utc>,
        /// Why.
        reason: String,
    },
    /// Parked in the dead-letter queue.
    DeadLettered(DeadLettered),
}

/// The pipeline could not record what happened; nothing is lost, but the
/// message must be delivered again later (do not commit its offset).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The store failed (database down, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
        let store: Arc<dyn Store> = Arc::new(GuardedStore::new(store, database));
        let executors = Arc::new(self.executors);
        let saga = SagaRunner::new(executors.clone(), breakers.clone(), store.clone(), self.config.action_timeout);
        Ok(Orchestrator { handlers, executors, saga, store, breakers, retry: self.retry, config: self.config })
    }
}

/// The pipeline, built from registries, a store, breakers and policies.
pub struct Orchestrator {
    handlers: HandlerRegistry,
    executors: Arc<ExecutorRegistry>,
    saga: SagaRunner,
    store: Arc<dyn Store>,
    breakers: Arc<BreakerRegistry>,
    retry: RetryPolicy,
    config: PipelineConfig,
}

impl Orchestrator {
    /// Starts a builder.
    pub fn builder() -> OrchestratorBuilder {
        OrchestratorBuilder::default()
    }

    /// Circuit breakers by executor name, and the database's (health, metrics).
    pub fn breakers(&self) -> &Arc<BreakerRegistry> {
        &self.breakers
    }

    /// `store` behind the pipeline's database breaker: hand this, not the
    /// raw store, to everything else that uses the database (parking, the AI
    /// route, the webhook, the DLQ service, the reply sender), so one outage
    /// opens one breaker for all of them.
    pub fn guard<S: ?Sized>(&self, store: Arc<S>) -> Arc<GuardedStore<S>> {
        // The builder adopted the database breaker under this name: `get` returns it.
        Arc::new(GuardedStore::new(store, self.breakers.get(DATABASE_BREAKER)))
    }

    /// The handler table.
    pub fn handlers(&self) -> &HandlerRegistry {
        &self.handlers
    }

    /// The executor table.
    pub fn executors(&self) -> &ExecutorRegistry {
        &self.executors
    }

    /// The store (behind the database's circuit breaker).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Processes one message to an [`Outcome`].
    pub async fn process(&self, incoming: Incoming) -> Result<Outcome, PipelineError> {
        let span = tracing::info_span!(
            "message",
            event_id = %incoming.event_id,
            phone = %crate::mask_phone(incoming.inbound.phone()),
            intent = %incoming.intent.name,
            confidence = incoming.intent.confidence,
            // A lead without its own id is its phone: masked like every phone in logs.
            lead_id = %incoming.intent.lead_id.clone().unwrap_or_else(|| crate::mask_phone(incoming.inbound.phone())),
            attempt = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let intent = crate::metrics::label(&incoming.intent.name).to_owned();
        let outcome = self.process_inner(incoming).instrument(span).await;
        let metrics = crate::metrics::metrics();
        metrics.processing_duration.with_label_values(&[intent.as_str()]).observe(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(Outcome::Duplicate(_)) => metrics.duplicates.inc(),
            Ok(Outcome::DeadLettered(dead)) => {
                metrics.dead_lettered.with_label_values(&[dead.failure_type.as_str()]).inc();
            }
            _ => {}
        }
        outcome
    }

    async fn process_inner(&self, incoming: Incoming) -> Result<Outcome, PipelineError> {
        let event_id = incoming.event_id.to_string();
        let message_id = incoming.inbound.message_id(&event_id).to_owned();
        // Before the claim: a value the database cannot store must not reach a statement.
        if let Err(reason) = crate::validate::storable(&incoming.inbound, &incoming.intent) {
            return self
                .dead_letter(None, &incoming.provenance(), Some(&message_id), 1, FailureType::ValidationError, reason)
                .await;
        }
        let tenant = incoming
            .intent
            .tenant_id
            .as_deref()
            .or(incoming.inbound.tenant_hint())
            .or(self.config.default_tenant.as_deref())
            .map(str::to_owned);
        let Some(tenant_id) = tenant else {
            let reason = "no tenant: neither the intent nor the message names one".to_owned();
            return self
                .dead_letter(None, &incoming.provenance(), Some(&message_id), 1, FailureType::ValidationError, reason)
                .await;
        };
        let key = MessageKey::new(tenant_id, message_id);

        let claim = self.store.claim(&key, self.config.claim_lease).instrument(tracing::info_span!("dedupe")).await?;
        let (lease, attempt, run) = match claim {
            Claim::Acquired { lease, attempt, run } => (lease, attempt, run),
            Claim::Completed => {
                let pending = self.store.pending_reply(&key).await?;
                let response = pending.and_then(|reply| serde_json::from_value::<ResponseReady>(reply).ok());
                return Ok(Outcome::Duplicate(match response {
                    Some(response) => DuplicateOf::ReplyPending { key, response: Box::new(response) },
                    None => DuplicateOf::Completed,
                }));
            }
            Claim::DeadLettered => return Ok(Outcome::Duplicate(DuplicateOf::DeadLettered)),
            Claim::Busy { lease_expires_at } => {
                return Ok(Outcome::Deferred {
                    due_at: lease_expires_at.max(Utc::now()),
                    reason: "another worker holds this message".to_owned(),
                });
            }
        };
        tracing::Span::current().record("attempt", attempt);
        // Hold the lease while working; if it is lost (a stall longer than the
        // lease let another worker take over), stop as if this worker had died.
        let finishing = AtomicBool::new(false);
        tokio::select! {
            outcome = self.process_claimed(&lease, incoming, attempt, run, &finishing) => outcome,
            lost = self.keep_lease(&lease, &finishing) => Err(lost),
        }
    }

    /// Renews `lease` every third of its length; returns once it cannot.
    /// Once `finishing` is set the final write (completion, dead letter,
    /// release) is under way and ends the lease itself: a renewal refused
    /// then means that write committed, not that the lease was lost.
    async fn keep_lease(&self, lease: &Lease, finishing: &AtomicBool) -> PipelineError {
        let every = (self.config.claim_lease / 3).max(std::time::Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            if finishing.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            if let Err(error) = self.store.renew(lease, self.config.claim_lease).await {
                if finishing.load(Ordering::Acquire) {
                    return std::future::pending().await;
                }
                tracing::warn!(%error, "lease renewal failed, abandoning the message");
                return error.into();
            }
        }
    }

    async fn process_claimed(
        &self,
        lease: &Lease,
        incoming: Incoming,
        attempt: u32,
        run: u32,
        finishing: &AtomicBool,
    ) -> Result<Outcome, PipelineError> {
        let key = &lease.key;
        let max_attempts = incoming.max_attempts.unwrap_or_else(|| self.retry.max_attempts()).max(1);
        if attempt > max_attempts {
            finishing.store(true, Ordering::Release);
            // Only a takeover can get here: earlier attempts died without finishing.
            let reason =
                format!("gave up after {max_attempts} attempts; the last did not finish (its worker died or stalled)");
            let origin = incoming.provenance();
            return self.dead_letter(Some(lease), &origin, None, attempt - 1, FailureType::UnknownError, reason).await;
        }
        // The message and intent move into the context; the dead-letter
        // paths borrow them back from it with the rest of the incoming.
        let Incoming { event_id, inbound, intent, max_attempts: envelope_max, source, payload } = incoming;
        let ctx = MessageContext {
            event_id,
            tenant_id: key.tenant_id.clone(),
            message_id: key.message_id.clone(),
            inbound,
            intent,
            attempt,
            max_attempts,
            run,
        };
        let origin = Provenance {
            event_id,
            max_attempts: envelope_max,
            source: source.as_ref(),
            payload: payload.as_deref(),
            inbound: &ctx.inbound,
        };

        if let Err(reason) = tracing::info_span!("validation").in_scope(|| validate(&ctx)) {
            finishing.store(true, Ordering::Release);
            return self.dead_letter(Some(lease), &origin, None, attempt, FailureType::ValidationError, reason).await;
        }

        let intent_label = crate::metrics::label(&ctx.intent.name);
        let metrics = crate::metrics::metrics();
        metrics.intent_detected.with_label_values(&[intent_label]).inc();
        metrics.intent_confidence.with_label_values(&[intent_label]).observe(ctx.intent.confidence);
        let handler = self.handlers.route(&ctx);
        let handler_name = handler.intent().to_owned();
        let decided = handler.handle(&ctx).instrument(tracing::info_span!("intent", handler = %handler_name)).await;
        let outcome = match decided {
            Ok(outcome) => outcome,
            Err(error) => {
                finishing.store(true, Ordering::Release);
                let retryable = matches!(error, HandlerError::Retryable(_));
                return self
                    .failed(lease, &origin, &ctx, retryable, FailureType::UnknownError, error.to_string())
                    .await;
            }
        };

        let report = self.saga.run(lease, &ctx, &outcome.actions).await?;
        finishing.store(true, Ordering::Release);
        match report {
            SagaReport::Succeeded { steps } => {
                let activities = activities(&ctx, &handler_name, &outcome, &steps);
                let response = outcome.response.map(|reply| ResponseReady {
                    original_message_id: ctx.message_id.clone(),
                    to_phone: ctx.phone().to_owned(),
                    response_type: reply.content.response_type(),
                    content: reply.content,
                    generated_at: Utc::now(),
                    priority: if outcome.escalate { Priority::Urgent } else { reply.priority },
                    metadata: reply_metadata(&ctx),
                });
                // The reply goes into the outbox with the completion, in one transaction.
                let outbox = response.as_ref().and_then(|r| serde_json::to_value(r).ok());
                match &outcome.lead_stage {
                    Some(stage) => {
                        let lead = StageMove { lead_id: ctx.lead_id().to_owned(), stage: stage.clone() };
                        let ttl = self.config.dedupe_ttl;
                        let change =
                            self.store.complete_moving_lead(lease, &activities, ttl, outbox.as_ref(), &lead).await?;
                        count_stage_change(&change, stage);
                    }
                    None => self.store.complete(lease, &activities, self.config.dedupe_ttl, outbox.as_ref()).await?,
                }
                Ok(Outcome::Completed(Completed {
                    key: key.clone(),
                    handler: handler_name,
                    steps,
                    escalated: outcome.escalate,
                    response,
                }))
            }
            SagaReport::Failed { step_index, action, failure, compensation_failures, .. } => {
                let reason = format!("step {step_index} `{action}` failed: {failure}");
                if !compensation_failures.is_empty() {
                    // A half-undone saga must not be retried blindly: a person decides.
                    let undone: Vec<String> = compensation_failures
                        .iter()
                        .map(|c| format!("step {} `{}`: {}", c.step_index, c.action, c.error))
                        .collect();
                    let reason = format!("{reason}; compensation failed for {}", undone.join("; "));
                    return self.dead_letter(Some(lease), &origin, None, attempt, failure.failure_type(), reason).await;
                }
                if let crate::saga::StepFailure::CircuitOpen { retry_after, .. } = &failure {
                    self.store.release(lease, true).await?;
                    let wait = (*retry_after).max(self.config.min_defer);
                    return Ok(Outcome::Deferred { due_at: Utc::now() + to_chrono(wait), reason });
                }
                self.failed(lease, &origin, &ctx, failure.is_retryable(), failure.failure_type(), reason).await
            }
        }
    }

    /// Files bytes that could not be decoded in the dead-letter queue as a
    /// `SerializationError`.
    pub async fn reject_undecodable(
        &self,
        payload: &[u8],
        source: Option<SourceInfo>,
        error: &DecodeError,
    ) -> Result<Outcome, PipelineError> {
        self.reject(payload, source, FailureType::SerializationError, error.to_string()).await
    }

    /// Files input the pipeline cannot take (undecodable bytes, an event
    /// type that is not consumed) in the dead-letter queue as it arrived.
    pub async fn reject(
        &self,
        payload: &[u8],
        source: Option<SourceInfo>,
        failure_type: FailureType,
        reason: String,
    ) -> Result<Outcome, PipelineError> {
        let entry = NewDeadLetter {
            message_id: None,
            tenant_id: None,
            source: source.clone(),
            payload: payload.to_vec(),
            failure_type,
            error: reason,
            attempt_count: 1,
            trace_context: crate::telemetry::current_traceparent(),
        };
        let dlq_id = self.store.dead_letter(None, &entry).await?;
        crate::metrics::metrics().dead_lettered.with_label_values(&[failure_type.as_str()]).inc();
        tracing::warn!(dlq_id, %failure_type, error = %entry.error, "input rejected to the dead-letter queue");
        Ok(Outcome::DeadLettered(DeadLettered {
            dlq_id,
            failure_type,
            reason: entry.error.clone(),
            event: MessageFailed {
                message_id: String::new(),
                phone: source.and_then(|s| s.key).unwrap_or_default(),
                failure_type,
                error_details: entry.error,
                attempt_count: 1,
                failed_at: Utc::now(),
            },
        }))
    }

    /// After a failed attempt: retry later, or give up.
    async fn failed(
        &self,
        lease: &Lease,
        origin: &Provenance<'_>,
        ctx: &MessageContext,
        retryable: bool,
        failure_type: FailureType,
        reason: String,
    ) -> Result<Outcome, PipelineError> {
        match self.retry.decide(ctx.attempt, ctx.max_attempts, retryable) {
            RetryDecision::RetryAfter(delay) => {
                self.store.release(lease, false).await?;
                tracing::info!(attempt = ctx.attempt, ?delay, %reason, "retry scheduled");
                Ok(Outcome::RetryScheduled {
                    next_attempt: ctx.attempt + 1,
                    delay,
                    due_at: Utc::now() + to_chrono(delay),
                    reason,
                })
            }
            RetryDecision::GiveUp => {
                self.dead_letter(Some(lease), origin, None, ctx.attempt, failure_type, reason).await
            }
        }
    }

    async fn dead_letter(
        &self,
        lease: Option<&Lease>,
        origin: &Provenance<'_>,
        message_id: Option<&str>,
        attempt: u32,
        failure_type: FailureType,
        reason: String,
    ) -> Result<Outcome, PipelineError> {
        let key = lease.map(|l| &l.key);
        let message_id = key.map(|k| k.message_id.as_str()).or(message_id).unwrap_or_default().to_owned();
        let entry = NewDeadLetter {
            message_id: Some(message_id.clone()).filter(|m| !m.is_empty()),
            tenant_id: key.map(|k| k.tenant_id.clone()),
            source: origin.source.cloned(),
            payload: origin.envelope_bytes(),
            failure_type,
            error: reason.clone(),
            attempt_count: attempt,
            trace_context: crate::telemetry::current_traceparent(),
        };
        let dlq_id = self.store.dead_letter(lease, &entry).await?;
        tracing::warn!(dlq_id, %failure_type, %reason, "message dead-lettered");
        Ok(Outcome::DeadLettered(DeadLettered {
            dlq_id,
            failure_type,
            reason: reason.clone(),
            event: MessageFailed {
                message_id,
                phone: origin.inbound.phone().to_owned(),
                failure_type,
                error_details: reason,
                attempt_count: attempt,
                failed_at: Utc::now(),
            },
        }))
    }
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("handlers", &self.handlers)
            .field("executors", &self.executors)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Counts a lead's change of stage (a failure to record it is logged: it
/// costs the stage, never the message).
fn count_stage_change(change: &StageChange, stage: &str) {
    match change {
        StageChange::Moved { from } if from.as_deref() != Some(stage) => {
            let from = from.as_deref().map_or("new", crate::metrics::label);
            let to = crate::metrics::label(stage);
            crate::metrics::metrics().lead_state_changed.with_label_values(&[from, to]).inc();
        }
        StageChange::Moved { .. } => {}
        StageChange::NotRecorded { error } => tracing::warn!(%error, stage, "lead stage not recorded"),
    }
}

/// The audit trail of a completed message.
fn activities(ctx: &MessageContext, handler: &str, outcome: &IntentOutcome, steps: &[StepOutcome]) -> Vec<NewActivity> {
    let lead_id = ctx.lead_id().to_owned();
    let mut rows = Vec::with_capacity(steps.len() + 2);
    rows.push(NewActivity {
        lead_id: lead_id.clone(),
        activity_type: "message_handled".to_owned(),
        details: json!({
            "intent": ctx.intent.name,
            "confidence": ctx.intent.confidence,
            "handler": handler,
            "actions": steps.iter().map(|s| s.action.as_str()).collect::<Vec<_>>(),
            "attempt": ctx.attempt,
            "replied": outcome.response.is_some(),
        }),
    });
    rows.extend(steps.iter().map(|step| NewActivity {
        lead_id: lead_id.clone(),
        activity_type: "action_executed".to_owned(),
        details: json!({ "action": step.action, "step_index": step.step_index, "output": step.output }),
    }));
    if outcome.escalate {
        rows.push(NewActivity {
            lead_id,
            activity_type: "escalated".to_owned(),
            details: json!({ "intent": ctx.intent.name, "handler": handler }),
        });
    }
    rows
}

/// A reply's routing details: the tenant, and the business number the
/// message arrived on, which the reply goes out from.
fn reply_metadata(ctx: &MessageContext) -> std::collections::BTreeMap<String, String> {
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(reply_meta::TENANT_ID.to_owned(), ctx.tenant_id.clone());
    if let Some(number) = ctx.inbound.business_number() {
        metadata.insert(reply_meta::PHONE_NUMBER_ID.to_owned(), number.to_owned());
    }
    metadata
}
