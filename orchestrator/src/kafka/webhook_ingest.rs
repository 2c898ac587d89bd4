//! The edge-function path: an HTTP edge function takes WhatsApp's POST and
//! publishes the raw request to `whatsapp.webhook.inbound` as
//! `{"id", "headers", "body", "timestamp"}`, keyed by the webhook id; each
//! record is handled exactly like a POST to `/webhook` (the same
//! [`WebhookState`], so a message published by either path is not published
//! again by the other in this process, and the pipeline deduplicates across
//! processes).
//!
//! The signature is checked against the body as carried: a JSON string
//! holding the raw request body is checked byte for byte; a JSON object is
//! checked as its text appears in the record (which matches the signature
//! when the edge function did not reformat the body). A record that is not
//! JSON, not of that shape, fails the signature or is for another product
//! goes to `whatsapp.webhook.inbound.dlq` and the `dead_letter_queue` table
//! with its reason; later records flow on. Kafka or the database being
//! unreachable is retried in place: nothing is skipped.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::intake::{Intake, IntakeSettings, RecordHandler, until_ok};
use super::received::source_of;
use super::{KafkaConfig, headers};
use crate::event::{FailureType, topics};
use crate::store::{NewDeadLetter, Store};
use crate::webhook::forward::{Refusal, WebhookState, check, file_rejected, forward};

/// Records handled at once (different webhook ids run concurrently).
const MAX_IN_FLIGHT: usize = 64;

/// Reads `whatsapp.webhook.inbound` in its own consumer group
/// (`<KAFKA_CONSUMER_GROUP_ID>-webhook`).
pub struct WebhookIngest {
    intake: Intake,
    worker: IngestWorker,
}

struct IngestWorker {
    webhook: WebhookState,
    store: Arc<dyn Store>,
    group_id: String,
}

impl WebhookIngest {
    /// An ingester on `config`'s cluster forwarding through `webhook` and
    /// filing refused records in `store`'s dead-letter queue.
    pub fn new(config: &KafkaConfig, webhook: WebhookState, store: Arc<dyn Store>) -> Result<Self, KafkaError> {
        let group_id = format!("{}-webhook", config.consumer_group_id);
        let settings = IntakeSettings { max_in_flight: MAX_IN_FLIGHT, ..IntakeSettings::default() };
        let intake = Intake::new(config, &group_id, settings)?;
        Ok(Self { intake, worker: IngestWorker { webhook, store, group_id } })
    }

    /// Consumes until `shutdown` resolves, then drains and commits.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), KafkaError> {
        let topics = [topics::WEBHOOK_INBOUND.to_owned()];
        self.intake.run(&topics, Arc::new(self.worker), shutdown).await
    }
}

/// The record an edge function writes.
#[derive(Deserialize)]
struct EdgeRequest<'a> {
    id: String,
    #[serde(default)]
    headers: HashMap<String, Value>,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// A request's body and signature, or why the record is not a request.
#[derive(Debug)]
struct Carried {
    id: String,
    body: Vec<u8>,
    signature: Option<String>,
}

fn read(payload: &[u8]) -> Result<Carried, String> {
    let request: EdgeRequest<'_> = serde_json::from_slice(payload)
        .map_err(|e| format!("not an edge-function request ({{id, headers, body, timestamp}}): {e}"))?;
    let text = request.body.get();
    let body = if text.starts_with('"') {
        // The raw request body as a string: exactly the bytes WhatsApp signed.
        serde_json::from_str::<String>(text).map_err(|e| format!("body: {e}"))?.into_bytes()
    } else {
        text.as_bytes().to_vec()
    };
    // Header names are case-insensitive; some platforms give lists of values.
    let signature = request.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("x-hub-signature-256")).and_then(
        |(_, value)| match value {
            Value::String(text) => Some(text.clone()),
            Value::Array(values) => values.first().and_then(Value::as_str).map(str::to_owned),
            _ => None,
        },
    );
    Ok(Carried { id: request.id, body, signature })
}

