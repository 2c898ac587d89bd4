//! Intent handlers: decide what to do about a message.

use async_trait::async_trait;
use serde_json::Value;

use crate::context::MessageContext;
use crate::event::{Priority, ResponseContent};

/// One action for the saga to run: an executor name and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRequest {
    /// Name of the executor, e.g. `create_order`.
    pub action: String,
    /// Parameters the executor reads.
    pub params: Value,
}

impl ActionRequest {
    /// An action with parameters.
    pub fn new(action: impl Into<String>, params: Value) -> Self {
        Self { action: action.into(), params }
    }
}

/// A reply to send once the actions succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// What to send.
    pub content: ResponseContent,
    /// How urgently.
    pub priority: Priority,
}

impl Reply {
    /// A plain text reply with normal priority.
    pub fn text(message: impl Into<String>) -> Self {
        Self { content: ResponseContent::text(message), priority: Priority::Normal }
    }

    /// Any content with normal priority.
    pub fn content(content: ResponseContent) -> Self {
        Self { content, priority: Priority::Normal }
    }
}

/// What a handler decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IntentOutcome {
    /// Actions to run in order, as one saga.
    pub actions: Vec<ActionRequest>,
    /// Reply to publish when the saga succeeds.
    pub response: Option<Reply>,
    /// Hand the conversation to a human: the reply goes out `Urgent` and the
    /// escalation is recorded in `lead_activities`.
    pub escalate: bool,
    /// The stage the lead moves to when the message completes (`customer`,
    /// `interested`, ...); `None` leaves it where it is.
    pub lead_stage: Option<String>,
}

impl IntentOutcome {
    /// An outcome that only replies.
    pub fn reply(reply: Reply) -> Self {
        Self { actions: Vec::new(), response: Some(reply), escalate: false, lead_stage: None }
    }

    /// Adds an action.
    pub fn with_action(mut self, action: impl Into<String>, params: Value) -> Self {
        self.actions.push(ActionRequest::new(action, params));
        self
    }

    /// Moves the lead to `stage` once the message completes.
    pub fn with_lead_stage(mut self, stage: impl Into<String>) -> Self {
        self.lead_stage = Some(stage.into());
        self
    }

    /// Marks the outcome for escalation.
    pub fn escalated(mut self) -> Self {
        self.escalate = true;
        self
    }
}

/// A handler could not decide.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later (a lookup timed out, ...).
    #[error("handler failed, retryable: {0}")]
    Retryable(String),
    /// Will fail again (the message makes no sense for this handler).
    #[error("handler failed permanently: {0}")]
    Permanent(String),
}

/// Decides the actions and reply for messages of one intent.
///
/// Handlers are tried in descending [`priority`](IntentHandler::priority); the
/// first whose [`can_handle`](IntentHandler::can_handle) accepts the message
/// wins. By default a handler accepts its own intent at or above its
/// confidence threshold.
///
/// ```
/// use async_trait::async_trait;
/// use orchestrator::{HandlerError, IntentHandler, IntentOutcome, MessageContext, Reply};
/// use serde_json::json;
///
/// struct RefundHandler;
///
/// #[async_trait]
/// impl IntentHandler for RefundHandler {
///     fn intent(&self) -> &str { "REFUND_REQUEST" }
///     fn confidence_threshold(&self) -> f64 { 0.8 }
///     async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
///         Ok(IntentOutcome::reply(Reply::text("We are looking into your refund."))
///             .with_action("create_support_ticket", json!({ "subject": "Refund", "description": ctx.inbound.text() })))
///     }
/// }
/// ```
#[async_trait]
pub trait IntentHandler: Send + Sync {
    /// The intent name this handler serves.
    fn intent(&self) -> &str;

    /// Higher runs first; ties keep registration order. Default 0.
    fn priority(&self) -> i32 {
        0
    }

    /// Minimum confidence [`can_handle`](IntentHandler::can_handle) accepts. Default 0.5.
    fn confidence_threshold(&self) -> f64 {
        0.5
    }

    /// Whether this handler takes the message: by default, intent name
    /// matches and confidence reaches the threshold.
    fn can_handle(&self, ctx: &MessageContext) -> bool {
        ctx.intent.name == self.intent() && ctx.intent.confidence >= self.confidence_threshold()
    }

    /// Decides the actions, reply and escalation.
    async fn handle(&self, ctx: &MessageContext) -> Result<IntentOutcome, HandlerError>;
}
