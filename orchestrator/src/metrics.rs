//! Prometheus metrics, with the names of the design.
//!
//! One process-wide registry ([`metrics`]): the pipeline, the saga runner,
//! the Kafka runtime and the webhook record into it, and `GET /metrics`
//! renders it ([`render`]). Labels are fixed vocabularies or ids, never
//! free text, so the series stay bounded.

use std::sync::OnceLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::breaker::{BreakerRegistry, BreakerState};

/// Every collector, registered in [`Metrics::registry`].
pub struct Metrics {
    /// The registry `GET /metrics` renders.
    pub registry: Registry,
    /// `whatsapp_messages_received_total{business_id,source}`: inbound messages (`source`: `webhook`, `kafka`).
    pub messages_received: IntCounterVec,
    /// `ai_intent_detected_total{intent}`: messages routed, by intent.
    pub intent_detected: IntCounterVec,
    /// `ai_intent_confidence{intent}`: the confidence of each routed message.
    pub intent_confidence: HistogramVec,
    /// `whatsapp_action_executed_total{action,status}` (`status`: `succeeded`, `failed`, `rejected` by an open breaker).
    pub action_executed: IntCounterVec,
    /// `lead_state_changed_total{from,to}`: lead stage moves (see [`crate::pipeline`]).
    pub lead_state_changed: IntCounterVec,
    /// `ai_processing_duration_seconds{intent}`: time from claim to outcome of one attempt.
    pub processing_duration: HistogramVec,
    /// `message_duplicate_total`: deliveries skipped as already finished.
    pub duplicates: IntCounter,
    /// `message_dlq_total{reason}`: dead-lettered messages, by failure type.
    pub dead_lettered: IntCounterVec,
    /// `circuit_breaker_state{circuit,state}`: 1 for the circuit's current state, 0 for the others.
    pub breaker_state: IntGaugeVec,
    /// `action_compensation_total{action}`: compensations run (`status`: `succeeded`, `failed`).
    pub compensations: IntCounterVec,
    /// `kafka_consumer_lag{topic,partition}`: messages behind the partition's end (librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
    /// `orchestrator_in_flight_messages`: messages being processed now.
    pub in_flight: IntGauge,
    /// `orchestrator_messages_total{outcome}`: finished deliveries (`completed`, `retried`, `deferred`,
    /// `dead_lettered`, `duplicate`, `awaiting_ai`).
    pub outcomes: IntCounterVec,
    /// `whatsapp_webhook_requests_total{status}`: webhook POSTs by HTTP status.
    pub webhook_requests: IntCounterVec,
    /// `whatsapp_delivery_status_total{status}`: delivery statuses received (sent, delivered, read, failed).
    pub delivery_statuses: IntCounterVec,
    /// `whatsapp_webhook_duplicates_total`: webhook messages not published again because this process
    /// already published them (Meta's redeliveries; see [`crate::webhook::recent`]).
    pub webhook_duplicates: IntCounter,
    /// `whatsapp_outbound_total{status}`: replies by what became of an attempt (`sent`, `retried`,
    /// `deferred`, `dead_lettered`, `duplicate`, `parked`, `withheld`: a cancelled or not yet due API message).
    pub outbound: IntCounterVec,
    /// `whatsapp_send_duration_seconds{result}`: Cloud API call time (`sent`, `retryable`, `throttled`, `permanent`).
    pub send_duration: HistogramVec,
    /// `whatsapp_send_rate_wait_seconds{limit}`: time a send waited for its slot (`business_number`, `recipient`).
    pub send_rate_wait: HistogramVec,
    /// `whatsapp_send_rate{phone_number_id}`: sends per second a business number may make now (cut when throttled).
    pub send_rate: GaugeVec,
    /// `whatsapp_throttled_total{code}`: sends WhatsApp answered with "slow down" (`429` when it gave no code).
    pub throttled: IntCounterVec,
    /// `whatsapp_replies_in_flight`: replies being sent now (waiting for a slot or for the Cloud API).
    pub replies_in_flight: IntGauge,
    /// `message_service_processed_total{status}`: messages the send API took or refused (`queued`,
    /// `scheduled`, `duplicate`, `invalid`, `rate_limited`, `cancelled`, `dispatched`).
    pub message_service_processed: IntCounterVec,
    /// `message_service_processing_duration_seconds{route}`: send API request time (`send`, `batch`,
    /// `get`, `list`, `cancel`).
    pub message_service_duration: HistogramVec,
    /// `message_service_active_batches`: batch requests being processed now.
    pub message_service_active_batches: IntGauge,
    /// `inbox_events_total{result}`: `MessageProcessed` events for live inboxes (`published`, `failed`).
    pub inbox_events: IntCounterVec,
    /// `inbox_streams_open`: `/api/v1/stream` connections open now.
    pub inbox_streams: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let collector = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(collector.clone())).expect("metric registered once");
    collector
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let collector =
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric definition");
    registry.register(Box::new(collector.clone())).expect("metric registered once");
    collector
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let collector = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(collector.clone())).expect("metric registered once");
    collector
}

