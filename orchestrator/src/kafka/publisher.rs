//! Publishing events and raw copies to Kafka, keyed by phone.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::KafkaConfig;
use crate::event::Envelope;
use crate::health::{Probe, ProbeFailure};
use crate::publish::Publish;
pub use crate::publish::PublishError;

/// An idempotent producer (acks and compression per [`KafkaConfig`]).
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    timeout: Duration,
}

impl Publisher {
    /// A producer for `config` (its bootstrap servers must be set).
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self { producer: config.producer_config().create()?, timeout: config.timeout })
    }

    /// Publishes an event to its type's topic, keyed by its phone number.
    pub async fn publish(&self, envelope: &Envelope) -> Result<(i32, i64), PublishError> {
        let topic = envelope.event_type().topic();
        self.send(topic, envelope.data.phone(), &envelope.encode(), &[]).await
    }

    /// Queues an event for live inboxes without waiting for Kafka: a
    /// notification must not hold up the message it reports. Its delivery
    /// is counted in `inbox_events_total`; a failure is logged with the
    /// event (the message itself is recorded in the database either way).
    pub fn announce(&self, envelope: &Envelope) {
        let topic = envelope.event_type().topic();
        let payload = envelope.encode();
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(&payload);
        if let Some(key) = envelope.data.phone() {
            record = record.key(key);
        }
        let counter = |result: &str| crate::metrics::metrics().inbox_events.with_label_values(&[result]).inc();
        match self.producer.send_result(record) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => counter("published"),
                        Ok(Err((error, message))) => {
                            counter("failed");
                            let event = message.payload().map(String::from_utf8_lossy).unwrap_or_default();
                            tracing::warn!(%error, %event, "an inbox event was not published");
                        }
                        Err(_) => counter("failed"),
                    }
                });
            }
            Err((error, _)) => {
                counter("failed");
                tracing::warn!(%error, event = %String::from_utf8_lossy(&payload), "an inbox event was not queued");
            }
        }
    }

    /// Sends bytes with headers (plus the current span's `traceparent`);
    /// resolves once Kafka acknowledged them.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(i32, i64), PublishError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len() + 1);
        for (key, value) in headers {
            owned = owned.insert(Header { key, value: Some(*value) });
        }
        // The trace continues in whoever consumes this (unless the caller set one).
        let traceparent = crate::telemetry::current_traceparent();
        if let Some(traceparent) = &traceparent
            && !headers.iter().any(|(key, _)| *key == crate::telemetry::TRACEPARENT)
        {
            owned = owned.insert(Header { key: crate::telemetry::TRACEPARENT, value: Some(traceparent.as_bytes()) });
        }
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(payload).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer.send(record, self.timeout).await.map(|delivery| (delivery.partition, delivery.offset)).map_err(
            |(source, _)| {
                use rdkafka::types::RDKafkaErrorCode::{UnknownTopic, UnknownTopicOrPartition};
                let missing = matches!(source, KafkaError::MessageProduction(UnknownTopic | UnknownTopicOrPartition));
                let error = PublishError::new(topic, source, missing);
                if missing {
                    tracing::error!(topic, "Kafka topic does not exist: create it with `consumer topics create`");
                    super::topics::report_missing(topic);
                }
                error
            },
        )
    }

    /// Asks the cluster for its metadata (the health check's Kafka probe).
    pub async fn probe(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        // A blocking librdkafka call: off the async workers.
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).map(|_| ()))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Waits for everything queued to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

#[async_trait::async_trait]
impl Publish for Publisher {
    async fn send_record(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), PublishError> {
        self.send(topic, key, payload, headers).await.map(|_| ())
    }

    fn announce(&self, envelope: &Envelope) {
        Publisher::announce(self, envelope);
    }
}

#[async_trait::async_trait]
impl Probe for Publisher {
    async fn probe(&self) -> Result<(), ProbeFailure> {
        Publisher::probe(self, crate::health::PROBE_TIMEOUT).await.map_err(ProbeFailure::of)
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}
