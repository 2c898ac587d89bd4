//! A record as a consumer works on it: where it sits, its key and bytes,
//! and where it first entered Kafka. The same whether it came off a topic
//! or back out of the database (parked behind a retry, or waiting for the
//! AI service), so every consumer of the crate handles both alike.

use rdkafka::message::{Message, OwnedMessage};

use super::headers;
use crate::store::SourceInfo;

/// A record being handled.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<String>,
    pub(crate) payload: Vec<u8>,
    /// Where it first entered (a retry copy carries its original's coordinates).
    pub(crate) origin: headers::Origin,
}

impl Received {
    /// A record consumed from Kafka.
    pub(crate) fn of(record: &OwnedMessage) -> Self {
        Self {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
            key: headers::key_text(record),
            payload: record.payload().unwrap_or_default().to_vec(),
            origin: headers::Origin::of(record),
        }
    }

    /// A record kept in the database, by the coordinates it was consumed at.
    pub(crate) fn stored(topic: &str, partition: i32, offset: i64, key: Option<String>, payload: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            offset,
            key,
            payload: payload.as_bytes().to_vec(),
            origin: headers::Origin::at(topic, partition, offset),
        }
    }

    /// The topic without its `.retry` suffix.
    pub(crate) fn base_topic(&self) -> &str {
        self.topic.trim_end_matches(".retry")
    }

    /// Where it sits, for the dead-letter queue.
    pub(crate) fn source(&self) -> SourceInfo {
        SourceInfo { topic: self.topic.clone(), partition: self.partition, offset: self.offset, key: self.key.clone() }
    }
}

/// Where a consumed record sits, for the dead-letter queue (without copying its bytes).
pub(crate) fn source_of<M: Message>(record: &M) -> SourceInfo {
    SourceInfo {
        topic: record.topic().to_owned(),
        partition: record.partition(),
        offset: record.offset(),
        key: headers::key_text(record),
    }
}
