//! Validation of a message before any handler sees it.

use crate::context::Inbound;
use crate::context::MessageContext;
use crate::event::MessageContent;

/// WhatsApp's limit on a text message body, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest message id accepted.
pub const MAX_MESSAGE_ID_LEN: usize = 256;

/// Checks what the pipeline relies on; the error says what is wrong.
pub fn validate(ctx: &MessageContext) -> Result<(), String> {
    if ctx.message_id.trim().is_empty() {
        return Err("message_id is empty".to_owned());
    }
    if ctx.message_id.len() > MAX_MESSAGE_ID_LEN {
        return Err(format!("message_id is longer than {MAX_MESSAGE_ID_LEN} bytes"));
    }
    validate_phone(ctx.phone())?;
    if ctx.intent.name.trim().is_empty() {
        return Err("intent name is empty".to_owned());
    }
    if !(0.0..=1.0).contains(&ctx.intent.confidence) {
        return Err(format!("intent confidence {} is outside 0..=1", ctx.intent.confidence));
    }
    if let Inbound::Message(message) = &ctx.inbound
        && let MessageContent::Text { body } = &message.content
        && body.chars().count() > MAX_TEXT_CHARS
    {
        return Err(format!("text body is longer than {MAX_TEXT_CHARS} characters"));
    }
    Ok(())
}

/// Refuses a message with a NUL character (U+0000) anywhere in it or its
/// intent: PostgreSQL's `text` and `jsonb` cannot store one, so every write
/// of it would fail (and fail the batch it shares with other messages).
pub fn storable(inbound: &Inbound, intent: &crate::intent::Intent) -> Result<(), String> {
    let message = match inbound {
        Inbound::Message(message) => serde_json::to_value(message),
        Inbound::Interaction(interaction) => serde_json::to_value(interaction),
    };
    let has_nul = |value: Result<serde_json::Value, serde_json::Error>| value.as_ref().is_ok_and(contains_nul);
    if has_nul(message) {
        return Err("the message contains a NUL character (U+0000), which the database cannot store".to_owned());
    }
    if has_nul(serde_json::to_value(intent)) {
        return Err("the intent contains a NUL character (U+0000), which the database cannot store".to_owned());
    }
    Ok(())
}

/// Whether any string (or object key) in `value` holds U+0000.
fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(fields) => {
            fields.iter().any(|(key, value)| key.contains('\0') || contains_nul(value))
        }
        _ => false,
    }
}

/// An E.164 number: an optional `+` and 6 to 15 digits.
pub fn validate_phone(phone: &str) -> Result<(), String> {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    if (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("phone `{}` is not an E.164 number", crate::mask_phone(phone)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        assert!(validate_phone("+15551234567").is_ok());
        assert!(validate_phone("5215512345678").is_ok());
        assert!(validate_phone("").is_err());
        assert!(validate_phone("+1 555 1234").is_err());
        assert!(validate_phone("+1234567890123456").is_err());
    }
}
