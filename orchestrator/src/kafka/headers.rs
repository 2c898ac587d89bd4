//! Kafka header names the runtime writes on retry and dead-letter copies,
//! and reading a header back.

use rdkafka::message::{Headers as _, Message};

/// The first header named `name`, as text (lossy for non-UTF-8 bytes).
pub fn value<M: Message>(message: &M, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// When a retry copy is due (RFC 3339, UTC).
pub const DUE_AT: &str = "x-due-at";
/// Topic the message was first consumed from.
pub const SOURCE_TOPIC: &str = "x-source-topic";
/// Its partition there.
pub const SOURCE_PARTITION: &str = "x-source-partition";
/// Its offset there.
pub const SOURCE_OFFSET: &str = "x-source-offset";
/// Consumer group that gave up on it.
pub const CONSUMER_GROUP: &str = "x-consumer-group";
/// Attempts made.
pub const ATTEMPTS: &str = "x-attempts";
/// Why it was dead-lettered (`failure_type: error`).
pub const ERROR: &str = "x-error";
/// The intent a retry copy was classified with (JSON), so the AI service is not asked again.
pub const INTENT: &str = "x-intent";
