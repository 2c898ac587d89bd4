//! The store behind the database's circuit breaker: every store trait
//! ([`Store`], [`KeyParking`], [`PendingClassifications`],
//! [`DeliveryStatuses`], [`DeadLetterQueue`], [`OutboundMessages`]) goes
//! through the same breaker, so parking, the AI route, the webhook, the DLQ
//! service and the reply sender see an outage the way the pipeline does.
//!
//! The database is an external call like any executor's: when it is down,
//! every key's retry loop would otherwise wait on the connection pool in
//! turn. After a run of failures the breaker answers at once with
//! [`StoreError::Unavailable`] and lets one probe through per open period,
//! and health checks and the `circuit_breaker_state` gauge show the outage.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::outbound::{
    AttemptFailure, OutboundMessage, OutboundMessages, OutboundReply, ReplyKey, ReplyLease, SendClaim,
};
use super::{
    Claim, DeadLetter, DeadLetterQueue, DeliveryStatuses, DlqFilter, DlqStatus, FailureGroup, Finish, KeyParking,
    Lease, MessageKey, NewActivity, NewDeadLetter, Page, ParkCheck, ParkedMessage, PendingClassification,
    PendingClassifications, SagaLog, StageChange, StageMove, StepRecord, Store, StoreError,
};
use crate::breaker::{BreakerConfig, BreakerError, CircuitBreaker};
use crate::store::DeliveryStatus;

/// The name of the database's breaker in health checks and metrics.
pub const DATABASE_BREAKER: &str = "database";

/// The breaker settings for the database: it opens after five failures in a
/// row and probes again after a second, so processing resumes within about a
/// second of the database's return (an executor's remote service is given longer).
pub const DATABASE_BREAKER_CONFIG: BreakerConfig =
    BreakerConfig { failure_threshold: 5, open_timeout: Duration::from_secs(1) };

/// A store whose calls go through a circuit breaker; it implements every
/// store trait `S` implements.
pub struct GuardedStore<S: ?Sized = dyn Store> {
    inner: Arc<S>,
    breaker: Arc<CircuitBreaker>,
}

impl<S: ?Sized> Clone for GuardedStore<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), breaker: self.breaker.clone() }
    }
}

impl<S: ?Sized> GuardedStore<S> {
    /// Guards `inner` with `breaker`.
    pub fn new(inner: Arc<S>, breaker: Arc<CircuitBreaker>) -> Self {
        Self { inner, breaker }
    }

    /// The breaker the calls go through.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    async fn guard<T>(&self, call: impl Future<Output = Result<T, StoreError>> + Send) -> Result<T, StoreError> {
        self.breaker.call(StoreError::is_outage, call).await.map_err(|error| match error {
            BreakerError::Open { retry_after, .. } => StoreError::Unavailable { retry_after },
            BreakerError::Inner(error) => error,
        })
    }
}

#[async_trait]
impl<S: SagaLog + ?Sized> SagaLog for GuardedStore<S> {
    async fn load_steps(&self, key: &MessageKey, run: u32) -> Result<Vec<StepRecord>, StoreError> {
        self.guard(self.inner.load_steps(key, run)).await
    }

    async fn record_step(&self, lease: &Lease, run: u32, step: &StepRecord) -> Result<(), StoreError> {
        self.guard(self.inner.record_step(lease, run, step)).await
    }

