//! WhatsApp's send limits, kept on our side: a rate per business number
//! that slows down when WhatsApp says so and climbs back (like TCP's
//! congestion window), and a pace per recipient (WhatsApp's pair rate).
//!
//! Both are GCRA token buckets. A recipient's slot is reserved at once and
//! slept until (a recipient's replies come one after another anyway). A
//! business number's slots go to the replies waiting for them by priority:
//! an `Urgent` reply takes the next free slot before `Normal` and `Low`
//! ones that were waiting longer, in arrival order within a priority, so an
//! escalation does not queue behind a saturated number's backlog. One
//! [`SendLimits`] is shared by every reply of a process, so the limits hold
//! however many replies are in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::event::Priority;

/// The limits' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSettings {
    /// Sends per second per business number (`WHATSAPP_MAX_SEND_RATE`, default
    /// 80: Meta's default throughput; up to 1,000 on higher tiers).
    pub max_rate: f64,
    /// Sends a business number may make back to back above its pace.
    pub burst: u32,
    /// The lowest rate a throttled number is cut to.
    pub min_rate: f64,
    /// How long a cut number takes to climb back to `max_rate`.
    pub recovery: Duration,
    /// Sends one recipient may get back to back (`WHATSAPP_RECIPIENT_BURST`,
    /// default 45, WhatsApp's pair-rate burst).
    pub recipient_burst: u32,
    /// Then one send per this interval (`WHATSAPP_RECIPIENT_INTERVAL_MS`,
    /// default 6,000: WhatsApp's pair rate).
    pub recipient_interval: Duration,
}

impl Default for RateSettings {
    fn default() -> Self {
        Self {
            max_rate: 80.0,
            burst: 1,
            min_rate: 1.0,
            recovery: Duration::from_secs(10),
            recipient_burst: 45,
            recipient_interval: Duration::from_secs(6),
        }
    }
}

/// A GCRA bucket: `tat` is the theoretical arrival time of the next send.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    tat: Instant,
}

impl Gcra {
    fn new(now: Instant) -> Self {
        Self { tat: now }
    }

    /// How long a send now must wait, without reserving.
    fn wait(&self, now: Instant, interval: Duration, burst: u32) -> Duration {
        let tolerance = interval * burst.saturating_sub(1);
        self.tat.max(now).checked_sub(tolerance).map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// Reserves the next slot.
    fn take(&mut self, now: Instant, interval: Duration) {
        self.tat = self.tat.max(now) + interval;
    }
}

/// A business number's bucket, its adaptive rate and the replies waiting for its slots.
#[derive(Debug)]
struct NumberBucket {
    gcra: Gcra,
    /// When WhatsApp last throttled it, and the rate it was cut to then.
    cut: Option<(Instant, f64)>,
    /// Waiting replies by (priority rank, arrival): the first gets the next slot.
    waiting: BTreeMap<(u8, u64), oneshot::Sender<()>>,
    /// Arrivals counted, for the order within a priority.
    arrivals: u64,
    /// A task hands out the slots while replies wait.
    dispatching: bool,
}

/// The order slots go in: urgent first.
fn rank(priority: Priority) -> u8 {
    match priority {
        Priority::Urgent => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

impl NumberBucket {
    fn new(now: Instant) -> Self {
        Self { gcra: Gcra::new(now), cut: None, waiting: BTreeMap::new(), arrivals: 0, dispatching: false }
    }

    fn interval(&self, now: Instant, settings: &RateSettings) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate(now, settings))
    }

    /// The rate allowed now: after a cut it climbs linearly back to the maximum over `recovery`.
    fn rate(&self, now: Instant, settings: &RateSettings) -> f64 {
        match self.cut {
            None => settings.max_rate,
            Some((at, to)) => {
                let climbed = settings.max_rate * now.saturating_duration_since(at).as_secs_f64()
                    / settings.recovery.as_secs_f64().max(0.001);
                (to + climbed).min(settings.max_rate)
            }
        }
    }
}

/// What a send must do before it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Granted after waiting this long (for the recipient and the number): send now.
    Wait(Duration),
    /// Waiting would take longer than allowed: nothing was reserved; try again after this long.
    TooLong(Duration),
}

