//! [`SqlStore`]: the store on SQLite or PostgreSQL through sea-orm.
//!
//! The statements are written once with `?` placeholders and rendered per
//! backend; the conditional upserts that make claims atomic are plain SQL
//! both databases share.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use super::{
    Claim, DeadLetter, DeadLetterQueue, DlqFilter, DlqStatus, Finish, MessageKey, NewActivity, NewDeadLetter, Page,
    SagaLog, StepRecord, Store, StoreError,
};

use super::{
    AttemptFailure, DeliveryStatuses, KeyParking, Lease, OutboundMessage, OutboundMessages, OutboundReply, ParkCheck,
    ParkedMessage, PendingClassification, PendingClassifications, ReplyKey, ReplyLease, StageChange, StageMove,
};

mod ai_pending;
mod api_messages;
mod batch;
mod claims;
mod completion;
mod conversations;
mod dead_letters;
mod delivery;
mod outbound;
mod parking;
mod saga_log;
mod statement;

/// The store on a sea-orm connection whose schema [`migrations`] created.
///
/// Claims, parking checks, saga-log appends, completions, lead stages,
/// reply marks and dead letters of concurrent messages are
/// coalesced into one statement (or transaction) per batch (see [`crate::coalesce`]);
/// the writer tasks start on first use in the caller's tokio runtime, so a
/// store belongs to one runtime.
#[derive(Clone)]
pub struct SqlStore {
    db: DatabaseConnection,
    batches: Arc<Batches>,
    /// Whether completions, dead letters and send API messages write the inbox's history.
    history: bool,
}

/// The coalesced writers, started on first use.
#[derive(Default)]
struct Batches {
    claims: OnceLock<batch::Batched<claims::ClaimRequest, Claim>>,
    touches: OnceLock<batch::Batched<String, Option<String>>>,
    leads: OnceLock<batch::Batched<claims::LeadMove, Option<String>>>,
    steps: OnceLock<batch::Batched<saga_log::StepWrite, ()>>,
    completions: OnceLock<batch::Batched<completion::Completion, completion::Finished>>,
    replies: OnceLock<batch::Batched<MessageKey, ()>>,
    dead_letters: OnceLock<batch::Batched<dead_letters::DlqWrite, i64>>,
    reply_claims: OnceLock<batch::Batched<outbound::ClaimRequest, super::SendClaim>>,
    replies_sent: OnceLock<batch::Batched<outbound::SentWrite, ()>>,
}

/// Writer tasks per coalesced write on PostgreSQL. Two: one batch is
/// written while the next fills, so a statement's round trip no longer
/// idles the pipeline (`loadgen`: about 1.3x the messages/s of one writer;
/// with four, smaller batches cost more than the overlap gains). Two
/// batches of one statement rarely share a row (a key's messages are
/// processed one at a time); should two deadlock, PostgreSQL fails one and
/// its messages are retried, as with concurrent replicas. SQLite keeps one: it has one writer anyway,
/// and a second transaction would only wait for the lock.
const PG_BATCH_WRITERS: usize = 2;

/// Rows per batched statement (11 parameters each, far below SQLite's and PostgreSQL's limits).
const MAX_BATCH: usize = 256;

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").field("db", &self.db).finish_non_exhaustive()
    }
}

impl SqlStore {
    /// A store on a migrated connection (see [`crate::db::connect`]).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, batches: Arc::default(), history: true }
    }

    /// Whether to write the inbox's history (`conversations`,
    /// `conversation_messages`; on by default). Off, a message costs about
    /// three rows fewer: for deployments that show no inbox.
    pub fn with_history(mut self, history: bool) -> Self {
        self.history = history;
        self
    }

    /// The coalescer in `cell`, started on first use with `write` as its batch writer.
    fn coalesced<'a, Req, Resp, W, Fut>(
        &self,
        cell: &'a OnceLock<batch::Batched<Req, Resp>>,
        write: W,
    ) -> &'a batch::Batched<Req, Resp>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        W: Fn(DatabaseConnection, Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<Result<Resp, StoreError>>> + Send + 'static,
    {
        cell.get_or_init(|| {
            let db = self.db.clone();
            let writers = match db.get_database_backend() {
                sea_orm::DbBackend::Postgres => PG_BATCH_WRITERS,
                _ => 1,
            };
            crate::coalesce::Coalescer::spawn(writers, MAX_BATCH, move |batch| write(db.clone(), batch))
        })
    }

    /// The connection, for executors and probes that share it.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A completion, claimed (`unclaimed` false) or not, through the coalesced completion writer.
    async fn submit_completion(
        &self,
        lease: Lease,
        unclaimed: bool,
        finish: Finish<'_>,
    ) -> Result<completion::Finished, StoreError> {
        let completion = completion::Completion {
            lease,
            unclaimed,
            activities: finish.activities.to_vec(),
            expires_at: Utc::now() + super::to_chrono(finish.ttl),
            reply: finish.reply.cloned(),
            lead: finish.lead.map(|lead| (lead.lead_id.clone(), lead.stage.clone())),
            local: finish.local,
            conversation: finish.conversation.filter(|_| self.history).cloned(),
        };
        let completions = self.coalesced(&self.batches.completions, |db, batch| async move {
            completion::complete_many(&db, batch).await
        });
        batch::submit(completions, completion).await
    }
}

