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
        Inbound::Message(message) => holds_nul(message),
        Inbound::Interaction(interaction) => holds_nul(interaction),
    };
    if message {
        return Err("the message contains a NUL character (U+0000), which the database cannot store".to_owned());
    }
    if holds_nul(intent) {
        return Err("the intent contains a NUL character (U+0000), which the database cannot store".to_owned());
    }
    Ok(())
}

/// Whether any string (or map key) of `value` holds U+0000, found by
/// streaming its JSON through [`NulScan`]: no tree, no buffer, no allocation.
fn holds_nul(value: &impl serde::Serialize) -> bool {
    let mut scan = NulScan::default();
    // The scan never fails; a value that cannot be serialised is not stored as JSON either.
    let _ = serde_json::to_writer(&mut scan, value);
    scan.found
}

/// Reads JSON text as it is written and notes a `\u0000` escape, the only
/// way JSON writes U+0000 (a backslash always starts an escape, so `\\u0000`,
/// an escaped backslash before `u0000`, is told apart).
#[derive(Default)]
struct NulScan {
    state: Escape,
    found: bool,
}

#[derive(Default, Clone, Copy)]
enum Escape {
    #[default]
    Outside,
    /// Just after a backslash.
    Started,
    /// Inside `\u`, after this many hex digits, all `0` so far.
    Zeros(u8),
}

impl std::io::Write for NulScan {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        for &byte in bytes {
            self.state = match (self.state, byte) {
                (Escape::Outside, b'\\') => Escape::Started,
                (Escape::Outside, _) => Escape::Outside,
                (Escape::Started, b'u') => Escape::Zeros(0),
                (Escape::Started, _) => Escape::Outside,
                (Escape::Zeros(3), b'0') => {
                    self.found = true;
                    Escape::Outside
                }
                (Escape::Zeros(n), b'0') => Escape::Zeros(n + 1),
                (Escape::Zeros(_), _) => Escape::Outside,
            };
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
    fn nul_is_found_in_strings_and_keys_but_not_in_an_escaped_backslash() {
        let nul = |value: serde_json::Value| holds_nul(&value);
        assert!(nul(serde_json::json!({"a": ["x", "b\u{0}c"]})));
        assert!(nul(serde_json::json!({"ke\u{0}y": 1})));
        assert!(nul(serde_json::json!("\u{0}")));
        // A backslash followed by `u0000` is text, not NUL; other control characters are storable.
        assert!(!nul(serde_json::json!({"a": "\\u0000", "b": "\u{1}\n\\", "c": "u0000"})));
        assert!(!nul(serde_json::json!({"a": "\\\\u0000"})));
        assert!(nul(serde_json::json!({"a": "\\\u{0}"})));
    }

    #[test]
    fn phones() {
        assert!(validate_phone("+15551234567").is_ok());
        assert!(validate_phone("5215512345678").is_ok());
        assert!(validate_phone("").is_err());
        assert!(validate_phone("+1 555 1234").is_err());
        assert!(validate_phone("+1234567890123456").is_err());
    }
}
