//! Reading a Kafka record's headers back, and the `x-source-*` origin that
//! retry and dead-letter copies carry. The names are in [`crate::event::headers`].

use rdkafka::message::{Headers as _, Message};

pub use crate::event::headers::*;

/// The first header named `name`, as text (lossy for non-UTF-8 bytes).
pub fn value<M: Message>(message: &M, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Where a record first entered Kafka: its own coordinates, or, for a retry
/// copy, its original's (carried in the `x-source-*` headers). Retry and
/// dead-letter copies pass it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    topic: String,
    partition: String,
    offset: String,
}

impl Origin {
    /// The origin of a consumed record.
    pub(crate) fn of<M: Message>(record: &M) -> Self {
        match value(record, SOURCE_TOPIC) {
            Some(topic) => Self {
                topic,
                partition: value(record, SOURCE_PARTITION).unwrap_or_default(),
                offset: value(record, SOURCE_OFFSET).unwrap_or_default(),
            },
            None => Self::at(record.topic(), record.partition(), record.offset()),
        }
    }

    /// A record's own coordinates (one kept in the database, say).
    pub(crate) fn at(topic: &str, partition: i32, offset: i64) -> Self {
        Self { topic: topic.to_owned(), partition: partition.to_string(), offset: offset.to_string() }
    }

    /// The headers of a retry copy due at `due` (RFC 3339).
    pub(crate) fn retry_headers<'a>(&'a self, due: &'a str) -> Vec<(&'a str, &'a [u8])> {
        vec![
            (DUE_AT, due.as_bytes()),
            (SOURCE_TOPIC, self.topic.as_bytes()),
            (SOURCE_PARTITION, self.partition.as_bytes()),
            (SOURCE_OFFSET, self.offset.as_bytes()),
        ]
    }

    /// The headers of a dead-letter copy given up on by `group` after `attempts`, for `error`.
    pub(crate) fn dead_letter_headers<'a>(
        &'a self,
        group: &'a str,
        attempts: &'a str,
        error: &'a str,
    ) -> [(&'a str, &'a [u8]); 6] {
        [
            (SOURCE_TOPIC, self.topic.as_bytes()),
            (SOURCE_PARTITION, self.partition.as_bytes()),
            (SOURCE_OFFSET, self.offset.as_bytes()),
            (CONSUMER_GROUP, group.as_bytes()),
            (ATTEMPTS, attempts.as_bytes()),
            (ERROR, error.as_bytes()),
        ]
    }
}

/// A record's key as text: lossy, and without NUL (keys are stored as text
/// for parking and the DLQ).
pub(crate) fn key_text<M: Message>(record: &M) -> Option<String> {
    record.key().map(|k| String::from_utf8_lossy(k).replace('\0', "\u{FFFD}"))
}
