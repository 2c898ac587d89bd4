//! The per-message state the pipeline keeps: claims with leases (dedupe),
//! completion with the audit trail and the reply outbox, the lead's stage.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{NewDeadLetter, SagaLog, StoreError};
use crate::executor::ActionOutput;
use crate::local::LocalStep;

/// Identifies a message for deduplication: ids are unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// The organisation the message belongs to (ids are unique only within one).
    pub tenant_id: String,
    /// The message id.
    pub message_id: String,
}

impl MessageKey {
    /// The key of `message_id` in `tenant_id`.
    pub fn new(tenant_id: impl Into<String>, message_id: impl Into<String>) -> Self {
        Self { tenant_id: tenant_id.into(), message_id: message_id.into() }
    }
}

/// A held claim on a message: only its holder may renew it, log steps, and
/// complete, release or dead-letter the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The message the lease is on.
    pub key: MessageKey,
    /// Random per claim; fenced writes check it.
    pub token: i64,
}

impl Lease {
    /// A lease with a fresh random token.
    pub fn new(key: MessageKey) -> Self {
        // Any random 64 bits will do; a v4 UUID is already at hand.
        let token = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
        Self { key, token }
    }
}

/// The answer to a claim on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker may process the message.
    Acquired {
        /// The lease to pass to every write about the message.
        lease: Lease,
        /// Attempt number (1-based), kept in the database across restarts.
        /// Taking over from a worker that died counts as a new attempt, so a
        /// message that keeps killing its worker still reaches the DLQ.
        attempt: u32,
        /// Saga run number; equal to the previous claim's when resuming a run
        /// whose worker died.
        run: u32,
    },
    /// The message was already processed successfully.
    Done,
    /// The message was dead-lettered and not replayed since.
    DeadLettered,
    /// Another worker holds a live lease on it.
    Busy {
        /// When that lease runs out.
        lease_expires_at: DateTime<Utc>,
    },
}

impl Claim {
    /// `(attempt, run)` when acquired.
    pub fn acquired(&self) -> Option<(u32, u32)> {
        match self {
            Claim::Acquired { attempt, run, .. } => Some((*attempt, *run)),
            _ => None,
        }
    }
}

/// A row for `lead_activities`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewActivity {
    /// The lead the activity is about (the customer's lead id, else the phone).
    pub lead_id: String,
    /// What happened, e.g. `message_handled`, `action_executed`, `escalated`.
    pub activity_type: String,
    /// Details as JSON.
    pub details: Value,
}

impl NewActivity {
    /// The `action_executed` row of a succeeded step.
    pub fn action_executed(lead_id: &str, action: &str, step_index: u32, output: &ActionOutput) -> Self {
        Self {
            lead_id: lead_id.to_owned(),
            activity_type: "action_executed".to_owned(),
            details: serde_json::json!({ "action": action, "step_index": step_index, "output": output }),
        }
    }
}

/// What a completion writes besides the claim: the audit rows, the reply
/// outbox, the lead's move and the plan's trailing local run.
#[derive(Debug)]
pub struct Finish<'a> {
    /// The `lead_activities` rows (the local steps' are added by the store).
    pub activities: &'a [NewActivity],
    /// How long the dedupe record is kept.
    pub ttl: Duration,
    /// The reply, kept in the outbox until Kafka acknowledged it.
    pub reply: Option<&'a Value>,
    /// The lead's move, when the handler asked for one.
    pub lead: Option<&'a StageMove>,
    /// The trailing local run, written in the same transaction.
    pub local: Vec<LocalStep>,
    /// The message and its reply in the inbox's history, written in the
    /// same transaction by a store that keeps one (the SQL store).
    pub conversation: Option<&'a super::ConversationTurn>,
}

/// What a completion with a trailing local run wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCompletion {
    /// The local steps' outputs, in the order they were given.
    pub outputs: Vec<ActionOutput>,
    /// The lead's stage change, when the completion moved one.
    pub stage: Option<StageChange>,
}

/// The state the pipeline keeps per message: its claim (dedupe with a
/// lease), its saga log ([`SagaLog`]), its completion with the audit rows and
/// the reply outbox, its dead letter, and its lead's stage.
///
/// Contract for implementations: [`claim`](Store::claim) is atomic across
/// workers; [`complete`](Store::complete) and [`dead_letter`](Store::dead_letter)
/// are each one transaction.
#[async_trait]
pub trait Store: SagaLog + Send + Sync {
    /// Claims a message for processing with a lease. A message whose previous
    /// attempt released its claim starts a new attempt and run; one whose
    /// lease ran out without release (its worker died or stalled) is taken
    /// over: a new attempt, resuming the same run.
    async fn claim(&self, key: &MessageKey, lease: Duration) -> Result<Claim, StoreError>;

    /// Extends a held lease by `duration` from now; [`StoreError::LeaseLost`]
    /// when it is no longer held.
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError>;

