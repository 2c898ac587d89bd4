//! Publishes the send API's messages when due: scheduled ones at their
//! `scheduled_at`, and those sent now whose own publish did not happen.
//!
//! Each round claims due rows with a lease ([`ApiMessages::claim_due`]:
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas share the work and
//! never publish a row another one holds), publishes them to
//! `conversation.responses`, and marks them dispatched under the claim's
//! token. A scheduler that dies between publishing and marking leaves its
//! rows to be claimed again when the lease runs out; the second copy is
//! harmless, since the reply sender's claim in `outbound_messages` sends a
//! message once whatever the copies.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::event::{FailureType, ResponseReady};
use crate::publish::Publish;
use crate::store::{ApiMessages, NewDeadLetter, StoreError};

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Time between rounds when nothing is due (`SCHEDULER_INTERVAL_MS`).
    pub interval: Duration,
    /// Messages claimed per round.
    pub batch: u64,
    /// How long a claim keeps other schedulers off its rows.
    pub lease: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self { interval: Duration::from_secs(1), batch: 500, lease: Duration::from_secs(30) }
    }
}

/// The scheduler (see the module docs).
pub struct Scheduler {
    store: Arc<dyn ApiMessages>,
    publisher: Arc<dyn Publish>,
    settings: SchedulerSettings,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Rows claimed.
    pub claimed: usize,
    /// Published and marked.
    pub dispatched: usize,
}

impl Scheduler {
    /// A scheduler over `store`, publishing through `publisher`.
    pub fn new(store: Arc<dyn ApiMessages>, publisher: Arc<dyn Publish>, settings: SchedulerSettings) -> Self {
        Self { store, publisher, settings }
    }

    /// Rounds until `shutdown` resolves; a full round is followed by another at once.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let pause = match self.round().await {
                Ok(round) if round.claimed as u64 >= self.settings.batch => Duration::ZERO,
                Ok(_) => self.settings.interval,
                Err(error) => {
                    tracing::warn!(%error, "scheduler round failed; trying again");
                    self.settings.interval
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Claims what is due, publishes it and marks it dispatched.
    pub async fn round(&self) -> Result<Round, StoreError> {
        let claim = self.store.claim_due(Utc::now(), self.settings.batch, self.settings.lease).await?;
        if claim.messages.is_empty() {
            return Ok(Round::default());
        }
        let mut replies = Vec::with_capacity(claim.messages.len());
        for due in &claim.messages {
            match serde_json::from_str::<ResponseReady>(&due.payload) {
                Ok(reply) => replies.push((due.id.clone(), reply)),
                // Written by this service: unreadable means a corrupt row. Retrying cannot mend it: to the DLQ.
                Err(error) => self.dead_letter(claim.token, &due.id, &due.payload, &error).await?,
            }
        }
        let published = super::publish_replies(self.publisher.as_ref(), replies).await;
        let dispatched = self.store.mark_dispatched(Some(claim.token), &published).await?;
        crate::metrics::metrics().message_service_processed.with_label_values(&["dispatched"]).inc_by(dispatched);
        tracing::debug!(claimed = claim.messages.len(), dispatched, "scheduler round");
        Ok(Round { claimed: claim.messages.len(), dispatched: dispatched as usize })
    }

    /// Files an unreadable message in the dead-letter queue with its bytes
    /// and marks it failed, so no round claims it again.
    async fn dead_letter(
        &self,
        claim: i64,
        id: &str,
        payload: &str,
        error: &serde_json::Error,
    ) -> Result<(), StoreError> {
        let entry = NewDeadLetter {
            message_id: Some(id.to_owned()),
            tenant_id: None,
            source: None,
            payload: payload.as_bytes().to_vec(),
            failure_type: FailureType::SerializationError,
            error: format!("send API message {id} does not read back as a ResponseReady: {error}"),
            attempt_count: 1,
            trace_context: crate::telemetry::current_traceparent(),
            conversation: None,
        };
        if let Some(dlq_id) = self.store.dead_letter_due(claim, id, &entry).await? {
            crate::metrics::count_dead_letter(FailureType::SerializationError);
            tracing::error!(dlq_id, %id, %error, "scheduled message unreadable: dead-lettered");
        }
        Ok(())
    }
}
