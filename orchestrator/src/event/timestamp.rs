//! Timestamps as the services around us write them: RFC 3339 with an
//! offset, or ISO 8601 without one (Python's `datetime.utcnow().isoformat()`),
//! which the integration guide means as UTC. Written back as RFC 3339 in UTC.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer};

/// Parses an ISO 8601 date-time; without an offset it is UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    // chrono's own parsers, as serde used them before (years past 9999 included).
    if let Ok(with_offset) = text.parse::<DateTime<FixedOffset>>() {
        return Some(with_offset.with_timezone(&Utc));
    }
    if let Ok(naive) = text.parse::<NaiveDateTime>() {
        return Some(naive.and_utc());
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc())
}

/// `#[serde(deserialize_with = "timestamp::deserialize")]`: see [`parse`].
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = Cow::<'de, str>::deserialize(deserializer)?;
    parse(&text).ok_or_else(|| {
        serde::de::Error::custom(format!("invalid timestamp {text:?}: expected ISO 8601, with or without an offset"))
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn offsets_are_honoured_and_missing_ones_mean_utc() {
        let utc = parse("2025-01-02T12:00:00Z").unwrap();
        assert_eq!(parse("2025-01-02T14:00:00+02:00"), Some(utc));
        assert_eq!(parse("2025-01-02T12:00:00"), Some(utc), "Python's utcnow().isoformat() without microseconds");
        assert_eq!(parse("2025-01-02T12:00:00.123456").unwrap().timestamp_subsec_micros(), 123_456);
        assert_eq!(parse("2025-01-02 12:00:00"), Some(utc));
        assert_eq!(parse("2025-01-02T12:00:00.000Z"), Some(utc), "JavaScript's toISOString()");
        assert_eq!(
            parse("+10000-01-01T00:00:00Z").unwrap().timestamp(),
            253_402_300_800,
            "what chrono writes past 9999"
        );
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse("2025-13-02T12:00:00"), None);
    }
}
