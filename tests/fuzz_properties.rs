//! Property tests of the two parsers that take bytes from outside: the Kafka
//! envelope decoder and the webhook notification parser (plus the webhook
//! signature check). They are the part of the fuzzing work that runs in CI, on
//! every `cargo test`; the coverage-guided cargo-fuzz targets in `fuzz/` run
//! the same code for longer, by hand (see fuzz/README.md).
//!
//! Every property asserts more than "does not panic": round trips, which
//! fields are optional, the defaults a missing field gets, and that the
//! webhook parser accounts for every item it was sent (used, or rejected with
//! a reason). The case counts keep the whole file to a few seconds in a debug
//! build. A failure prints the minimal input; add it below as a regression
//! test (failures are not persisted to a file).

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use orchestrator::event::{
    AiProcessResult, DecodeError, Envelope, EventData, EventMetadata, FailureType, InteractionReceived,
    InteractionType, MAX_PAYLOAD_BYTES, MessageContent, MessageFailed, MessageReceived, MessageType, Selection,
};
use orchestrator::webhook::signature::sign;
use orchestrator::webhook::{Notification, NotifiedMessage, PayloadError, SignatureError, parse, verify_signature};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

const FIXTURES: [(&str, &str); 15] = [
    ("audio", include_str!("fixtures/webhook/audio.json")),
    ("batch", include_str!("fixtures/webhook/batch.json")),
    ("button", include_str!("fixtures/webhook/button.json")),
    ("button_reply", include_str!("fixtures/webhook/button_reply.json")),
    ("contacts", include_str!("fixtures/webhook/contacts.json")),
    ("document", include_str!("fixtures/webhook/document.json")),
    ("image", include_str!("fixtures/webhook/image.json")),
    ("list_reply", include_str!("fixtures/webhook/list_reply.json")),
    ("location", include_str!("fixtures/webhook/location.json")),
    ("quickstart", include_str!("fixtures/webhook/quickstart.json")),
    ("reaction", include_str!("fixtures/webhook/reaction.json")),
    ("statuses", include_str!("fixtures/webhook/statuses.json")),
    ("sticker", include_str!("fixtures/webhook/sticker.json")),
    ("text", include_str!("fixtures/webhook/text.json")),
    ("video", include_str!("fixtures/webhook/video.json")),
];

/// Case counts: the file runs in a few seconds in a debug build.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Any text: arbitrary Unicode (control characters, astral planes, BOM...),
/// strings that are special to JSON, and plain words.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        1 => prop::sample::select(vec![
            "", "\"", "\\", "\\u0000", "\u{0}", "}", "{\"", "\u{feff}", "\u{10ffff}", "\u{1F600}", "\r\n\t", "null",
            "\u{2028}", "\\ud800",
        ])
        .prop_map(str::to_owned),
        2 => "[a-zA-Z0-9 .,!?]{0,40}",
    ]
}

fn phone() -> impl Strategy<Value = String> {
    prop_oneof![4 => "\\+[1-9][0-9]{6,14}", 1 => text()]
}

/// A moment between years 0000 and 9999 (what RFC 3339 can write), to the nanosecond.
fn datetime() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_167_219_200i64..=253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).expect("in range"))
}

/// Any finite `f64` (JSON has no NaN or infinity).
fn finite_f64() -> impl Strategy<Value = f64> {
    use prop::num::f64;
    f64::POSITIVE | f64::NEGATIVE | f64::NORMAL | f64::SUBNORMAL | f64::ZERO
}

fn message_type() -> impl Strategy<Value = MessageType> {
    prop::sample::select(vec![
        MessageType::Text,
        MessageType::Image,
        MessageType::Audio,
        MessageType::Video,
        MessageType::Document,
        MessageType::Location,
        MessageType::Contact,
        MessageType::Sticker,
    ])
}

fn message_content() -> impl Strategy<Value = MessageContent> {
    let opt = || prop::option::of(text());
    prop_oneof![
        3 => text().prop_map(|body| MessageContent::Text { body }),
        1 => (text(), opt(), opt())
            .prop_map(|(media_id, caption, mime_type)| MessageContent::Media { media_id, caption, mime_type }),
        1 => (finite_f64(), finite_f64(), opt(), opt())
            .prop_map(|(latitude, longitude, name, address)| MessageContent::Location { latitude, longitude, name, address }),
        1 => (text(), opt(), opt())
            .prop_map(|(name, phone_number, email)| MessageContent::Contact { name, phone_number, email }),
    ]
}

fn message_received() -> impl Strategy<Value = MessageReceived> {
    (text(), phone(), message_type(), message_content(), datetime(), prop::collection::hash_map(text(), text(), 0..4))
        .prop_map(|(message_id, from_phone, message_type, content, received_at, metadata)| MessageReceived {
            message_id,
            from_phone,
            message_type,
            content,
            received_at,
            metadata,
        })
}

fn interaction_received() -> impl Strategy<Value = InteractionReceived> {
    let selection = prop_oneof![
        (text(), text()).prop_map(|(id, title)| Selection::Button { id, title }),
        (text(), text(), prop::option::of(text())).prop_map(|(id, title, description)| Selection::List {
            id,
            title,
            description
        }),
    ];
    let kind = prop::sample::select(vec![InteractionType::ButtonReply, InteractionType::ListReply]);
    (text(), phone(), kind, selection, datetime(), prop::option::of(text())).prop_map(
        |(original_message_id, from_phone, interaction_type, selection, received_at, message_id)| InteractionReceived {
            original_message_id,
            from_phone,
            interaction_type,
            selection,
            received_at,
            message_id,
        },
    )
}

