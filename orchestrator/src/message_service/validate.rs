//! Checks a [`SendRequest`] field by field and turns it into the reply the
//! sender delivers: every error at once, each naming its field.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use super::request::{FieldError, MessageContent, SendRequest, TemplateMessage};
use crate::event::ResponseContent;

/// WhatsApp's limit on a text message.
pub const MAX_TEXT_CHARS: usize = 4096;
/// WhatsApp's limit on a media caption.
pub const MAX_CAPTION_CHARS: usize = 1024;
/// How far ahead a message may be scheduled.
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 30;

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The recipient, E.164.
    pub recipient_phone: String,
    /// What to send.
    pub content: ResponseContent,
    /// When, if not now.
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// Checks `request` as of `now`.
pub fn check(request: &SendRequest, now: DateTime<Utc>) -> Result<Checked, Vec<FieldError>> {
    let mut errors = Vec::new();
    let recipient_phone = match request.recipient_phone.as_deref().map(str::trim) {
        None | Some("") => {
            errors.push(FieldError::new("recipient_phone", "required"));
            None
        }
        Some(phone) if !is_e164(phone) => {
            errors.push(FieldError::new("recipient_phone", "must be E.164: `+` and 8 to 15 digits, e.g. +15551234567"));
            None
        }
        Some(phone) => Some(phone.to_owned()),
    };
    let content = match (&request.content, &request.template) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new("content", "give either `content` or `template`, not both"));
            None
        }
        (None, None) => {
            errors.push(FieldError::new("content", "`content` or `template` is required"));
            None
        }
        (Some(content), None) => free_form(content, &request.variables, &mut errors),
        (None, Some(template)) => template_content(template, &mut errors),
    };
    let scheduled_at = request.scheduled_at.as_deref().and_then(|at| schedule(at, now, &mut errors));
    if let Some(number) = &request.phone_number_id
        && (number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()))
    {
        errors.push(FieldError::new("phone_number_id", "must be the business number's id (digits)"));
    }
    match (recipient_phone, content) {
        (Some(recipient_phone), Some(content)) if errors.is_empty() => {
            Ok(Checked { recipient_phone, content, scheduled_at })
        }
        _ => Err(errors),
    }
}

/// `+` and 8 to 15 digits, not starting with 0.
pub fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else { return false };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

fn free_form(
    content: &MessageContent,
    variables: &BTreeMap<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<ResponseContent> {
    let text = match content.text.as_deref() {
        Some(text) => fill(text, variables, errors),
        None => Some(String::new()),
    };
    let Some(url) = content.media_url.as_deref() else {
        return match text {
            Some(text) if text.trim().is_empty() => {
                errors.push(FieldError::new("content.text", "required (or `content.media_url`)"));
                None
            }
            Some(text) if text.chars().count() > MAX_TEXT_CHARS => {
                errors
                    .push(FieldError::new("content.text", format!("at most {MAX_TEXT_CHARS} characters once filled")));
                None
            }
            Some(text) => Some(ResponseContent::text(text)),
            None => None,
        };
    };
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
        errors.push(FieldError::new("content.media_url", "must be a public http(s) URL"));
    }
    let media_type = match content.media_type.as_deref() {
        Some(kind @ ("image" | "document" | "audio" | "video")) => kind,
        Some(_) => {
            errors.push(FieldError::new("content.media_type", "must be image, document, audio or video"));
            "document"
        }
        None => media_type_of(url),
    };
    let caption = text.filter(|t| !t.trim().is_empty());
    if let Some(caption) = &caption {
        if media_type == "audio" {
            errors.push(FieldError::new("content.text", "audio messages have no caption"));
        } else if caption.chars().count() > MAX_CAPTION_CHARS {
            errors
                .push(FieldError::new("content.text", format!("a caption is at most {MAX_CAPTION_CHARS} characters")));
        }
    }
    Some(ResponseContent::Media {
        media_type: media_type.to_owned(),
        media_id: None,
        url: Some(url.to_owned()),
        caption,
    })
}

/// The media kind a URL's extension names; `document` when it names none we know.
fn media_type_of(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" | "png" | "webp" => "image",
        "mp4" | "3gp" => "video",
        "mp3" | "ogg" | "aac" | "amr" | "m4a" | "opus" => "audio",
        _ => "document",
    }
}

