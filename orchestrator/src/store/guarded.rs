//! The pipeline's store behind a circuit breaker.
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

use super::{
    Claim, Lease, MessageKey, NewActivity, NewDeadLetter, StageChange, StageMove, StepRecord, Store, StoreError,
};
use crate::breaker::{BreakerConfig, BreakerError, CircuitBreaker};

/// The name of the database's breaker in health checks and metrics.
pub const DATABASE_BREAKER: &str = "database";

/// The breaker settings for the database: it opens after five failures in a
/// row and probes again after a second, so processing resumes within about a
/// second of the database's return (an executor's remote service is given longer).
pub const DATABASE_BREAKER_CONFIG: BreakerConfig =
    BreakerConfig { failure_threshold: 5, open_timeout: Duration::from_secs(1) };

/// A [`Store`] whose calls go through a circuit breaker.
pub struct GuardedStore {
    inner: Arc<dyn Store>,
    breaker: Arc<CircuitBreaker>,
}

impl GuardedStore {
    /// Guards `inner` with `breaker`.
    pub fn new(inner: Arc<dyn Store>, breaker: Arc<CircuitBreaker>) -> Self {
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
impl Store for GuardedStore {
    async fn claim(&self, key: &MessageKey, lease: Duration) -> Result<Claim, StoreError> {
        self.guard(self.inner.claim(key, lease)).await
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
        self.guard(self.inner.renew(lease, duration)).await
    }

    async fn release(&self, lease: &Lease, refund_attempt: bool) -> Result<(), StoreError> {
        self.guard(self.inner.release(lease, refund_attempt)).await
    }

    async fn load_steps(&self, key: &MessageKey, run: u32) -> Result<Vec<StepRecord>, StoreError> {
        self.guard(self.inner.load_steps(key, run)).await
    }

    async fn record_step(&self, lease: &Lease, run: u32, step: &StepRecord) -> Result<(), StoreError> {
        self.guard(self.inner.record_step(lease, run, step)).await
    }

    async fn record_steps(&self, lease: &Lease, run: u32, steps: &[StepRecord]) -> Result<(), StoreError> {
        self.guard(self.inner.record_steps(lease, run, steps)).await
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
        async fn load_steps(&self, key: &MessageKey, run: u32) -> Result<Vec<StepRecord>, StoreError> {
            self.inner.load_steps(key, run).await
        }
        async fn record_step(&self, lease: &Lease, run: u32, step: &StepRecord) -> Result<(), StoreError> {
            self.inner.record_step(lease, run, step).await
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
        GuardedStore::new(flaky.clone(), Arc::new(CircuitBreaker::new(DATABASE_BREAKER, config)))
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
}
