//! Delivering replies: consume `conversation.responses` (and its `.retry`
//! twin) on the same [`Intake`] as the inbound runtime, and send each
//! `ResponseReady` once through a [`WhatsAppSender`].
//!
//! Per reply: it is parked behind an earlier reply to the same recipient
//! that waits in retry (so a recipient's replies go out in order), claimed
//! in `outbound_messages` (a reply already sent is not sent again), given a
//! slot by the [`SendLimits`] (an `Urgent` one before the `Normal` and
//! `Low` ones waiting), and sent. Then:
//!
//! - sent: the `wamid` is recorded;
//! - the breaker is open, the rate slot is far off, or another worker holds
//!   the reply: deferred through `conversation.responses.retry` without
//!   spending an attempt (a failure that opened the breaker is refunded too);
//! - a retryable failure (timeout, 5xx, 429, 130429, ...): retried with
//!   backoff through `conversation.responses.retry`, other recipients
//!   unaffected;
//! - attempts exhausted, a permanent failure, or a record that is not a
//!   reply: the original bytes to `conversation.responses.dlq`, a
//!   `MessageFailed` to `conversation.failures`, and an entry in the
//!   `dead_letter_queue` table (replayable like any other).
//!
//! The Cloud API has no idempotency key: a crash between WhatsApp's answer
//! and the write that records it is the one window in which a reply can go
//! out twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument as _;

use super::intake::{Intake, IntakeSettings, RecordHandler, until_ok};
use super::received::Received;
use super::{KafkaConfig, Publisher, headers};
use crate::event::{Envelope, EventData, FailureType, MessageFailed, MessageProcessed, ResponseReady, topics};
use crate::outbound::rate::Slot;
use crate::outbound::{RateSettings, SendError, SendLimits, WhatsAppSender};
use crate::pipeline::PROCESSED_BY;
use crate::retry::{RetryDecision, RetryPolicy};
use crate::stats::ReplyStats;
use crate::store::{
    AttemptFailure, KeyParking, NewDeadLetter, OutboundMessages, OutboundReply, ParkCheck, ParkedMessage, ReplyKey,
    ReplyLease, SendClaim, StoreError,
};

/// How the reply sender runs.
#[derive(Debug, Clone)]
pub struct ReplySettings {
    /// Replies in flight at once over all recipients (default 256).
    pub max_in_flight: usize,
    /// Retries of a failed send and their delays (`MAX_RETRIES`, `RETRY_DELAY_MS`).
    pub retry: RetryPolicy,
    /// The longest a reply waits in process for its rate-limit slot; a
    /// longer wait sends it to the retry topic, due when the slot is.
    pub max_rate_wait: Duration,
    /// How long a claim on a send protects it from other workers (covers
    /// the rate wait and the call: at least the Cloud API timeout more).
    pub lease: Duration,
    /// The tenant of replies that name none.
    pub default_tenant: String,
    /// WhatsApp's limits.
    pub rate: RateSettings,
    /// How long shutdown waits for replies in flight.
    pub shutdown_grace: Duration,
}

impl Default for ReplySettings {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            retry: RetryPolicy::default(),
            max_rate_wait: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            default_tenant: "default".to_owned(),
            rate: RateSettings::default(),
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

fn bump(counter: &AtomicU64, status: &str) {
    counter.fetch_add(1, Ordering::Relaxed);
    crate::metrics::metrics().outbound.with_label_values(&[status]).inc();
}

/// Consumes `conversation.responses` in group `<consumer group>-sender` and
/// sends each reply once (see the module docs).
pub struct ResponseSender {
    intake: Intake,
    worker: ReplyWorker,
}

impl ResponseSender {
    /// A sender on `config`'s cluster. `store` keeps `outbound_messages`,
    /// the per-recipient parking and the dead-letter entries.
    pub fn new<S>(
        config: &KafkaConfig,
        sender: Arc<dyn WhatsAppSender>,
        store: Arc<S>,
        settings: ReplySettings,
    ) -> Result<Self, KafkaError>
    where
        S: OutboundMessages + KeyParking + 'static,
    {
        let group = format!("{}-sender", config.consumer_group_id);
        let intake_settings = IntakeSettings {
            max_in_flight: settings.max_in_flight,
            shutdown_grace: settings.shutdown_grace,
            ..IntakeSettings::default()
        };
        let worker = ReplyWorker {
            sender,
            outbound: store.clone(),
            parking: store,
            publisher: Publisher::new(config)?,
            limits: Arc::new(SendLimits::new(settings.rate.clone())),
            stats: Arc::default(),
            group_id: group.clone(),
            settings,
        };
        Ok(Self { intake: Intake::new(config, &group, intake_settings)?, worker })
    }

