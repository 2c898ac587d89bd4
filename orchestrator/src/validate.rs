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
