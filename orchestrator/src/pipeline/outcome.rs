//! What the pipeline answers: what happened to a message, and the error
//! when it could not record that.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::event::{FailureType, MessageFailed, ResponseReady};
use crate::saga::StepOutcome;
use crate::store::{MessageKey, StageChange, StoreError};

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
    /// The lead's move to a stage, when the handler asked for one.
    pub lead_stage: Option<Box<LeadStage>>,
}

/// A completed message's lead moved to a stage (or the move was not recorded).
#[derive(Debug, Clone, PartialEq)]
pub struct LeadStage {
    /// The stage the handler asked for.
    pub stage: String,
    /// What the store did.
    pub change: StageChange,
}

/// A message was parked in the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLettered {
    /// Row id in `dead_letter_queue`.
    pub dlq_id: i64,
    /// The kind of failure, the `failure_type` column (what replay filters on).
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
    Done,
    /// It was processed before, but its reply was never confirmed published
    /// (the worker stopped in between): publish it, then
    /// [`Store::mark_reply_published`](crate::store::Store::mark_reply_published).
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
        /// What failed this attempt (logged, and the next attempt's context).
        reason: String,
    },
    /// Not attempted (a circuit is open, or another worker holds it): deliver
    /// it again at `due_at`; no attempt was spent.
    Deferred {
        /// When to try again.
        due_at: DateTime<Utc>,
        /// What is in the way: the open circuit, or the worker holding the message.
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