    /// The sender's counters.
    pub fn stats(&self) -> Arc<ReplyStats> {
        self.worker.stats.clone()
    }

    /// The send limits every reply of this sender shares.
    pub fn limits(&self) -> Arc<SendLimits> {
        self.worker.limits.clone()
    }

    /// Sends replies until `shutdown` resolves, then finishes those in
    /// flight (within the grace period), commits and leaves the group.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), KafkaError> {
        let topics = [topics::RESPONSES.to_owned(), format!("{}.retry", topics::RESPONSES)];
        let worker = Arc::new(self.worker);
        let result = self.intake.run(&topics, worker.clone(), shutdown).await;
        worker.publisher.flush(Duration::from_secs(10))?;
        result
    }
}

/// A reply parked behind its recipient's reply in retry, as it was consumed.
fn from_parked(parked: &ParkedMessage) -> Received {
    let key = parked.key.strip_prefix(PARK_PREFIX).map(str::to_owned);
    Received::stored(&parked.topic, parked.partition, parked.offset, key, &parked.payload)
}

/// The reply a delivery carries, or why it is not one.
fn decode(delivery: &Received) -> Result<(ResponseReady, Option<u32>), (FailureType, String)> {
    match Envelope::decode(&delivery.payload) {
        Ok(Envelope { data: EventData::ResponseReady(reply), max_attempts, .. }) => Ok((reply, max_attempts)),
        Ok(other) => Err((
            FailureType::ValidationError,
            format!("{} events are not replies (on {})", other.event_type(), delivery.topic),
        )),
        Err(error) => Err((FailureType::SerializationError, error.to_string())),
    }
}

/// Parking keys of replies: a recipient's replies wait apart from its inbound messages.
const PARK_PREFIX: &str = "reply:";

/// Whether the reply is done with, or a copy of it waits in the retry topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Final,
    Waiting,
}

/// Everything a reply task needs.
struct ReplyWorker {
    sender: Arc<dyn WhatsAppSender>,
    outbound: Arc<dyn OutboundMessages>,
    parking: Arc<dyn KeyParking>,
    publisher: Publisher,
    limits: Arc<SendLimits>,
    settings: ReplySettings,
    stats: Arc<ReplyStats>,
    group_id: String,
}

