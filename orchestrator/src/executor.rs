//! Action executors: perform one side effect and know how to undo it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::MessageContext;

/// What an executor sees: the message, its parameters, and its place in the saga.
#[derive(Debug, Clone, Copy)]
pub struct ActionContext<'a> {
    /// The message being processed.
    pub message: &'a MessageContext,
    /// The action's parameters, as the handler gave them.
    pub params: &'a Value,
    /// The action's position in the saga, 0-based.
    pub step_index: u32,
}

impl ActionContext<'_> {
    /// A key unique to this step of this run of this message:
    /// `<tenant>:<message_id>:<run>:<step_index>`. Executors store it with a
    /// unique constraint so that a step re-executed after a crash (between the
    /// effect and the saga log's record of it) creates nothing twice.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}:{}", self.message.tenant_id, self.message.message_id, self.message.run, self.step_index)
    }

    /// A string parameter.
    pub fn param_str(&self, key: &str) -> Option<&str> {
        self.params.get(key).and_then(Value::as_str)
    }
}

/// What an executor returns: kept in the saga log and handed back to
/// [`ActionExecutor::compensate`], also after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct ActionOutput(pub Value);

impl ActionOutput {
    /// A field of the output.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
}

/// Why an action failed; the variant decides whether the message is retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// Transient (timeout, 5xx, connection refused): retried with backoff,
    /// counted by the circuit breaker.
    #[error("{0}")]
    Retryable(String),
    /// Will fail again (bad parameters, 4xx): dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
}

impl ActionError {
    /// A retryable error from anything displayable.
    pub fn retryable(cause: impl std::fmt::Display) -> Self {
        ActionError::Retryable(cause.to_string())
    }

    /// A permanent error from anything displayable.
    pub fn permanent(cause: impl std::fmt::Display) -> Self {
        ActionError::Permanent(cause.to_string())
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ActionError::Retryable(_))
    }
}

/// Performs one kind of action (one external call) and undoes it.
///
/// Each executor gets its own circuit breaker, named after it.
///
/// ```
/// use async_trait::async_trait;
/// use orchestrator::{ActionContext, ActionError, ActionExecutor, ActionOutput};
/// use serde_json::json;
///
/// struct SendCoupon;
///
/// #[async_trait]
/// impl ActionExecutor for SendCoupon {
///     fn name(&self) -> &str { "send_coupon" }
///     async fn execute(&self, ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
///         let code = ctx.param_str("code").ok_or_else(|| ActionError::permanent("missing code"))?;
///         Ok(ActionOutput(json!({ "coupon": code, "key": ctx.idempotency_key() })))
///     }
///     async fn compensate(&self, _ctx: &ActionContext<'_>, _output: &ActionOutput) -> Result<(), ActionError> {
///         Ok(()) // revoke the coupon here
///     }
/// }
/// ```
#[async_trait]
pub trait ActionExecutor: Send + Sync {
    /// The action name handlers use, e.g. `create_order`.
    fn name(&self) -> &str;

    /// Performs the action. Should be idempotent per
    /// [`ActionContext::idempotency_key`].
    async fn execute(&self, ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError>;

    /// Undoes a successful [`execute`](ActionExecutor::execute), given its output.
    /// Should be idempotent: it may run again after a crash.
    async fn compensate(&self, ctx: &ActionContext<'_>, output: &ActionOutput) -> Result<(), ActionError>;

    /// Undoes an execution whose outcome is unknown: it timed out, or its
    /// worker died before the saga log recorded the result, and the step then
    /// failed. Executors that store their effect under
    /// [`ActionContext::idempotency_key`] look it up by that key and undo it
    /// if it exists. The default does nothing: right for executors whose
    /// failed or abandoned calls leave no effect.
    async fn compensate_unknown(&self, ctx: &ActionContext<'_>) -> Result<(), ActionError> {
        let _ = ctx;
        Ok(())
    }
}
