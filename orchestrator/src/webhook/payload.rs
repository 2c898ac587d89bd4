//! WhatsApp Cloud API notifications (`object: whatsapp_business_account`)
//! turned into the orchestrator's events.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::event::{InteractionReceived, InteractionType, MessageContent, MessageReceived, MessageType, Selection};
pub use crate::store::DeliveryStatus;

/// What one webhook POST carried.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Notification {
    /// Every message of every entry and change, in the order sent.
    pub events: Vec<NotifiedMessage>,
    /// Delivery statuses of messages we sent.
    pub statuses: Vec<DeliveryStatus>,
    /// Message entries that could not be used (missing id or sender, ...),
    /// each with the reason; the rest of the notification is still used.
    pub rejected: Vec<String>,
}

/// One message of a notification.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifiedMessage {
    /// A message: text, media, location or contacts.
    Message(MessageReceived),
    /// A reply button, list row, or template quick-reply button.
    Interaction(InteractionReceived),
    /// A message type the events do not model (reaction, order, system,
    /// unsupported, ...), kept as WhatsApp sent it.
    Other(OtherMessage),
}

impl NotifiedMessage {
    /// The sender, E.164 with `+`.
    pub fn phone(&self) -> &str {
        match self {
            NotifiedMessage::Message(m) => &m.from_phone,
            NotifiedMessage::Interaction(i) => &i.from_phone,
            NotifiedMessage::Other(o) => &o.from_phone,
        }
    }
}

/// A message of a type without its own event.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherMessage {
    /// WhatsApp's message id.
    pub message_id: String,
    /// The sender, E.164 with `+`.
    pub from_phone: String,
    /// WhatsApp's `type` (e.g. `reaction`).
    pub message_type: String,
    /// When WhatsApp received it.
    pub received_at: DateTime<Utc>,
    /// The message object as sent.
    pub raw: serde_json::Value,
    /// The same metadata a [`MessageReceived`] gets.
    pub metadata: HashMap<String, String>,
}

/// The body is not a notification we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or JSON of the wrong shape (`entry` not an array, ...).
    #[error("malformed webhook body: {0}")]
    Malformed(String),
    /// `object` is not `whatsapp_business_account`.
    #[error("webhook object `{0}` is not whatsapp_business_account")]
    WrongObject(String),
}

/// The only `object` this webhook accepts.
const OBJECT: &str = "whatsapp_business_account";

/// Parses a webhook POST body.
///
/// Only a body that is not a notification at all is an error; a message or
/// status that cannot be used is skipped and its reason added to
/// [`Notification::rejected`], so one bad item never loses its siblings.
/// Never panics, whatever the input.
pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::Malformed(format!("body is not JSON: {e}")))?;
    let Value::Object(root) = root else {
        return Err(PayloadError::Malformed("body is not a JSON object".to_owned()));
    };
    // `object` first: another product's webhook (page, instagram...) is reported
    // as such even when its shape differs from ours.
    match root.get("object") {
        Some(Value::String(object)) if object == OBJECT => {}
        Some(Value::String(object)) => return Err(PayloadError::WrongObject(object.clone())),
        None | Some(Value::Null) => return Err(PayloadError::WrongObject(String::new())),
        Some(other) => return Err(PayloadError::WrongObject(other.to_string())),
    }
    let entries = match root.get("entry") {
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(PayloadError::Malformed("`entry` is not an array".to_owned())),
        None => return Err(PayloadError::Malformed("`entry` is missing".to_owned())),
    };

    // One clock reading for the whole body: items without a usable timestamp
    // all get the same fallback.
    let now = Utc::now();
    let mut out = Notification::default();
    for (e, entry) in entries.iter().enumerate() {
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            out.rejected.push(format!("entry[{e}]: `changes` is missing or not an array"));
            continue;
        };
        for (c, change) in changes.iter().enumerate() {
            if change.get("field").and_then(Value::as_str) != Some("messages") {
                continue;
            }
            let at = format!("entry[{e}].changes[{c}]");
            match change.get("value").and_then(Value::as_object) {
                Some(value) => messages_change(value, &at, now, &mut out),
                None => out.rejected.push(format!("{at}: `value` is missing or not an object")),
            }
        }
    }
    Ok(out)
}

/// What every item of one `messages` change shares.
struct Change<'a> {
    phone_number_id: Option<&'a str>,
    display_phone_number: Option<&'a str>,
    contacts: &'a [Value],
}

impl Change<'_> {
    /// The profile name of the contact whose `wa_id` is `from`.
    fn contact_name(&self, from: &str) -> Option<&str> {
        let from = from.trim_start_matches('+');
        self.contacts
            .iter()
            .find(|c| c.get("wa_id").and_then(Value::as_str).map(|w| w.trim_start_matches('+')) == Some(from))
            .and_then(|c| c.get("profile")?.get("name")?.as_str())
            .filter(|name| !name.is_empty())
    }
}

