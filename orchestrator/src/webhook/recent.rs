//! Ingest-side deduplication of webhook messages by WhatsApp message id.
//!
//! Meta delivers a notification again when we answered late or not 2xx, so
//! the same message can reach `POST /webhook` twice, sometimes while the
//! first delivery is still being published. [`RecentMessageIds`] remembers
//! the ids of recently seen messages so that each is published to Kafka
//! once:
//!
//! - [`RecentMessageIds::reserve`] claims an id before it is published; the
//!   first caller gets a [`Reservation`].
//! - [`Reservation::confirm`] records that Kafka acknowledged it: later
//!   deliveries skip it ([`Turn::Published`]).
//! - Dropping the reservation unconfirmed (publish failed, the POST timed out
//!   and answers 503, or the client went away and the request future was
//!   dropped) releases the id, so Meta's redelivery publishes it.
//! - A delivery that finds the id reserved by a request still in flight gets
//!   [`Turn::InFlight`] and waits for that request's outcome: answering 200
//!   before the message is on Kafka could lose it if the first request then
//!   fails (Meta would not deliver it again).
//!
//! The set is bounded (oldest ids evicted first), so an id older than the
//! last `capacity` ids is published again when redelivered.
//!
//! This is per process: with several webhook replicas a redelivery can land
//! on another replica and be published twice. The guarantee stays the
//! consumer's deduplication (`processed_messages`); this only keeps most
//! duplicates off Kafka.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

/// How many ids [`RecentMessageIds::default`] remembers.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A bounded, thread-safe set of recently seen message ids, each reserved
/// (being published) or published.
///
/// ```
/// use orchestrator::webhook::recent::{Turn, RecentMessageIds};
/// let recent = RecentMessageIds::default();
/// let Turn::Reserved(reservation) = recent.reserve("wamid.1") else { panic!("first delivery") };
/// // ... publish to Kafka; once acknowledged:
/// reservation.confirm();
/// assert!(matches!(recent.reserve("wamid.1"), Turn::Published));
/// ```
pub struct RecentMessageIds {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    ids: HashMap<String, Seen>,
    /// Ids in the order they were reserved, with the generation they were
    /// reserved under: an id released and reserved again has a newer
    /// generation, so its stale older entry here is skipped, not evicted.
    order: VecDeque<(String, u64)>,
    next_generation: u64,
}

struct Seen {
    generation: u64,
    state: State,
}

enum State {
    /// Being published; the sender tells waiters the outcome (`true` once
    /// confirmed; dropped unconfirmed when released).
    Reserved(watch::Sender<bool>),
    /// Acknowledged by Kafka.
    Published,
}

/// Whose turn it is to publish a message id: what
/// [`RecentMessageIds::reserve`] found.
#[must_use]
pub enum Turn<'a> {
    /// Not seen (or released): the caller publishes it, then confirms.
    Reserved(Reservation<'a>),
    /// Already published: skip it.
    Published,
    /// Another request is publishing it: wait for its outcome.
    InFlight(InFlight),
}

/// The right to publish one message id; releases the id when dropped
/// unconfirmed.
#[must_use = "dropping a reservation releases it"]
pub struct Reservation<'a> {
    recent: &'a RecentMessageIds,
    id: String,
    generation: u64,
    confirmed: bool,
}

/// Another request's reservation, to wait on.
pub struct InFlight(watch::Receiver<bool>);

impl RecentMessageIds {
    /// A set that remembers at most `capacity` ids (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let inner = Inner { ids: HashMap::new(), order: VecDeque::new(), next_generation: 0 };
        Self { capacity, inner: Mutex::new(inner) }
    }

    /// Claims `id` for publishing, unless it is published or being published.
    pub fn reserve(&self, id: &str) -> Turn<'_> {
        let mut inner = self.lock();
        if let Some(seen) = inner.ids.get(id) {
            return match &seen.state {
                State::Reserved(outcome) => Turn::InFlight(InFlight(outcome.subscribe())),
                State::Published => Turn::Published,
            };
        }
        inner.evict_down_to(self.capacity - 1);
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let (outcome, _) = watch::channel(false);
        inner.ids.insert(id.to_owned(), Seen { generation, state: State::Reserved(outcome) });
        inner.order.push_back((id.to_owned(), generation));
        Turn::Reserved(Reservation { recent: self, id: id.to_owned(), generation, confirmed: false })
    }

    /// Whether `id` is reserved or published.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().ids.contains_key(id)
    }

    /// How many ids are remembered (reserved or published).
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most ids remembered at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections only move map entries; a panic in one cannot
        // leave the set inconsistent enough to matter, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends the reservation `id`/`generation`: published, or forgotten. A
    /// reservation evicted meanwhile (or released and taken by another
    /// request) is not this one's to change.
    fn settle(&self, id: &str, generation: u64, published: bool) {
        let mut inner = self.lock();
        let Entry::Occupied(mut entry) = inner.ids.entry(id.to_owned()) else { return };
        if entry.get().generation != generation {
            return;
        }
        if published {
            // Waiters see `true`; the sender is dropped with the old state.
            if let State::Reserved(outcome) = &entry.get().state {
                outcome.send_replace(true);
            }
            entry.get_mut().state = State::Published;
        } else {
            // Dropping the sender tells waiters it was not published.
            entry.remove();
        }
    }
}

impl Inner {
    /// Evicts the oldest ids until at most `keep` remain.
    fn evict_down_to(&mut self, keep: usize) {
        while self.ids.len() > keep {
            let Some((id, generation)) = self.order.pop_front() else { break };
            if self.ids.get(&id).is_some_and(|seen| seen.generation == generation) {
                self.ids.remove(&id);
            }
        }
        // Released ids leave stale entries behind; drop them before they pile up.
        if self.order.len() > 2 * self.ids.len().max(1024) {
            let ids = &self.ids;
            self.order.retain(|(id, generation)| ids.get(id).is_some_and(|seen| seen.generation == *generation));
        }
    }
}