/// `text` with each `{name}` replaced by its variable; `{{` and `}}` are
/// literal braces. An unknown placeholder is an error.
pub fn fill(text: &str, variables: &BTreeMap<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let before = errors.len();
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        let name_end = tail[1..].find('}').map(|end| end + 1);
        let name = name_end.map(|end| &tail[1..end]).filter(|name| is_placeholder_name(name));
        match (tail.as_bytes()[0], name, name_end) {
            (b'{', Some(name), Some(end)) => {
                match variables.get(name) {
                    Some(Value::String(value)) => out.push_str(value),
                    Some(value @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&value.to_string()),
                    Some(_) => {
                        errors.push(FieldError::new(format!("variables.{name}"), "must be a string, number or boolean"))
                    }
                    None => errors.push(FieldError::new(
                        "content.text",
                        format!("unknown placeholder `{{{name}}}`: not in `variables`"),
                    )),
                }
                rest = &tail[end + 1..];
            }
            // A lone brace is text.
            _ => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    (errors.len() == before).then_some(out)
}

fn is_placeholder_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn template_content(template: &TemplateMessage, errors: &mut Vec<FieldError>) -> Option<ResponseContent> {
    let before = errors.len();
    let name = template.name.as_deref().unwrap_or_default();
    if name.is_empty()
        || name.len() > 512
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        errors.push(FieldError::new("template.name", "required: lowercase letters, digits and `_`"));
    }
    let language = template.language.as_deref().unwrap_or_default();
    if language.len() < 2
        || language.len() > 15
        || !language.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-')
    {
        errors.push(FieldError::new("template.language", "required: a language code such as `en` or `en_US`"));
    }
    for (i, component) in template.components.iter().enumerate() {
        let kind = component.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("header" | "body" | "button")) {
            errors.push(FieldError::new(
                format!("template.components[{i}].type"),
                "must be `header`, `body` or `button`",
            ));
        }
    }
    (errors.len() == before).then(|| ResponseContent::Template {
        name: name.to_owned(),
        language: language.to_owned(),
        parameters: Vec::new(),
        components: template.components.clone(),
    })
}

fn schedule(at: &str, now: DateTime<Utc>, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    let Ok(at) = DateTime::parse_from_rfc3339(at).map(|at| at.with_timezone(&Utc)) else {
        errors.push(FieldError::new("scheduled_at", "must be an RFC 3339 time, e.g. 2026-12-24T09:00:00Z"));
        return None;
    };
    if at <= now {
        errors.push(FieldError::new("scheduled_at", "is in the past"));
        None
    } else if at > now + Duration::days(MAX_SCHEDULE_AHEAD_DAYS) {
        errors.push(FieldError::new("scheduled_at", format!("at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead")));
        None
    } else {
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn placeholders_are_filled_and_braces_escaped() {
        let mut errors = Vec::new();
        let filled = fill(
            "Hi {name}, {{literal}} order {n} {ok} { x } }",
            &vars(json!({"name": "Ana", "n": 42, "ok": true})),
            &mut errors,
        );
        assert_eq!(filled.as_deref(), Some("Hi Ana, {literal} order 42 true { x } }"));
        assert!(errors.is_empty());
        let missing = fill("Hi {name} {nope}", &vars(json!({"name": "Ana"})), &mut errors);
        assert_eq!(missing, None);
        assert_eq!(errors, [FieldError::new("content.text", "unknown placeholder `{nope}`: not in `variables`")]);
    }

    #[test]
    fn phones_must_be_e164() {
        for good in ["+15551234567", "+5215512345678", "+44770090"] {
            assert!(is_e164(good), "{good}");
        }
        for bad in ["15551234567", "+1555", "+0555123456", "+1555123456789012", "+1555-123-4567", ""] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn media_kind_comes_from_the_extension_when_not_given() {
        assert_eq!(media_type_of("https://x.test/a/photo.JPG?sig=1"), "image");
        assert_eq!(media_type_of("https://x.test/clip.mp4"), "video");
        assert_eq!(media_type_of("https://x.test/note.ogg"), "audio");
        assert_eq!(media_type_of("https://x.test/invoice.pdf"), "document");
        assert_eq!(media_type_of("https://x.test/download"), "document");
    }
}
