//! The fast path of a new message whose plan is all local (see
//! [`crate::local`]): no claim, no lease, no saga log. The handler decides
//! first; the completion then inserts the message's claim row already
//! completed, with its local effects, audit rows, reply and lead move, in
//! one transaction batched with other messages'. The unique key on
//! `(tenant_id, message_id)` does the deduper's job: a message stored
//! already (a redelivery, a retry, another worker's) writes nothing and goes
//! the claimed way, which says why.

use std::sync::Arc;

use super::{Completed, Incoming, Orchestrator, PipelineError};
use crate::context::MessageContext;
use crate::handler::{HandlerError, IntentOutcome};
use crate::local::LocalStep;
use crate::store::{MessageKey, StoreError};
use crate::validate::validate;

/// A handler's decision, taken once per attempt.
pub(super) struct Decided {
    /// The handler that decided.
    pub(super) handler: String,
    /// What it decided.
    pub(super) outcome: Result<IntentOutcome, HandlerError>,
}

/// How the unclaimed path ended.
// Returned once per message and unpacked at once: boxing either variant
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Unclaimed {
    /// The message is completed.
    Completed(Completed),
    /// The message needs a claim: given back with the decision taken, which
    /// holds if the claim turns out to be its first attempt of its first run.
    Claim {
        /// The message, as it came in.
        incoming: Incoming,
        /// The handler's decision, when one was taken.
        decided: Option<Decided>,
    },
}

impl Orchestrator {
    /// Completes `incoming` under `key` without a claim when it is new and
    /// its plan is all local; otherwise gives it back to be claimed. Only a
    /// database failure is an error: a local step's failure goes the claimed
    /// way too, where it counts as an attempt.
    pub(super) async fn process_unclaimed(
        &self,
        key: &MessageKey,
        incoming: Incoming,
    ) -> Result<Unclaimed, PipelineError> {
        if !self.store.runs_local_effects() {
            return Ok(Unclaimed::Claim { incoming, decided: None });
        }
        let Incoming { event_id, inbound, intent, max_attempts, source, payload } = incoming;
        let ctx = Arc::new(MessageContext {
            event_id,
            tenant_id: key.tenant_id.clone(),
            message_id: key.message_id.clone(),
            inbound,
            intent,
            // What a claim of a new message grants.
            attempt: 1,
            max_attempts: max_attempts.unwrap_or_else(|| self.retry.max_attempts()).max(1),
            run: 1,
        });
        let decided = match validate(&ctx) {
            Ok(()) => Some(self.decide(&ctx).await),
            Err(_) => None,
        };
        let local = match &decided {
            Some(Decided { outcome: Ok(outcome), .. }) => self.checked_local(&ctx, outcome),
            _ => None,
        };
        let completed = match (&decided, local) {
            (Some(Decided { handler, outcome: Ok(outcome) }), Some(local)) => {
                match self.succeed(Err(key), &ctx, handler.clone(), outcome, Vec::new(), local).await {
                    Ok(completed) => completed,
                    Err(StoreError::Local(_)) => None,
                    Err(error) => return Err(error.into()),
                }
            }
            _ => None,
        };
        if let Some(completed) = completed {
            tracing::Span::current().record("attempt", 1);
            return Ok(Unclaimed::Completed(completed));
        }
        // The local steps were dropped with their batch: the context is ours again.
        let ctx = Arc::try_unwrap(ctx).unwrap_or_else(|shared| (*shared).clone());
        let incoming = Incoming { event_id, inbound: ctx.inbound, intent: ctx.intent, max_attempts, source, payload };
        Ok(Unclaimed::Claim { incoming, decided })
    }

    /// The plan as local steps, when every step is local and passes its check.
    fn checked_local(&self, ctx: &Arc<MessageContext>, outcome: &IntentOutcome) -> Option<Vec<LocalStep>> {
        if self.executors.local_tail(&outcome.actions) != 0 {
            return None;
        }
        let mut steps = Vec::with_capacity(outcome.actions.len());
        for (index, request) in outcome.actions.iter().enumerate() {
            let executor = self.executors.local(&request.action)?;
            let step = LocalStep {
                executor: executor.clone(),
                message: ctx.clone(),
                params: request.params.clone(),
                step_index: index as u32,
            };
            // A step that fails its check fails on the claimed way, where it is an attempt.
            executor.check(&step.context()).ok()?;
            steps.push(step);
        }
        Some(steps)
    }
}