fn messages_change(value: &Map<String, Value>, at: &str, now: DateTime<Utc>, out: &mut Notification) {
    let metadata = value.get("metadata");
    let change = Change {
        phone_number_id: metadata.and_then(|m| non_empty(m, "phone_number_id")),
        display_phone_number: metadata.and_then(|m| non_empty(m, "display_phone_number")),
        contacts: value.get("contacts").and_then(Value::as_array).map_or(&[], Vec::as_slice),
    };

    match value.get("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(messages)) => {
            for (m, message) in messages.iter().enumerate() {
                match inbound(message, &change, now) {
                    Ok(event) => out.events.push(event),
                    Err(reason) => out.rejected.push(format!("{at}.messages[{m}]{}: {reason}", id_suffix(message))),
                }
            }
        }
        Some(_) => out.rejected.push(format!("{at}: `messages` is not an array")),
    }

    match value.get("statuses") {
        None | Some(Value::Null) => {}
        Some(Value::Array(statuses)) => {
            for (s, status) in statuses.iter().enumerate() {
                match delivery_status(status, change.phone_number_id, now) {
                    Ok(status) => out.statuses.push(status),
                    Err(reason) => out.rejected.push(format!("{at}.statuses[{s}]{}: {reason}", id_suffix(status))),
                }
            }
        }
        Some(_) => out.rejected.push(format!("{at}: `statuses` is not an array")),
    }
}

/// ` (wamid...)` when the item has an id, to find it in WhatsApp's logs.
fn id_suffix(item: &Value) -> String {
    non_empty(item, "id").map(|id| format!(" ({id})")).unwrap_or_default()
}

fn inbound(raw: &Value, change: &Change<'_>, now: DateTime<Utc>) -> Result<NotifiedMessage, String> {
    let Some(obj) = raw.as_object() else {
        return Err("not an object".to_owned());
    };
    let message_id = non_empty(raw, "id").ok_or("missing `id`")?.to_owned();
    let from = non_empty(raw, "from").ok_or("missing `from`")?;
    let kind = non_empty(raw, "type").ok_or("missing `type`")?;
    let from_phone = e164(from);
    let received_at = timestamp(obj.get("timestamp"), now);
    let context = obj.get("context");
    let context_id = context.and_then(|c| non_empty(c, "id"));

    let mut metadata = HashMap::new();
    let mut meta = |key: &str, value: Option<&str>| {
        if let Some(value) = value {
            metadata.insert(key.to_owned(), value.to_owned());
        }
    };
    meta("phone_number_id", change.phone_number_id);
    meta("display_phone_number", change.display_phone_number);
    meta("contact_name", change.contact_name(from));
    meta("whatsapp_type", Some(kind));
    meta("context_message_id", context_id);
    meta("context_from", context.and_then(|c| non_empty(c, "from")).map(e164).as_deref());

    let message = |message_type, content| {
        NotifiedMessage::Message(MessageReceived {
            message_id: message_id.clone(),
            from_phone: from_phone.clone(),
            message_type,
            content,
            received_at,
            metadata: metadata.clone(),
        })
    };
    let interaction = |interaction_type, selection| {
        NotifiedMessage::Interaction(InteractionReceived {
            original_message_id: context_id.unwrap_or_default().to_owned(),
            from_phone: from_phone.clone(),
            interaction_type,
            selection,
            received_at,
            message_id: Some(message_id.clone()),
        })
    };
    let other = || {
        NotifiedMessage::Other(OtherMessage {
            message_id: message_id.clone(),
            from_phone: from_phone.clone(),
            message_type: kind.to_owned(),
            received_at,
            raw: raw.clone(),
            metadata: metadata.clone(),
        })
    };

    let event = match kind {
        "text" => {
            let text: TextBody = content(obj, "text")?;
            message(MessageType::Text, MessageContent::Text { body: text.body })
        }
        "image" | "audio" | "video" | "document" | "sticker" => {
            let media: Media = content(obj, kind)?;
            if media.id.is_empty() {
                return Err(format!("`{kind}.id` is empty"));
            }
            let message_type = match kind {
                "image" => MessageType::Image,
                "audio" => MessageType::Audio,
                "video" => MessageType::Video,
                "document" => MessageType::Document,
                _ => MessageType::Sticker,
            };
            let mut event = message(
                message_type,
                MessageContent::Media { media_id: media.id, caption: media.caption, mime_type: media.mime_type },
            );
            if let (NotifiedMessage::Message(m), "document", Some(filename)) = (&mut event, kind, media.filename) {
                m.metadata.insert("filename".to_owned(), filename);
            }
            event
        }
        "location" => {
            let l: Location = content(obj, "location")?;
            message(
                MessageType::Location,
                MessageContent::Location {
                    latitude: l.latitude,
                    longitude: l.longitude,
                    name: l.name,
                    address: l.address,
                },
            )
        }
        "contacts" => {
            let contacts: Vec<SharedContact> = content(obj, "contacts")?;
            // The event holds one contact card; WhatsApp may send several.
            let first = contacts.into_iter().next().ok_or("`contacts` is empty")?;
            let name = first
                .name
                .and_then(|n| n.formatted_name.filter(|s| !s.is_empty()).or(n.first_name.filter(|s| !s.is_empty())))
                .unwrap_or_default();
            let phone_number = first.phones.into_iter().find_map(|p| p.phone.filter(|s| !s.is_empty()));
            let email = first.emails.into_iter().find_map(|e| e.email.filter(|s| !s.is_empty()));
            message(MessageType::Contact, MessageContent::Contact { name, phone_number, email })
        }
        "interactive" => {
            let Some(interactive) = obj.get("interactive").and_then(Value::as_object) else {
                return Err("missing `interactive`".to_owned());
            };
            match interactive.get("type").and_then(Value::as_str) {
                Some("button_reply") => {
                    let reply: Reply = content(interactive, "button_reply")?;
                    interaction(InteractionType::ButtonReply, Selection::Button { id: reply.id, title: reply.title })
                }
                Some("list_reply") => {
                    let reply: Reply = content(interactive, "list_reply")?;
                    let selection =
                        Selection::List { id: reply.id, title: reply.title, description: reply.description };
                    interaction(InteractionType::ListReply, selection)
                }
                // nfm_reply (flows), call_permission_reply, future subtypes.
                _ => other(),
            }
        }
        "button" => {
            let button: QuickReply = content(obj, "button")?;
            // WhatsApp fills `payload` with the button text when the template set
            // none; fall back the same way if it is ever left out.
            let id = button.payload.filter(|p| !p.is_empty()).unwrap_or_else(|| button.text.clone());
            interaction(InteractionType::ButtonReply, Selection::Button { id, title: button.text })
        }
        _ => other(),
    };
    Ok(event)
}

