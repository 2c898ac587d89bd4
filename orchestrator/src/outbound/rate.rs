//! WhatsApp's send limits, kept on our side: a rate per business number
//! that slows down when WhatsApp says so and climbs back (like TCP's
//! congestion window), and a pace per recipient (WhatsApp's pair rate).
//!
//! Both are GCRA token buckets: a send reserves the next free slot, and the
//! caller sleeps until it. One [`SendLimits`] is shared by every reply of a
//! process, so the limits hold however many replies are in flight.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

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

/// A business number's bucket and its adaptive rate.
#[derive(Debug, Clone, Copy)]
struct NumberBucket {
    gcra: Gcra,
    /// When WhatsApp last throttled it, and the rate it was cut to then.
    cut: Option<(Instant, f64)>,
}

impl NumberBucket {
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
    /// Reserved: sleep this long, then send.
    Wait(Duration),
    /// Waiting would take longer than allowed: nothing was reserved; try again after this long.
    TooLong(Duration),
}

/// The send limits of a process (see the module docs).
#[derive(Debug)]
pub struct SendLimits {
    settings: RateSettings,
    state: Mutex<Limits>,
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
        Self { settings, state: Mutex::default() }
    }

    /// The settings.
    pub fn settings(&self) -> &RateSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Limits> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves a send from `number` to `recipient`, unless it would have to
    /// wait longer than `max_wait`.
    pub fn reserve(&self, number: &str, recipient: &str, max_wait: Duration) -> Slot {
        let now = Instant::now();
        let settings = &self.settings;
        let mut limits = self.lock();
        let bucket =
            *limits.numbers.entry(number.to_owned()).or_insert(NumberBucket { gcra: Gcra::new(now), cut: None });
        let rate = bucket.rate(now, settings);
        let interval = Duration::from_secs_f64(1.0 / rate);
        let number_wait = bucket.gcra.wait(now, interval, settings.burst);
        let recipient_gcra = limits.recipients.get(recipient).copied().unwrap_or_else(|| Gcra::new(now));
        let recipient_wait = recipient_gcra.wait(now, settings.recipient_interval, settings.recipient_burst);
        let metrics = crate::metrics::metrics();
        metrics.send_rate.with_label_values(&[crate::metrics::label(number)]).set(rate);
        let wait = number_wait.max(recipient_wait);
        if wait > max_wait {
            return Slot::TooLong(wait);
        }
        if let Some(bucket) = limits.numbers.get_mut(number) {
            bucket.gcra.take(now, interval);
        }
        let mut recipient_gcra = recipient_gcra;
        recipient_gcra.take(now, settings.recipient_interval);
        if limits.recipients.len() >= RECIPIENTS_KEPT {
            // Recipients whose slots are all back are as good as new.
            limits.recipients.retain(|_, gcra| gcra.tat > now);
        }
        limits.recipients.insert(recipient.to_owned(), recipient_gcra);
        metrics.send_rate_wait.with_label_values(&["business_number"]).observe(number_wait.as_secs_f64());
        metrics.send_rate_wait.with_label_values(&["recipient"]).observe(recipient_wait.as_secs_f64());
        Slot::Wait(wait)
    }

    /// WhatsApp throttled `number` (429, 130429, ...): halve its rate, at
    /// most once a second (the answers to sends already in flight say the
    /// same thing once more), then let it climb back.
    pub fn throttled(&self, number: &str) {
        let now = Instant::now();
        let settings = &self.settings;
        let mut limits = self.lock();
        let bucket =
            limits.numbers.entry(number.to_owned()).or_insert(NumberBucket { gcra: Gcra::new(now), cut: None });
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
        self.lock().numbers.get(number).map_or(self.settings.max_rate, |bucket| bucket.rate(now, &self.settings))
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

    fn waits(limits: &SendLimits, sends: &[(&str, &str)]) -> Vec<Duration> {
        sends
            .iter()
            .map(|(number, to)| match limits.reserve(number, to, Duration::from_secs(3600)) {
                Slot::Wait(wait) => wait,
                Slot::TooLong(wait) => panic!("refused a wait of {wait:?}"),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_number_sends_at_its_rate_and_numbers_are_independent() {
        let limits = limits(10.0, 1000);
        let sends: Vec<(&str, &str)> = (0..5).map(|_| ("A", "x")).chain([("B", "y")]).collect();
        let got = waits(&limits, &sends);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(got, [ms(0), ms(100), ms(200), ms(300), ms(400), ms(0)]);
        // Time passing frees the slots again.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(waits(&limits, &[("A", "x")]), [ms(0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recipient_gets_its_burst_then_one_per_interval() {
        let limits = limits(1000.0, 3);
        let got = waits(&limits, &[("A", "x"); 5]);
        assert_eq!(got[..3], [Duration::ZERO; 3]);
        assert_eq!(got[3], Duration::from_secs(6));
        assert_eq!(got[4], Duration::from_secs(12));
        // Another recipient does not wait behind it.
        assert_eq!(waits(&limits, &[("A", "z")])[0], Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_too_long_reserves_nothing() {
        let limits = limits(1000.0, 1);
        assert_eq!(limits.reserve("A", "x", Duration::from_secs(1)), Slot::Wait(Duration::ZERO));
        assert_eq!(limits.reserve("A", "x", Duration::from_secs(1)), Slot::TooLong(Duration::from_secs(6)));
        // Refused, so the next one waits no longer than the refused one would have.
        assert_eq!(limits.reserve("A", "x", Duration::from_secs(60)), Slot::Wait(Duration::from_secs(6)));
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
