//! An in-memory [`Store`], with the same semantics as the SQL one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AttemptFailure, OutboundMessage, OutboundMessages, OutboundReply, OutboundStatus, ReplyKey, ReplyLease, SagaLog,
    SendClaim,
};
use super::{
    Claim, DeadLetter, DeadLetterQueue, DeliveryStatuses, DlqFilter, DlqStatus, KeyParking, Lease, MessageKey,
    NewActivity, NewDeadLetter, Page, ParkCheck, ParkedMessage, PendingClassification, PendingClassifications,
    StepRecord, Store, StoreError, to_chrono,
};

#[derive(Debug, Clone)]
struct ClaimRow {
    completed: bool,
    dead_lettered: bool,
    attempt_count: u32,
    run_count: u32,
    lease_expires_at: Option<DateTime<Utc>>,
    lease_token: i64,
    expires_at: DateTime<Utc>,
    reply: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
struct State {
    claims: HashMap<MessageKey, ClaimRow>,
    steps: HashMap<(MessageKey, u32), Vec<StepRecord>>,
    dead_letters: Vec<DeadLetter>,
    activities: Vec<(MessageKey, NewActivity)>,
    blocks: HashMap<String, String>,
    parked: Vec<ParkedMessage>,
    next_parked_id: i64,
    /// Waiting classifications and the time each is held until.
    pending_ai: Vec<(PendingClassification, Option<DateTime<Utc>>)>,
    statuses: Vec<crate::store::DeliveryStatus>,
    lead_stages: HashMap<(String, String), String>,
    outbound: HashMap<ReplyKey, OutboundRow>,
}

#[derive(Debug, Clone)]
struct OutboundRow {
    message: OutboundMessage,
    lease_token: Option<i64>,
    lease_expires_at: Option<DateTime<Utc>>,
    dead_letter_id: Option<i64>,
}

/// Keeps everything in process memory; lost on exit.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is one statement).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The claim row, if `lease` still holds it.
    fn held<'a>(state: &'a mut State, lease: &Lease) -> Result<&'a mut ClaimRow, StoreError> {
        state
            .claims
            .get_mut(&lease.key)
            .filter(|row| row.lease_token == lease.token && row.lease_expires_at.is_some() && !row.completed)
            .ok_or_else(|| StoreError::LeaseLost(lease.key.message_id.clone()))
    }

    /// Audit rows written for a message (for tests).
    pub fn activities(&self, key: &MessageKey) -> Vec<NewActivity> {
        self.state().activities.iter().filter(|(k, _)| k == key).map(|(_, a)| a.clone()).collect()
    }
}

#[async_trait]
impl SagaLog for MemoryStore {
    async fn load_steps(&self, key: &MessageKey, run: u32) -> Result<Vec<StepRecord>, StoreError> {
        Ok(self.state().steps.get(&(key.clone(), run)).cloned().unwrap_or_default())
    }

    async fn record_step(&self, lease: &Lease, run: u32, step: &StepRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        Self::held(&mut state, lease)?;
        state.steps.entry((lease.key.clone(), run)).or_default().push(step.clone());
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, key: &MessageKey, lease: Duration) -> Result<Claim, StoreError> {
        let now = Utc::now();
        let mut state = self.state();
        let row = state.claims.entry(key.clone()).or_insert(ClaimRow {
            completed: false,
            dead_lettered: false,
            attempt_count: 0,
            run_count: 0,
            lease_expires_at: None,
            lease_token: 0,
            expires_at: now,
            reply: None,
        });
        if row.completed {
            return Ok(Claim::Done);
        }
        if row.dead_lettered {
            return Ok(Claim::DeadLettered);
        }
        match row.lease_expires_at {
            Some(until) if until >= now => return Ok(Claim::Busy { lease_expires_at: until }),
            Some(_) => {} // its worker died or stalled: take over, resuming the same run
            None => row.run_count += 1,
        }
        row.attempt_count += 1;
        let held = Lease::new(key.clone());
        row.lease_token = held.token;
        row.lease_expires_at = Some(now + to_chrono(lease));
        Ok(Claim::Acquired { lease: held, attempt: row.attempt_count, run: row.run_count })
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
        let mut state = self.state();
        Self::held(&mut state, lease)?.lease_expires_at = Some(Utc::now() + to_chrono(duration));
        Ok(())
    }