    /// Releases the claim after a failed attempt so a redelivery processes it
    /// again; `refund_attempt` gives the attempt back (it was deferred, not failed).
    async fn release(&self, lease: &Lease, refund_attempt: bool) -> Result<(), StoreError>;

    /// Marks the message processed, writes its audit trail and keeps its
    /// reply (the outbox), in one transaction, if the lease is still held.
    async fn complete(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&Value>,
    ) -> Result<(), StoreError>;

    /// [`complete`](Store::complete), and moves the message's lead (in the
    /// lease's tenant) to `lead.stage`. A store that can should do both in
    /// the completion's transaction (the SQL store does), so a crash cannot
    /// keep one without the other. The default completes, then calls
    /// [`set_lead_stage`](Store::set_lead_stage); a failure there costs the
    /// stage, never the message, and is reported as [`StageChange::NotRecorded`].
    async fn complete_moving_lead(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&Value>,
        lead: &StageMove,
    ) -> Result<StageChange, StoreError> {
        self.complete(lease, activities, ttl, reply).await?;
        Ok(match self.set_lead_stage(&lease.key.tenant_id, &lead.lead_id, &lead.stage).await {
            Ok(from) => StageChange::Moved { from },
            Err(error) => StageChange::NotRecorded { error: error.to_string() },
        })
    }

    /// Whether [`complete_local`](Store::complete_local) can write local
    /// steps in the completion transaction. When not, the pipeline runs
    /// local executors as external ones. The default is `false`.
    fn runs_local_effects(&self) -> bool {
        false
    }

    /// [`complete`](Store::complete) (moving the lead when `lead` is given)
    /// with a trailing local run written in the same transaction, and an
    /// `action_executed` activity per local step; a failing local step
    /// rolls it all back and answers [`StoreError::Local`]. Stores that
    /// cannot ([`runs_local_effects`](Store::runs_local_effects) is false)
    /// refuse a non-empty run with [`StoreError::Unsupported`].
    async fn complete_local(&self, lease: &Lease, finish: Finish<'_>) -> Result<LocalCompletion, StoreError> {
        let Finish { activities, ttl, reply, lead, local, conversation: _ } = finish;
        if !local.is_empty() {
            return Err(StoreError::Unsupported("local executors need a SQL store"));
        }
        let stage = match lead {
            Some(lead) => Some(self.complete_moving_lead(lease, activities, ttl, reply, lead).await?),
            None => {
                self.complete(lease, activities, ttl, reply).await?;
                None
            }
        };
        Ok(LocalCompletion { outputs: Vec::new(), stage })
    }

    /// Completes a message that was never claimed, when its plan is all
    /// local: inserts its claim row completed, with everything
    /// [`complete_local`](Store::complete_local) writes, in one transaction,
    /// unless a row for `key` exists. Answers `None` when one does (a
    /// redelivery, a retry, another worker's message: the caller claims it
    /// as usual) or when the store cannot (the default); nothing is written
    /// then. The store's unique key does the deduper's job, with no claim
    /// round trip before.
    async fn complete_unclaimed(
        &self,
        key: &MessageKey,
        finish: Finish<'_>,
    ) -> Result<Option<LocalCompletion>, StoreError> {
        let _ = (key, finish);
        Ok(None)
    }

    /// The reply of a completed message that was never confirmed published.
    async fn pending_reply(&self, key: &MessageKey) -> Result<Option<Value>, StoreError>;

    /// Records that the message's reply was acknowledged by Kafka.
    async fn mark_reply_published(&self, key: &MessageKey) -> Result<(), StoreError>;

    /// Parks a message in the dead-letter queue and, when a lease is given,
    /// marks its claim dead-lettered so redeliveries skip it, in one
    /// transaction (refused with [`StoreError::LeaseLost`] if the lease is lost).
    async fn dead_letter(&self, lease: Option<&Lease>, entry: &NewDeadLetter) -> Result<i64, StoreError>;

    /// Deletes completed dedupe records whose TTL ran out; returns how many.
    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Moves a lead to `stage`; returns the stage it was in (`None` for a lead not seen before).
    async fn set_lead_stage(&self, tenant_id: &str, lead_id: &str, stage: &str) -> Result<Option<String>, StoreError>;
}

/// A lead's move to a stage, made with its message's completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMove {
    /// The lead (in the message's tenant).
    pub lead_id: String,
    /// The stage it moves to.
    pub stage: String,
}

/// What completing a message did to its lead's stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageChange {
    /// The lead is in the new stage; it was in `from` (`None`: a lead not seen before).
    Moved {
        /// The stage before.
        from: Option<String>,
    },
    /// The stage could not be recorded; the message is completed all the same.
    NotRecorded {
        /// The store's error; the lead keeps its previous stage.
        error: String,
    },
}
