//! Golden tests of the wire format: every fixture (built from DESIGN.md's
//! envelope example and field lists) is parsed and written back identical.

use orchestrator::event::{DecodeError, Envelope, EventData, EventType, MessageContent, ResponseContent, Selection};
use serde_json::Value;

fn fixtures() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut fixtures = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("fixture");
        let value: Value = serde_json::from_str(&text).expect("fixture is JSON");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match value {
            Value::Array(items) => {
                fixtures.extend(items.into_iter().enumerate().map(|(i, v)| (format!("{name}[{i}]"), v)))
            }
            single => fixtures.push((name, single)),
        }
    }
    fixtures.sort_by(|a, b| a.0.cmp(&b.0));
    fixtures
}

#[test]
fn every_fixture_round_trips_through_the_fast_decoder() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 13, "expected every event type's fixtures, found {}", fixtures.len());
    for (name, expected) in fixtures {
        let bytes = serde_json::to_vec(&expected).unwrap();
        let envelope = Envelope::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let written: Value = serde_json::from_slice(&envelope.encode()).unwrap();
        assert_eq!(written, expected, "{name} changed on the way through");
    }
}

#[test]
fn every_fixture_round_trips_through_serde() {
    for (name, expected) in fixtures() {
        let envelope: Envelope = serde_json::from_value(expected.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(serde_json::to_value(&envelope).unwrap(), expected, "{name}");
    }
}

#[test]
fn fixtures_cover_every_event_type() {
    let seen: std::collections::HashSet<EventType> =
        fixtures().iter().map(|(_, v)| EventType::parse(v["event_type"].as_str().unwrap()).unwrap()).collect();
    for event_type in EventType::ALL {
        assert!(seen.contains(&event_type), "no fixture for {event_type}");
    }
}

#[test]
fn design_example_decodes_to_the_typed_message() {
    let bytes = include_bytes!("golden/envelope_design_example.json");
    let envelope = Envelope::decode(bytes).unwrap();
    assert_eq!(envelope.event_type(), EventType::MessageReceived);
    assert_eq!(envelope.attempt_count, 1);
    assert_eq!(envelope.max_attempts, Some(3));
    assert_eq!(envelope.metadata.processed_by, "webhook_event_publisher");
    let EventData::MessageReceived(message) = &envelope.data else { panic!("wrong variant") };
    assert_eq!(message.from_phone, "+15551234567");
    assert_eq!(message.content, MessageContent::Text { body: "I want 2 tacos".into() });
    assert_eq!(serde_json::to_string(&message.content).unwrap(), r#"{"Text":{"body":"I want 2 tacos"}}"#);
}

#[test]
fn content_enums_are_externally_tagged() {
    let button: Selection = serde_json::from_str(r#"{"Button":{"id":"b1","title":"Yes"}}"#).unwrap();
    assert_eq!(button, Selection::Button { id: "b1".into(), title: "Yes".into() });
    let reply = ResponseContent::text("hola");
    assert_eq!(serde_json::to_string(&reply).unwrap(), r#"{"Text":{"message":"hola"}}"#);
}

#[test]
fn unknown_fields_are_ignored_and_optional_fields_may_be_missing() {
    let bytes = br#"{"event_id":"7d0c5b0e-8a55-4a57-9b0f-6d7f3a8f5c11","timestamp":"2025-01-02T12:00:00Z",
      "event_type":"MessageReceived","future_field":{"x":1},
      "data":{"message_id":"m1","from_phone":"+15551234567","message_type":"Image","added_later":true,
        "content":{"Media":{"media_id":"77"}},"received_at":"2025-01-02T12:00:00Z"}}"#;
    let envelope = Envelope::decode(bytes).unwrap();
    assert_eq!(envelope.version, "1.0");
    assert_eq!(envelope.attempt_count, 1);
    assert_eq!(envelope.max_attempts, None);
    let EventData::MessageReceived(message) = envelope.data else { panic!("wrong variant") };
    assert_eq!(message.content, MessageContent::Media { media_id: "77".into(), caption: None, mime_type: None });
    assert!(message.metadata.is_empty());
}

#[test]
fn bad_input_gets_a_clear_error() {
    assert!(matches!(Envelope::decode(b"not json"), Err(DecodeError::Malformed(_))));
    assert!(matches!(Envelope::decode(&[0xff, 0xfe, b'{']), Err(DecodeError::Malformed(_))));
    let unknown = br#"{"event_id":"7d0c5b0e-8a55-4a57-9b0f-6d7f3a8f5c11","timestamp":"2025-01-02T12:00:00Z",
      "event_type":"OrderShipped","data":{}}"#;
    match Envelope::decode(unknown) {
        Err(e @ DecodeError::UnknownEventType(_)) => assert_eq!(e.to_string(), "unknown event type `OrderShipped`"),
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
    let missing = br#"{"event_id":"7d0c5b0e-8a55-4a57-9b0f-6d7f3a8f5c11","timestamp":"2025-01-02T12:00:00Z",
      "event_type":"MessageReceived","data":{"message_id":"m1"}}"#;
    match Envelope::decode(missing) {
        Err(e @ DecodeError::InvalidData { event_type: EventType::MessageReceived, .. }) => {
            assert!(e.to_string().contains("from_phone"), "error should name the missing field: {e}")
        }
        other => panic!("expected InvalidData, got {other:?}"),
    }
    let huge = vec![b' '; orchestrator::event::MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(Envelope::decode(&huge), Err(DecodeError::Oversized { .. })));
}