    async fn release(&self, lease: &Lease, refund_attempt: bool) -> Result<(), StoreError> {
        let mut state = self.state();
        let row = Self::held(&mut state, lease)?;
        row.lease_expires_at = None;
        if refund_attempt {
            row.attempt_count = row.attempt_count.saturating_sub(1);
        }
        Ok(())
    }

    async fn complete(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut state = self.state();
        let row = Self::held(&mut state, lease)?;
        row.completed = true;
        row.lease_expires_at = None;
        row.expires_at = now + to_chrono(ttl);
        row.reply = reply.cloned();
        state.activities.extend(activities.iter().map(|a| (lease.key.clone(), a.clone())));
        Ok(())
    }

    async fn pending_reply(&self, key: &MessageKey) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(self.state().claims.get(key).filter(|row| row.completed).and_then(|row| row.reply.clone()))
    }

    async fn mark_reply_published(&self, key: &MessageKey) -> Result<(), StoreError> {
        if let Some(row) = self.state().claims.get_mut(key) {
            row.reply = None;
        }
        Ok(())
    }

    async fn dead_letter(&self, lease: Option<&Lease>, entry: &NewDeadLetter) -> Result<i64, StoreError> {
        let now = Utc::now();
        let mut state = self.state();
        if let Some(lease) = lease {
            let row = Self::held(&mut state, lease)?;
            row.dead_lettered = true;
            row.lease_expires_at = None;
        }
        Ok(Self::file(&mut state, entry, now))
    }

    async fn set_lead_stage(&self, tenant_id: &str, lead_id: &str, stage: &str) -> Result<Option<String>, StoreError> {
        let key = (tenant_id.to_owned(), lead_id.to_owned());
        Ok(self.state().lead_stages.insert(key, stage.to_owned()))
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut state = self.state();
        let before = state.claims.len();
        state.claims.retain(|_, row| !(row.completed && row.expires_at < now));
        Ok((before - state.claims.len()) as u64)
    }
}

impl MemoryStore {
    /// Files a dead-letter entry; returns its id.
    fn file(state: &mut State, entry: &NewDeadLetter, now: DateTime<Utc>) -> i64 {
        let id = state.dead_letters.len() as i64 + 1;
        state.dead_letters.push(DeadLetter {
            id,
            message_id: entry.message_id.clone(),
            source: entry.source.clone(),
            payload: entry.payload.clone(),
            failure_type: entry.failure_type,
            error: entry.error.clone(),
            attempt_count: entry.attempt_count,
            status: DlqStatus::Failed,
            replay_count: 0,
            tenant_id: entry.tenant_id.clone(),
            fingerprint: crate::dlq::failure_fingerprint(entry.failure_type, &entry.error),
            trace_context: entry.trace_context.clone(),
            created_at: now,
            updated_at: now,
        });
        id
    }

    /// The reply's row, if `lease` still holds it.
    fn held_reply<'a>(state: &'a mut State, lease: &ReplyLease) -> Result<&'a mut OutboundRow, StoreError> {
        state
            .outbound
            .get_mut(&lease.key)
            .filter(|row| row.lease_token == Some(lease.token) && row.message.status == OutboundStatus::Queued)
            .ok_or_else(|| StoreError::LeaseLost(lease.key.dead_letter_id()))
    }
}

#[async_trait]
impl DeadLetterQueue for MemoryStore {
    async fn list(&self, filter: &DlqFilter, page: Page) -> Result<Vec<DeadLetter>, StoreError> {
        let state = self.state();
        Ok(state
            .dead_letters
            .iter()
            .rev()
            .filter(|d| filter.status.is_none_or(|s| d.status == s))
            .filter(|d| filter.tenant_id.as_ref().is_none_or(|t| d.tenant_id.as_ref() == Some(t)))
            .filter(|d| filter.failure_type.is_none_or(|f| d.failure_type == f))
            .filter(|d| filter.since.is_none_or(|since| d.created_at >= since))
            .filter(|d| filter.fingerprint.as_ref().is_none_or(|f| d.fingerprint == *f))
            .skip(page.offset as usize)
            .take(page.limit as usize)
            .cloned()
            .collect())
    }