impl Metrics {
    // The definitions are constants: registering them cannot fail at run time.
    fn new() -> Self {
        let registry = Registry::new();
        let duplicates = IntCounter::new("message_duplicate_total", "Deliveries skipped as already finished.")
            .expect("valid metric definition");
        registry.register(Box::new(duplicates.clone())).expect("metric registered once");
        let in_flight = IntGauge::new("orchestrator_in_flight_messages", "Messages being processed now.")
            .expect("valid metric definition");
        registry.register(Box::new(in_flight.clone())).expect("metric registered once");
        let webhook_duplicates = IntCounter::new(
            "whatsapp_webhook_duplicates_total",
            "Webhook messages skipped as already published by this process.",
        )
        .expect("valid metric definition");
        registry.register(Box::new(webhook_duplicates.clone())).expect("metric registered once");
        let replies_in_flight =
            IntGauge::new("whatsapp_replies_in_flight", "Replies being sent now.").expect("valid metric definition");
        registry.register(Box::new(replies_in_flight.clone())).expect("metric registered once");
        let send_rate = GaugeVec::new(
            Opts::new("whatsapp_send_rate", "Sends per second a business number may make now."),
            &["phone_number_id"],
        )
        .expect("valid metric definition");
        registry.register(Box::new(send_rate.clone())).expect("metric registered once");
        let message_service_active_batches =
            IntGauge::new("message_service_active_batches", "Send API batch requests being processed now.")
                .expect("valid metric definition");
        registry.register(Box::new(message_service_active_batches.clone())).expect("metric registered once");
        let inbox_streams =
            IntGauge::new("inbox_streams_open", "Live inbox streams open now.").expect("valid metric definition");
        registry.register(Box::new(inbox_streams.clone())).expect("metric registered once");
        let r = &registry;
        Self {
            messages_received: counter(
                r,
                "whatsapp_messages_received_total",
                "Inbound WhatsApp messages.",
                &["business_id", "source"],
            ),
            intent_detected: counter(r, "ai_intent_detected_total", "Messages routed, by intent.", &["intent"]),
            intent_confidence: histogram(
                r,
                "ai_intent_confidence",
                "Confidence of the intent of each routed message.",
                &["intent"],
                vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0],
            ),
            action_executed: counter(
                r,
                "whatsapp_action_executed_total",
                "Saga steps executed, by action and result.",
                &["action", "status"],
            ),
            lead_state_changed: counter(r, "lead_state_changed_total", "Lead stage changes.", &["from", "to"]),
            processing_duration: histogram(
                r,
                "ai_processing_duration_seconds",
                "Time to process one attempt of a message, by intent.",
                &["intent"],
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            duplicates,
            dead_lettered: counter(r, "message_dlq_total", "Messages dead-lettered, by failure type.", &["reason"]),
            breaker_state: gauge(
                r,
                "circuit_breaker_state",
                "1 for each circuit's current state, 0 for the others.",
                &["circuit", "state"],
            ),
            compensations: counter(
                r,
                "action_compensation_total",
                "Compensations run, by action and result.",
                &["action", "status"],
            ),
            consumer_lag: gauge(
                r,
                "kafka_consumer_lag",
                "Messages between the committed position and the partition's end.",
                &["topic", "partition"],
            ),
            in_flight,
            outcomes: counter(r, "orchestrator_messages_total", "Finished deliveries, by outcome.", &["outcome"]),
            webhook_requests: counter(
                r,
                "whatsapp_webhook_requests_total",
                "Webhook POSTs, by HTTP status.",
                &["status"],
            ),
            delivery_statuses: counter(
                r,
                "whatsapp_delivery_status_total",
                "Delivery statuses of sent messages.",
                &["status"],
            ),
            webhook_duplicates,
            outbound: counter(r, "whatsapp_outbound_total", "Reply attempts, by what became of them.", &["status"]),
            send_duration: histogram(
                r,
                "whatsapp_send_duration_seconds",
                "Cloud API call time, by result.",
                &["result"],
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            send_rate_wait: histogram(
                r,
                "whatsapp_send_rate_wait_seconds",
                "Time a send waited for its rate-limit slot, by limit.",
                &["limit"],
                vec![0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            send_rate,
            throttled: counter(r, "whatsapp_throttled_total", "Sends WhatsApp throttled, by error code.", &["code"]),
            replies_in_flight,
            message_service_processed: counter(
                r,
                "message_service_processed_total",
                "Messages the send API accepted or refused, by status.",
                &["status"],
            ),
            message_service_duration: histogram(
                r,
                "message_service_processing_duration_seconds",
                "Send API request time, by route.",
                &["route"],
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            message_service_active_batches,
            inbox_events: counter(
                r,
                "inbox_events_total",
                "MessageProcessed events for live inboxes, by result (published, failed).",
                &["result"],
            ),
            inbox_streams,
            registry,
        }
    }

    /// Sets `circuit_breaker_state` from the breakers' current states.
    pub fn observe_breakers(&self, breakers: &BreakerRegistry) {
        for (circuit, current) in breakers.snapshot() {
            for state in [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen] {
                self.breaker_state
                    .with_label_values(&[circuit.as_str(), state.as_str()])
                    .set(i64::from(state == current));
            }
        }
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counts one entry filed in the dead-letter queue (`dead_lettered_total`), by its failure type.
pub fn count_dead_letter(failure_type: crate::event::FailureType) {
    metrics().dead_lettered.with_label_values(&[failure_type.as_str()]).inc();
}

/// A label value from outside (an intent name, a business id): kept when it
/// is a short identifier, else `other`, so a misbehaving producer cannot
/// create unbounded series.
pub fn label(value: &str) -> &str {
    let identifier = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if !value.is_empty() && value.len() <= 64 && value.chars().all(identifier) { value } else { "other" }
}

/// Everything in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on a collector bug; render what there is.
    let _ = TextEncoder::new().encode(&metrics().registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_outside_are_bounded() {
        assert_eq!(label("ORDER_REQUEST"), "ORDER_REQUEST");
        assert_eq!(label("biz-42"), "biz-42");
        assert_eq!(label(""), "other");
        assert_eq!(label("DROP TABLE leads; --"), "other");
        assert_eq!(label(&"X".repeat(65)), "other");
    }

    #[test]
    fn renders_recorded_values_in_the_text_format() {
        metrics().intent_detected.with_label_values(&["RENDER_TEST"]).inc();
        metrics().intent_confidence.with_label_values(&["RENDER_TEST"]).observe(0.85);
        let text = render();
        assert!(text.contains("ai_intent_detected_total{intent=\"RENDER_TEST\"} 1"), "{text}");
        assert!(text.contains("ai_intent_confidence_bucket{intent=\"RENDER_TEST\",le=\"0.9\"} 1"), "{text}");
        assert!(text.contains("ai_intent_confidence_bucket{intent=\"RENDER_TEST\",le=\"0.8\"} 0"), "{text}");
    }
}
