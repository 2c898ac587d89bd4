//! [`Orchestrator::process`]: dedupe with a lease, validate, route, run the
//! saga, and decide (complete, retry, defer or dead-letter).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use tracing::Instrument as _;

use super::audit::{activities, reply_metadata};
use super::unclaimed::{Decided, Unclaimed};
use super::{
    Completed, DuplicateOf, Incoming, LeadStage, OrchestratorBuilder, Outcome, PipelineError, Provenance, observe,
};
use crate::breaker::BreakerRegistry;
use crate::config::PipelineConfig;
use crate::context::{Inbound, MessageContext};
use crate::event::{FailureType, Priority, ResponseReady};
use crate::executor_registry::ExecutorRegistry;
use crate::handler::HandlerError;
use crate::handler::IntentOutcome;
use crate::handler_registry::HandlerRegistry;
use crate::intent::Intent;
use crate::local::LocalStep;
use crate::retry::RetryPolicy;
use crate::saga::{SagaReport, SagaRunner, StepOutcome, count_action};
use crate::store::{
    Claim, ConversationTurn, DATABASE_BREAKER, Direction, Finish, GuardedStore, Lease, MessageKey, StageMove, Store,
    ThreadEntry, to_chrono,
};
use crate::validate::validate;

/// The pipeline, built from registries, a store, breakers and policies.
pub struct Orchestrator {
    pub(super) handlers: HandlerRegistry,
    pub(super) executors: Arc<ExecutorRegistry>,
    pub(super) saga: SagaRunner,
    pub(super) store: Arc<dyn Store>,
    pub(super) breakers: Arc<BreakerRegistry>,
    pub(super) retry: RetryPolicy,
    pub(super) config: PipelineConfig,
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
        let (intent, confidence) = (incoming.intent.name.clone(), incoming.intent.confidence);
        let outcome = self.process_inner(incoming).instrument(span).await;
        observe::processed(&intent, confidence, started.elapsed(), &outcome);
        outcome
    }

    /// The organisation a message belongs to: its intent's, else the one
    /// its metadata names, else the default; `None` when none applies.
    pub fn tenant_of<'a>(&'a self, intent: &'a Intent, inbound: &'a Inbound) -> Option<&'a str> {
        intent.tenant_id.as_deref().or(inbound.tenant_hint()).or(self.default_tenant())
    }

    /// The organisation of messages that name none (`None`: such messages are refused).
    pub fn default_tenant(&self) -> Option<&str> {
        self.config.default_tenant.as_deref()
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
        let Some(tenant_id) = self.tenant_of(&incoming.intent, &incoming.inbound).map(str::to_owned) else {
            let reason = "no tenant: neither the intent nor the message names one".to_owned();
            return self
                .dead_letter(None, &incoming.provenance(), Some(&message_id), 1, FailureType::ValidationError, reason)
                .await;
        };
        let key = MessageKey::new(tenant_id, message_id);
        // A new message whose plan is all local needs no claim: its
        // completion inserts the claim row, and the unique key dedupes.
        let (incoming, decided) = match self.process_unclaimed(&key, incoming).await? {
            Unclaimed::Completed(completed) => return Ok(Outcome::Completed(completed)),
            Unclaimed::Claim { incoming, decided } => (incoming, decided),
        };

        let claim = self.store.claim(&key, self.config.claim_lease).instrument(tracing::info_span!("dedupe")).await?;
        let (lease, attempt, run) = match claim {
            Claim::Acquired { lease, attempt, run } => (lease, attempt, run),
            Claim::Done => {
                let pending = self.store.pending_reply(&key).await?;
                let response = pending.and_then(|reply| serde_json::from_value::<ResponseReady>(reply).ok());
                return Ok(Outcome::Duplicate(match response {
                    Some(response) => DuplicateOf::ReplyPending { key, response: Box::new(response) },
                    None => DuplicateOf::Done,
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
            // The decision taken before the claim holds for the same attempt and run.
            outcome = self.process_claimed(&lease, incoming, attempt, run, &finishing, decided.filter(|_| attempt == 1 && run == 1)) => outcome,
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
        decided: Option<Decided>,
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
        let ctx = Arc::new(MessageContext {
            event_id,
            tenant_id: key.tenant_id.clone(),
            message_id: key.message_id.clone(),
            inbound,
            intent,
            attempt,
            max_attempts,
            run,
        });
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

        let Decided { handler: handler_name, outcome } = match decided {
            Some(decided) => decided,
            None => self.decide(&ctx).await,
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                finishing.store(true, Ordering::Release);
                let retryable = matches!(error, HandlerError::Retryable(_));
                return self
                    .failed(lease, &origin, &ctx, retryable, FailureType::UnknownError, error.to_string())
                    .await;
            }
        };

        let local_from = match self.store.runs_local_effects() {
            true => self.executors.local_tail(&outcome.actions),
            false => outcome.actions.len(),
        };
        let (report, local) = self.saga.run_until_local(lease, &ctx, &outcome.actions, local_from).await?;
        finishing.store(true, Ordering::Release);
        let report = match report {
            SagaReport::Succeeded { steps } => {
                match self.succeed(Ok(lease), &ctx, handler_name, &outcome, steps, local).await {
                    Ok(Some(completed)) => return Ok(Outcome::Completed(completed)),
                    // Only an unclaimed completion answers nothing.
                    Ok(None) => return Err(crate::store::StoreError::LeaseLost(key.message_id.clone()).into()),
                    // The completion rolled back: nothing of the message was kept.
                    Err(crate::store::StoreError::Local(failure)) => {
                        self.saga.fail_local(lease, &ctx, &outcome.actions, &failure).await?
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            failed => failed,
        };
        match report {
            // A failed local step always reads back as failed; were it not, the message is delivered again.
            SagaReport::Succeeded { .. } => Err(crate::store::StoreError::Corrupt {
                table: "saga_steps",
                reason: format!("the failed local step of {} reads back as succeeded", key.message_id),
            }
            .into()),
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

    /// Routes the message and asks its handler for a plan.
    pub(super) async fn decide(&self, ctx: &MessageContext) -> Decided {
        let handler = self.handlers.route(ctx);
        let name = handler.intent().to_owned();
        let outcome = handler.handle(ctx).instrument(tracing::info_span!("intent", handler = %name)).await;
        Decided { handler: name, outcome }
    }

    /// Completes a message whose saga succeeded: its trailing local run,
    /// audit rows, reply outbox and lead move in one transaction, under its
    /// lease, or (`Err(key)`) inserting its claim row: `None` when that row
    /// exists already.
    pub(super) async fn succeed(
        &self,
        claim: Result<&Lease, &MessageKey>,
        ctx: &MessageContext,
        handler: String,
        outcome: &IntentOutcome,
        mut steps: Vec<StepOutcome>,
        local: Vec<LocalStep>,
    ) -> Result<Option<Completed>, crate::store::StoreError> {
        let activities = activities(ctx, &handler, outcome, &steps);
        let response = outcome.response.clone().map(|reply| ResponseReady {
            original_message_id: ctx.message_id.clone(),
            to_phone: ctx.phone().to_owned(),
            response_type: reply.content.response_type(),
            content: reply.content,
            generated_at: Utc::now(),
            priority: if outcome.escalate { Priority::Urgent } else { reply.priority },
            metadata: reply_metadata(ctx),
        });
        // The reply goes into the outbox with the completion, in one transaction.
        let outbox = response.as_ref().and_then(|r| serde_json::to_value(r).ok());
        let ttl = self.config.dedupe_ttl;
        let lead = outcome.lead_stage.clone().map(|stage| StageMove { lead_id: ctx.lead_id().to_owned(), stage });
        let names: Vec<(u32, String)> = local.iter().map(|s| (s.step_index, s.action().to_owned())).collect();
        let turn = conversation_turn(ctx, response.as_ref());
        let finish = Finish {
            activities: &activities,
            ttl,
            reply: outbox.as_ref(),
            lead: lead.as_ref(),
            local,
            conversation: Some(&turn),
        };
        let (key, written) = match claim {
            Ok(lease) => (&lease.key, self.store.complete_local(lease, finish).await?),
            Err(key) => match self.store.complete_unclaimed(key, finish).await? {
                Some(written) => (key, written),
                None => return Ok(None),
            },
        };
        for ((step_index, action), output) in names.into_iter().zip(written.outputs) {
            count_action(&action, "succeeded");
            steps.push(StepOutcome { step_index, action, output, resumed: false });
        }
        let lead_stage =
            lead.zip(written.stage).map(|(lead, change)| Box::new(LeadStage { stage: lead.stage, change }));
        Ok(Some(Completed { key: key.clone(), handler, steps, escalated: outcome.escalate, response, lead_stage }))
    }
}

/// The message and its reply as the inbox's history shows them.
fn conversation_turn(ctx: &MessageContext, response: Option<&ResponseReady>) -> ConversationTurn {
    let mut entries = vec![ThreadEntry {
        direction: Direction::Inbound,
        message_id: ctx.message_id.clone(),
        reply_index: 0,
        text: Some(ctx.inbound.preview()),
        intent: Some(ctx.intent.name.clone()),
    }];
    // The reply's row is `outbound_messages`' (original message, reply index): its status is read from there.
    entries.extend(response.map(|reply| ThreadEntry {
        direction: Direction::Outbound,
        message_id: reply.original_message_id.clone(),
        reply_index: reply.reply_index(),
        text: Some(reply.content.preview()),
        intent: None,
    }));
    ConversationTurn { phone: ctx.phone().to_owned(), entries }
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