    async fn record_steps(&self, lease: &Lease, run: u32, steps: &[StepRecord]) -> Result<(), StoreError> {
        self.guard(self.inner.record_steps(lease, run, steps)).await
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for GuardedStore<S> {
    async fn claim(&self, key: &MessageKey, lease: Duration) -> Result<Claim, StoreError> {
        self.guard(self.inner.claim(key, lease)).await
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
        self.guard(self.inner.renew(lease, duration)).await
    }

    async fn release(&self, lease: &Lease, refund_attempt: bool) -> Result<(), StoreError> {
        self.guard(self.inner.release(lease, refund_attempt)).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&Value>,
    ) -> Result<(), StoreError> {
        self.guard(self.inner.complete(lease, activities, ttl, reply)).await
    }

    async fn complete_moving_lead(
        &self,
        lease: &Lease,
        activities: &[NewActivity],
        ttl: Duration,
        reply: Option<&Value>,
        lead: &StageMove,
    ) -> Result<StageChange, StoreError> {
        self.guard(self.inner.complete_moving_lead(lease, activities, ttl, reply, lead)).await
    }

    fn runs_local_effects(&self) -> bool {
        self.inner.runs_local_effects()
    }

    async fn complete_local(&self, lease: &Lease, finish: Finish<'_>) -> Result<super::LocalCompletion, StoreError> {
        self.guard(self.inner.complete_local(lease, finish)).await
    }

    async fn complete_unclaimed(
        &self,
        key: &MessageKey,
        finish: Finish<'_>,
    ) -> Result<Option<super::LocalCompletion>, StoreError> {
        self.guard(self.inner.complete_unclaimed(key, finish)).await
    }

    async fn pending_reply(&self, key: &MessageKey) -> Result<Option<Value>, StoreError> {
        self.guard(self.inner.pending_reply(key)).await
    }

    async fn mark_reply_published(&self, key: &MessageKey) -> Result<(), StoreError> {
        self.guard(self.inner.mark_reply_published(key)).await
    }

    async fn dead_letter(&self, lease: Option<&Lease>, entry: &NewDeadLetter) -> Result<i64, StoreError> {
        self.guard(self.inner.dead_letter(lease, entry)).await
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.guard(self.inner.purge_expired(now)).await
    }

    async fn set_lead_stage(&self, tenant_id: &str, lead_id: &str, stage: &str) -> Result<Option<String>, StoreError> {
        self.guard(self.inner.set_lead_stage(tenant_id, lead_id, stage)).await
    }
}

#[async_trait]
impl<S: KeyParking + ?Sized> KeyParking for GuardedStore<S> {
    async fn park_if_blocked(&self, message: &ParkedMessage) -> Result<ParkCheck, StoreError> {
        self.guard(self.inner.park_if_blocked(message)).await
    }

    async fn block(&self, key: &str, message_id: &str) -> Result<(), StoreError> {
        self.guard(self.inner.block(key, message_id)).await
    }

    async fn next_parked(&self, key: &str) -> Result<Option<ParkedMessage>, StoreError> {
        self.guard(self.inner.next_parked(key)).await
    }

    async fn unpark(&self, id: i64) -> Result<(), StoreError> {
        self.guard(self.inner.unpark(id)).await
    }

    async fn unblock_if_empty(&self, key: &str) -> Result<bool, StoreError> {
        self.guard(self.inner.unblock_if_empty(key)).await
    }

    async fn holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.guard(self.inner.holder(key)).await
    }

    async fn stale_blocks(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<(String, String)>, StoreError> {
        self.guard(self.inner.stale_blocks(before, limit)).await
    }
}

#[async_trait]
impl<S: PendingClassifications + ?Sized> PendingClassifications for GuardedStore<S> {
    async fn register(&self, pending: &PendingClassification) -> Result<(PendingClassification, bool), StoreError> {
        self.guard(self.inner.register(pending)).await
    }

    async fn take(&self, processing_id: &str, hold: Duration) -> Result<Option<PendingClassification>, StoreError> {
        self.guard(self.inner.take(processing_id, hold)).await
    }

    async fn overdue(&self, before: DateTime<Utc>, limit: u32) -> Result<Vec<PendingClassification>, StoreError> {
        self.guard(self.inner.overdue(before, limit)).await
    }

    async fn resolve(&self, processing_id: &str) -> Result<(), StoreError> {
        self.guard(self.inner.resolve(processing_id)).await
    }

    async fn waiting(&self, key: &str, message_id: &str) -> Result<bool, StoreError> {
        self.guard(self.inner.waiting(key, message_id)).await
    }
}

#[async_trait]
impl<S: DeliveryStatuses + ?Sized> DeliveryStatuses for GuardedStore<S> {
    async fn record_status(&self, status: &DeliveryStatus) -> Result<Option<super::MovedMessage>, StoreError> {
        self.guard(self.inner.record_status(status)).await
    }

    async fn statuses_of(&self, message_id: &str) -> Result<Vec<DeliveryStatus>, StoreError> {
        self.guard(self.inner.statuses_of(message_id)).await
    }
}

#[async_trait]
impl<S: DeadLetterQueue + ?Sized> DeadLetterQueue for GuardedStore<S> {
    async fn list(&self, filter: &DlqFilter, page: Page) -> Result<Vec<DeadLetter>, StoreError> {
        self.guard(self.inner.list(filter, page)).await
    }

    async fn get(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        self.guard(self.inner.get(id)).await
    }

    async fn mark(&self, id: i64, status: DlqStatus) -> Result<DeadLetter, StoreError> {
        self.guard(self.inner.mark(id, status)).await
    }

    async fn undo_replay(&self, id: i64) -> Result<(), StoreError> {
        self.guard(self.inner.undo_replay(id)).await
    }

    async fn groups(&self, filter: &DlqFilter, limit: u64) -> Result<Vec<FailureGroup>, StoreError> {
        self.guard(self.inner.groups(filter, limit)).await
    }
}

#[async_trait]
impl<S: OutboundMessages + ?Sized> OutboundMessages for GuardedStore<S> {
    async fn claim_send(&self, reply: &OutboundReply, lease: Duration) -> Result<SendClaim, StoreError> {
        self.guard(self.inner.claim_send(reply, lease)).await
    }

    async fn record_sent(&self, lease: &ReplyLease, wamid: Option<&str>) -> Result<(), StoreError> {
        self.guard(self.inner.record_sent(lease, wamid)).await
    }

    async fn release_send(&self, lease: &ReplyLease, failure: &AttemptFailure<'_>) -> Result<(), StoreError> {
        self.guard(self.inner.release_send(lease, failure)).await
    }

    async fn fail_send(
        &self,
        lease: Option<&ReplyLease>,
        code: Option<i64>,
        entry: &NewDeadLetter,
    ) -> Result<i64, StoreError> {
        self.guard(self.inner.fail_send(lease, code, entry)).await
    }

    async fn outbound(&self, key: &ReplyKey) -> Result<Option<OutboundMessage>, StoreError> {
        self.guard(self.inner.outbound(key)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::breaker::BreakerState;
    use crate::store::MemoryStore;

    /// A store whose claims fail with `error` while `failing` is set.
    struct Flaky {
        inner: MemoryStore,
        error: fn() -> StoreError,
        failing: std::sync::atomic::AtomicBool,
        calls: AtomicUsize,
    }

    impl Flaky {
        fn new(error: fn() -> StoreError) -> Arc<Self> {
            Arc::new(Self { inner: MemoryStore::new(), error, failing: true.into(), calls: AtomicUsize::new(0) })
        }
    }

    #[async_trait]
    impl SagaLog for Flaky {
        async fn load_steps(&self, key: &MessageKey, run: u32) -> Result<Vec<StepRecord>, StoreError> {
            self.inner.load_steps(key, run).await
        }
        async fn record_step(&self, lease: &Lease, run: u32, step: &StepRecord) -> Result<(), StoreError> {
            self.inner.record_step(lease, run, step).await
        }
    }

    #[async_trait]
    impl Store for Flaky {
        async fn claim(&self, key: &MessageKey, lease: Duration) -> Result<Claim, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err((self.error)());
            }
            self.inner.claim(key, lease).await
        }
        async fn renew(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
            self.inner.renew(lease, duration).await
        }
        async fn release(&self, lease: &Lease, refund_attempt: bool) -> Result<(), StoreError> {
            self.inner.release(lease, refund_attempt).await
        }
        async fn complete(
            &self,
            lease: &Lease,
            activities: &[NewActivity],
            ttl: Duration,
            reply: Option<&Value>,
        ) -> Result<(), StoreError> {
            self.inner.complete(lease, activities, ttl, reply).await
        }
        async fn pending_reply(&self, key: &MessageKey) -> Result<Option<Value>, StoreError> {
            self.inner.pending_reply(key).await
        }
        async fn mark_reply_published(&self, key: &MessageKey) -> Result<(), StoreError> {
            self.inner.mark_reply_published(key).await
        }
        async fn dead_letter(&self, lease: Option<&Lease>, entry: &NewDeadLetter) -> Result<i64, StoreError> {
            self.inner.dead_letter(lease, entry).await
        }
        async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
            self.inner.purge_expired(now).await
        }
        async fn set_lead_stage(&self, tenant: &str, lead: &str, stage: &str) -> Result<Option<String>, StoreError> {
            self.inner.set_lead_stage(tenant, lead, stage).await
        }
    }

    fn outage() -> StoreError {
        StoreError::Database(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal("connection refused".into())))
    }

