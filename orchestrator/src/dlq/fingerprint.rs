//! Grouping failures by cause: an error message with what varies between
//! occurrences taken out, and its fingerprint. A pure function of the
//! failure, computed by the stores when an entry is filed.

use crate::event::FailureType;

/// An error message with what varies between occurrences of one cause taken
/// out: numbers become `#`, long hex/uuid-like tokens `*`, quoted text `'?'`.
pub fn normalize_error(error: &str) -> String {
    let mut out = String::with_capacity(error.len().min(256));
    let mut chars = error.chars().peekable();
    while let Some(c) = chars.next() {
        if out.len() >= 240 {
            break;
        }
        match c {
            '\'' | '"' | '`' => {
                // Quoted values (ids, names) vary; the quoting marks the spot.
                let mut closed = false;
                for next in chars.by_ref() {
                    if next == c {
                        closed = true;
                        break;
                    }
                }
                out.push_str(if closed { "'?'" } else { "'?" });
            }
            c if c.is_ascii_alphanumeric() => {
                let mut token = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_ascii_alphanumeric() || next == '-' || next == '_' || next == '.' {
                        token.push(next);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push_str(&normalize_token(&token));
            }
            c => out.push(c),
        }
    }
    out
}

fn normalize_token(token: &str) -> String {
    let digits = token.chars().filter(char::is_ascii_digit).count();
    let hexish = token.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if digits > 0 && token.len() >= 8 && (hexish || digits * 3 >= token.len()) {
        return "*".to_owned();
    }
    if digits == 0 {
        return token.to_owned();
    }
    // Mixed words keep their letters, numbers collapse: `step 2` and `step 3` group.
    let mut out = String::with_capacity(token.len());
    let mut in_number = false;
    for c in token.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}

/// The fingerprint of a failure: 16 hex digits of SHA-256 over the failure
/// type and the [`normalize_error`]ed message.
pub fn failure_fingerprint(failure_type: FailureType, error: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}|{}", failure_type.as_str(), normalize_error(error)).as_bytes(),
    );
    hex::encode(&digest.as_ref()[..8])
}