fn message_failed() -> impl Strategy<Value = MessageFailed> {
    (text(), phone(), prop::sample::select(FailureType::ALL.to_vec()), text(), any::<u32>(), datetime()).prop_map(
        |(message_id, phone, failure_type, error_details, attempt_count, failed_at)| MessageFailed {
            message_id,
            phone,
            failure_type,
            error_details,
            attempt_count,
            failed_at,
        },
    )
}

fn ai_result() -> impl Strategy<Value = AiProcessResult> {
    let opt = || prop::option::of(text());
    let entities = prop::collection::vec((text(), json_value()), 0..4).prop_map(|kv| kv.into_iter().collect());
    (text(), text(), opt(), opt(), opt(), text(), 0.0..=1.0f64, entities).prop_map(
        |(processing_id, message_id, lead_id, business_id, tenant_id, intent, confidence, entities)| AiProcessResult {
            processing_id,
            message_id,
            lead_id,
            business_id,
            tenant_id,
            intent,
            confidence,
            entities,
        },
    )
}

fn event_data() -> impl Strategy<Value = EventData> {
    prop_oneof![
        4 => message_received().prop_map(EventData::MessageReceived),
        3 => interaction_received().prop_map(EventData::InteractionReceived),
        1 => message_failed().prop_map(EventData::MessageFailed),
        1 => ai_result().prop_map(EventData::AiProcessResult),
    ]
}

/// Inbound envelopes only (what the consumer decodes from the webhook topics).
fn inbound_data() -> impl Strategy<Value = EventData> {
    prop_oneof![
        message_received().prop_map(EventData::MessageReceived),
        interaction_received().prop_map(EventData::InteractionReceived),
    ]
}

fn envelope_with(data: impl Strategy<Value = EventData>) -> impl Strategy<Value = Envelope> {
    (any::<u128>(), datetime(), text(), data, text(), datetime(), any::<u32>(), any::<u32>().prop_map(Some)).prop_map(
        |(id, timestamp, version, data, processed_by, processing_timestamp, attempt_count, max_attempts)| Envelope {
            event_id: uuid::Uuid::from_u128(id),
            timestamp,
            version,
            data,
            metadata: EventMetadata { processed_by, processing_timestamp },
            attempt_count,
            max_attempts,
        },
    )
}

/// Keys and strings the webhook parser looks for, so that random trees reach
/// past its first checks.
const WEBHOOK_WORDS: [&str; 34] = [
    "object",
    "whatsapp_business_account",
    "entry",
    "changes",
    "field",
    "messages",
    "value",
    "metadata",
    "phone_number_id",
    "display_phone_number",
    "contacts",
    "wa_id",
    "profile",
    "name",
    "statuses",
    "status",
    "recipient_id",
    "errors",
    "id",
    "from",
    "type",
    "timestamp",
    "context",
    "text",
    "body",
    "image",
    "location",
    "latitude",
    "interactive",
    "button_reply",
    "list_reply",
    "button",
    "payload",
    "title",
];

fn word_or_text() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(WEBHOOK_WORDS.to_vec()).prop_map(str::to_owned), 1 => text()]
}

/// Any JSON tree, up to 4 levels deep, with keys and strings the parser knows.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        word_or_text().prop_map(Value::from),
        "[0-9]{1,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word_or_text(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// An object built from `fields`, each present or not.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> impl Strategy<Value = Value> {
    fields
        .into_iter()
        .map(|(key, value)| prop::option::weighted(0.8, value).prop_map(move |v| v.map(|v| (key.to_owned(), v))))
        .collect::<Vec<_>>()
        .prop_map(|members| Value::Object(members.into_iter().flatten().collect()))
}

/// `plausible` most of the time, any tree otherwise.
fn mostly(plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![4 => plausible, 1 => json_value()].boxed()
}