    fn guarded(flaky: &Arc<Flaky>) -> GuardedStore {
        let config = BreakerConfig { failure_threshold: 3, open_timeout: Duration::from_millis(200) };
        let inner: Arc<dyn Store> = flaky.clone();
        GuardedStore::new(inner, Arc::new(CircuitBreaker::new(DATABASE_BREAKER, config)))
    }

    fn key() -> MessageKey {
        MessageKey::new("tenant".to_owned(), "wamid.1".to_owned())
    }

    #[tokio::test]
    async fn an_outage_opens_the_breaker_and_recovery_closes_it() {
        let flaky = Flaky::new(outage);
        let store = guarded(&flaky);
        for _ in 0..3 {
            assert!(matches!(store.claim(&key(), Duration::from_secs(5)).await, Err(StoreError::Database(_))));
        }
        assert_eq!(store.breaker().state(), BreakerState::Open);

        // Open: answered without touching the database.
        let calls = flaky.calls.load(Ordering::SeqCst);
        let refused = store.claim(&key(), Duration::from_secs(5)).await;
        assert!(matches!(refused, Err(StoreError::Unavailable { retry_after }) if retry_after > Duration::ZERO));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), calls);

        flaky.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(matches!(store.claim(&key(), Duration::from_secs(5)).await, Ok(Claim::Acquired { .. })));
        assert_eq!(store.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn answers_about_messages_are_not_outages() {
        let flaky = Flaky::new(|| StoreError::LeaseLost("wamid.1".to_owned()));
        let store = guarded(&flaky);
        for _ in 0..10 {
            assert!(matches!(store.claim(&key(), Duration::from_secs(5)).await, Err(StoreError::LeaseLost(_))));
        }
        assert_eq!(store.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn one_outage_opens_the_breaker_for_every_store_trait() {
        let flaky = Flaky::new(outage);
        let pipeline = guarded(&flaky);
        // Parking, the DLQ service, the webhook and the reply sender share the pipeline's breaker.
        let rest = GuardedStore::new(Arc::new(MemoryStore::new()), pipeline.breaker().clone());
        assert_eq!(rest.holder("phone").await.unwrap(), None, "closed: calls pass");
        for _ in 0..3 {
            let _ = pipeline.claim(&key(), Duration::from_secs(5)).await;
        }
        assert_eq!(rest.breaker().state(), BreakerState::Open);
        assert!(matches!(rest.holder("phone").await, Err(StoreError::Unavailable { .. })));
        assert!(matches!(
            rest.list(&DlqFilter::default(), Page { limit: 1, offset: 0 }).await,
            Err(StoreError::Unavailable { .. })
        ));
        assert!(matches!(rest.statuses_of("wamid.1").await, Err(StoreError::Unavailable { .. })));
        assert!(matches!(rest.resolve("p1").await, Err(StoreError::Unavailable { .. })));
        let reply = ReplyKey { tenant_id: "t".into(), original_message_id: "wamid.1".into(), reply_index: 0 };
        assert!(matches!(rest.outbound(&reply).await, Err(StoreError::Unavailable { .. })));
    }
}
