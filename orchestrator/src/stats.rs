//! Counters of the consumer runtime and the reply sender, shared with
//! whatever reports them (`/health`, logs), so the reporters need not know
//! the transport that fills them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Worker counters (for health checks and logs).
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Messages completed.
    pub processed: AtomicU64,
    /// Messages that failed an attempt (retried or dead-lettered).
    pub failed: AtomicU64,
    /// Messages sent to a retry topic (retryable failure or deferral).
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Duplicates skipped.
    pub duplicates: AtomicU64,
    /// Classifications requested from the AI service.
    pub ai_requests: AtomicU64,
    /// Messages finished with the fallback classifier because the AI service did not answer in time.
    pub ai_timeouts: AtomicU64,
    /// Whether the runtime is consuming (from `run` until it drained).
    running: AtomicBool,
}

impl RuntimeStats {
    /// Adds one to `counter` (one of this value's fields), for the runtime that fills them.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the runtime consuming (from its start until it drained) or not.
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    /// Whether the runtime is consuming now.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// `(processed, failed, retried, dead_lettered, duplicates)` now.
    pub fn snapshot(&self) -> [u64; 5] {
        [&self.processed, &self.failed, &self.retried, &self.dead_lettered, &self.duplicates]
            .map(|c| c.load(Ordering::Relaxed))
    }
}

/// The reply sender's counters (for `/health`).
#[derive(Debug, Default)]
pub struct ReplyStats {
    /// Replies WhatsApp accepted.
    pub sent: AtomicU64,
    /// Attempts that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Replies put off without spending an attempt (open breaker, rate limit, busy).
    pub deferred: AtomicU64,
    /// Replies dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Redeliveries of replies already sent or dead-lettered, skipped.
    pub duplicates: AtomicU64,
}

impl ReplyStats {
    /// `(sent, retried, deferred, dead_lettered, duplicates)` now.
    pub fn snapshot(&self) -> [u64; 5] {
        [&self.sent, &self.retried, &self.deferred, &self.dead_lettered, &self.duplicates]
            .map(|c| c.load(Ordering::Relaxed))
    }
}