/// The content object WhatsApp sends for a message `type`.
fn content_for(kind: &'static str) -> BoxedStrategy<Value> {
    match kind {
        "text" => text().prop_map(|body| json!({"body": body})).boxed(),
        "image" | "audio" | "video" | "document" | "sticker" => (text(), prop::option::of(text()))
            .prop_map(|(id, caption)| json!({"id": id, "caption": caption, "mime_type": "image/jpeg", "filename": "f.pdf"}))
            .boxed(),
        "location" => (finite_f64(), finite_f64(), prop::option::of(text()))
            .prop_map(|(latitude, longitude, name)| json!({"latitude": latitude, "longitude": longitude, "name": name}))
            .boxed(),
        "contacts" => (text(), prop::option::of(text()))
            .prop_map(|(name, phone)| {
                json!([{"name": {"formatted_name": name, "first_name": "A"}, "phones": [{"phone": phone}],
                    "emails": [{"email": "a@b"}]}])
            })
            .boxed(),
        "interactive" => prop_oneof![
            (text(), text()).prop_map(|(id, title)| json!({"type": "button_reply", "button_reply": {"id": id, "title": title}})),
            (text(), text()).prop_map(|(id, title)| json!({"type": "list_reply", "list_reply": {"id": id, "title": title, "description": "D"}})),
            Just(json!({"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}})),
        ]
        .boxed(),
        "button" => (prop::option::of(text()), text()).prop_map(|(payload, text)| json!({"payload": payload, "text": text})).boxed(),
        _ => json_value().boxed(),
    }
}

/// A message-shaped object: real keys, values right or wrong.
fn message_like() -> impl Strategy<Value = Value> {
    let kinds = vec![
        "text",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
    ];
    let kind_and_content = prop::sample::select(kinds)
        .prop_flat_map(|kind| (Just(kind), prop::option::weighted(0.9, mostly(content_for(kind)))));
    (
        kind_and_content,
        object(vec![
            ("from", mostly("[0-9]{1,15}".prop_map(Value::from))),
            ("id", mostly("wamid\\.[A-Za-z0-9]{1,20}".prop_map(Value::from))),
            ("timestamp", mostly(any::<i64>().prop_map(|s| Value::from(s.to_string())))),
            ("context", mostly(Just(json!({"from": "1555", "id": "wamid.ctx"})))),
        ]),
        prop::option::weighted(0.95, Just(())),
    )
        .prop_map(|((kind, content), mut message, typed)| {
            if let Value::Object(map) = &mut message {
                if typed.is_some() {
                    map.insert("type".to_owned(), Value::from(kind));
                }
                if let Some(content) = content {
                    map.insert(kind.to_owned(), content);
                }
            }
            message
        })
}

fn status_like() -> impl Strategy<Value = Value> {
    object(vec![
        ("id", mostly("wamid\\.[A-Za-z0-9]{1,20}".prop_map(Value::from))),
        ("status", mostly(prop::sample::select(vec!["sent", "delivered", "read", "failed"]).prop_map(Value::from))),
        ("timestamp", mostly(any::<i64>().prop_map(Value::from))),
        ("recipient_id", mostly("[0-9]{1,15}".prop_map(Value::from))),
        ("errors", mostly(Just(json!([{"code": 131026, "title": "Undeliverable"}])))),
    ])
}

/// A notification-shaped body: the right skeleton, with wrong values at any level.
fn notification_like() -> impl Strategy<Value = Value> {
    let items = |item: BoxedStrategy<Value>| mostly(prop::collection::vec(item, 0..4).prop_map(Value::Array));
    let value = object(vec![
        ("metadata", mostly(Just(json!({"phone_number_id": "1065", "display_phone_number": "1555"})))),
        ("contacts", mostly(Just(json!([{"profile": {"name": "Ana"}, "wa_id": "1555"}])))),
        ("messages", items(message_like().boxed())),
        ("statuses", items(status_like().boxed())),
    ]);
    let change = object(vec![("field", mostly(Just(Value::from("messages")))), ("value", mostly(value))]);
    let entry = object(vec![("id", json_value().boxed()), ("changes", items(change.boxed()))]);
    (items(entry.boxed()), prop::option::weighted(0.9, Just(()))).prop_map(|(entries, ours)| {
        let object = if ours.is_some() { "whatsapp_business_account" } else { "page" };
        json!({"object": object, "entry": entries})
    })
}

/// A byte-level edit of an input.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index, usize),
    Duplicate(Index, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop_oneof![
        3 => any::<u8>(),
        2 => prop::sample::select(b"{}[]\":,\\0123456789.eE-+ntfu ".to_vec()),
    ];
    let edit = prop_oneof![
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<Index>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), 1usize..32).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for edit in edits {
        if bytes.is_empty() {
            bytes.push(b'{');
        }
        match edit {
            Edit::Flip(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            Edit::Delete(i, n) => {
                let i = i.index(bytes.len());
                bytes.drain(i..(i + n).min(bytes.len()));
            }
            Edit::Duplicate(i, n) => {
                let i = i.index(bytes.len());
                let copy = bytes[i..(i + n).min(bytes.len())].to_vec();
                bytes.splice(i..i, copy);
            }
        }
    }
}

/// The path (as keys and indexes) of every object member and array item.
fn paths(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut visit = |key: String, child: &Value| {
        path.push(key);
        out.push(path.clone());
        paths(child, path, out);
        path.pop();
    };
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| visit(k.clone(), v)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| visit(i.to_string(), v)),
        _ => {}
    }
}

fn child_mut<'a>(value: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match value {
        Value::Object(map) => map.get_mut(key),
        Value::Array(items) => items.get_mut(key.parse::<usize>().ok()?),
        _ => None,
    }
}

/// Removes the member or item at `path`.
fn remove(value: &mut Value, path: &[String]) {
    let (last, parent) = path.split_last().expect("non-empty path");
    let parent = parent.iter().try_fold(value, |v, key| child_mut(v, key)).expect("path exists");
    match parent {
        Value::Object(map) => {
            map.remove(last);
        }
        Value::Array(items) => {
            items.remove(last.parse::<usize>().expect("index"));
        }
        _ => unreachable!("paths only go through containers"),
    }
}

/// Replaces the node at `path`.
fn replace(value: &mut Value, path: &[String], with: Value) {
    *path.iter().try_fold(value, |v, key| child_mut(v, key)).expect("path exists") = with;
}

