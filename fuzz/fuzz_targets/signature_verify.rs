//! `verify_signature` on any secret, header and body. Input layout:
//! `[secret length][secret][header length, 255 = no header][header][body]`.
//! Never panics; the result is exactly what the header's shape says
//! (`Malformed` unless `sha256=` and 64 hex digits after trimming); our own
//! signature verifies, and a changed body does not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator::webhook::signature::sign;
use orchestrator::webhook::{SignatureError, verify_signature};

fuzz_target!(|bytes: &[u8]| {
    let Some((&secret_len, rest)) = bytes.split_first() else { return };
    let (secret, rest) = rest.split_at(usize::from(secret_len).min(rest.len()));
    let Some((&header_len, rest)) = rest.split_first() else { return };
    let (header, body) = if header_len == 255 {
        (None, rest)
    } else {
        let (header, body) = rest.split_at(usize::from(header_len).min(rest.len()));
        (Some(String::from_utf8_lossy(header).into_owned()), body)
    };

    let result = verify_signature(secret, body, header.as_deref());
    let expected = match header.as_deref().map(str::trim) {
        None => Err(SignatureError::Missing),
        Some(h)
            if h.strip_prefix("sha256=")
                .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())) =>
        {
            let ours = sign(secret, body);
            if h.eq_ignore_ascii_case(&ours) { Ok(()) } else { Err(SignatureError::Mismatch) }
        }
        Some(_) => Err(SignatureError::Malformed),
    };
    assert_eq!(result, expected, "{header:?}");

    let ours = sign(secret, body);
    assert_eq!(verify_signature(secret, body, Some(&ours)), Ok(()));
    let mut tampered = body.to_vec();
    tampered.push(0);
    assert_eq!(verify_signature(secret, &tampered, Some(&ours)), Err(SignatureError::Mismatch));
});
