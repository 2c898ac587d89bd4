//! Durable state of the pipeline, one trait per concern, each implemented
//! by [`SqlStore`] (SQLite or PostgreSQL through sea-orm), [`MemoryStore`]
//! (tests, benchmarks, embedding without a database) and [`GuardedStore`]
//! (any of them behind the database's circuit breaker).
//!
//! | file | trait | what it keeps |
//! | --- | --- | --- |
//! | `claims` | [`Store`] | claims with leases (dedupe), completion with the audit trail and reply outbox, the lead's stage |
//! | `saga_log` | [`SagaLog`] | each saga step's transitions |
//! | `dead_letters` | [`DeadLetterQueue`] | the dead-letter queue, for operators |
//! | `parking` | [`KeyParking`] | per-phone order across retries |
//! | `ai_pending` | [`PendingClassifications`] | messages waiting for the AI service |
//! | `delivery` | [`DeliveryStatuses`] | WhatsApp's delivery statuses |
//! | `outbound` | [`OutboundMessages`] | every reply sent (`outbound_messages`) |
//! | `api_messages` | [`ApiMessages`] | the send API's messages in `outbound_messages`, their schedule and daily counts |
//! | `conversations` | [`Conversations`] | the inbox's history: conversations and their messages (SQL store) |
//! | `error` | | [`StoreError`] |

use std::time::Duration;

mod ai_pending;
pub mod api_messages;
mod claims;
pub mod conversations;
mod dead_letters;
mod delivery;
mod error;
mod guarded;
mod memory;
pub mod outbound;
mod parking;
mod saga_log;
mod sql;

pub use ai_pending::{PendingClassification, PendingClassifications};
pub use api_messages::{
    ApiMessage, ApiMessageFilter, ApiMessagePage, ApiMessages, Cancellation, DueClaim, DueMessage, Inserted, Insertion,
    NewApiMessage,
};
pub use claims::{Claim, Finish, Lease, LocalCompletion, MessageKey, NewActivity, StageChange, StageMove, Store};
pub use conversations::{
    Conversation, ConversationCursor, ConversationTurn, Conversations, Direction, ThreadEntry, ThreadMessage,
    conversation_phone,
};
pub use dead_letters::{
    DeadLetter, DeadLetterQueue, DlqFilter, DlqStatus, FailureGroup, NewDeadLetter, Page, SourceInfo,
};
pub use delivery::{DeliveryStatus, DeliveryStatuses, MovedMessage};
pub use error::StoreError;
pub use guarded::{DATABASE_BREAKER, DATABASE_BREAKER_CONFIG, GuardedStore};
pub use memory::MemoryStore;
pub use outbound::{
    AttemptFailure, OutboundMessage, OutboundMessages, OutboundReply, OutboundStatus, ReplyKey, ReplyLease, SendClaim,
};
pub use parking::{KeyParking, ParkCheck, ParkedMessage};
pub use saga_log::{SagaLog, StepRecord, StepStatus};
pub use sql::SqlStore;

/// A std duration as a chrono one, saturating (leases, TTLs and delays are far below the limit).
pub(crate) fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}