/// The send limits of a process (see the module docs).
#[derive(Debug)]
pub struct SendLimits {
    settings: RateSettings,
    state: Arc<Mutex<Limits>>,
}

#[derive(Debug, Default)]
struct Limits {
    numbers: HashMap<String, NumberBucket>,
    recipients: HashMap<String, Gcra>,
}

/// Recipients remembered before idle ones are forgotten.
const RECIPIENTS_KEPT: usize = 50_000;

impl SendLimits {
    /// Limits with `settings`.
    pub fn new(settings: RateSettings) -> Self {
        Self { settings, state: Arc::default() }
    }

    /// The settings.
    pub fn settings(&self) -> &RateSettings {
        &self.settings
    }

    /// Waits for a send from `number` to `recipient` with `priority`: the
    /// recipient's next slot, then the number's next slot not claimed by a
    /// reply of higher priority. Refuses (reserving nothing) when the wait
    /// would be longer than `max_wait`, counting the replies ahead of this one.
    pub async fn acquire(&self, number: &str, recipient: &str, priority: Priority, max_wait: Duration) -> Slot {
        let now = Instant::now();
        let settings = &self.settings;
        let recipient_wait = {
            let mut limits = lock(&self.state);
            let bucket = limits.numbers.entry(number.to_owned()).or_insert_with(|| NumberBucket::new(now));
            let rate = bucket.rate(now, settings);
            let interval = Duration::from_secs_f64(1.0 / rate);
            let ahead = bucket.waiting.range(..(rank(priority) + 1, 0)).count() as u32;
            let number_wait = bucket.gcra.wait(now, interval, settings.burst) + interval * ahead;
            let recipient_gcra = limits.recipients.get(recipient).copied().unwrap_or_else(|| Gcra::new(now));
            let recipient_wait = recipient_gcra.wait(now, settings.recipient_interval, settings.recipient_burst);
            crate::metrics::metrics().send_rate.with_label_values(&[crate::metrics::label(number)]).set(rate);
            let wait = number_wait.max(recipient_wait);
            if wait > max_wait {
                return Slot::TooLong(wait);
            }
            let mut recipient_gcra = recipient_gcra;
            recipient_gcra.take(now, settings.recipient_interval);
            if limits.recipients.len() >= RECIPIENTS_KEPT {
                // Recipients whose slots are all back are as good as new.
                limits.recipients.retain(|_, gcra| gcra.tat > now);
            }
            limits.recipients.insert(recipient.to_owned(), recipient_gcra);
            recipient_wait
        };
        let metrics = crate::metrics::metrics();
        metrics.send_rate_wait.with_label_values(&["recipient"]).observe(recipient_wait.as_secs_f64());
        if !recipient_wait.is_zero() {
            tokio::time::sleep(recipient_wait).await;
        }
        let queued = Instant::now();
        self.number_slot(number, priority).await;
        let number_wait = queued.elapsed();
        metrics.send_rate_wait.with_label_values(&["business_number"]).observe(number_wait.as_secs_f64());
        Slot::Wait(recipient_wait + number_wait)
    }

    /// Takes `number`'s next slot: at once when it is free and nobody waits,
    /// else in the queue a dispatcher task serves by priority.
    async fn number_slot(&self, number: &str, priority: Priority) {
        let granted = {
            let now = Instant::now();
            let mut limits = lock(&self.state);
            let bucket = limits.numbers.entry(number.to_owned()).or_insert_with(|| NumberBucket::new(now));
            let interval = bucket.interval(now, &self.settings);
            if bucket.waiting.is_empty() && bucket.gcra.wait(now, interval, self.settings.burst).is_zero() {
                bucket.gcra.take(now, interval);
                return;
            }
            let (granted_tx, granted) = oneshot::channel();
            bucket.arrivals += 1;
            bucket.waiting.insert((rank(priority), bucket.arrivals), granted_tx);
            if !bucket.dispatching {
                bucket.dispatching = true;
                tokio::spawn(dispatch(self.state.clone(), self.settings.clone(), number.to_owned()));
            }
            granted
        };
        // The dispatcher ends only once nobody waits, so it answers every waiter.
        let _ = granted.await;
    }

