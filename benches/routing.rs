//! Routing one message through a registry of 50 handlers, the envelope codec,
//! and the keyword classifier.

use std::hint::black_box;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator::event::Envelope;
use orchestrator::{HandlerError, HandlerRegistry, Inbound, Intent, IntentHandler, IntentOutcome, MessageContext};

struct Numbered {
    intent: String,
    priority: i32,
}

#[async_trait]
impl IntentHandler for Numbered {
    fn intent(&self) -> &str {
        &self.intent
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    async fn handle(&self, _ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        Ok(IntentOutcome::default())
    }
}

const ENVELOPE: &[u8] = br#"{"event_id":"7d0c5b0e-8a55-4a57-9b0f-6d7f3a8f5c11","timestamp":"2025-01-02T12:00:00Z","event_type":"MessageReceived","version":"1.0","data":{"message_id":"wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQTdE","from_phone":"+15551234567","message_type":"Text","content":{"Text":{"body":"I want 2 tacos and a soda"}},"received_at":"2025-01-02T12:00:00Z","metadata":{"context_message_id":"wamid.prev"}},"metadata":{"processed_by":"webhook_event_publisher","processing_timestamp":"2025-01-02T12:00:01Z"},"attempt_count":1,"max_attempts":3}"#;

fn context(envelope: &Envelope, intent: &str) -> MessageContext {
    let orchestrator::event::EventData::MessageReceived(message) = &envelope.data else { unreachable!() };
    MessageContext {
        event_id: envelope.event_id,
        tenant_id: "default".into(),
        message_id: message.message_id.clone(),
        inbound: Inbound::Message(message.clone()),
        intent: Intent::new(intent, 0.9),
        attempt: 1,
        max_attempts: 3,
        run: 1,
    }
}

fn routing(c: &mut Criterion) {
    let registry = (0..50).fold(HandlerRegistry::new(Numbered { intent: "UNKNOWN".into(), priority: 0 }), |r, i| {
        r.with(Numbered { intent: format!("INTENT_{i}"), priority: i })
    });
    let envelope = Envelope::decode(ENVELOPE).expect("valid");
    // INTENT_49 has the highest priority (tried first); INTENT_0 the lowest (tried last).
    let first = context(&envelope, "INTENT_49");
    let last = context(&envelope, "INTENT_0");
    let none = context(&envelope, "NOBODY");
    let mut group = c.benchmark_group("route_50_handlers");
    group.bench_function("first_match", |b| b.iter(|| black_box(registry.route(black_box(&first))).priority()));
    group.bench_function("last_match", |b| b.iter(|| black_box(registry.route(black_box(&last))).priority()));
    group.bench_function("fallback", |b| b.iter(|| black_box(registry.route(black_box(&none))).priority()));
    group.finish();
}

fn codec(c: &mut Criterion) {
    let envelope = Envelope::decode(ENVELOPE).expect("valid");
    let mut group = c.benchmark_group("envelope");
    group.bench_function("decode", |b| b.iter(|| Envelope::decode(black_box(ENVELOPE)).map(|e| e.attempt_count)));
    group.bench_function("decode_via_value", |b| {
        b.iter(|| serde_json::from_slice::<Envelope>(black_box(ENVELOPE)).map(|e| e.attempt_count))
    });
    group.bench_function("encode", |b| b.iter(|| black_box(&envelope).encode().len()));
    group.finish();
}

fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify");
    let classifier = orchestrator::KeywordClassifier;
    for (name, text) in [
        ("order_en", "Hi, I want to order 2 tacos and 1 soda"),
        ("complaint_es", "¡Mi pedido llegó tarde y frío, es el peor servicio!"),
        ("small_talk", "hello there"),
    ] {
        group.bench_function(name, |b| b.iter(|| black_box(classifier.classify_text(black_box(text))).confidence));
    }
    group.finish();
}

criterion_group!(benches, routing, codec, classify);
criterion_main!(benches);