#[async_trait]
impl RecordHandler for ReplyWorker {
    async fn handle(&self, record: OwnedMessage) {
        let span = tracing::info_span!(
            "reply.send",
            topic = record.topic(),
            partition = record.partition(),
            offset = record.offset(),
            trace_id = tracing::field::Empty,
        );
        let traceparent = headers::value(&record, crate::telemetry::TRACEPARENT);
        crate::telemetry::continue_trace(&span, traceparent.as_deref());
        span.record("trace_id", crate::telemetry::trace_id_of(&span));
        let due = headers::value(&record, headers::DUE_AT).and_then(|v| DateTime::parse_from_rfc3339(&v).ok());
        let delivery = Received::of(&record);
        async {
            if let Some(due) = due {
                // A retry copy waits for its due time; only its recipient waits with it.
                tokio::time::sleep((due.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or_default()).await;
            }
            self.deliver(delivery).await;
        }
        .instrument(span)
        .await;
    }
}

/// A store call retried while the database is out; other answers returned.
async fn stored<T, F: std::future::Future<Output = Result<T, StoreError>>>(
    what: &str,
    mut call: impl FnMut() -> F,
) -> Result<T, StoreError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match call().await {
            Err(error) if error.is_outage() => {
                tracing::warn!(%error, ?delay, "{what} failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

impl ReplyWorker {
    /// Parks the reply behind its recipient's reply in retry, or settles it;
    /// a holder that finished releases the replies parked behind it.
    async fn deliver(&self, delivery: Received) {
        let (reply, max_attempts) = match decode(&delivery) {
            Ok(decoded) => decoded,
            Err((failure_type, reason)) => {
                tracing::warn!(%reason, "undeliverable record on the responses topic dead-lettered");
                self.dead_letter(&delivery, None, None, None, failure_type, reason, 1).await;
                return;
            }
        };
        let key = self.reply_key(&reply);
        let park_key = format!("{PARK_PREFIX}{}", reply.to_phone);
        let parked = ParkedMessage {
            id: 0,
            key: park_key.clone(),
            message_id: key.dead_letter_id(),
            topic: delivery.base_topic().to_owned(),
            partition: delivery.partition,
            offset: delivery.offset,
            // Decoded above, so it is UTF-8.
            payload: String::from_utf8_lossy(&delivery.payload).into_owned(),
        };
        let holder =
            match until_ok("checking the recipient's retry block", || self.parking.park_if_blocked(&parked)).await {
                ParkCheck::Parked => {
                    tracing::info!(reply = %parked.message_id, "parked behind an earlier reply to the same recipient");
                    crate::metrics::metrics().outbound.with_label_values(&["parked"]).inc();
                    return;
                }
                ParkCheck::Open { holder } => holder,
            };
        let settled = self.settle(&delivery, &reply, max_attempts).await;
        if holder && settled == Settled::Final {
            self.drain(&park_key).await;
        }
    }

    /// Sends the replies parked under `park_key` in order, until one of them
    /// waits in retry (it holds the key then) or none is left.
    async fn drain(&self, park_key: &str) {
        loop {
            let Some(parked) = until_ok("reading parked replies", || self.parking.next_parked(park_key)).await else {
                if until_ok("unblocking the recipient", || self.parking.unblock_if_empty(park_key)).await {
                    return;
                }
                continue;
            };
            let delivery = from_parked(&parked);
            let settled = match decode(&delivery) {
                Ok((reply, max_attempts)) => self.settle(&delivery, &reply, max_attempts).await,
                Err((failure_type, reason)) => {
                    self.dead_letter(&delivery, None, None, None, failure_type, reason, 1).await;
                    Settled::Final
                }
            };
            until_ok("unparking", || self.parking.unpark(parked.id)).await;
            if settled == Settled::Waiting {
                return;
            }
        }
    }

    fn reply_key(&self, reply: &ResponseReady) -> ReplyKey {
        ReplyKey {
            tenant_id: reply.tenant().unwrap_or(&self.settings.default_tenant).to_owned(),
            original_message_id: reply.original_message_id.clone(),
            reply_index: reply.reply_index(),
        }
    }

    /// Claims the reply and makes one attempt to send it.
    async fn settle(&self, delivery: &Received, reply: &ResponseReady, max_attempts: Option<u32>) -> Settled {
        let key = self.reply_key(reply);
        if reply.to_phone.trim().is_empty() || key.original_message_id.is_empty() {
            let reason = "a reply needs `to_phone` and `original_message_id`".to_owned();
            self.dead_letter(delivery, None, Some(&key), None, FailureType::ValidationError, reason, 1).await;
            return Settled::Final;
        }
        let outbound = OutboundReply {
            key: key.clone(),
            phone_number_id: reply.business_number().map(str::to_owned),
            recipient_phone: reply.to_phone.clone(),
            payload: serde_json::to_string(reply).unwrap_or_default(),
        };
        let claim = until_ok("claiming the reply", || self.outbound.claim_send(&outbound, self.settings.lease)).await;
        let (lease, attempt) = match claim {
            SendClaim::Acquired { lease, attempt } => (lease, attempt),
            SendClaim::AlreadySent { .. } | SendClaim::Failed => {
                tracing::debug!(reply = %key.dead_letter_id(), "reply already sent or dead-lettered: skipped");
                bump(&self.stats.duplicates, "duplicate");
                return Settled::Final;
            }
            SendClaim::Withheld { status } => {
                tracing::info!(reply = %key.dead_letter_id(), status = status.as_str(), "message withheld: not sent");
                crate::metrics::metrics().outbound.with_label_values(&["withheld"]).inc();
                return Settled::Final;
            }
            SendClaim::Busy { lease_expires_at } => {
                let wait = (lease_expires_at - Utc::now()).to_std().unwrap_or_default();
                self.defer(delivery, &key, reply, wait, None).await;
                return Settled::Waiting;
            }
        };
        let max_attempts = max_attempts.unwrap_or(self.settings.retry.max_attempts());
        self.attempt(delivery, reply, lease, attempt, max_attempts).await
    }

    async fn attempt(
        &self,
        delivery: &Received,
        reply: &ResponseReady,
        lease: ReplyLease,
        attempt: u32,
        max_attempts: u32,
    ) -> Settled {
        let key = lease.key.clone();
        if let Some(wait) = self.breaker_wait() {
            self.defer(delivery, &key, reply, wait, Some((&lease, "the Cloud API circuit is open"))).await;
            return Settled::Waiting;
        }
        let number = reply.business_number().unwrap_or("default");
        // Urgent replies take the number's next slot ahead of the others waiting.
        let slot = self.limits.acquire(number, &reply.to_phone, reply.priority, self.settings.max_rate_wait).await;
        if let Slot::TooLong(wait) = slot {
            self.defer(delivery, &key, reply, wait, Some((&lease, "waiting for a send-rate slot"))).await;
            return Settled::Waiting;
        }
        let metrics = crate::metrics::metrics();
        metrics.replies_in_flight.inc();
        let started = Instant::now();
        let result = self.sender.send(reply).await;
        metrics.replies_in_flight.dec();
        let result_label = match &result {
            Ok(_) => "sent",
            Err(SendError::Throttled { .. }) => "throttled",
            Err(SendError::Retryable { .. } | SendError::CircuitOpen { .. }) => "retryable",
            Err(SendError::Permanent { .. }) => "permanent",
        };
        metrics.send_duration.with_label_values(&[result_label]).observe(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(sent) => {
                match stored("recording a sent reply", || self.outbound.record_sent(&lease, sent.wamid.as_deref()))
                    .await
                {
                    Ok(()) => self.announce(&key, &reply.to_phone, "sent", None),
                    // Held too long (a stalled process): another worker may send it again.
                    Err(error) => tracing::error!(%error, reply = %key.dead_letter_id(), "sent reply not recorded"),
                }
                tracing::debug!(reply = %key.dead_letter_id(), wamid = ?sent.wamid, "reply sent");
                bump(&self.stats.sent, "sent");
                return Settled::Final;
            }
            Err(error) => error,
        };
        if let SendError::Throttled { code, .. } = &error {
            self.limits.throttled(number);
            let code = code.map_or_else(|| "429".to_owned(), |c| c.to_string());
            metrics.throttled.with_label_values(&[crate::metrics::label(&code)]).inc();
        }
        let reason = error.to_string();
        // An open breaker (or a failure that opened it) is an outage, not this reply's fault.
        if let Some(wait) = matches!(error, SendError::CircuitOpen { .. } | SendError::Retryable { .. })
            .then(|| self.breaker_wait())
            .flatten()
        {
            self.defer(delivery, &key, reply, wait, Some((&lease, &reason))).await;
            return Settled::Waiting;
        }
        if let SendError::CircuitOpen { retry_after } = error {
            // Rejected while another reply probes: look again shortly.
            let wait = retry_after.max(Duration::from_millis(100));
            self.defer(delivery, &key, reply, wait, Some((&lease, &reason))).await;
            return Settled::Waiting;
        }
        match self.settings.retry.decide(attempt, max_attempts, error.is_retryable()) {
            RetryDecision::RetryAfter(delay) => {
                let failure = AttemptFailure { code: error.code(), error: &reason, refund: false };
                self.release(&lease, &failure).await;
                tracing::info!(attempt, ?delay, %reason, "reply send failed; retry scheduled");
                self.send_retry(delivery, &key, reply, delay, Some(attempt + 1)).await;
                bump(&self.stats.retried, "retried");
                Settled::Waiting
            }
            RetryDecision::GiveUp => {
                let reason = if error.is_retryable() {
                    format!("gave up after {attempt} attempts: {reason}")
                } else {
                    format!("reply refused: {reason}")
                };
                let failure_type = error.failure_type();
                self.dead_letter(delivery, Some(&lease), Some(&key), error.code(), failure_type, reason, attempt).await;
                Settled::Final
            }
        }
    }

    /// How long the sender's breaker stays open, if it is and its probe is
    /// not due yet (a due probe is this reply's call).
    fn breaker_wait(&self) -> Option<Duration> {
        let breaker = self.sender.breaker()?;
        let wait = breaker.retry_after();
        (breaker.state() == crate::BreakerState::Open && !wait.is_zero()).then_some(wait)
    }

    async fn release(&self, lease: &ReplyLease, failure: &AttemptFailure<'_>) {
        if let Err(error) = stored("releasing a reply", || self.outbound.release_send(lease, failure)).await {
            // Lost to another worker: that one decides now; the retry copy finds it sent or held.
            tracing::warn!(%error, "reply lease lost before release");
        }
    }

    /// Puts the reply off for `wait` without spending an attempt (releasing
    /// its claim, if held, with the reason).
    async fn defer(
        &self,
        delivery: &Received,
        key: &ReplyKey,
        reply: &ResponseReady,
        wait: Duration,
        held: Option<(&ReplyLease, &str)>,
    ) {
        if let Some((lease, reason)) = held {
            self.release(lease, &AttemptFailure { code: None, error: reason, refund: true }).await;
        }
        tracing::debug!(?wait, reply = %key.dead_letter_id(), "reply deferred");
        self.send_retry(delivery, key, reply, wait, None).await;
        bump(&self.stats.deferred, "deferred");
    }

    /// Blocks the recipient behind this reply (its later replies park), then
    /// sends the retry copy, due after `delay`, with `attempt` as its count.
    async fn send_retry(
        &self,
        delivery: &Received,
        key: &ReplyKey,
        reply: &ResponseReady,
        delay: Duration,
        attempt: Option<u32>,
    ) {
        let park_key = format!("{PARK_PREFIX}{}", reply.to_phone);
        let holder = key.dead_letter_id();
        until_ok("blocking the recipient", || self.parking.block(&park_key, &holder)).await;
        let copy = match (Envelope::decode(&delivery.payload), attempt) {
            (Ok(mut envelope), Some(attempt)) => {
                envelope.attempt_count = attempt;
                envelope.encode()
            }
            _ => delivery.payload.clone(),
        };
        let due = (Utc::now() + crate::store::to_chrono(delay)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let retry_headers = delivery.origin.retry_headers(&due);
        let topic = format!("{}.retry", delivery.base_topic());
        until_ok("sending a reply's retry copy", || {
            self.publisher.send(&topic, Some(&reply.to_phone), &copy, &retry_headers)
        })
        .await;
    }

    /// Tells live inboxes that a reply went out, or will not.
    fn announce(&self, key: &ReplyKey, phone: &str, status: &str, error: Option<String>) {
        let event = MessageProcessed::status(&key.tenant_id, phone, &key.original_message_id, status, error);
        self.publisher.announce(&Envelope::new(EventData::MessageProcessed(event), PROCESSED_BY));
    }

    /// Gives up on a record: its bytes to `<topic>.dlq` and a `MessageFailed`
    /// to `conversation.failures` first (a crash before the database write
    /// repeats them rather than losing them), then the dead-letter entry and
    /// the reply's `failed` mark in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        delivery: &Received,
        lease: Option<&ReplyLease>,
        key: Option<&ReplyKey>,
        code: Option<i64>,
        failure_type: FailureType,
        reason: String,
        attempts: u32,
    ) {
        let message_id = key.map(ReplyKey::dead_letter_id);
        let error = format!("{failure_type}: {reason}");
        let attempts_text = attempts.to_string();
        let dlq_headers = delivery.origin.dead_letter_headers(&self.group_id, &attempts_text, &error);
        let dlq_topic = format!("{}.dlq", delivery.base_topic());
        until_ok("dead-lettering a reply to Kafka", || {
            self.publisher.send(&dlq_topic, delivery.key.as_deref(), &delivery.payload, &dlq_headers)
        })
        .await;
        let failed = MessageFailed {
            message_id: message_id.clone().unwrap_or_default(),
            phone: delivery.key.clone().unwrap_or_default(),
            failure_type,
            error_details: reason.clone(),
            attempt_count: attempts,
            failed_at: Utc::now(),
        };
        let failed = Envelope::new(EventData::MessageFailed(failed), PROCESSED_BY);
        until_ok("publishing MessageFailed", || self.publisher.publish(&failed)).await;
        let entry = NewDeadLetter {
            message_id,
            tenant_id: key.map(|k| k.tenant_id.clone()),
            source: Some(delivery.source()),
            payload: delivery.payload.clone(),
            failure_type,
            error: reason,
            attempt_count: attempts,
            trace_context: crate::telemetry::current_traceparent(),
            conversation: None,
        };
        let filed = match stored("dead-lettering a reply", || self.outbound.fail_send(lease, code, &entry)).await {
            Err(StoreError::LeaseLost(_)) => {
                // Held too long: another worker owns the reply's row now, but the entry is still filed.
                tracing::error!(reply = ?entry.message_id, "reply lease lost while dead-lettering it");
                stored("dead-lettering a reply", || self.outbound.fail_send(None, code, &entry)).await
            }
            other => other,
        };
        if let Some(key) = key {
            self.announce(key, delivery.key.as_deref().unwrap_or_default(), "failed", Some(entry.error.clone()));
        }
        match filed {
            Ok(id) => tracing::warn!(dlq_id = id, failure = %failure_type, "reply dead-lettered"),
            Err(error) => tracing::error!(%error, "reply dead-lettered to Kafka only"),
        }
        bump(&self.stats.dead_lettered, "dead_lettered");
        crate::metrics::count_dead_letter(failure_type);
    }
}