/// How many items `parse` must account for (each used or rejected): an
/// independent model of the parser's walk over a notification it accepts.
fn expected_items(body: &Value) -> usize {
    let entries = body["entry"].as_array().expect("accepted bodies have an entry array");
    let mut items = 0;
    for entry in entries {
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

/// What holds for every notification `parse` accepts.
fn check_notification(body: &[u8], n: &Notification) -> Result<(), TestCaseError> {
    let value: Value = serde_json::from_slice(body).expect("accepted bodies are JSON");
    prop_assert_eq!(&value["object"], "whatsapp_business_account");
    prop_assert_eq!(
        n.events.len() + n.statuses.len() + n.rejected.len(),
        expected_items(&value),
        "every item is used or rejected: {:?}",
        n
    );
    for event in &n.events {
        let (id, kind) = match event {
            NotifiedMessage::Message(m) => (m.message_id.as_str(), m.metadata.get("whatsapp_type").cloned()),
            NotifiedMessage::Interaction(i) => (i.message_id.as_deref().unwrap_or_default(), None),
            NotifiedMessage::Other(o) => (o.message_id.as_str(), Some(o.message_type.clone())),
        };
        prop_assert!(!id.is_empty(), "event without an id: {:?}", event);
        prop_assert!(event.phone().starts_with('+'), "phone without +: {:?}", event);
        prop_assert!(kind.is_none_or(|k| !k.is_empty()), "event without a type: {:?}", event);
    }
    for status in &n.statuses {
        prop_assert!(!status.message_id.is_empty() && !status.status.is_empty(), "{:?}", status);
    }
    for reason in &n.rejected {
        prop_assert!(reason.starts_with("entry["), "rejection without a location: {}", reason);
    }
    Ok(())
}

/// Parses, and checks the result whatever it is.
fn parse_checked(body: &[u8]) -> Result<Option<Notification>, TestCaseError> {
    match parse(body) {
        Ok(n) => {
            check_notification(body, &n)?;
            Ok(Some(n))
        }
        Err(PayloadError::Malformed(reason)) => {
            prop_assert!(!reason.is_empty());
            Ok(None)
        }
        Err(PayloadError::WrongObject(object)) => {
            prop_assert_ne!(object, "whatsapp_business_account");
            Ok(None)
        }
    }
}

/// How far (in ULPs) a float may move through `encode` + `decode`: none when
/// serde_json reads floats back exactly (its `float_roundtrip` feature), else
/// the few ULPs its fast float parser can be off (up to 3 seen; see
/// `floats_survive_the_envelope_exactly`).
fn float_slack() -> u64 {
    static SLACK: LazyLock<u64> = LazyLock::new(|| {
        let probe = 0.950_000_000_000_000_1_f64;
        let back: f64 = serde_json::from_str(&serde_json::to_string(&probe).unwrap()).unwrap();
        if back == probe { 0 } else { 8 }
    });
    *SLACK
}

/// Whether two envelopes are equal, floats within [`float_slack`].
fn same(actual: Option<&Envelope>, expected: &Envelope) -> bool {
    fn ulps(x: f64, y: f64) -> u64 {
        if x == y {
            0
        } else if x.is_sign_negative() != y.is_sign_negative() {
            u64::MAX
        } else {
            x.to_bits().abs_diff(y.to_bits())
        }
    }
    fn close(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| ulps(x, y) <= float_slack())
            }
            (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y)),
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
            }
            _ => a == b,
        }
    }
    actual.is_some_and(|actual| {
        actual == expected || close(&serde_json::to_value(actual).unwrap(), &serde_json::to_value(expected).unwrap())
    })
}

