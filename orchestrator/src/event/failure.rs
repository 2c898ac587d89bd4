//! `MessageFailed`: published when a message ends in the dead-letter queue.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a message could not be processed (`failure_type`, also a DLQ column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureType {
    /// The bytes were not a valid envelope.
    SerializationError,
    /// An action or handler took too long.
    ProcessingTimeout,
    /// A downstream service failed.
    ExternalServiceError,
    /// Required fields missing or invalid.
    ValidationError,
    /// Anything else.
    UnknownError,
}

impl FailureType {
    /// Every failure type.
    pub const ALL: [FailureType; 5] = [
        FailureType::SerializationError,
        FailureType::ProcessingTimeout,
        FailureType::ExternalServiceError,
        FailureType::ValidationError,
        FailureType::UnknownError,
    ];

    /// The name on the wire and in the `failure_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureType::SerializationError => "SerializationError",
            FailureType::ProcessingTimeout => "ProcessingTimeout",
            FailureType::ExternalServiceError => "ExternalServiceError",
            FailureType::ValidationError => "ValidationError",
            FailureType::UnknownError => "UnknownError",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for FailureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `MessageFailed`: a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageFailed {
    /// The message's id (empty when the bytes were undecodable).
    pub message_id: String,
    /// The user's phone (empty when unknown).
    pub phone: String,
    /// Why it failed.
    pub failure_type: FailureType,
    /// Human-readable cause.
    pub error_details: String,
    /// Attempts made.
    pub attempt_count: u32,
    /// When it was dead-lettered.
    #[serde(deserialize_with = "super::timestamp::deserialize")]
    pub failed_at: DateTime<Utc>,
}
