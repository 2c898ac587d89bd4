//! Circuit breakers, one per executor, on the `failsafe` crate.
//!
//! failsafe cannot report its state without changing it, so the state is
//! tracked from its `Instrument` hooks. It also lets every concurrent call
//! through when half-open; [`CircuitBreaker::call`] admits a single probe.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use failsafe::futures::CircuitBreaker as _;
use failsafe::{Config, Instrument, StateMachine};

/// A breaker's state, for health checks and the `circuit_breaker_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe call is let through to test recovery.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Time open before a probe is let through.
    pub open_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_timeout: Duration::from_secs(30) }
    }
}

/// A call through a breaker failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open (or a half-open probe is already running): nothing was called.
    #[error("circuit `{circuit}` is open")]
    Open {
        /// The breaker's name.
        circuit: String,
        /// Time until a probe may be let through.
        retry_after: Duration,
    },
    /// The call ran and failed.
    #[error(transparent)]
    Inner(E),
}

#[derive(Debug)]
struct Tracker {
    state: AtomicU8,
    opened_at: Mutex<Option<Instant>>,
}

/// failsafe's hooks, mirrored into the tracker.
#[derive(Debug, Clone)]
struct Hooks(Arc<Tracker>);

impl Instrument for Hooks {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.0.state.store(1, Ordering::Release);
        if let Ok(mut at) = self.0.opened_at.lock() {
            *at = Some(Instant::now());
        }
    }

    fn on_half_open(&self) {
        self.0.state.store(2, Ordering::Release);
    }

    fn on_closed(&self) {
        self.0.state.store(0, Ordering::Release);
    }
}

type Machine = StateMachine<ConsecutiveFailures<Constant>, Hooks>;

/// A named circuit breaker.
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    machine: Machine,
    tracker: Arc<Tracker>,
    probe_in_flight: AtomicBool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let tracker = Arc::new(Tracker { state: AtomicU8::new(0), opened_at: Mutex::new(None) });
        let policy = consecutive_failures(config.failure_threshold.max(1), backoff::constant(config.open_timeout));
        let machine = Config::new().failure_policy(policy).instrument(Hooks(tracker.clone())).build();
        Self { name: name.into(), config, machine, tracker, probe_in_flight: AtomicBool::new(false) }
    }

    /// The breaker's name (the executor's action name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state, read without side effects.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.tracker.state.load(Ordering::Acquire))
    }

    /// Time left until an open breaker lets a probe through (zero when not open).
    pub fn retry_after(&self) -> Duration {
        if self.state() != BreakerState::Open {
            return Duration::ZERO;
        }
        let opened_at = self.tracker.opened_at.lock().ok().and_then(|at| *at);
        opened_at.map_or(Duration::ZERO, |at| self.config.open_timeout.saturating_sub(at.elapsed()))
    }

    /// Runs `call` unless the breaker is open. Only errors for which
    /// `counts_as_failure` is true count towards opening it (a bad request is
    /// not an outage).
    pub async fn call<T, E, F>(&self, counts_as_failure: impl Fn(&E) -> bool, call: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        // Outside the closed state let one call at a time test the service.
        let probing = self.state() != BreakerState::Closed;
        if probing && self.probe_in_flight.swap(true, Ordering::AcqRel) {
            return Err(self.open_error());
        }
        // Released on drop too: a probe whose caller was cancelled must not block later probes.
        let _probe = probing.then(|| ProbeSlot(&self.probe_in_flight));
        let result = self.machine.call_with(Predicate(counts_as_failure), call).await;
        result.map_err(|error| match error {
            failsafe::Error::Rejected => self.open_error(),
            failsafe::Error::Inner(inner) => BreakerError::Inner(inner),
        })
    }

    fn open_error<E>(&self) -> BreakerError<E> {
        BreakerError::Open { circuit: self.name.clone(), retry_after: self.retry_after() }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker").field("name", &self.name).field("state", &self.state()).finish()
    }
}

/// Frees the half-open probe slot when the probe ends or is dropped.
struct ProbeSlot<'a>(&'a AtomicBool);

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct Predicate<P>(P);

impl<E, P: Fn(&E) -> bool> failsafe::FailurePredicate<E> for Predicate<P> {
    fn is_err(&self, err: &E) -> bool {
        (self.0)(err)
    }
}

/// All breakers by name, created on first use with one config.
#[derive(Debug, Default)]
pub struct BreakerRegistry {
    config: BreakerConfig,
    breakers: RwLock<HashMap<String, Arc<CircuitBreaker>>>,
}