/// Decodes, and checks the result whatever it is: an envelope decoded once
/// is written and read back unchanged, and both decoders agree.
fn decode_checked(bytes: &[u8]) -> Result<Option<Envelope>, TestCaseError> {
    let before = Utc::now();
    let fast = Envelope::decode(bytes);
    let slow = serde_json::from_slice::<Envelope>(bytes);
    match fast {
        Ok(envelope) => {
            let again = Envelope::decode(&envelope.encode()).ok();
            prop_assert!(same(again.as_ref(), &envelope), "re-encoding changed it: {:?}\n{:?}", again, envelope);
            // Both decoders read `data` through serde, one from text, one from a
            // JSON tree; they may differ on odd shapes there (a struct variant
            // written as an array, duplicate keys, a number out of f64's range in
            // a field the fast one skips), and nowhere else.
            let mut slow = match slow {
                Ok(slow) => slow,
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(
                        ["invalid ", "number out of range", "recursion limit exceeded"]
                            .iter()
                            .any(|p| e.starts_with(p)),
                        "the serde decoder refused: {}",
                        e
                    );
                    return Ok(Some(envelope));
                }
            };
            // A missing `processing_timestamp` is the time of decoding: each decoder reads the clock.
            if slow.metadata.processing_timestamp >= before && envelope.metadata.processing_timestamp >= before {
                slow.metadata.processing_timestamp = envelope.metadata.processing_timestamp;
            }
            prop_assert!(same(Some(&slow), &envelope), "the serde decoder disagrees: {:?}\n{:?}", slow, envelope);
            Ok(Some(envelope))
        }
        Err(error) => {
            prop_assert!(!error.to_string().is_empty());
            if bytes.len() > MAX_PAYLOAD_BYTES {
                prop_assert!(matches!(error, DecodeError::Oversized { .. }), "{error:?}");
            }
            if let (Ok(slow), false) = (slow, matches!(error, DecodeError::Oversized { .. })) {
                prop_assert!(
                    matches!(error, DecodeError::InvalidData { .. }),
                    "only `data` may differ: {:?} vs {:?}",
                    error,
                    slow
                );
            }
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------
// Envelope decoding
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(decode_checked(&bytes)?.is_none(), "random bytes decoded");
    }

    #[test]
    fn decode_never_panics_on_json_like_text(
        tokens in prop::collection::vec(prop::sample::select(vec![
            "{", "}", "[", "]", ":", ",", "\"event_id\"", "\"timestamp\"", "\"event_type\"", "\"data\"",
            "\"MessageReceived\"", "\"InteractionReceived\"", "\"7d0c5b0e-8a55-4a57-9b0f-6d7f3a8f5c11\"",
            "\"2025-01-02T12:00:00Z\"", "\"content\"", "\"Text\"", "\"body\"", "1", "-1", "1e999", "null", "\"\\u0000\"",
            "\"\\ud800\"", "true",
        ]), 0..64)
    ) {
        decode_checked(tokens.concat().as_bytes())?;
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn valid_envelopes_round_trip(envelope in envelope_with(event_data())) {
        let bytes = envelope.encode();
        let decoded = decode_checked(&bytes)?;
        prop_assert!(same(decoded.as_ref(), &envelope), "{:?}\n{:?}", decoded, envelope);
        // The wire format is the design's: every envelope field is there.
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&value["event_type"], envelope.event_type().as_str());
        let id = envelope.event_id.to_string();
        prop_assert_eq!(value["event_id"].as_str(), Some(id.as_str()));
    }

    #[test]
    fn mutated_envelopes_never_panic(envelope in envelope_with(inbound_data()), edits in edits()) {
        let mut bytes = envelope.encode();
        apply(&mut bytes, &edits);
        decode_checked(&bytes)?;
    }

    #[test]
    fn truncated_envelopes_are_malformed(envelope in envelope_with(inbound_data()), cut in any::<Index>()) {
        let bytes = envelope.encode();
        let len = cut.index(bytes.len());
        let result = Envelope::decode(&bytes[..len]);
        prop_assert!(matches!(result, Err(DecodeError::Malformed(_))), "[..{}]: {:?}", len, result);
    }

    /// A field removed is either optional, and then gets its documented
    /// default, or required, and then the envelope is refused.
    #[test]
    fn removed_fields_are_defaulted_or_refused(envelope in envelope_with(inbound_data()), which in any::<Index>()) {
        let mut value = serde_json::to_value(&envelope).unwrap();
        let mut all = Vec::new();
        paths(&value, &mut Vec::new(), &mut all);
        let path = which.get(&all).clone();
        remove(&mut value, &path);
        let bytes = serde_json::to_vec(&value).unwrap();
        let decoded = decode_checked(&bytes)?;

        let mut expected = envelope.clone();
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        let optional = match (keys.as_slice(), &mut expected.data) {
            (["version"], _) => { expected.version = "1.0".to_owned(); true }
            (["attempt_count"], _) => { expected.attempt_count = 1; true }
            (["max_attempts"], _) => { expected.max_attempts = None; true }
            (["metadata"], _) => {
                expected.metadata = EventMetadata { processed_by: String::new(), processing_timestamp: expected.timestamp };
                true
            }
            (["metadata", "processed_by"], _) => { expected.metadata.processed_by.clear(); true }
            (["metadata", "processing_timestamp"], _) => {
                // Defaults to the time of decoding.
                if let Some(decoded) = &decoded {
                    prop_assert!(decoded.metadata.processing_timestamp <= Utc::now());
                    expected.metadata.processing_timestamp = decoded.metadata.processing_timestamp;
                }
                true
            }
            (["data", "metadata"], EventData::MessageReceived(m)) => { m.metadata.clear(); true }
            (["data", "metadata", key], EventData::MessageReceived(m)) => { m.metadata.remove(*key); true }
            (["data", "message_id"], EventData::InteractionReceived(i)) => { i.message_id = None; true }
            (["data", "content", "Media", field], EventData::MessageReceived(m)) => match (&mut m.content, *field) {
                (MessageContent::Media { caption, .. }, "caption") => { *caption = None; true }
                (MessageContent::Media { mime_type, .. }, "mime_type") => { *mime_type = None; true }
                _ => false,
            },
            (["data", "content", "Location", field], EventData::MessageReceived(m)) => match (&mut m.content, *field) {
                (MessageContent::Location { name, .. }, "name") => { *name = None; true }
                (MessageContent::Location { address, .. }, "address") => { *address = None; true }
                _ => false,
            },
            (["data", "content", "Contact", field], EventData::MessageReceived(m)) => match (&mut m.content, *field) {
                (MessageContent::Contact { phone_number, .. }, "phone_number") => { *phone_number = None; true }
                (MessageContent::Contact { email, .. }, "email") => { *email = None; true }
                _ => false,
            },
            (["data", "selection", "List", "description"], EventData::InteractionReceived(i)) => {
                if let Selection::List { description, .. } = &mut i.selection {
                    *description = None;
                }
                true
            }
            _ => false,
        };
        if optional {
            prop_assert!(same(decoded.as_ref(), &expected), "optional {:?} removed: {:?}\n{:?}", path, decoded, expected);
        } else {
            prop_assert!(decoded.is_none(), "required {:?} removed, still decoded", path);
        }
    }

    /// Any node replaced by any JSON tree: no panic, and what decodes is stable.
    #[test]
    fn retyped_envelope_fields_never_panic(
        envelope in envelope_with(inbound_data()),
        which in any::<Index>(),
        with in json_value(),
    ) {
        let mut value = serde_json::to_value(&envelope).unwrap();
        let mut all = Vec::new();
        paths(&value, &mut Vec::new(), &mut all);
        let path: &Vec<String> = which.get(&all);
        replace(&mut value, path, with);
        decode_checked(&serde_json::to_vec(&value).unwrap())?;
    }
}

