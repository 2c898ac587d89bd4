//! The saga log: each step's transitions, appended as rows, so a run whose
//! worker died resumes where it stopped.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Lease, MessageKey, StoreError};

/// The state of a saga step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepStatus {
    /// About to execute.
    Started,
    /// Executed successfully.
    Succeeded,
    /// Failed (nothing to undo for this step).
    Failed,
    /// Undone after a later step failed.
    Compensated,
    /// Undoing failed: needs a person.
    CompensationFailed,
}

impl StepStatus {
    /// The value of the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Started => "started",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Compensated => "compensated",
            StepStatus::CompensationFailed => "compensation_failed",
        }
    }

    /// Parses a `status` value.
    pub fn parse(value: &str) -> Option<Self> {
        [
            StepStatus::Started,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Compensated,
            StepStatus::CompensationFailed,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

/// One entry of the saga log (append-only: each transition is a row).
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Position in the saga, 0-based.
    pub step_index: u32,
    /// Action name.
    pub action: String,
    /// New status.
    pub status: StepStatus,
    /// The executor's output (with `Succeeded`).
    pub output: Option<Value>,
    /// The error (with `Failed` and `CompensationFailed`).
    pub error: Option<String>,
    /// Whether the error was retryable (with `Failed`).
    pub retryable: Option<bool>,
    /// When it was recorded.
    pub at: DateTime<Utc>,
}

impl StepRecord {
    /// A record stamped now with no output or error.
    pub fn new(step_index: u32, action: &str, status: StepStatus) -> Self {
        Self {
            step_index,
            action: action.to_owned(),
            status,
            output: None,
            error: None,
            retryable: None,
            at: Utc::now(),
        }
    }
}

/// The durable saga log: all the [`SagaRunner`](crate::SagaRunner) needs of a store.
#[async_trait]
pub trait SagaLog: Send + Sync {
    /// The saga log of one run, in recording order.
    async fn load_steps(&self, key: &MessageKey, run: u32) -> Result<Vec<StepRecord>, StoreError>;

    /// Appends to the saga log of one run, if the lease is still held.
    async fn record_step(&self, lease: &Lease, run: u32, step: &StepRecord) -> Result<(), StoreError>;

    /// Appends several rows to the saga log of one run, in order, if the
    /// lease is still held. The default appends them one by one; a store
    /// that can write them in one round trip (all or none) should.
    async fn record_steps(&self, lease: &Lease, run: u32, steps: &[StepRecord]) -> Result<(), StoreError> {
        for step in steps {
            self.record_step(lease, run, step).await?;
        }
        Ok(())
    }
}