fn delivery_status(
    status: &Value,
    phone_number_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<DeliveryStatus, String> {
    if !status.is_object() {
        return Err("not an object".to_owned());
    }
    let message_id = non_empty(status, "id").ok_or("missing `id`")?.to_owned();
    let state = non_empty(status, "status").ok_or("missing `status`")?.to_owned();
    let errors: Vec<String> = status
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| errors.iter().map(error_text).collect())
        .unwrap_or_default();
    Ok(DeliveryStatus {
        message_id,
        recipient_phone: non_empty(status, "recipient_id").map(e164).unwrap_or_default(),
        status: state,
        timestamp: timestamp(status.get("timestamp"), now),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        phone_number_id: phone_number_id.map(str::to_owned),
    })
}

/// `code: title (details)`, each part optional; `message` stands in for a
/// missing `title` (older and newer Graph versions differ).
fn error_text(error: &Value) -> String {
    let code = match error.get("code") {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let title = non_empty(error, "title").or_else(|| non_empty(error, "message"));
    let mut text = match (code, title) {
        (Some(code), Some(title)) => format!("{code}: {title}"),
        (Some(code), None) => code,
        (None, Some(title)) => title.to_owned(),
        (None, None) => "unknown error".to_owned(),
    };
    if let Some(details) = error.get("error_data").and_then(|d| non_empty(d, "details")) {
        text.push_str(&format!(" ({details})"));
    }
    text
}

/// Deserializes the content object `key` of a message, with a reason on failure.
fn content<'a, T: Deserialize<'a>>(obj: &'a Map<String, Value>, key: &str) -> Result<T, String> {
    let value = obj.get(key).filter(|v| !v.is_null()).ok_or_else(|| format!("missing `{key}`"))?;
    T::deserialize(value).map_err(|e| format!("`{key}`: {e}"))
}

/// A string field, when present and not empty.
fn non_empty<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key)?.as_str().filter(|s| !s.is_empty())
}

/// WhatsApp sends numbers without `+`; the events carry E.164 with it.
fn e164(phone: &str) -> String {
    let phone = phone.trim();
    if phone.starts_with('+') { phone.to_owned() } else { format!("+{phone}") }
}