    async fn get(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.state().dead_letters.iter().find(|d| d.id == id).cloned())
    }

    async fn mark(&self, id: i64, status: DlqStatus) -> Result<DeadLetter, StoreError> {
        let mut state = self.state();
        let entry = state.dead_letters.iter_mut().find(|d| d.id == id).ok_or(StoreError::NotFound(id))?;
        if !entry.status.can_become(status) {
            return Err(StoreError::InvalidTransition { id, from: entry.status.as_str(), to: status.as_str() });
        }
        entry.status = status;
        entry.updated_at = Utc::now();
        if status == DlqStatus::Replayed {
            entry.replay_count += 1;
        }
        let entry = entry.clone();
        if status == DlqStatus::Replayed
            && let (Some(tenant), Some(message)) = (&entry.tenant_id, &entry.message_id)
            && let Some(row) = state.claims.get_mut(&MessageKey::new(tenant, message))
            && !row.completed
        {
            row.dead_lettered = false;
            row.attempt_count = 0;
            row.lease_expires_at = None;
        }
        if status == DlqStatus::Replayed {
            for row in state.outbound.values_mut() {
                if row.dead_letter_id == Some(id) && row.message.status == OutboundStatus::Failed {
                    row.message.status = OutboundStatus::Queued;
                    row.message.attempt_count = 0;
                }
            }
        }
        Ok(entry)
    }

    async fn undo_replay(&self, id: i64) -> Result<(), StoreError> {
        let mut state = self.state();
        let Some(entry) = state.dead_letters.iter_mut().find(|d| d.id == id && d.status == DlqStatus::Replayed) else {
            return Ok(());
        };
        entry.status = DlqStatus::Failed;
        entry.replay_count = entry.replay_count.saturating_sub(1);
        entry.updated_at = Utc::now();
        let entry = entry.clone();
        for row in state.outbound.values_mut() {
            if row.dead_letter_id == Some(id)
                && row.message.status == OutboundStatus::Queued
                && row.lease_token.is_none()
            {
                row.message.status = OutboundStatus::Failed;
            }
        }
        if let (Some(tenant), Some(message)) = (&entry.tenant_id, &entry.message_id)
            && let Some(row) = state.claims.get_mut(&MessageKey::new(tenant, message))
            && !row.completed
            && row.lease_expires_at.is_none()
        {
            row.dead_lettered = true;
        }
        Ok(())
    }

    async fn groups(&self, filter: &DlqFilter, limit: u64) -> Result<Vec<super::FailureGroup>, StoreError> {
        let matching = self.list(filter, Page { limit: u64::MAX, offset: 0 }).await?;
        let mut groups: Vec<super::FailureGroup> = Vec::new();
        for entry in matching {
            match groups.iter_mut().find(|g| g.fingerprint == entry.fingerprint) {
                Some(group) => {
                    group.count += 1;
                    group.first_at = group.first_at.min(entry.created_at);
                    group.last_at = group.last_at.max(entry.created_at);
                }
                None => groups.push(super::FailureGroup {
                    fingerprint: entry.fingerprint.clone(),
                    failure_type: entry.failure_type,
                    pattern: crate::dlq::normalize_error(&entry.error),
                    count: 1,
                    first_at: entry.created_at,
                    last_at: entry.created_at,
                }),
            }
        }
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_at.cmp(&a.last_at)));
        groups.truncate(limit as usize);
        Ok(groups)
    }
}

#[async_trait]
impl KeyParking for MemoryStore {
    async fn park_if_blocked(&self, message: &ParkedMessage) -> Result<ParkCheck, StoreError> {
        let mut state = self.state();
        match state.blocks.get(&message.key) {
            None => Ok(ParkCheck::Open { holder: false }),
            Some(holder) if *holder == message.message_id => Ok(ParkCheck::Open { holder: true }),
            Some(_) => {
                state.next_parked_id += 1;
                let id = state.next_parked_id;
                state.parked.push(ParkedMessage { id, ..message.clone() });
                Ok(ParkCheck::Parked)
            }
        }
    }

