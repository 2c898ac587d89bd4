//! The pipeline's ways to give up on a message: filing input it cannot take,
//! and, after a failed attempt, retrying later or dead-lettering.

use chrono::Utc;

use super::{DeadLettered, Orchestrator, Outcome, PipelineError, Provenance};
use crate::context::Inbound;
use crate::context::MessageContext;
use crate::event::{DecodeError, FailureType, MessageFailed};
use crate::retry::RetryDecision;
use crate::store::{ConversationTurn, Direction, Lease, NewDeadLetter, SourceInfo, ThreadEntry, to_chrono};

/// A dead-lettered message in its conversation's history: the customer
/// sent it, whatever became of it.
fn inbound_turn(inbound: &Inbound, message_id: &str) -> ConversationTurn {
    let entry = ThreadEntry {
        direction: Direction::Inbound,
        message_id: message_id.to_owned(),
        reply_index: 0,
        text: Some(inbound.preview()),
        intent: None,
    };
    ConversationTurn { phone: inbound.phone().to_owned(), entries: vec![entry] }
}

impl Orchestrator {
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
            conversation: None,
        };
        let dlq_id = self.store.dead_letter(None, &entry).await?;
        super::observe::rejected(failure_type);
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
    pub(super) async fn failed(
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

    pub(super) async fn dead_letter(
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
            conversation: key.map(|_| inbound_turn(origin.inbound, &message_id)),
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