#[test]
fn payload_limit_is_exact() {
    let envelope = Envelope::new(
        EventData::MessageReceived(MessageReceived {
            message_id: "wamid.limit".to_owned(),
            from_phone: "+15551234567".to_owned(),
            message_type: MessageType::Text,
            content: MessageContent::Text { body: "hi".to_owned() },
            received_at: Utc::now(),
            metadata: HashMap::new(),
        }),
        "fuzz_properties",
    );
    let mut bytes = envelope.encode();
    bytes.resize(MAX_PAYLOAD_BYTES, b' ');
    assert_eq!(Envelope::decode(&bytes).unwrap(), envelope, "trailing whitespace up to the limit is fine");
    bytes.push(b' ');
    match Envelope::decode(&bytes) {
        Err(DecodeError::Oversized { size, limit }) => {
            assert_eq!((size, limit), (MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES))
        }
        other => panic!("expected Oversized, got {other:?}"),
    }
}

/// `open` + `depth` nested arrays + `close`: the deepest nesting that fits the payload limit.
fn nested(open: &str, depth: usize, close: &str) -> Vec<u8> {
    let mut bytes = open.as_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(b'[', depth));
    bytes.extend(std::iter::repeat_n(b']', depth));
    bytes.extend(close.as_bytes());
    bytes
}

