//! `webhook::parse` on any bytes: never panics; what it accepts is a
//! `whatsapp_business_account` notification whose every message and status is
//! either used or rejected with a reason; every event has an id and a `+`
//! phone; and every message it produces survives a Kafka envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator::event::{Envelope, EventData};
use orchestrator::webhook::{NotifiedMessage, PayloadError, parse};
use serde_json::Value;

fuzz_target!(|bytes: &[u8]| {
    let notification = match parse(bytes) {
        Ok(notification) => notification,
        Err(PayloadError::Malformed(reason)) => return assert!(!reason.is_empty()),
        Err(PayloadError::WrongObject(object)) => return assert_ne!(object, "whatsapp_business_account"),
    };
    let body: Value = serde_json::from_slice(bytes).expect("accepted bodies are JSON");
    assert_eq!(body["object"], "whatsapp_business_account");
    let used = notification.events.len() + notification.statuses.len() + notification.rejected.len();
    assert_eq!(used, expected_items(&body), "every item is used or rejected: {notification:?}");
    for status in &notification.statuses {
        assert!(!status.message_id.is_empty() && !status.status.is_empty(), "{status:?}");
    }
    for event in notification.events {
        assert!(event.phone().starts_with('+'), "{event:?}");
        let data = match event {
            NotifiedMessage::Message(m) => {
                assert!(!m.message_id.is_empty());
                EventData::MessageReceived(m)
            }
            NotifiedMessage::Interaction(i) => {
                assert!(i.message_id.as_deref().is_some_and(|id| !id.is_empty()));
                EventData::InteractionReceived(i)
            }
            NotifiedMessage::Other(o) => {
                assert!(!o.message_id.is_empty() && !o.message_type.is_empty());
                continue;
            }
        };
        // What the webhook publishes, the consumer can read.
        let envelope = Envelope::new(data, "fuzz");
        let decoded = Envelope::decode(&envelope.encode()).expect("a published event decodes");
        assert_eq!(decoded.event_type(), envelope.event_type());
        assert_eq!(decoded.data.phone(), envelope.data.phone());
    }
});

/// How many items `parse` must account for: an independent model of its walk.
fn expected_items(body: &Value) -> usize {
    let mut items = 0;
    for entry in body["entry"].as_array().expect("accepted bodies have an entry array") {
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            items += 1;
            continue;
        };
        for change in changes {
            if change.get("field").and_then(Value::as_str) != Some("messages") {
                continue;
            }
            let Some(value) = change.get("value").and_then(Value::as_object) else {
                items += 1;
                continue;
            };
            for key in ["messages", "statuses"] {
                items += match value.get(key) {
                    None | Some(Value::Null) => 0,
                    Some(Value::Array(list)) => list.len(),
                    Some(_) => 1,
                };
            }
        }
    }
    items
}
