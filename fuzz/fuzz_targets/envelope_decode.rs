//! `Envelope::decode` on any bytes: never panics; an oversized payload is
//! refused before parsing; what decodes is written and read back the same
//! (floats exactly: the workspace builds serde_json with `float_roundtrip`);
//! the serde `Deserialize` path agrees with it outside `data`.
#![no_main]

use chrono::Utc;
use libfuzzer_sys::fuzz_target;
use orchestrator::event::{DecodeError, Envelope, MAX_PAYLOAD_BYTES};
use serde_json::Value;

fuzz_target!(|bytes: &[u8]| {
    let before = Utc::now();
    let fast = Envelope::decode(bytes);
    if bytes.len() > MAX_PAYLOAD_BYTES {
        assert!(matches!(fast, Err(DecodeError::Oversized { .. })), "{fast:?}");
        return;
    }
    let slow = serde_json::from_slice::<Envelope>(bytes);
    match (fast, slow) {
        (Ok(envelope), slow) => {
            let again = Envelope::decode(&envelope.encode()).expect("an envelope it wrote decodes");
            assert!(same(&again, &envelope), "re-encoding changed it:\n{again:?}\n{envelope:?}");
            match slow {
                Ok(mut slow) => {
                    // A missing `processing_timestamp` is the time of decoding.
                    if slow.metadata.processing_timestamp >= before && envelope.metadata.processing_timestamp >= before
                    {
                        slow.metadata.processing_timestamp = envelope.metadata.processing_timestamp;
                    }
                    assert!(same(&slow, &envelope), "the serde decoder disagrees:\n{slow:?}\n{envelope:?}");
                }
                // The two read `data` from text and from a JSON tree: odd shapes there
                // may differ, and a tree cannot hold a number out of f64's range
                // (`1e999` in a field the fast path skips).
                Err(e) => assert!(tree_only(&e), "the serde decoder refused: {e}"),
            }
        }
        (Err(error), Ok(slow)) => {
            assert!(matches!(error, DecodeError::InvalidData { .. }), "only `data` may differ: {error:?} vs {slow:?}")
        }
        (Err(error), Err(_)) => assert!(!error.to_string().is_empty()),
    }
});

/// An error only the serde (JSON tree) decoder can give for what the fast one accepted.
fn tree_only(e: &serde_json::Error) -> bool {
    let e = e.to_string();
    e.starts_with("invalid ") || e.starts_with("number out of range") || e.starts_with("recursion limit exceeded")
}

/// Equal, floats within a few ULPs.
fn same(a: &Envelope, b: &Envelope) -> bool {
    a == b || close(&serde_json::to_value(a).unwrap(), &serde_json::to_value(b).unwrap())
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| {
                x == y || (x.is_sign_negative() == y.is_sign_negative() && x.to_bits().abs_diff(y.to_bits()) <= 8)
            })
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}
