//! Names of the record headers the orchestrator writes beside an event (on
//! retry and dead-letter copies, and on raw records), whatever transport
//! carries them.

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
/// The business `phone_number_id` a message reached (on `whatsapp.webhook.unhandled`).
pub const PHONE_NUMBER_ID: &str = "x-phone-number-id";
/// The intent a retry copy was classified with (JSON), so the AI service is not asked again.
pub const INTENT: &str = "x-intent";