#[async_trait]
impl RecordHandler for IngestWorker {
    async fn handle(&self, record: OwnedMessage) {
        let payload = record.payload().unwrap_or_default();
        let carried = match read(payload) {
            Ok(carried) => carried,
            Err(reason) => return self.dead_letter(&record, None, FailureType::SerializationError, reason).await,
        };
        let notification = match check(&self.webhook, carried.signature.as_deref(), &carried.body) {
            Ok(notification) => notification,
            Err(refusal) => {
                let failure_type = match refusal {
                    Refusal::Malformed(_) => FailureType::SerializationError,
                    Refusal::Signature(_) | Refusal::WrongObject(_) => FailureType::ValidationError,
                };
                let reason = refusal.to_string();
                return self.dead_letter(&record, Some(carried.id), failure_type, reason).await;
            }
        };
        until_ok("forwarding an edge-function webhook request", || forward(&self.webhook, &notification)).await;
        let source = Some(source_of(&record));
        until_ok("filing skipped webhook entries", || {
            file_rejected(&self.webhook, &notification, &carried.body, source.clone())
        })
        .await;
        tracing::debug!(webhook_id = %carried.id, events = notification.events.len(), "edge-function request forwarded");
    }
}

impl IngestWorker {
    /// Its bytes to `whatsapp.webhook.inbound.dlq`, then an entry in the
    /// `dead_letter_queue` table, each retried until it is stored.
    async fn dead_letter(&self, record: &OwnedMessage, id: Option<String>, failure_type: FailureType, reason: String) {
        let key = headers::key_text(record);
        let payload = record.payload().unwrap_or_default();
        let origin = headers::Origin::of(record);
        let error = format!("{failure_type}: {reason}");
        let dlq_headers = origin.dead_letter_headers(&self.group_id, "1", &error);
        let dlq_topic = format!("{}.dlq", topics::WEBHOOK_INBOUND);
        until_ok("dead-lettering an edge-function request to Kafka", || {
            self.webhook.publisher.send_record(&dlq_topic, key.as_deref(), payload, &dlq_headers)
        })
        .await;
        let entry = NewDeadLetter {
            message_id: id.or(key),
            tenant_id: None,
            source: Some(source_of(record)),
            payload: payload.to_vec(),
            failure_type,
            error: reason,
            attempt_count: 1,
            trace_context: crate::telemetry::current_traceparent(),
            conversation: None,
        };
        let id = until_ok("filing an edge-function request in the DLQ", || self.store.dead_letter(None, &entry)).await;
        tracing::warn!(dlq_id = id, failure = %failure_type, error = %entry.error, "edge-function request dead-lettered");
        crate::metrics::count_dead_letter(failure_type);
    }
}

#[cfg(test)]
mod tests {
    use super::read;

    #[test]
    fn a_string_body_is_taken_byte_for_byte_and_header_names_in_any_case() {
        let raw = r#"{"object":"whatsapp_business_account","entry":[]}"#;
        let record = serde_json::json!({
            "id": "wh-1",
            "headers": { "X-Hub-Signature-256": ["sha256=ab"] },
            "body": raw,
            "timestamp": "2025-01-02T12:00:00Z",
        });
        let carried = read(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!((carried.id.as_str(), carried.body.as_slice()), ("wh-1", raw.as_bytes()));
        assert_eq!(carried.signature.as_deref(), Some("sha256=ab"));
    }

    #[test]
    fn an_object_body_is_its_text_in_the_record() {
        let payload = br#"{"id":"wh-2","headers":{},"body":{"object":"whatsapp_business_account","entry":[]}}"#;
        let carried = read(payload).unwrap();
        assert_eq!(carried.body, br#"{"object":"whatsapp_business_account","entry":[]}"#);
        assert_eq!(carried.signature, None);
    }

    #[test]
    fn records_of_another_shape_say_what_is_missing() {
        assert!(read(b"not json").unwrap_err().contains("not an edge-function request"));
        assert!(read(br#"{"id":"x","headers":{}}"#).unwrap_err().contains("body"));
        assert!(read(br#"{"body":{}}"#).unwrap_err().contains("id"));
    }
}