    async fn block(&self, key: &str, message_id: &str) -> Result<(), StoreError> {
        self.state().blocks.insert(key.to_owned(), message_id.to_owned());
        Ok(())
    }

    async fn next_parked(&self, key: &str) -> Result<Option<ParkedMessage>, StoreError> {
        Ok(self.state().parked.iter().find(|p| p.key == key).cloned())
    }

    async fn unpark(&self, id: i64) -> Result<(), StoreError> {
        self.state().parked.retain(|p| p.id != id);
        Ok(())
    }

    async fn unblock_if_empty(&self, key: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        if state.parked.iter().any(|p| p.key == key) {
            return Ok(false);
        }
        state.blocks.remove(key);
        Ok(true)
    }

    async fn holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.state().blocks.get(key).cloned())
    }

    async fn stale_blocks(&self, _before: DateTime<Utc>, _limit: u32) -> Result<Vec<(String, String)>, StoreError> {
        // Memory blocks die with the process, and with them any worker that could strand one.
        Ok(Vec::new())
    }
}

#[async_trait]
impl PendingClassifications for MemoryStore {
    async fn register(&self, pending: &PendingClassification) -> Result<(PendingClassification, bool), StoreError> {
        let mut state = self.state();
        let waiting = state.pending_ai.iter().find(|(p, _)| p.key == pending.key && p.message_id == pending.message_id);
        if let Some((existing, _)) = waiting {
            return Ok((existing.clone(), false));
        }
        state.pending_ai.push((pending.clone(), None));
        Ok((pending.clone(), true))
    }

    async fn take(&self, processing_id: &str, hold: Duration) -> Result<Option<PendingClassification>, StoreError> {
        let now = Utc::now();
        let mut state = self.state();
        let free = state
            .pending_ai
            .iter_mut()
            .find(|(p, held)| p.processing_id == processing_id && held.is_none_or(|until| until < now));
        Ok(free.map(|(pending, held)| {
            *held = Some(now + to_chrono(hold));
            pending.clone()
        }))
    }

