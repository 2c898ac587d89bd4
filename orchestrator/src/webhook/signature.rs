//! `X-Hub-Signature-256`: Meta signs each webhook body with the app secret
//! (HMAC-SHA256, hex, prefixed `sha256=`).

use ring::hmac;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    /// Not `sha256=` followed by 64 hex digits.
    #[error("malformed X-Hub-Signature-256 header")]
    Malformed,
    /// Well-formed, but not the body's signature under our secret.
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// Checks `header` (the `X-Hub-Signature-256` value) against `body` signed
/// with `app_secret`, in constant time.
///
/// ```
/// use orchestrator::webhook::signature::{SignatureError, sign, verify_signature};
/// let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
/// let header = sign(b"app-secret", body);
/// assert_eq!(verify_signature(b"app-secret", body, Some(&header)), Ok(()));
/// assert_eq!(verify_signature(b"wrong-secret", body, Some(&header)), Err(SignatureError::Mismatch));
/// assert_eq!(verify_signature(b"app-secret", body, None), Err(SignatureError::Missing));
/// ```
pub fn verify_signature(app_secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header.trim().strip_prefix("sha256=").ok_or(SignatureError::Malformed)?;
    let mut expected = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut expected).map_err(|_| SignatureError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, app_secret);
    hmac::verify(&key, body, &expected).map_err(|_| SignatureError::Mismatch)
}

/// Whether `given` equals `expected`, in time independent of where they
/// differ (tokens, verify tokens): their HMACs under one key are compared
/// with ring's constant-time verify. An empty `expected` matches nothing.
pub fn secrets_match(given: &[u8], expected: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"whatsapp-orchestrator secret comparison");
    !expected.is_empty() && hmac::verify(&key, given, hmac::sign(&key, expected).as_ref()).is_ok()
}

/// The `X-Hub-Signature-256` value for `body` (for tests and clients that sign).
pub fn sign(app_secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, app_secret);
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_its_own_signature_and_refuses_others() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let signed = sign(b"app-secret", body);
        assert_eq!(signed.len(), "sha256=".len() + 64);
        assert_eq!(verify_signature(b"app-secret", body, Some(&signed)), Ok(()));
        assert_eq!(verify_signature(b"other-secret", body, Some(&signed)), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(b"app-secret", b"tampered", Some(&signed)), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(b"app-secret", body, None), Err(SignatureError::Missing));
        assert_eq!(verify_signature(b"app-secret", body, Some("sha1=abc")), Err(SignatureError::Malformed));
        assert_eq!(verify_signature(b"app-secret", body, Some("sha256=zz")), Err(SignatureError::Malformed));
        let short = &signed[..signed.len() - 2];
        assert_eq!(verify_signature(b"app-secret", body, Some(short)), Err(SignatureError::Malformed));
    }

    #[test]
    fn secrets_match_only_when_equal_and_never_empty() {
        assert!(secrets_match(b"token", b"token"));
        assert!(!secrets_match(b"token", b"tokens"));
        assert!(!secrets_match(b"toke", b"token"));
        assert!(!secrets_match(b"", b""));
    }

    #[test]
    fn matches_a_known_hmac_sha256_vector() {
        // RFC 4231 test case 2.
        let signed = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(signed, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