impl Default for RecentMessageIds {
    /// Remembers [`DEFAULT_CAPACITY`] ids.
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl std::fmt::Debug for RecentMessageIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentMessageIds").field("capacity", &self.capacity).field("len", &self.len()).finish()
    }
}

impl Reservation<'_> {
    /// The reserved message id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Kafka acknowledged the message: later deliveries skip it.
    pub fn confirm(mut self) {
        self.recent.settle(&self.id, self.generation, true);
        // Settled: nothing left for `Drop` to release.
        self.confirmed = true;
    }

    /// The message was not published: the next delivery publishes it (the
    /// same as dropping the reservation).
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.confirmed {
            self.recent.settle(&self.id, self.generation, false);
        }
    }
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("id", &self.id).finish_non_exhaustive()
    }
}

impl InFlight {
    /// Waits until the other request settles its reservation: `true` when
    /// it was published, `false` when it was released (reserve it again).
    pub async fn published(mut self) -> bool {
        // An error means the sender is gone without `true`: released or evicted.
        self.0.wait_for(|published| *published).await.is_ok()
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved<'a>(recent: &'a RecentMessageIds, id: &str) -> Reservation<'a> {
        match recent.reserve(id) {
            Turn::Reserved(reservation) => reservation,
            Turn::Published => panic!("{id} already published"),
            Turn::InFlight(_) => panic!("{id} already in flight"),
        }
    }

    #[test]
    fn a_confirmed_id_is_skipped_afterwards() {
        let recent = RecentMessageIds::default();
        let reservation = reserved(&recent, "a");
        assert_eq!(reservation.id(), "a");
        reservation.confirm();
        assert!(matches!(recent.reserve("a"), Turn::Published));
        assert!(matches!(recent.reserve("a"), Turn::Published), "still published after a skipped delivery");
        assert!(recent.contains("a"));
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn a_reserved_id_is_in_flight_for_others() {
        let recent = RecentMessageIds::default();
        let _reservation = reserved(&recent, "a");
        assert!(matches!(recent.reserve("a"), Turn::InFlight(_)));
        // Other ids are independent.
        reserved(&recent, "b").confirm();
    }

    #[test]
    fn a_released_or_dropped_reservation_can_be_reserved_again() {
        let recent = RecentMessageIds::default();
        reserved(&recent, "a").release();
        assert!(!recent.contains("a"));
        drop(reserved(&recent, "a"));
        assert!(recent.is_empty(), "a dropped reservation releases its id");
        reserved(&recent, "a").confirm();
        assert!(matches!(recent.reserve("a"), Turn::Published));
    }

    #[tokio::test]
    async fn waiters_learn_the_outcome_of_the_reservation() {
        let recent = RecentMessageIds::default();
        let first = reserved(&recent, "a");
        let Turn::InFlight(waiting) = recent.reserve("a") else { panic!("in flight") };
        first.confirm();
        assert!(waiting.published().await, "confirmed");

        let first = reserved(&recent, "b");
        let Turn::InFlight(waiting) = recent.reserve("b") else { panic!("in flight") };
        let waited = tokio::spawn(waiting.published());
        tokio::task::yield_now().await;
        first.release();
        assert!(!waited.await.unwrap(), "released");
        reserved(&recent, "b").confirm();
    }

    #[test]
    fn the_oldest_ids_are_evicted_at_capacity() {
        let recent = RecentMessageIds::with_capacity(3);
        for id in ["a", "b", "c"] {
            reserved(&recent, id).confirm();
        }
        reserved(&recent, "d").confirm();
        assert_eq!(recent.len(), 3);
        assert!(!recent.contains("a"), "the oldest went first");
        assert!(["b", "c", "d"].iter().all(|id| recent.contains(id)));
        // An evicted id is new again.
        reserved(&recent, "a").confirm();
        assert!(!recent.contains("b"));
    }

    #[test]
    fn a_stale_reservation_does_not_touch_the_ids_new_owner() {
        let recent = RecentMessageIds::with_capacity(1);
        let old = reserved(&recent, "a");
        reserved(&recent, "b").confirm(); // evicts the reservation of `a`
        let new = reserved(&recent, "a"); // evicts `b`
        drop(old);
        assert!(matches!(recent.reserve("a"), Turn::InFlight(_)), "the new reservation survives the old release");
        // Nor does a confirmation under another generation publish it.
        recent.settle("a", u64::MAX, true);
        assert!(matches!(recent.reserve("a"), Turn::InFlight(_)));
        new.confirm();
        assert!(matches!(recent.reserve("a"), Turn::Published));
    }

    #[test]
    fn released_ids_do_not_grow_the_eviction_queue_without_bound() {
        let recent = RecentMessageIds::with_capacity(10);
        for _ in 0..10_000 {
            reserved(&recent, "flaky").release();
        }
        assert!(recent.inner.lock().unwrap().order.len() <= 2 * 1024 + 1);
    }

    #[test]
    fn is_shared_between_threads() {
        let recent = std::sync::Arc::new(RecentMessageIds::default());
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let recent = recent.clone();
                    scope.spawn(move || {
                        (0..1000)
                            .filter(|i| match recent.reserve(&format!("id-{i}")) {
                                Turn::Reserved(reservation) => {
                                    reservation.confirm();
                                    true
                                }
                                _ => false,
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1000, "each id reserved by exactly one thread");
        assert_eq!(recent.len(), 1000);
    }
}
