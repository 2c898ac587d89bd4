//! Local executors: actions whose effect is a write to the orchestrator's
//! own database, committed in the message's completion transaction.
//!
//! An external executor (an HTTP call, another service) cannot be rolled
//! back, so the saga logs each of its steps durably and undoes it by
//! compensation. A local executor's effect can be: it joins the
//! transaction that marks the message completed and writes its audit rows,
//! so effect and completion commit together or not at all. It writes no
//! saga-log rows, and a rollback is its compensation.
//!
//! # Plans that mix both
//!
//! The saga splits a plan at its **trailing local run**, the local steps
//! after the last external one:
//!
//! - steps before it (external ones, and local ones followed by an
//!   external one) run as today: each logged, leased and compensated. A
//!   local step there runs through its [`ActionExecutor`] face, in a
//!   transaction of its own, because the external step after it must see
//!   its effect committed and may need it undone;
//! - the trailing local run is checked ([`LocalExecutor::check`]: a bad
//!   parameter fails the step and compensates the steps before it, before
//!   anything is written) and then written by the completion, in its
//!   transaction, batched with other messages' completions;
//! - a plan that is all local costs one transaction and no saga-log row.
//!
//! When a trailing local write fails, the transaction rolls back (nothing of
//! the message is kept), the failure is recorded as that step's failure, and
//! the logged steps before it are compensated as for any failed step.
//!
//! A store that cannot run them ([`Store::runs_local_effects`] is false,
//! e.g. the in-memory store) runs local executors as external ones.
//!
//! [`Store::runs_local_effects`]: crate::store::Store::runs_local_effects

use std::sync::Arc;

use async_trait::async_trait;
use sea_orm::DatabaseTransaction;
use serde_json::Value;

use crate::context::MessageContext;
use crate::executor::{ActionContext, ActionError, ActionExecutor, ActionOutput};

/// An executor whose effect is a write to the orchestrator's database,
/// made inside the completion transaction (see the [module docs](self)).
///
/// It is an [`ActionExecutor`] too: that face runs it on its own where the
/// plan needs its effect committed before an external step.
#[async_trait]
pub trait LocalExecutor: ActionExecutor {
    /// Checks a step before any transaction opens: the parameters the write
    /// needs are there and valid. A [`ActionError::Permanent`] here fails
    /// the step like any executor error. The default accepts every step.
    fn check(&self, ctx: &ActionContext<'_>) -> Result<(), ActionError> {
        let _ = ctx;
        Ok(())
    }

    /// Performs `steps`, this action's steps of one or more messages'
    /// completions, inside `txn`; answers one output per step, in order.
    /// An error rolls the transaction back: the store then writes each
    /// message of the batch alone, so only the message whose step fails is
    /// failed. Write with a unique idempotency key
    /// ([`ActionContext::idempotency_key`]) as external executors do.
    async fn execute_in(
        &self,
        txn: &DatabaseTransaction,
        steps: &[ActionContext<'_>],
    ) -> Result<Vec<ActionOutput>, ActionError>;
}

/// One step of a trailing local run, handed to the store with its
/// message's completion.
#[derive(Clone)]
pub struct LocalStep {
    /// The executor.
    pub executor: Arc<dyn LocalExecutor>,
    /// The message being completed.
    pub message: Arc<MessageContext>,
    /// The step's parameters, as the handler planned them.
    pub params: Value,
    /// The step's position in the plan, 0-based.
    pub step_index: u32,
}

impl LocalStep {
    /// What the executor sees of this step.
    pub fn context(&self) -> ActionContext<'_> {
        ActionContext { message: &self.message, params: &self.params, step_index: self.step_index }
    }

    /// The action name.
    pub fn action(&self) -> &str {
        self.executor.name()
    }
}

impl std::fmt::Debug for LocalStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStep")
            .field("action", &self.action())
            .field("message_id", &self.message.message_id)
            .field("step_index", &self.step_index)
            .finish_non_exhaustive()
    }
}

/// A trailing local step whose write failed inside the completion
/// transaction (which rolled back).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("local step {step_index} `{action}` failed: {error}")]
pub struct LocalFailure {
    /// The step's position in the plan.
    pub step_index: u32,
    /// Its action.
    pub action: String,
    /// What the executor answered.
    pub error: ActionError,
}