    async fn overdue(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<PendingClassification>, StoreError> {
        let now = Utc::now();
        let mut rows: Vec<PendingClassification> = self
            .state()
            .pending_ai
            .iter()
            .filter(|(p, held)| p.requested_at < before && held.is_none_or(|until| until < now))
            .map(|(p, _)| p.clone())
            .collect();
        rows.sort_by_key(|p| p.requested_at);
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn resolve(&self, processing_id: &str) -> Result<(), StoreError> {
        self.state().pending_ai.retain(|(p, _)| p.processing_id != processing_id);
        Ok(())
    }

    async fn waiting(&self, key: &str, message_id: &str) -> Result<bool, StoreError> {
        Ok(self.state().pending_ai.iter().any(|(p, _)| p.key == key && p.message_id == message_id))
    }
}

#[async_trait]
impl DeliveryStatuses for MemoryStore {
    async fn record_status(
        &self,
        status: &crate::store::DeliveryStatus,
    ) -> Result<Option<super::MovedMessage>, StoreError> {
        let mut state = self.state();
        if !state.statuses.iter().any(|s| s.message_id == status.message_id && s.status == status.status) {
            state.statuses.push(status.clone());
        }
        // The reply moves forward, never back (as the SQL store's update).
        if let Some(next) = OutboundStatus::parse(&status.status)
            && let Some(row) =
                state.outbound.values_mut().find(|r| r.message.wamid.as_deref() == Some(&status.message_id))
            && row.message.status < OutboundStatus::Failed
            && row.message.status < next
            && next <= OutboundStatus::Failed
        {
            row.message.status = next;
            row.message.updated_at = Utc::now();
            if status.error.is_some() {
                row.message.error = status.error.clone();
                row.message.error_code = status.error_code();
            }
            let key = &row.message.key;
            return Ok(Some(super::MovedMessage {
                tenant_id: key.tenant_id.clone(),
                message_id: key.original_message_id.clone(),
            }));
        }
        Ok(None)
    }

    async fn statuses_of(&self, message_id: &str) -> Result<Vec<crate::store::DeliveryStatus>, StoreError> {
        let mut found: Vec<_> = self.state().statuses.iter().filter(|s| s.message_id == message_id).cloned().collect();
        found.sort_by_key(|s| s.timestamp);
        Ok(found)
    }
}

#[async_trait]
impl OutboundMessages for MemoryStore {
    async fn claim_send(&self, reply: &OutboundReply, lease: Duration) -> Result<SendClaim, StoreError> {
        let now = Utc::now();
        let mut state = self.state();
        let id = state.outbound.len() as i64 + 1;
        let row = state.outbound.entry(reply.key.clone()).or_insert_with(|| OutboundRow {
            message: OutboundMessage {
                id,
                key: reply.key.clone(),
                phone_number_id: reply.phone_number_id.clone(),
                recipient_phone: reply.recipient_phone.clone(),
                status: OutboundStatus::Queued,
                attempt_count: 0,
                wamid: None,
                error_code: None,
                error: None,
                created_at: now,
                updated_at: now,
                sent_at: None,
            },
            lease_token: None,
            lease_expires_at: None,
            dead_letter_id: None,
        });
        match row.message.status {
            OutboundStatus::Sent | OutboundStatus::Delivered | OutboundStatus::Read => {
                return Ok(SendClaim::AlreadySent { wamid: row.message.wamid.clone() });
            }
            OutboundStatus::Failed => return Ok(SendClaim::Failed),
            status @ (OutboundStatus::Scheduled | OutboundStatus::Cancelled) => {
                return Ok(SendClaim::Withheld { status });
            }
            OutboundStatus::Queued => {}
        }
        if let Some(until) = row.lease_expires_at.filter(|until| *until >= now) {
            return Ok(SendClaim::Busy { lease_expires_at: until });
        }
        let token = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
        row.lease_token = Some(token);
        row.lease_expires_at = Some(now + to_chrono(lease));
        row.message.attempt_count += 1;
        row.message.updated_at = now;
        let lease = ReplyLease { id: row.message.id, key: reply.key.clone(), token };
        Ok(SendClaim::Acquired { lease, attempt: row.message.attempt_count })
    }

    async fn record_sent(&self, lease: &ReplyLease, wamid: Option<&str>) -> Result<(), StoreError> {
        let mut state = self.state();
        let row = Self::held_reply(&mut state, lease)?;
        let now = Utc::now();
        row.message.status = OutboundStatus::Sent;
        row.message.wamid = wamid.map(str::to_owned);
        row.message.sent_at = Some(now);
        row.message.updated_at = now;
        row.message.error = None;
        row.message.error_code = None;
        row.lease_token = None;
        row.lease_expires_at = None;
        Ok(())
    }

    async fn release_send(&self, lease: &ReplyLease, failure: &AttemptFailure<'_>) -> Result<(), StoreError> {
        let mut state = self.state();
        let row = Self::held_reply(&mut state, lease)?;
        if failure.refund {
            row.message.attempt_count = row.message.attempt_count.saturating_sub(1);
        }
        row.message.error_code = failure.code;
        row.message.error = Some(failure.error.to_owned());
        row.message.updated_at = Utc::now();
        row.lease_token = None;
        row.lease_expires_at = None;
        Ok(())
    }

    async fn fail_send(
        &self,
        lease: Option<&ReplyLease>,
        code: Option<i64>,
        entry: &NewDeadLetter,
    ) -> Result<i64, StoreError> {
        let now = Utc::now();
        let mut state = self.state();
        if let Some(lease) = lease {
            Self::held_reply(&mut state, lease)?;
        }
        let id = Self::file(&mut state, entry, now);
        if let Some(lease) = lease {
            let row = Self::held_reply(&mut state, lease)?;
            row.message.status = OutboundStatus::Failed;
            row.message.error_code = code;
            row.message.error = Some(entry.error.clone());
            row.message.updated_at = now;
            row.dead_letter_id = Some(id);
            row.lease_token = None;
            row.lease_expires_at = None;
        }
        Ok(id)
    }

    async fn outbound(&self, key: &ReplyKey) -> Result<Option<OutboundMessage>, StoreError> {
        Ok(self.state().outbound.get(key).map(|row| row.message.clone()))
    }
}
