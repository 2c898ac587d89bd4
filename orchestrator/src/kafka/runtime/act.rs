//! Turning an outcome into Kafka actions: the reply to
//! `conversation.responses`, a retry copy to `<topic>.retry` (blocking the
//! phone behind it), or the dead letter to `<topic>.dlq` and its
//! `MessageFailed`. Each is safe to repeat. Then the `MessageProcessed`
//! that live inboxes read.

use chrono::{DateTime, Utc};

use super::Worker;
use super::records::{Decoded, Delivered};
use crate::event::{Envelope, EventData, MessageProcessed, ProcessedKind, ResponseReady};
use crate::intent::Intent;
use crate::kafka::{PublishError, headers};
use crate::pipeline::{DuplicateOf, Outcome, PROCESSED_BY};
use crate::stats::RuntimeStats;
use crate::store::MessageKey;

/// The `outcome` label of `orchestrator_messages_total`.
pub(super) fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed(_) => "completed",
        Outcome::Duplicate(_) => "duplicate",
        Outcome::RetryScheduled { .. } => "retried",
        Outcome::Deferred { .. } => "deferred",
        Outcome::DeadLettered(_) => "dead_lettered",
    }
}

/// Whether the message is done with (no copy of it waits in retry).
pub(super) fn is_final(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Completed(_) | Outcome::Duplicate(_) | Outcome::DeadLettered(_))
}

impl Worker {
    /// Publishes what the outcome calls for. Safe to repeat.
    pub(super) async fn act(
        &self,
        delivered: &Delivered,
        message_id: Option<&str>,
        outcome: &Outcome,
        intent: &Intent,
    ) -> Result<(), ActError> {
        let payload = delivered.payload.as_slice();
        let base_topic = delivered.base_topic();
        let key = delivered.key.as_deref();
        match outcome {
            Outcome::Completed(done) => {
                if let Some(response) = &done.response {
                    self.publish_reply(&done.key, response).await?;
                }
                RuntimeStats::bump(&self.stats.processed);
            }
            Outcome::Duplicate(DuplicateOf::ReplyPending { key, response }) => {
                // Completed by a worker that stopped before publishing its reply.
                self.publish_reply(key, response).await?;
                RuntimeStats::bump(&self.stats.duplicates);
            }
            Outcome::Duplicate(_) => RuntimeStats::bump(&self.stats.duplicates),
            Outcome::RetryScheduled { next_attempt, due_at, .. } => {
                let copy = retry_copy(payload, Some(*next_attempt));
                self.send_retry(delivered, message_id, &copy, due_at, intent).await?;
                RuntimeStats::bump(&self.stats.failed);
                RuntimeStats::bump(&self.stats.retried);
            }
            Outcome::Deferred { due_at, .. } => {
                self.send_retry(delivered, message_id, &retry_copy(payload, None), due_at, intent).await?;
                RuntimeStats::bump(&self.stats.retried);
            }
            Outcome::DeadLettered(dead) => {
                let attempts = dead.event.attempt_count.to_string();
                let error = format!("{}: {}", dead.failure_type, dead.reason);
                let dlq_headers = delivered.origin.dead_letter_headers(&self.group_id, &attempts, &error);
                self.publisher.send(&format!("{base_topic}.dlq"), key, payload, &dlq_headers).await?;
                let failed = Envelope::new(EventData::MessageFailed(dead.event.clone()), PROCESSED_BY);
                self.publisher.publish(&failed).await?;
                RuntimeStats::bump(&self.stats.failed);
                RuntimeStats::bump(&self.stats.dead_lettered);
            }
        }
        Ok(())
    }

    /// Publishes a reply and empties the message's outbox.
    pub(super) async fn publish_reply(&self, key: &MessageKey, response: &ResponseReady) -> Result<(), ActError> {
        let reply = Envelope::new(EventData::ResponseReady(response.clone()), PROCESSED_BY);
        self.publisher.publish(&reply).await?;
        self.orchestrator.store().mark_reply_published(key).await?;
        Ok(())
    }