#[test]
fn deep_nesting_is_no_stack_overflow() {
    const HEAD: &str = r#"{"event_id":"7d0c5b0e-8a55-4a57-9b0f-6d7f3a8f5c11","timestamp":"2025-01-02T12:00:00Z","#;
    const DATA: &str = r#""data":{"message_id":"m","from_phone":"+15551234567","message_type":"Text",
        "content":{"Text":{"body":"hi"}},"received_at":"2025-01-02T12:00:00Z""#;
    let deepest = MAX_PAYLOAD_BYTES / 2 - 1024;
    for depth in [129, 1000, deepest] {
        // `data` itself: serde_json refuses past 128 levels.
        for event_type in ["MessageReceived", "Nope"] {
            let bytes = nested(&format!(r#"{HEAD}"event_type":"{event_type}","data":"#), depth, "}");
            assert!(bytes.len() <= MAX_PAYLOAD_BYTES);
            assert!(decode_checked(&bytes).unwrap().is_none(), "{event_type} data [{depth}]");
        }
        // An unknown field, in `data` or beside it, is skipped without recursing,
        // at any depth: ignored like any unknown field.
        for (open, close) in [
            (format!(r#"{HEAD}"event_type":"MessageReceived",{DATA},"unknown":"#), "}}"),
            (format!(r#"{HEAD}"event_type":"MessageReceived",{DATA}}},"unknown":"#), "}"),
        ] {
            let bytes = nested(&open, depth, close);
            assert!(bytes.len() <= MAX_PAYLOAD_BYTES);
            assert!(decode_checked(&bytes).unwrap().is_some(), "{open}[{depth}]");
        }
        // The webhook parser builds a tree of the whole body: refused.
        let body = nested(r#"{"object":"whatsapp_business_account","entry":[],"unknown":"#, depth, "}");
        assert!(matches!(parse(&body), Err(PayloadError::Malformed(_))), "webhook [{depth}]");
    }
}

// ---------------------------------------------------------------------------
// Webhook parsing
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(parse_checked(&bytes)?.is_none(), "random bytes parsed");
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn parse_never_panics_on_any_json(value in json_value()) {
        parse_checked(&serde_json::to_vec(&value).unwrap())?;
        parse_checked(&serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [value]})).unwrap())?;
    }

    #[test]
    fn parse_accounts_for_every_item_of_notification_shaped_json(body in notification_like()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let parsed = parse_checked(&bytes)?;
        let ours = body["object"] == "whatsapp_business_account";
        prop_assert_eq!(parsed.is_some(), ours && body["entry"].is_array());
    }

    #[test]
    fn byte_mutated_fixtures_never_panic(fixture in prop::sample::select(FIXTURES.to_vec()), edits in edits()) {
        let mut bytes = fixture.1.as_bytes().to_vec();
        apply(&mut bytes, &edits);
        parse_checked(&bytes)?;
    }

    /// Any node of a fixture replaced by any tree, or removed.
    #[test]
    fn tree_mutated_fixtures_never_panic(
        fixture in prop::sample::select(FIXTURES.to_vec()),
        which in any::<Index>(),
        with in prop::option::of(json_value()),
    ) {
        let mut value: Value = serde_json::from_str(fixture.1).unwrap();
        let mut all = Vec::new();
        paths(&value, &mut Vec::new(), &mut all);
        let path = which.get(&all);
        match with {
            Some(with) => replace(&mut value, path, with),
            None => remove(&mut value, path),
        }
        parse_checked(&serde_json::to_vec(&value).unwrap())?;
    }
}

/// One text message of a generated notification.
#[derive(Debug, Clone)]
struct TextMessage {
    id: String,
    from: String,
    body: String,
    timestamp: i64,
    name: Option<String>,
}

fn text_message() -> impl Strategy<Value = TextMessage> {
    let id = prop_oneof!["wamid\\.[A-Za-z0-9+/=]{8,60}", text().prop_filter("non-empty", |s| !s.is_empty())];
    let from =
        ("[1-9][0-9]{5,14}", any::<bool>()).prop_map(|(digits, plus)| if plus { format!("+{digits}") } else { digits });
    // WhatsApp sends Unix seconds; anything `DateTime` can hold is accepted.
    let timestamp =
        prop_oneof![0i64..4_102_444_800, DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp()];
    let name = prop::option::of(text().prop_filter("non-empty", |s| !s.is_empty()));
    (id, from, text(), timestamp, name).prop_map(|(id, from, body, timestamp, name)| TextMessage {
        id,
        from,
        body,
        timestamp,
        name,
    })
}

proptest! {
    #![proptest_config(config(2048))]

    /// Every text message of a valid notification comes out as sent, and
    /// survives the trip through a Kafka envelope.
    #[test]
    fn valid_text_notifications_keep_id_phone_and_body(messages in prop::collection::vec(text_message(), 1..5)) {
        let contacts: Vec<Value> = messages
            .iter()
            .filter_map(|m| Some(json!({"profile": {"name": m.name.as_ref()?}, "wa_id": m.from.trim_start_matches('+')})))
            .collect();
        let items: Vec<Value> = messages
            .iter()
            .map(|m| json!({"from": m.from, "id": m.id, "timestamp": m.timestamp.to_string(), "type": "text", "text": {"body": m.body}}))
            .collect();
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
            "value": {"messaging_product": "whatsapp", "metadata": {"phone_number_id": "1065"}, "contacts": contacts,
            "messages": items}}]}]});
        let bytes = serde_json::to_vec(&body).unwrap();
        let n = parse_checked(&bytes)?.expect("a valid notification parses");
        prop_assert!(n.rejected.is_empty(), "{:?}", n.rejected);
        prop_assert_eq!(n.events.len(), messages.len());
        for (sent, event) in messages.iter().zip(&n.events) {
            let NotifiedMessage::Message(m) = event else { return Err(TestCaseError::fail(format!("{event:?}"))) };
            prop_assert_eq!(&m.message_id, &sent.id);
            prop_assert_eq!(&m.from_phone, &format!("+{}", sent.from.trim_start_matches('+')));
            prop_assert_eq!(m.message_type, MessageType::Text);
            prop_assert_eq!(&m.content, &MessageContent::Text { body: sent.body.clone() });
            prop_assert_eq!(Some(m.received_at), DateTime::from_timestamp(sent.timestamp, 0));
            prop_assert_eq!(m.metadata.get("phone_number_id").map(String::as_str), Some("1065"));
            // The first contact with that number names the sender.
            let named = messages.iter().find(|o| o.name.is_some() && o.from.trim_start_matches('+') == sent.from.trim_start_matches('+'));
            prop_assert_eq!(m.metadata.get("contact_name"), named.and_then(|o| o.name.as_ref()));

            // What the webhook publishes, the consumer reads back.
            let envelope = Envelope::new(EventData::MessageReceived(m.clone()), "fuzz_properties");
            let decoded = decode_checked(&envelope.encode())?;
            prop_assert!(same(decoded.as_ref(), &envelope), "{:?}\n{:?}", decoded, envelope);
        }
    }
}

// ---------------------------------------------------------------------------
// Webhook signature
// ---------------------------------------------------------------------------

/// What `verify_signature` must say about a well-formed-or-not header.
fn is_well_formed(header: &str) -> bool {
    header
        .trim()
        .strip_prefix("sha256=")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn own_signature_verifies_and_any_change_is_a_mismatch(
        secret in prop::collection::vec(any::<u8>(), 0..80),
        body in prop::collection::vec(any::<u8>(), 0..200),
        flip in any::<Index>(),
        bit in 0u8..8,
    ) {
        let header = sign(&secret, &body);
        prop_assert_eq!(verify_signature(&secret, &body, Some(&header)), Ok(()));
        prop_assert_eq!(verify_signature(&secret, &body, Some(&header.to_uppercase().replace("SHA256=", "sha256="))), Ok(()));
        prop_assert_eq!(verify_signature(&secret, &body, Some(&format!(" {header}\t"))), Ok(()));
        let mut tampered = body.clone();
        if tampered.is_empty() {
            tampered.push(0);
        } else {
            tampered[flip.index(body.len())] ^= 1 << bit;
        }
        prop_assert_eq!(verify_signature(&secret, &tampered, Some(&header)), Err(SignatureError::Mismatch));
        let mut other_secret = secret.clone();
        other_secret.push(1);
        prop_assert_eq!(verify_signature(&other_secret, &body, Some(&header)), Err(SignatureError::Mismatch));
    }

    #[test]
    fn any_header_is_checked_without_panicking(
        header in prop_oneof![
            text(),
            "sha256=[0-9a-fA-F]{60,68}",
            "[ \t]{0,2}sha256=[0-9a-fA-F]{64}[ \t\n]{0,2}",
            "sha256=[0-9a-f]{63}[g-zG-Z\u{e9}]",
        ],
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let result = verify_signature(b"app-secret", &body, Some(&header));
        if is_well_formed(&header) {
            // 2^-256: a random digest is never the right one.
            prop_assert_eq!(result, Err(SignatureError::Mismatch), "{:?}", header);
        } else {
            prop_assert_eq!(result, Err(SignatureError::Malformed), "{:?}", header);
        }
    }
}

