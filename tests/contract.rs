//! The wire contract, both directions: the envelope examples of DESIGN.md
//! decode and encode back to the same JSON; events written the way the
//! integration guide's Python and Node.js producers write them decode; and
//! every event we publish has the fields, with the JSON types, that the
//! guide's models require.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use orchestrator::event::{
    Envelope, EventData, FailureType, MessageContent, MessageFailed, MessageReceived, MessageType, Priority,
    ResponseContent, ResponseReady, ResponseType, default_max_attempts,
};
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

#[test]
fn design_examples_decode_and_encode_back_to_the_same_json() {
    for name in ["design_message_received.json", "design_response_ready.json"] {
        let bytes = fixture(name);
        let envelope = Envelope::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let written: Value = serde_json::from_slice(&envelope.encode()).unwrap();
        let golden: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(written, golden, "{name}");
    }
    let message = Envelope::decode(&fixture("design_message_received.json")).unwrap();
    let EventData::MessageReceived(m) = &message.data else { panic!("{message:?}") };
    assert_eq!(m.content, MessageContent::Text { body: "Hi, I want to order 2 pizzas".into() });
    assert_eq!(m.received_at, at("2025-01-02T11:59:59Z"));
    assert_eq!(message.max_attempts, Some(3));
}

#[test]
fn a_python_producers_event_decodes_naive_timestamps_as_utc_and_ignores_extra_fields() {
    let envelope = Envelope::decode(&fixture("python_response_ready.json")).unwrap();
    assert_eq!(
        envelope.timestamp,
        Utc.with_ymd_and_hms(2025, 1, 2, 12, 0, 0).unwrap() + chrono::Duration::microseconds(123_456)
    );
    assert_eq!(envelope.metadata.processed_by, "order-service");
    assert_eq!(envelope.metadata.processing_timestamp, envelope.timestamp);
    assert_eq!((envelope.attempt_count, envelope.max_attempts), (1, Some(3)));
    let EventData::ResponseReady(reply) = envelope.data else { panic!() };
    assert_eq!(reply.to_phone, "+15551234567");
    assert_eq!(reply.content, ResponseContent::text("Your order #1042 is on its way"));
    assert_eq!(reply.generated_at, at("2025-01-02T12:00:00.120001Z"));
    assert_eq!(reply.priority, Priority::Urgent);
}

#[test]
fn a_node_producers_event_decodes_with_defaults_for_what_it_leaves_out() {
    let envelope = Envelope::decode(&fixture("node_response_ready.json")).unwrap();
    assert_eq!(envelope.timestamp, at("2025-01-02T12:00:00.123Z"));
    assert_eq!(envelope.max_attempts, Some(5));
    let EventData::ResponseReady(reply) = envelope.data else { panic!() };
    assert_eq!(reply.priority, Priority::Normal, "priority defaults to Normal, as in the guide");
    assert!(reply.metadata.is_empty());
}

/// The guide's pydantic models, as field lists: name and JSON type.
const ENVELOPE: [(&str, Kind); 8] = [
    ("event_id", Kind::Str),
    ("timestamp", Kind::Time),
    ("event_type", Kind::Str),
    ("version", Kind::Str),
    ("data", Kind::Object),
    ("metadata", Kind::StringMap),
    ("attempt_count", Kind::Int),
    ("max_attempts", Kind::Int),
];
const MESSAGE_RECEIVED: [(&str, Kind); 6] = [
    ("message_id", Kind::Str),
    ("from_phone", Kind::Str),
    ("message_type", Kind::Str),
    ("content", Kind::Object),
    ("received_at", Kind::Time),
    ("metadata", Kind::StringMap),
];
const RESPONSE_READY: [(&str, Kind); 6] = [
    ("original_message_id", Kind::Str),
    ("to_phone", Kind::Str),
    ("response_type", Kind::Str),
    ("content", Kind::Object),
    ("generated_at", Kind::Time),
    ("priority", Kind::Str),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Time,
    Int,
    Object,
    StringMap,
}

fn check(value: &Value, fields: &[(&str, Kind)], what: &str) {
    for (name, kind) in fields {
        let field = value.get(name).unwrap_or_else(|| panic!("{what}: `{name}` missing in {value}"));
        let ok = match kind {
            Kind::Str => field.is_string(),
            // A Python datetime parses RFC 3339 with an offset.
            Kind::Time => field.as_str().is_some_and(|t| DateTime::parse_from_rfc3339(t).is_ok()),
            Kind::Int => field.is_u64(),
            Kind::Object => field.is_object(),
            Kind::StringMap => field.as_object().is_some_and(|map| map.values().all(Value::is_string)),
        };
        assert!(ok, "{what}: `{name}` should be {kind:?}, is {field}");
    }
}

#[test]
fn every_event_we_publish_has_what_the_guides_models_require() {
    let received_at = Utc::now();
    let message = MessageReceived {
        message_id: "wamid.1".into(),
        from_phone: "+15551234567".into(),
        message_type: MessageType::Image,
        content: MessageContent::Media { media_id: "m1".into(), caption: None, mime_type: None },
        received_at,
        metadata: HashMap::new(),
    };
    let reply = ResponseReady {
        original_message_id: "wamid.1".into(),
        to_phone: "+15551234567".into(),
        response_type: ResponseType::Text,
        content: ResponseContent::text("hi"),
        generated_at: received_at,
        priority: Priority::default(),
        metadata: Default::default(),
    };
    let failed = MessageFailed {
        message_id: "wamid.1".into(),
        phone: "+15551234567".into(),
        failure_type: FailureType::ValidationError,
        error_details: "no".into(),
        attempt_count: 1,
        failed_at: received_at,
    };
    for (data, fields) in [
        (EventData::MessageReceived(message), &MESSAGE_RECEIVED[..]),
        (EventData::ResponseReady(reply), &RESPONSE_READY[..]),
        (EventData::MessageFailed(failed), &[][..]),
    ] {
        let what = data.event_type().as_str();
        let mut envelope = Envelope::new(data, "contract");
        let value: Value = serde_json::from_slice(&envelope.encode()).unwrap();
        check(&value, &ENVELOPE, what);
        check(&value["data"], fields, what);
        assert_eq!(value["max_attempts"], default_max_attempts());

        // An envelope that sets no limit still writes one: the process's default.
        envelope.max_attempts = None;
        let value: Value = serde_json::from_slice(&envelope.encode()).unwrap();
        assert_eq!(value["max_attempts"], default_max_attempts(), "{what}");
    }
}
