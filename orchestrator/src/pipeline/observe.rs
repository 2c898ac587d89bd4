//! The pipeline's metrics, recorded once per message from what
//! [`Orchestrator::process`](super::Orchestrator::process) answered, so the
//! decision code stays free of them.

use std::time::Duration;

use super::{Outcome, PipelineError};
use crate::event::FailureType;
use crate::metrics::{count_dead_letter, label, metrics};
use crate::store::StageChange;

/// Records a processed message: its duration, its intent (unless it was a
/// duplicate: the first delivery counted it), and what became of it.
pub(super) fn processed(intent: &str, confidence: f64, elapsed: Duration, outcome: &Result<Outcome, PipelineError>) {
    let metrics = metrics();
    let intent = label(intent);
    metrics.processing_duration.with_label_values(&[intent]).observe(elapsed.as_secs_f64());
    match outcome {
        Ok(Outcome::Duplicate(_)) => {
            metrics.duplicates.inc();
            return;
        }
        Ok(Outcome::DeadLettered(dead)) => count_dead_letter(dead.failure_type),
        Ok(Outcome::Completed(done)) => {
            if let Some(lead) = &done.lead_stage {
                stage_change(&lead.change, &lead.stage);
            }
        }
        Ok(Outcome::RetryScheduled { .. } | Outcome::Deferred { .. }) | Err(_) => {}
    }
    metrics.intent_detected.with_label_values(&[intent]).inc();
    metrics.intent_confidence.with_label_values(&[intent]).observe(confidence);
}

/// Records input filed in the DLQ without being processed (undecodable, not consumed).
pub(super) fn rejected(failure_type: FailureType) {
    count_dead_letter(failure_type);
}

/// Counts a lead's change of stage (a failure to record it is logged: it
/// costs the stage, never the message).
fn stage_change(change: &StageChange, stage: &str) {
    match change {
        StageChange::Moved { from } if from.as_deref() != Some(stage) => {
            let from = from.as_deref().map_or("new", label);
            metrics().lead_state_changed.with_label_values(&[from, label(stage)]).inc();
        }
        StageChange::Moved { .. } => {}
        StageChange::NotRecorded { error } => tracing::warn!(%error, stage, "lead stage not recorded"),
    }
}