    /// Blocks the phone behind this message (its later messages park), then
    /// sends the retry copy; an intent from the AI service travels with it.
    pub(super) async fn send_retry(
        &self,
        delivered: &Delivered,
        message_id: Option<&str>,
        copy: &[u8],
        due_at: &DateTime<Utc>,
        intent: &Intent,
    ) -> Result<(), ActError> {
        if let (Some(key), Some(message_id)) = (&delivered.key, message_id) {
            self.parking.block(key, message_id).await?;
        }
        let due = due_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut retry_headers = delivered.origin.retry_headers(&due);
        let decided = if self.ai.is_some() { serde_json::to_vec(intent).ok() } else { None };
        if let Some(decided) = &decided {
            retry_headers.push((headers::INTENT, decided.as_slice()));
        }
        let topic = format!("{}.retry", delivered.base_topic());
        self.publisher.send(&topic, delivered.key.as_deref(), copy, &retry_headers).await?;
        Ok(())
    }
}

/// Publishing an outcome failed: Kafka or the parking store.
#[derive(Debug, thiserror::Error)]
pub(super) enum ActError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The envelope with `attempt_count` raised to `attempt` (when given); bytes
/// that do not decode are copied as they are.
pub(super) fn retry_copy(payload: &[u8], attempt: Option<u32>) -> Vec<u8> {
    match (Envelope::decode(payload), attempt) {
        (Ok(mut envelope), Some(attempt)) => {
            envelope.attempt_count = attempt;
            envelope.encode()
        }
        _ => payload.to_vec(),
    }
}

impl Worker {
    /// Tells live inboxes what became of the message (`conversation.processed`);
    /// duplicates and deferrals changed nothing and are not told.
    pub(super) fn announce(&self, delivered: &Delivered, decoded: &Decoded, outcome: &Outcome, intent: &Intent) {
        let incoming = match decoded {
            Decoded::Inbound(incoming) => Some(incoming.as_ref()),
            _ => None,
        };
        // The decoded copy has no intent yet: the one it was processed with names the tenant.
        // Input that names none (undecodable bytes, say) goes to operators only (no tenant).
        let tenant =
            incoming.and_then(|incoming| self.orchestrator.tenant_of(intent, &incoming.inbound)).unwrap_or_default();
        let phone = incoming.map(|i| i.inbound.phone()).or(delivered.key.as_deref()).unwrap_or_default();
        let event = match outcome {
            Outcome::Completed(done) => {
                let mut event =
                    MessageProcessed::new(&done.key.tenant_id, phone, &done.key.message_id, ProcessedKind::Completed);
                event.actions = done.steps.iter().map(|s| s.action.clone()).collect();
                event.reply = done.response.as_ref().map(|r| r.content.preview());
                event
            }
            Outcome::RetryScheduled { next_attempt, reason, .. } => {
                let message_id = decoded.message_id().unwrap_or_default();
                let mut event = MessageProcessed::new(tenant, phone, &message_id, ProcessedKind::Retried);
                event.attempt = next_attempt.saturating_sub(1).max(1);
                event.error = Some(reason.clone());
                event
            }
            Outcome::DeadLettered(dead) => {
                let phone = if dead.event.phone.is_empty() { phone } else { &dead.event.phone };
                let mut event =
                    MessageProcessed::new(tenant, phone, &dead.event.message_id, ProcessedKind::DeadLettered);
                event.attempt = dead.event.attempt_count;
                event.error = Some(format!("{}: {}", dead.failure_type, dead.reason));
                event
            }
            Outcome::Duplicate(_) | Outcome::Deferred { .. } => return,
        };
        let event = MessageProcessed {
            text: incoming.map(|i| i.inbound.preview()),
            intent: incoming.map(|_| intent.name.clone()),
            ..event
        };
        self.publisher.announce(&Envelope::new(EventData::MessageProcessed(event), PROCESSED_BY));
    }
}