    /// WhatsApp throttled `number` (429, 130429, ...): halve its rate, at
    /// most once a second (the answers to sends already in flight say the
    /// same thing once more), then let it climb back.
    pub fn throttled(&self, number: &str) {
        let now = Instant::now();
        let settings = &self.settings;
        let mut limits = lock(&self.state);
        let bucket = limits.numbers.entry(number.to_owned()).or_insert_with(|| NumberBucket::new(now));
        if bucket.cut.is_some_and(|(at, _)| now.saturating_duration_since(at) < Duration::from_secs(1)) {
            return;
        }
        let cut_to = (bucket.rate(now, settings) / 2.0).max(settings.min_rate);
        bucket.cut = Some((now, cut_to));
        tracing::warn!(
            phone_number_id = number,
            rate = cut_to,
            "WhatsApp throttled the business number: send rate cut"
        );
    }

    /// The rate `number` may send at now.
    pub fn rate(&self, number: &str) -> f64 {
        let now = Instant::now();
        lock(&self.state).numbers.get(number).map_or(self.settings.max_rate, |bucket| bucket.rate(now, &self.settings))
    }
}

fn lock(state: &Mutex<Limits>) -> std::sync::MutexGuard<'_, Limits> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands `number`'s slots to its waiting replies, highest priority first,
/// each when the slot is due; ends when nobody waits.
async fn dispatch(state: Arc<Mutex<Limits>>, settings: RateSettings, number: String) {
    loop {
        let wait = {
            let now = Instant::now();
            let mut limits = lock(&state);
            let Some(bucket) = limits.numbers.get_mut(&number) else { return };
            let interval = bucket.interval(now, &settings);
            let wait = bucket.gcra.wait(now, interval, settings.burst);
            if wait.is_zero() {
                // Chosen when the slot is due, so a reply that arrived meanwhile competes for it.
                match bucket.waiting.pop_first() {
                    None => {
                        bucket.dispatching = false;
                        return;
                    }
                    // A waiter that gave up (its task ended) does not use the slot.
                    Some((_, granted)) => {
                        if granted.send(()).is_ok() {
                            bucket.gcra.take(now, interval);
                        }
                    }
                }
            }
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_rate: f64, recipient_burst: u32) -> SendLimits {
        SendLimits::new(RateSettings {
            max_rate,
            // Numbers at 1,000/s or more send back to back here, so the recipient tests see only their own pace.
            burst: if max_rate >= 1000.0 { 100 } else { 1 },
            recipient_burst,
            recipient_interval: Duration::from_secs(6),
            ..RateSettings::default()
        })
    }

    /// Starts every send at once, in order; answers when each got its slot.
    async fn grants(limits: &Arc<SendLimits>, sends: &[(&str, &str, Priority)]) -> Vec<Duration> {
        let start = Instant::now();
        let tasks: Vec<_> = sends
            .iter()
            .map(|&(number, to, priority)| {
                let (limits, number, to) = (limits.clone(), number.to_owned(), to.to_owned());
                tokio::spawn(async move {
                    match limits.acquire(&number, &to, priority, Duration::from_secs(3600)).await {
                        Slot::Wait(_) => start.elapsed(),
                        Slot::TooLong(wait) => panic!("refused a wait of {wait:?}"),
                    }
                })
            })
            .collect();
        let mut granted = Vec::new();
        for task in tasks {
            granted.push(task.await.unwrap());
        }
        granted
    }

    const NORMAL: Priority = Priority::Normal;
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_number_sends_at_its_rate_and_numbers_are_independent() {
        let limits = Arc::new(limits(10.0, 1000));
        let sends: Vec<_> = (0..5).map(|_| ("A", "x", NORMAL)).chain([("B", "y", NORMAL)]).collect();
        assert_eq!(grants(&limits, &sends).await, [ms(0), ms(100), ms(200), ms(300), ms(400), ms(0)]);
        // Time passing frees the slots again.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(grants(&limits, &[("A", "x", NORMAL)]).await, [ms(0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn urgent_sends_take_the_next_slot_before_those_waiting_longer() {
        let limits = Arc::new(limits(10.0, 1000));
        let sends = [
            ("A", "1", NORMAL),
            ("A", "2", NORMAL),
            ("A", "3", NORMAL),
            ("A", "4", Priority::Low),
            ("A", "5", Priority::Urgent),
            ("A", "6", NORMAL),
        ];
        let granted = grants(&limits, &sends).await;
        // The first takes the free slot; then urgent, the normals in order, low last.
        assert_eq!(granted, [ms(0), ms(200), ms(300), ms(500), ms(100), ms(400)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_limit_counts_only_the_sends_ahead() {
        let limits = Arc::new(limits(10.0, 1000));
        let backlog: Vec<_> = (0..5).map(|i| (limits.clone(), i.to_string())).collect();
        let waiting: Vec<_> = backlog
            .into_iter()
            .map(|(limits, to)| {
                tokio::spawn(async move { limits.acquire("A", &to, NORMAL, Duration::from_secs(60)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        // Four normal sends wait: another normal one would wait half a second, an urgent one a slot.
        assert_eq!(limits.acquire("A", "n", NORMAL, ms(250)).await, Slot::TooLong(ms(500)));
        let urgent = limits.acquire("A", "u", Priority::Urgent, ms(250)).await;
        assert_eq!(urgent, Slot::Wait(ms(100)));
        for task in waiting {
            assert!(matches!(task.await.unwrap(), Slot::Wait(_)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_recipient_gets_its_burst_then_one_per_interval() {
        let limits = Arc::new(limits(1000.0, 3));
        let got = grants(&limits, &[("A", "x", NORMAL); 5]).await;
        assert_eq!(got[..3], [Duration::ZERO; 3]);
        assert_eq!(got[3], Duration::from_secs(6));
        assert_eq!(got[4], Duration::from_secs(12));
        // Another recipient does not wait behind it.
        assert_eq!(grants(&limits, &[("A", "z", NORMAL)]).await[0], Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_too_long_reserves_nothing() {
        let limits = limits(1000.0, 1);
        assert_eq!(limits.acquire("A", "x", NORMAL, ms(1000)).await, Slot::Wait(Duration::ZERO));
        assert_eq!(limits.acquire("A", "x", NORMAL, ms(1000)).await, Slot::TooLong(Duration::from_secs(6)));
        // Refused, so the next one waits no longer than the refused one would have.
        assert_eq!(limits.acquire("A", "x", NORMAL, Duration::from_secs(60)).await, Slot::Wait(Duration::from_secs(6)));
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_once_a_second_and_it_climbs_back() {
        let limits = limits(80.0, 1000);
        limits.throttled("A");
        assert_eq!(limits.rate("A"), 40.0);
        // The other in-flight sends report the same throttle: no second cut.
        limits.throttled("A");
        assert_eq!(limits.rate("A"), 40.0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        // 1.5 s of the 10 s recovery climbed 12 msg/s; a new throttle halves that.
        assert!((limits.rate("A") - 52.0).abs() < 1e-9, "{}", limits.rate("A"));
        limits.throttled("A");
        assert!((limits.rate("A") - 26.0).abs() < 1e-9, "{}", limits.rate("A"));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(limits.rate("A"), 80.0);
        // Other numbers were never cut.
        assert_eq!(limits.rate("B"), 80.0);
        // Never below the floor.
        for _ in 0..20 {
            limits.throttled("C");
            tokio::time::advance(Duration::from_millis(1001)).await;
        }
        assert!(limits.rate("C") >= 1.0);
    }
}