/// Unix seconds, as WhatsApp's string or (leniently) a number; `now` otherwise.
fn timestamp(value: Option<&Value>, now: DateTime<Utc>) -> DateTime<Utc> {
    let secs = match value {
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    secs.and_then(|s| DateTime::from_timestamp(s, 0)).unwrap_or(now)
}

#[derive(Deserialize)]
struct TextBody {
    body: String,
}

#[derive(Deserialize)]
struct Media {
    id: String,
    caption: Option<String>,
    mime_type: Option<String>,
    filename: Option<String>,
}

#[derive(Deserialize)]
struct Location {
    latitude: f64,
    longitude: f64,
    name: Option<String>,
    address: Option<String>,
}

#[derive(Deserialize)]
struct SharedContact {
    name: Option<ContactName>,
    #[serde(default)]
    phones: Vec<ContactPhone>,
    #[serde(default)]
    emails: Vec<ContactEmail>,
}

#[derive(Deserialize)]
struct ContactName {
    formatted_name: Option<String>,
    first_name: Option<String>,
}

#[derive(Deserialize)]
struct ContactPhone {
    phone: Option<String>,
}

#[derive(Deserialize)]
struct ContactEmail {
    email: Option<String>,
}

#[derive(Deserialize)]
struct Reply {
    id: String,
    title: String,
    description: Option<String>,
}

#[derive(Deserialize)]
struct QuickReply {
    payload: Option<String>,
    text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../../../tests/fixtures/webhook/text.json");
    const IMAGE: &str = include_str!("../../../tests/fixtures/webhook/image.json");
    const AUDIO: &str = include_str!("../../../tests/fixtures/webhook/audio.json");
    const VIDEO: &str = include_str!("../../../tests/fixtures/webhook/video.json");
    const DOCUMENT: &str = include_str!("../../../tests/fixtures/webhook/document.json");
    const STICKER: &str = include_str!("../../../tests/fixtures/webhook/sticker.json");
    const LOCATION: &str = include_str!("../../../tests/fixtures/webhook/location.json");
    const CONTACTS: &str = include_str!("../../../tests/fixtures/webhook/contacts.json");
    const BUTTON_REPLY: &str = include_str!("../../../tests/fixtures/webhook/button_reply.json");
    const LIST_REPLY: &str = include_str!("../../../tests/fixtures/webhook/list_reply.json");
    const BUTTON: &str = include_str!("../../../tests/fixtures/webhook/button.json");
    const REACTION: &str = include_str!("../../../tests/fixtures/webhook/reaction.json");
    const STATUSES: &str = include_str!("../../../tests/fixtures/webhook/statuses.json");
    const BATCH: &str = include_str!("../../../tests/fixtures/webhook/batch.json");
    const QUICKSTART: &str = include_str!("../../../tests/fixtures/webhook/quickstart.json");

    const ALL: [(&str, &str); 15] = [
        ("text", TEXT),
        ("image", IMAGE),
        ("audio", AUDIO),
        ("video", VIDEO),
        ("document", DOCUMENT),
        ("sticker", STICKER),
        ("location", LOCATION),
        ("contacts", CONTACTS),
        ("button_reply", BUTTON_REPLY),
        ("list_reply", LIST_REPLY),
        ("button", BUTTON),
        ("reaction", REACTION),
        ("statuses", STATUSES),
        ("batch", BATCH),
        ("quickstart", QUICKSTART),
    ];

    /// Business number of every fixture but quickstart and batch's second entry.
    const PHONE_NUMBER_ID: &str = "106540352242922";
    const DISPLAY_PHONE: &str = "15550783881";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// The metadata of a fixture message from Sheena Nelson, plus `extra`.
    fn sheena_metadata(whatsapp_type: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut metadata = map(&[
            ("phone_number_id", PHONE_NUMBER_ID),
            ("display_phone_number", DISPLAY_PHONE),
            ("contact_name", "Sheena Nelson"),
            ("whatsapp_type", whatsapp_type),
        ]);
        metadata.extend(map(extra));
        metadata
    }

    fn only_event(body: &str) -> NotifiedMessage {
        let n = parse(body.as_bytes()).expect("parses");
        assert_eq!(n.rejected, Vec::<String>::new());
        assert!(n.statuses.is_empty());
        assert_eq!(n.events.len(), 1, "{:?}", n.events);
        n.events.into_iter().next().unwrap()
    }

    fn only_message(body: &str) -> MessageReceived {
        match only_event(body) {
            NotifiedMessage::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn only_interaction(body: &str) -> InteractionReceived {
        match only_event(body) {
            NotifiedMessage::Interaction(i) => i,
            other => panic!("expected an interaction, got {other:?}"),
        }
    }

    /// A notification with one `messages` change holding `messages`.
    fn with_messages(messages: Value) -> Vec<u8> {
        serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550000000", "phone_number_id": "123456"},
                "messages": messages
            }}]}]
        })
        .to_string()
        .into_bytes()
    }

    fn media(
        body: &str,
        message_type: MessageType,
        media_id: &str,
        caption: Option<&str>,
        mime: &str,
    ) -> MessageReceived {
        let m = only_message(body);
        assert_eq!(m.message_type, message_type);
        assert_eq!(
            m.content,
            MessageContent::Media {
                media_id: media_id.to_owned(),
                caption: caption.map(str::to_owned),
                mime_type: Some(mime.to_owned())
            }
        );
        assert_eq!(m.from_phone, "+16505551234");
        assert_eq!(m.received_at, at(1_744_344_496));
        m
    }

    #[test]
    fn quickstart_maps_to_a_text_message() {
        let m = only_message(QUICKSTART);
        assert_eq!(
            m,
            MessageReceived {
                message_id: "wamid.test1".to_owned(),
                from_phone: "+15551234567".to_owned(),
                message_type: MessageType::Text,
                content: MessageContent::Text { body: "Hi, I want to order 2 pizzas".to_owned() },
                received_at: at(1_700_000_000),
                metadata: map(&[
                    ("phone_number_id", "123456"),
                    ("display_phone_number", "15550000000"),
                    ("whatsapp_type", "text"),
                ]),
            }
        );
    }

    #[test]
    fn text_with_contact_name_and_metadata() {
        let m = only_message(TEXT);
        assert_eq!(
            m,
            MessageReceived {
                message_id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=".to_owned(),
                from_phone: "+16505551234".to_owned(),
                message_type: MessageType::Text,
                content: MessageContent::Text { body: "Does it come in another color?".to_owned() },
                received_at: at(1_749_416_383),
                metadata: sheena_metadata("text", &[]),
            }
        );
    }

    #[test]
    fn image_with_caption() {
        let m = media(
            IMAGE,
            MessageType::Image,
            "1003383421387256",
            Some("The black one, if it is available"),
            "image/jpeg",
        );
        assert_eq!(m.metadata, sheena_metadata("image", &[]));
        assert_eq!(m.content.text(), Some("The black one, if it is available"));
    }

    #[test]
    fn audio_voice_note() {
        let m = media(AUDIO, MessageType::Audio, "1540431650189478", None, "audio/ogg; codecs=opus");
        assert_eq!(m.metadata, sheena_metadata("audio", &[]));
    }

    #[test]
    fn video_replying_to_a_message_carries_the_context() {
        let m = media(VIDEO, MessageType::Video, "1184461933125837", Some("This is how it arrived"), "video/mp4");
        assert_eq!(
            m.metadata,
            sheena_metadata(
                "video",
                &[
                    ("context_message_id", "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3NTU2NDJBQjk4RUMzRkM2QjQA"),
                    ("context_from", "+15550783881"),
                ]
            )
        );
    }

    #[test]
    fn document_keeps_its_filename() {
        let m = media(
            DOCUMENT,
            MessageType::Document,
            "1376223850470843",
            Some("Purchase order for next week"),
            "application/pdf",
        );
        assert_eq!(m.metadata, sheena_metadata("document", &[("filename", "PO-2025-0413.pdf")]));
    }

    #[test]
    fn sticker() {
        let m = media(STICKER, MessageType::Sticker, "1229193045460218", None, "image/webp");
        assert_eq!(m.metadata, sheena_metadata("sticker", &[]));
    }

    #[test]
    fn location_with_name_and_address() {
        let m = only_message(LOCATION);
        assert_eq!(m.message_type, MessageType::Location);
        assert_eq!(
            m.content,
            MessageContent::Location {
                latitude: 37.483307,
                longitude: -122.148981,
                name: Some("Meta Headquarters".to_owned()),
                address: Some("1 Hacker Way, Menlo Park, CA 94025".to_owned()),
            }
        );
        assert_eq!(m.from_phone, "+16505551234");
        assert_eq!(m.metadata, sheena_metadata("location", &[]));
    }

    #[test]
    fn shared_contact_takes_the_first_card_phone_and_email() {
        let m = only_message(CONTACTS);
        assert_eq!(m.message_type, MessageType::Contact);
        assert_eq!(
            m.content,
            MessageContent::Contact {
                name: "Barbara J. Johnson".to_owned(),
                phone_number: Some("+1 (650) 555-1234".to_owned()),
                email: Some("bjohnson@example.com".to_owned()),
            }
        );
        assert_eq!(m.metadata, sheena_metadata("contacts", &[]));
    }

    #[test]
    fn shared_contact_name_falls_back_to_first_name_then_empty() {
        let body = with_messages(serde_json::json!([
            {"from": "1", "id": "a", "type": "contacts", "contacts": [{"name": {"first_name": "Ana"}}]},
            {"from": "1", "id": "b", "type": "contacts", "contacts": [{"phones": [{"wa_id": "1"}, {"phone": "+2"}]}]}
        ]));
        let n = parse(&body).unwrap();
        let contents: Vec<_> = n
            .events
            .iter()
            .map(|e| match e {
                NotifiedMessage::Message(m) => m.content.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            contents,
            [
                MessageContent::Contact { name: "Ana".to_owned(), phone_number: None, email: None },
                MessageContent::Contact { name: String::new(), phone_number: Some("+2".to_owned()), email: None },
            ]
        );
    }

    #[test]
    fn button_reply_is_an_interaction_on_the_context_message() {
        let i = only_interaction(BUTTON_REPLY);
        assert_eq!(
            i,
            InteractionReceived {
                original_message_id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA".to_owned(),
                from_phone: "+16505551234".to_owned(),
                interaction_type: InteractionType::ButtonReply,
                selection: Selection::Button { id: "confirm-order".to_owned(), title: "Yes, confirm".to_owned() },
                received_at: at(1_744_344_496),
                message_id: Some("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=".to_owned()),
            }
        );
    }

    #[test]
    fn list_reply_keeps_the_description() {
        let i = only_interaction(LIST_REPLY);
        assert_eq!(
            i,
            InteractionReceived {
                original_message_id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDNkY2NjYzQTdBRDEzMUQ3MEEA".to_owned(),
                from_phone: "+16505551234".to_owned(),
                interaction_type: InteractionType::ListReply,
                selection: Selection::List {
                    id: "pizza-margherita".to_owned(),
                    title: "Margherita".to_owned(),
                    description: Some("Tomato, mozzarella, basil".to_owned()),
                },
                received_at: at(1_744_344_496),
                message_id: Some("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTkzMjQ4OUJBMDlBQjNDNDk4RQA=".to_owned()),
            }
        );
    }

    #[test]
    fn template_quick_reply_is_a_button_reply_with_the_payload_as_id() {
        let i = only_interaction(BUTTON);
        assert_eq!(
            i,
            InteractionReceived {
                original_message_id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBIzMjA4QzEzQjlEQjlGMzkwRjIA".to_owned(),
                from_phone: "+16505551234".to_owned(),
                interaction_type: InteractionType::ButtonReply,
                selection: Selection::Button { id: "STOP_PROMOTIONS".to_owned(), title: "Stop promotions".to_owned() },
                received_at: at(1_744_344_496),
                message_id: Some("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUJGOTUyRkM4QzMzRDBEMDBDNgA=".to_owned()),
            }
        );
    }

    #[test]
    fn interaction_without_context_has_an_empty_original_id() {
        let body = with_messages(serde_json::json!([{"from": "1", "id": "a", "type": "button",
            "button": {"text": "Yes"}}]));
        let i = only_interaction(std::str::from_utf8(&body).unwrap());
        assert_eq!(i.original_message_id, "");
        // No payload: the text stands in as the id.
        assert_eq!(i.selection, Selection::Button { id: "Yes".to_owned(), title: "Yes".to_owned() });
    }

    #[test]
    fn reaction_is_other_with_the_raw_message() {
        let event = only_event(REACTION);
        let NotifiedMessage::Other(o) = event else { panic!("expected Other, got {event:?}") };
        let fixture: Value = serde_json::from_str(REACTION).unwrap();
        assert_eq!(&o.raw, fixture.pointer("/entry/0/changes/0/value/messages/0").unwrap());
        assert_eq!(o.message_type, "reaction");
        assert_eq!(o.message_id, "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTg4RjhGMDBGRkY1RjAwRjVFQwA=");
        assert_eq!(o.from_phone, "+16505551234");
        assert_eq!(o.received_at, at(1_744_344_496));
        assert_eq!(o.metadata, sheena_metadata("reaction", &[]));
        assert_eq!(o.raw.pointer("/reaction/emoji").and_then(Value::as_str), Some("\u{1F44D}"));
    }

    #[test]
    fn unknown_types_and_interactive_subtypes_are_other() {
        let body = with_messages(serde_json::json!([
            {"from": "1", "id": "a", "type": "interactive",
             "interactive": {"type": "nfm_reply", "nfm_reply": {"response_json": "{}", "body": "Sent"}}},
            {"from": "1", "id": "b", "type": "order", "order": {"catalog_id": "c", "product_items": []}},
            {"from": "1", "id": "c", "type": "hologram", "hologram": {}},
            {"from": "1", "id": "d", "type": "unsupported",
             "errors": [{"code": 131051, "title": "Message type unknown"}]}
        ]));
        let n = parse(&body).unwrap();
        assert!(n.rejected.is_empty(), "{:?}", n.rejected);
        let types: Vec<_> = n
            .events
            .iter()
            .map(|e| match e {
                NotifiedMessage::Other(o) => o.message_type.as_str(),
                other => panic!("expected Other, got {other:?}"),
            })
            .collect();
        assert_eq!(types, ["interactive", "order", "hologram", "unsupported"]);
    }

    #[test]
    fn statuses_map_with_the_failed_error() {
        let n = parse(STATUSES.as_bytes()).unwrap();
        assert!(n.events.is_empty());
        assert!(n.rejected.is_empty(), "{:?}", n.rejected);
        let sent = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDNkY2NjYzQTdBRDEzMUQ3MEEA";
        let status = |id: &str, recipient: &str, status: &str, secs, error: Option<&str>| DeliveryStatus {
            message_id: id.to_owned(),
            recipient_phone: recipient.to_owned(),
            status: status.to_owned(),
            timestamp: at(secs),
            error: error.map(str::to_owned),
            phone_number_id: Some(PHONE_NUMBER_ID.to_owned()),
        };
        assert_eq!(
            n.statuses,
            [
                status(sent, "+16505551234", "sent", 1_744_344_490, None),
                status(sent, "+16505551234", "delivered", 1_744_344_491, None),
                status(sent, "+16505551234", "read", 1_744_344_530, None),
                status(
                    "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI4RDVCMEE3RjhFOEQ3NDM4QUMA",
                    "+16505559876",
                    "failed",
                    1_744_350_000,
                    Some(
                        "131047: Re-engagement message (Message failed to send because more than 24 hours have \
                         passed since the customer last replied to this number.)"
                    ),
                ),
            ]
        );
    }

    #[test]
    fn status_errors_are_joined_and_a_status_without_id_is_rejected() {
        let body = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"field": "messages", "value": {"statuses": [
                {"status": "sent", "recipient_id": "1"},
                {"id": "w", "status": "failed", "timestamp": "soon", "recipient_id": "+44", "errors": [
                    {"code": 130472, "title": "User's number is part of an experiment"},
                    {"code": 131026, "message": "Message undeliverable", "error_data": {"details": "No WhatsApp"}}
                ]}
            ]}}]}]
        });
        let before = Utc::now();
        let n = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(n.rejected.len(), 1, "{:?}", n.rejected);
        assert!(n.rejected[0].contains("statuses[0]") && n.rejected[0].contains("missing `id`"), "{:?}", n.rejected);
        let [s] = n.statuses.as_slice() else { panic!("{:?}", n.statuses) };
        assert_eq!(
            s.error.as_deref(),
            Some("130472: User's number is part of an experiment; 131026: Message undeliverable (No WhatsApp)")
        );
        assert_eq!(s.recipient_phone, "+44");
        assert_eq!(s.phone_number_id, None);
        assert!(s.timestamp >= before && s.timestamp <= Utc::now());
    }

    #[test]
    fn batch_keeps_order_across_entries_and_ignores_other_fields() {
        let n = parse(BATCH.as_bytes()).unwrap();
        assert!(n.rejected.is_empty(), "{:?}", n.rejected);
        assert!(n.statuses.is_empty());
        let summary: Vec<_> = n
            .events
            .iter()
            .map(|e| match e {
                NotifiedMessage::Message(m) => (
                    m.message_id.as_str(),
                    m.from_phone.as_str(),
                    m.metadata.get("contact_name").map(String::as_str),
                    m.metadata.get("phone_number_id").map(String::as_str),
                    m.received_at.timestamp(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("wamid.BATCH1", "+16505551234", Some("Sheena Nelson"), Some(PHONE_NUMBER_ID), 1_744_344_500),
                ("wamid.BATCH2", "+447700900123", Some("Rahul Mehta"), Some(PHONE_NUMBER_ID), 1_744_344_501),
                ("wamid.BATCH3", "+5511987654321", Some("Ana Souza"), Some("207651463353033"), 1_744_344_502),
            ]
        );
        assert_eq!(n.events.iter().map(NotifiedMessage::phone).collect::<Vec<_>>()[1], "+447700900123");
    }

    #[test]
    fn non_messages_change_is_ignored_even_if_it_looks_like_messages() {
        let body = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"changes": [
                {"field": "account_update", "value": {"messages": [{"from": "1", "id": "x", "type": "text",
                    "text": {"body": "not a message"}}]}},
                {"value": {"messages": [{"from": "1", "id": "y", "type": "text", "text": {"body": "no field"}}]}},
                {"field": "messages", "value": {"messages": [{"from": "1", "id": "z", "type": "text",
                    "text": {"body": "kept"}}]}}
            ]}]
        });
        let n = parse(body.to_string().as_bytes()).unwrap();
        let ids: Vec<_> = n
            .events
            .iter()
            .map(|e| match e {
                NotifiedMessage::Message(m) => m.message_id.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, ["z"]);
        assert!(n.rejected.is_empty());
    }

    #[test]
    fn wrong_object_is_reported() {
        let wrong = |body: &str| parse(body.as_bytes());
        assert_eq!(wrong(r#"{"object":"page","entry":[]}"#), Err(PayloadError::WrongObject("page".to_owned())));
        assert_eq!(wrong(r#"{"entry":[]}"#), Err(PayloadError::WrongObject(String::new())));
        assert_eq!(wrong(r#"{"object":7,"entry":[]}"#), Err(PayloadError::WrongObject("7".to_owned())));
        assert_eq!(wrong(r#"{"object":"whatsapp_business_account","entry":[]}"#), Ok(Notification::default()));
    }

    #[test]
    fn not_json_is_malformed() {
        for body in
            [&b""[..], b"not json", b"{\"object\":", b"\xff\xfe", b"[1,2]", b"\"whatsapp_business_account\"", b"null"]
        {
            assert!(matches!(parse(body), Err(PayloadError::Malformed(_))), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn entry_not_an_array_is_malformed() {
        for body in [
            r#"{"object":"whatsapp_business_account","entry":{"changes":[]}}"#,
            r#"{"object":"whatsapp_business_account","entry":"x"}"#,
            r#"{"object":"whatsapp_business_account"}"#,
        ] {
            assert!(matches!(parse(body.as_bytes()), Err(PayloadError::Malformed(_))), "{body}");
        }
    }

    #[test]
    fn message_without_from_is_rejected_and_its_sibling_kept() {
        let body = with_messages(serde_json::json!([
            {"id": "wamid.nofrom", "timestamp": "1700000000", "type": "text", "text": {"body": "who am I"}},
            {"from": "15551234567", "id": "wamid.ok", "timestamp": "1700000001", "type": "text", "text": {"body": "hi"}}
        ]));
        let n = parse(&body).unwrap();
        assert_eq!(n.rejected.len(), 1, "{:?}", n.rejected);
        assert!(n.rejected[0].contains("wamid.nofrom") && n.rejected[0].contains("missing `from`"), "{:?}", n.rejected);
        let [NotifiedMessage::Message(m)] = n.events.as_slice() else { panic!("{:?}", n.events) };
        assert_eq!(m.message_id, "wamid.ok");
        assert_eq!(m.received_at, at(1_700_000_001));
    }

    #[test]
    fn messages_missing_id_type_or_content_are_rejected() {
        let body = with_messages(serde_json::json!([
            {"from": "1", "type": "text", "text": {"body": "no id"}},
            {"from": "1", "id": "a", "text": {"body": "no type"}},
            {"from": "1", "id": "b", "type": "text"},
            {"from": "1", "id": "c", "type": "text", "text": {}},
            {"from": "1", "id": "d", "type": "image", "image": {"caption": "no id"}},
            {"from": "1", "id": "e", "type": "location", "location": {"latitude": 1.0}},
            {"from": "1", "id": "f", "type": "contacts", "contacts": []},
            {"from": "1", "id": "g", "type": "interactive"},
            {"from": "1", "id": "h", "type": "interactive", "interactive": {"type": "button_reply"}},
            {"from": "1", "id": "i", "type": "button", "button": {"payload": "P"}},
            "not an object",
            {"from": "1", "id": "kept", "type": "sticker", "sticker": {"id": "s"}}
        ]));
        let n = parse(&body).unwrap();
        assert_eq!(n.rejected.len(), 11, "{:#?}", n.rejected);
        let [NotifiedMessage::Message(m)] = n.events.as_slice() else { panic!("{:?}", n.events) };
        assert_eq!(m.message_id, "kept");
        assert_eq!(m.content, MessageContent::Media { media_id: "s".to_owned(), caption: None, mime_type: None });
    }

    #[test]
    fn existing_plus_is_kept_and_bad_timestamp_falls_back_to_now() {
        let body = with_messages(serde_json::json!([
            {"from": "+15551234567", "id": "a", "timestamp": "yesterday", "type": "text", "text": {"body": "x"},
             "context": {"from": "+15550000000", "id": "wamid.ctx"}},
            {"from": "15551234567", "id": "b", "type": "text", "text": {"body": "y"}}
        ]));
        let before = Utc::now();
        let n = parse(&body).unwrap();
        let after = Utc::now();
        assert_eq!(n.events.len(), 2);
        for event in &n.events {
            let NotifiedMessage::Message(m) = event else { panic!("{event:?}") };
            assert_eq!(m.from_phone, "+15551234567");
            assert!(m.received_at >= before && m.received_at <= after, "{}", m.received_at);
        }
        let NotifiedMessage::Message(first) = &n.events[0] else { unreachable!() };
        assert_eq!(first.metadata.get("context_from").map(String::as_str), Some("+15550000000"));
        assert_eq!(first.metadata.get("context_message_id").map(String::as_str), Some("wamid.ctx"));
    }

    #[test]
    fn every_fixture_parses_cleanly() {
        for (name, body) in ALL {
            let n = parse(body.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(n.rejected.is_empty(), "{name}: {:?}", n.rejected);
            assert!(!n.events.is_empty() || !n.statuses.is_empty(), "{name}: nothing parsed");
        }
    }

    #[test]
    fn truncated_fixtures_never_panic() {
        for (name, body) in ALL {
            let body = body.as_bytes();
            let end = body.trim_ascii_end().len();
            for len in 0..=body.len() {
                let result = parse(&body[..len]);
                // Every strict prefix of a JSON object is invalid JSON.
                if len < end {
                    assert!(matches!(result, Err(PayloadError::Malformed(_))), "{name}[..{len}]: {result:?}");
                } else {
                    assert!(result.is_ok(), "{name}[..{len}]: {result:?}");
                }
            }
        }
    }

    /// Every node of every fixture replaced in turn by values of other types.
    #[test]
    fn retyped_fields_never_panic() {
        fn paths(value: &Value, path: String, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => map.iter().for_each(|(k, v)| paths(v, format!("{path}/{k}"), out)),
                Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| paths(v, format!("{path}/{i}"), out)),
                _ => {}
            }
            out.push(path);
        }
        let replacements = [
            Value::Null,
            Value::from(-1),
            Value::from(1.5e300),
            Value::from(""),
            Value::from("x"),
            serde_json::json!([]),
            serde_json::json!({}),
        ];
        let mut parsed = 0;
        for (name, body) in ALL {
            let original: Value = serde_json::from_str(body).unwrap();
            let mut all = Vec::new();
            paths(&original, String::new(), &mut all);
            for path in all.iter().filter(|p| !p.is_empty()) {
                for replacement in &replacements {
                    let mut mutated = original.clone();
                    *mutated.pointer_mut(path).unwrap() = replacement.clone();
                    if let Ok(n) = parse(mutated.to_string().as_bytes()) {
                        parsed += 1;
                        for event in &n.events {
                            assert!(
                                event.phone().len() > 1 && event.phone().starts_with('+'),
                                "{name}{path}: {event:?}"
                            );
                        }
                    }
                }
            }
        }
        assert!(parsed > 1000, "only {parsed} mutations parsed");
    }
}