impl BreakerRegistry {
    /// A registry whose breakers use `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, breakers: RwLock::default() }
    }

    /// The breaker named `name`, created closed if new.
    pub fn get(&self, name: &str) -> Arc<CircuitBreaker> {
        if let Some(breaker) = self.breakers.read().ok().and_then(|map| map.get(name).cloned()) {
            return breaker;
        }
        let mut map = self.breakers.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(name.to_owned()).or_insert_with(|| Arc::new(CircuitBreaker::new(name, self.config))).clone()
    }

    /// Lists a breaker made elsewhere (the Cloud API sender's, say) with
    /// these, so health checks and metrics show it; it replaces a breaker of
    /// the same name.
    pub fn adopt(&self, breaker: Arc<CircuitBreaker>) {
        let mut map = self.breakers.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.insert(breaker.name().to_owned(), breaker);
    }

    /// The state of the breaker named `name`, if it exists.
    pub fn state(&self, name: &str) -> Option<BreakerState> {
        self.breakers.read().ok()?.get(name).map(|b| b.state())
    }

    /// Every breaker's state, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, BreakerState)> {
        let mut states: Vec<(String, BreakerState)> = self
            .breakers
            .read()
            .map(|map| map.iter().map(|(name, b)| (name.clone(), b.state())).collect())
            .unwrap_or_default();
        states.sort();
        states
    }
}

impl PartialOrd for BreakerState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BreakerState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig { failure_threshold: 3, open_timeout: Duration::from_millis(300) }
    }

    async fn fail(breaker: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        breaker.call(|_| true, async { Err::<(), _>("down") }).await
    }

    async fn succeed(breaker: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        breaker.call(|_| true, async { Ok::<(), &str>(()) }).await
    }

    #[tokio::test]
    async fn opens_after_threshold_and_recovers_through_half_open() {
        let breaker = CircuitBreaker::new("crm", config());
        for _ in 0..2 {
            assert_eq!(fail(&breaker).await, Err(BreakerError::Inner("down")));
            assert_eq!(breaker.state(), BreakerState::Closed);
        }
        assert_eq!(fail(&breaker).await, Err(BreakerError::Inner("down")));
        assert_eq!(breaker.state(), BreakerState::Open);

        // Open: fails fast without running the call.
        let ran = AtomicBool::new(false);
        let result = breaker
            .call(|_: &&str| true, async {
                ran.store(true, Ordering::SeqCst);
                Ok::<(), &str>(())
            })
            .await;
        assert!(matches!(result, Err(BreakerError::Open { ref circuit, .. }) if circuit == "crm"));
        assert!(!ran.load(Ordering::SeqCst), "an open breaker must not run the call");

        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(succeed(&breaker).await, Ok(()));
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn failed_probe_reopens() {
        let breaker = CircuitBreaker::new("crm", config());
        for _ in 0..3 {
            let _ = fail(&breaker).await;
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(fail(&breaker).await, Err(BreakerError::Inner("down")));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.retry_after() > Duration::ZERO);
    }

    #[tokio::test]
    async fn half_open_admits_a_single_probe() {
        let breaker = Arc::new(CircuitBreaker::new("crm", config()));
        for _ in 0..3 {
            let _ = fail(&breaker).await;
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let probe = {
            let breaker = breaker.clone();
            tokio::spawn(async move {
                breaker
                    .call(|_: &&str| true, async {
                        let _ = wait.await;
                        Ok::<(), &str>(())
                    })
                    .await
            })
        };
        // Wait for the probe to be admitted (polling: a loaded machine may be slow to run it).
        let deadline = Instant::now() + Duration::from_secs(10);
        while breaker.state() != BreakerState::HalfOpen {
            assert!(Instant::now() < deadline, "the probe never moved the breaker to half-open");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(matches!(succeed(&breaker).await, Err(BreakerError::Open { .. })));
        let _ = release.send(());
        assert_eq!(probe.await.ok(), Some(Ok(())));
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_cancelled_probe_frees_the_slot() {
        let breaker = CircuitBreaker::new("crm", config());
        for _ in 0..3 {
            let _ = fail(&breaker).await;
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        // The probe's caller gives up (timeout, task aborted) while it is in flight.
        let hung = breaker.call(|_: &&str| true, std::future::pending::<Result<(), &str>>());
        assert!(tokio::time::timeout(Duration::from_millis(20), hung).await.is_err());
        assert_eq!(succeed(&breaker).await, Ok(()), "the next call must be admitted as the probe");
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn errors_the_predicate_excludes_do_not_open() {
        let breaker = CircuitBreaker::new("crm", config());
        for _ in 0..10 {
            let _ = breaker.call(|_: &&str| false, async { Err::<(), _>("bad request") }).await;
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn registry_reads_states_by_name() {
        let registry = BreakerRegistry::new(config());
        assert_eq!(registry.state("crm"), None);
        let breaker = registry.get("crm");
        assert!(Arc::ptr_eq(&breaker, &registry.get("crm")));
        registry.get("billing");
        assert_eq!(
            registry.snapshot(),
            vec![("billing".to_owned(), BreakerState::Closed), ("crm".to_owned(), BreakerState::Closed)]
        );
    }
}