#[test]
fn missing_signature_header_is_missing() {
    assert_eq!(verify_signature(b"s", b"{}", None), Err(SignatureError::Missing));
}

// ---------------------------------------------------------------------------
// Regressions: inputs the properties above found, kept as plain tests
// ---------------------------------------------------------------------------

fn location_message(latitude: f64, longitude: f64) -> Envelope {
    Envelope::new(
        EventData::MessageReceived(MessageReceived {
            message_id: "wamid.float".to_owned(),
            from_phone: "+15551234567".to_owned(),
            message_type: MessageType::Location,
            content: MessageContent::Location { latitude, longitude, name: None, address: None },
            received_at: Utc::now(),
            metadata: HashMap::new(),
        }),
        "fuzz_properties",
    )
}

/// Found by `valid_envelopes_round_trip`: serde_json's default float parser
/// is fast but not exact, so about one float in nine (coordinates,
/// confidences) comes back from the envelope one ULP off, and can move again
/// on each hop (retry topic, DLQ replay). The workspace now builds
/// serde_json with its `float_roundtrip` feature, which makes it exact.
#[test]
fn floats_survive_the_envelope_exactly() {
    for (latitude, longitude) in [
        (19.432_608_000_000_002, -122.419_416_000_000_01),
        (0.0, -9.494_554_380_681_459e118),
        (0.0, 1.378_841_828_522_152_1e275),
    ] {
        let envelope = location_message(latitude, longitude);
        assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
    }
    let mut result = AiProcessResult {
        processing_id: "p".to_owned(),
        message_id: "m".to_owned(),
        lead_id: None,
        business_id: None,
        tenant_id: None,
        intent: "ORDER_REQUEST".to_owned(),
        confidence: 0.950_000_000_000_000_1,
        entities: serde_json::Map::new(),
    };
    result.entities.insert("n".to_owned(), json!([[-1.128_020_228_989_668_5e-268]]));
    let envelope = Envelope::new(EventData::AiProcessResult(result), "fuzz_properties");
    assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
}

/// Found by `retyped_envelope_fields_never_panic`: a struct variant written
/// as an array (`{"Text":["object"]}`) is read by the fast decoder (serde
/// maps array items to fields in order) and refused by the JSON-tree one.
/// Both are fine as long as neither panics and they differ only in `data`.
#[test]
fn struct_variant_as_array_differs_only_in_data() {
    let bytes = br#"{"event_id":"00000000-0000-0000-0000-000000000000","timestamp":"1970-01-01T00:00:00Z",
        "event_type":"MessageReceived","version":"","data":{"message_id":"","from_phone":"+1000000",
        "message_type":"Text","content":{"Text":["object"]},"received_at":"1970-01-01T00:00:00Z","metadata":{}},
        "metadata":{"processed_by":"","processing_timestamp":"1970-01-01T00:00:00Z"},"attempt_count":0}"#;
    let decoded = decode_checked(bytes).unwrap().expect("the fast decoder reads it");
    let EventData::MessageReceived(m) = decoded.data else { panic!("{decoded:?}") };
    assert_eq!(m.content, MessageContent::Text { body: "object".to_owned() });
}

/// Found by the `envelope_decode` fuzz target: a number too big for an `f64`
/// (`19E4326`) in a field `data` does not have. The fast decoder skips the
/// unknown field without reading the number and accepts the envelope; the
/// serde `Deserialize` path builds a JSON tree for `data` first, which cannot
/// hold it, and refuses. Nothing in the code uses that path for envelopes.
#[test]
fn huge_number_in_an_unknown_data_field_is_skipped_by_the_fast_decoder() {
    let bytes = br#"{"event_id":"7d0c5b0e-8a55-4a57-9b0f-6d7f3a8f5c11","timestamp":"2025-06-08T20:59:43Z",
        "event_type":"InteractionReceived","data":{"original_message_id":"wamid.orig","from_phone":"+447700900123",
        "interaction_type":"ListReply","selection":{"List":{"id":"row-2","title":"t","x":19E4326}},
        "received_at":"2025-06-08T20:59:43Z"}}"#;
    let decoded = decode_checked(bytes).unwrap().expect("the fast decoder skips the unknown field");
    let EventData::InteractionReceived(i) = decoded.data else { panic!("{decoded:?}") };
    assert_eq!(i.selection, Selection::List { id: "row-2".to_owned(), title: "t".to_owned(), description: None });
    // Where the number is a field of `data`, both refuse it.
    let known = String::from_utf8_lossy(bytes).replace(r#""title":"t","x":19E4326"#, r#""title":19E4326"#);
    assert!(decode_checked(known.as_bytes()).unwrap().is_none());
}
