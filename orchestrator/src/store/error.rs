//! Why a store call failed.

use std::time::Duration;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable; the caller should try again later.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// A row holds a value this version does not understand.
    #[error("unreadable row in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// No dead letter has this id.
    #[error("no dead-letter entry with id {0}")]
    NotFound(i64),
    /// The lease was taken over (it expired) or released: this worker must stop.
    #[error("lease on message {0} is no longer held by this worker")]
    LeaseLost(String),
    /// The status change is not allowed (e.g. replaying an entry already replayed).
    #[error("dead-letter entry {id} is {from}, it cannot become {to}")]
    InvalidTransition {
        /// Entry id.
        id: i64,
        /// Current status.
        from: &'static str,
        /// Requested status.
        to: &'static str,
    },
    /// A local step failed inside the completion transaction, which rolled back.
    #[error(transparent)]
    Local(#[from] crate::local::LocalFailure),
    /// The store cannot do this (e.g. local executors on the in-memory store).
    #[error("unsupported by this store: {0}")]
    Unsupported(&'static str),
    /// The database failed repeatedly and its circuit breaker is open: the
    /// call was not made; try again after `retry_after`.
    #[error("the database is unavailable (circuit open, next probe in {retry_after:?})")]
    Unavailable {
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
}

impl StoreError {
    /// Whether this error says the database is failing (as opposed to an
    /// answer about a message: lease lost, not found, refused transition).
    pub fn is_outage(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Unavailable { .. })
    }
}