fn corrupt(table: &'static str, reason: String) -> StoreError {
    StoreError::Corrupt { table, reason }
}

#[async_trait]
impl SagaLog for SqlStore {
    async fn load_steps(&self, key: &MessageKey, run: u32) -> Result<Vec<StepRecord>, StoreError> {
        saga_log::load_steps(&self.db, key, run).await
    }

    async fn record_step(&self, lease: &Lease, run: u32, step: &StepRecord) -> Result<(), StoreError> {
        self.record_steps(lease, run, std::slice::from_ref(step)).await
    }

    async fn record_steps(&self, lease: &Lease, run: u32, steps: &[StepRecord]) -> Result<(), StoreError> {
        if steps.is_empty() {
            return Ok(());
        }
        let write = saga_log::StepWrite { key: lease.key.clone(), token: lease.token, run, steps: steps.to_vec() };
        let batched =
            self.coalesced(&self.batches.steps, |db, writes| async move { saga_log::record_steps(&db, writes).await });
        batch::submit(batched, write).await
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn claim(&self, key: &MessageKey, lease: Duration) -> Result<Claim, StoreError> {
        let claims =
            self.coalesced(&self.batches.claims, |db, batch| async move { claims::claim_many(&db, batch).await });
        batch::submit(claims, claims::ClaimRequest { key: key.clone(), lease }).await
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
        claims::renew(&self.db, lease, duration).await
    }

    async fn release(&self, lease: &Lease, refund_attempt: bool) -> Result<(), StoreError> {
        claims::release(&self.db, lease, refund_attempt).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        let finish = Finish { activities, ttl, reply, lead: None, local: Vec::new(), conversation: None };
        self.submit_completion(lease.clone(), false, finish).await.map(drop)
    }

    async fn complete_moving_lead(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&serde_json::Value>,
        lead: &StageMove,
    ) -> Result<StageChange, StoreError> {
        let finish = Finish { activities, ttl, reply, lead: Some(lead), local: Vec::new(), conversation: None };
        let finished = self.submit_completion(lease.clone(), false, finish).await?;
        Ok(StageChange::Moved { from: finished.previous.flatten() })
    }

    fn runs_local_effects(&self) -> bool {
        true
    }

    async fn complete_local(&self, lease: &Lease, finish: Finish<'_>) -> Result<super::LocalCompletion, StoreError> {
        let moved_lead = finish.lead.is_some();
        Ok(self.submit_completion(lease.clone(), false, finish).await?.into_local(moved_lead))
    }

    async fn complete_unclaimed(
        &self,
        key: &MessageKey,
        finish: Finish<'_>,
    ) -> Result<Option<super::LocalCompletion>, StoreError> {
        let moved_lead = finish.lead.is_some();
        match self.submit_completion(Lease::new(key.clone()), true, finish).await {
            Ok(finished) => Ok(Some(finished.into_local(moved_lead))),
            // Stored already: the caller claims it to learn why.
            Err(StoreError::LeaseLost(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn pending_reply(&self, key: &MessageKey) -> Result<Option<serde_json::Value>, StoreError> {
        claims::pending_reply(&self.db, key).await
    }

    async fn mark_reply_published(&self, key: &MessageKey) -> Result<(), StoreError> {
        let replies =
            self.coalesced(
                &self.batches.replies,
                |db, keys| async move { claims::mark_replies_published(&db, keys).await },
            );
        batch::submit(replies, key.clone()).await
    }

    async fn dead_letter(&self, lease: Option<&Lease>, entry: &NewDeadLetter) -> Result<i64, StoreError> {
        let mut entry = entry.clone();
        if !self.history {
            entry.conversation = None;
        }
        let write = dead_letters::DlqWrite { lease: lease.cloned(), entry };
        let batched = self.coalesced(&self.batches.dead_letters, |db, writes| async move {
            dead_letters::insert_many(&db, writes).await
        });
        batch::submit(batched, write).await
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        claims::purge_expired(&self.db, now).await
    }

    async fn set_lead_stage(&self, tenant_id: &str, lead_id: &str, stage: &str) -> Result<Option<String>, StoreError> {
        let leads =
            self.coalesced(&self.batches.leads, |db, moves| async move { claims::set_lead_stages(&db, moves).await });
        let lead =
            claims::LeadMove { tenant_id: tenant_id.to_owned(), lead_id: lead_id.to_owned(), stage: stage.to_owned() };
        batch::submit(leads, lead).await
    }
}

#[async_trait]
impl DeadLetterQueue for SqlStore {
    async fn list(&self, filter: &DlqFilter, page: Page) -> Result<Vec<DeadLetter>, StoreError> {
        dead_letters::list(&self.db, filter, page).await
    }

    async fn get(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        dead_letters::get(&self.db, id).await
    }

    async fn mark(&self, id: i64, status: DlqStatus) -> Result<DeadLetter, StoreError> {
        dead_letters::mark(&self.db, id, status).await
    }

    async fn undo_replay(&self, id: i64) -> Result<(), StoreError> {
        dead_letters::undo_replay(&self.db, id).await
    }

    async fn groups(&self, filter: &DlqFilter, limit: u64) -> Result<Vec<super::FailureGroup>, StoreError> {
        dead_letters::groups(&self.db, filter, limit).await
    }
}

#[async_trait]
impl KeyParking for SqlStore {
    async fn park_if_blocked(&self, message: &ParkedMessage) -> Result<ParkCheck, StoreError> {
        // The usual case, a key with no block (or blocked by this very message),
        // needs nothing but the touch, coalesced with other messages' touches.
        let touches =
            self.coalesced(&self.batches.touches, |db, keys| async move { parking::touch_many(&db, keys).await });
        match batch::submit(touches, message.key.clone()).await? {
            None => Ok(ParkCheck::Open { holder: false }),
            Some(holder) if holder == message.message_id => Ok(ParkCheck::Open { holder: true }),
            Some(_) => parking::park_behind(&self.db, message).await,
        }
    }

    async fn block(&self, key: &str, message_id: &str) -> Result<(), StoreError> {
        parking::block(&self.db, key, message_id).await
    }

    async fn next_parked(&self, key: &str) -> Result<Option<ParkedMessage>, StoreError> {
        parking::next_parked(&self.db, key).await
    }

    async fn unpark(&self, id: i64) -> Result<(), StoreError> {
        parking::unpark(&self.db, id).await
    }

    async fn unblock_if_empty(&self, key: &str) -> Result<bool, StoreError> {
        parking::unblock_if_empty(&self.db, key).await
    }

    async fn holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        parking::holder(&self.db, key).await
    }

    async fn stale_blocks(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<(String, String)>, StoreError> {
        parking::stale_blocks(&self.db, before, limit).await
    }
}

#[async_trait]
impl PendingClassifications for SqlStore {
    async fn register(&self, pending: &PendingClassification) -> Result<(PendingClassification, bool), StoreError> {
        ai_pending::register(&self.db, pending).await
    }

    async fn take(&self, processing_id: &str, hold: Duration) -> Result<Option<PendingClassification>, StoreError> {
        ai_pending::take(&self.db, processing_id, hold).await
    }

    async fn overdue(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<PendingClassification>, StoreError> {
        ai_pending::overdue(&self.db, before, limit).await
    }

    async fn resolve(&self, processing_id: &str) -> Result<(), StoreError> {
        ai_pending::resolve(&self.db, processing_id).await
    }

    async fn waiting(&self, key: &str, message_id: &str) -> Result<bool, StoreError> {
        ai_pending::waiting(&self.db, key, message_id).await
    }
}

#[async_trait]
impl DeliveryStatuses for SqlStore {
    async fn record_status(
        &self,
        status: &crate::store::DeliveryStatus,
    ) -> Result<Option<super::MovedMessage>, StoreError> {
        delivery::record(&self.db, status).await
    }

    async fn statuses_of(&self, message_id: &str) -> Result<Vec<crate::store::DeliveryStatus>, StoreError> {
        delivery::of_message(&self.db, message_id).await
    }
}

#[async_trait]
impl super::ApiMessages for SqlStore {
    async fn insert_api_messages(
        &self,
        tenant: &str,
        messages: &[super::NewApiMessage],
        daily_limit: Option<u64>,
    ) -> Result<super::Inserted, StoreError> {
        api_messages::insert(&self.db, tenant, messages, daily_limit, self.history).await
    }

    async fn claim_due(&self, now: DateTime<Utc>, limit: u64, lease: Duration) -> Result<super::DueClaim, StoreError> {
        api_messages::claim_due(&self.db, now, limit, lease).await
    }

    async fn mark_dispatched(&self, claim: Option<i64>, ids: &[String]) -> Result<u64, StoreError> {
        api_messages::mark_dispatched(&self.db, claim, ids).await
    }

    async fn dead_letter_due(&self, claim: i64, id: &str, entry: &NewDeadLetter) -> Result<Option<i64>, StoreError> {
        api_messages::dead_letter_due(&self.db, claim, id, entry).await
    }

    async fn api_message(&self, id: &str) -> Result<Option<super::ApiMessage>, StoreError> {
        api_messages::get(&self.db, id).await
    }

    async fn list_api_messages(
        &self,
        tenant: &str,
        filter: &super::ApiMessageFilter,
    ) -> Result<super::ApiMessagePage, StoreError> {
        api_messages::list(&self.db, tenant, filter).await
    }

    async fn cancel_api_message(&self, tenant: &str, id: &str) -> Result<super::Cancellation, StoreError> {
        api_messages::cancel(&self.db, tenant, id).await
    }

    async fn due_count(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        api_messages::due_count(&self.db, now).await
    }
}

#[async_trait]
impl super::Conversations for SqlStore {
    async fn conversations(
        &self,
        tenant: Option<&str>,
        before: Option<&super::ConversationCursor>,
        limit: u64,
    ) -> Result<Vec<super::Conversation>, StoreError> {
        conversations::conversations(&self.db, tenant, before, limit).await
    }

    async fn thread(
        &self,
        tenant: &str,
        phone: &str,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<super::ThreadMessage>, StoreError> {
        conversations::thread(&self.db, tenant, phone, before, limit).await
    }

    async fn mark_read(&self, tenant: &str, phone: &str) -> Result<bool, StoreError> {
        conversations::mark_read(&self.db, tenant, phone).await
    }
}

#[async_trait]
impl OutboundMessages for SqlStore {
    async fn claim_send(&self, reply: &OutboundReply, lease: Duration) -> Result<super::SendClaim, StoreError> {
        let claims = self
            .coalesced(&self.batches.reply_claims, |db, batch| async move { outbound::claim_many(&db, batch).await });
        batch::submit(claims, outbound::ClaimRequest { reply: reply.clone(), lease }).await
    }

    async fn record_sent(&self, lease: &ReplyLease, wamid: Option<&str>) -> Result<(), StoreError> {
        let sent = self.coalesced(&self.batches.replies_sent, |db, batch| async move {
            outbound::record_sent_many(&db, batch).await
        });
        batch::submit(sent, outbound::SentWrite { lease: lease.clone(), wamid: wamid.map(str::to_owned) }).await
    }

    async fn release_send(&self, lease: &ReplyLease, failure: &AttemptFailure<'_>) -> Result<(), StoreError> {
        outbound::release(&self.db, lease, failure).await
    }

    async fn fail_send(
        &self,
        lease: Option<&ReplyLease>,
        code: Option<i64>,
        entry: &NewDeadLetter,
    ) -> Result<i64, StoreError> {
        outbound::fail(&self.db, lease, code, entry).await
    }

    async fn outbound(&self, key: &ReplyKey) -> Result<Option<OutboundMessage>, StoreError> {
        outbound::get(&self.db, key).await
    }
}
