//! Sending one reply: the [`WhatsAppSender`] trait, what a send returns and
//! how it fails.

use std::time::Duration;

use async_trait::async_trait;

use crate::event::{FailureType, ResponseContent, ResponseReady};

/// A reply WhatsApp accepted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sent {
    /// The message id WhatsApp returned (`wamid...`); the webhook's
    /// `statuses[]` refer to it. `None` from senders that have none (dry run).
    pub wamid: Option<String>,
}

/// Sending one reply failed. The variant decides what happens next; build
/// it from WhatsApp's error `code`, not from titles or HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// May pass later (timeout, 5xx, temporary codes 1 and 2): retried with
    /// backoff, and counted by the sender's circuit breaker.
    #[error("retryable (code {code:?}): {message}")]
    Retryable {
        /// WhatsApp's error code, when it gave one.
        code: Option<i64>,
        /// What went wrong, readable.
        message: String,
    },
    /// WhatsApp asked to slow down (HTTP 429, 130429, 131056, 131048,
    /// 80007, 4): retried with backoff, and the send rate of the business
    /// number is lowered. Not an outage, so the breaker does not count it.
    #[error("throttled (code {code:?}): {message}")]
    Throttled {
        /// WhatsApp's error code, when it gave one.
        code: Option<i64>,
        /// What went wrong, readable.
        message: String,
    },
    /// Will fail again (131026 undeliverable, 131047 outside the 24 h
    /// window, 100 bad parameter, 190 expired token, other client errors):
    /// dead-lettered at once.
    #[error("permanent (code {code:?}): {message}")]
    Permanent {
        /// WhatsApp's error code, when it gave one.
        code: Option<i64>,
        /// What went wrong, readable.
        message: String,
    },
    /// The sender's circuit breaker is open: nothing was sent. The reply
    /// waits without spending an attempt.
    #[error("the Cloud API circuit is open (next probe in {retry_after:?})")]
    CircuitOpen {
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
}

impl SendError {
    /// A retryable failure without a code.
    pub fn retryable(message: impl Into<String>) -> Self {
        SendError::Retryable { code: None, message: message.into() }
    }

    /// A permanent failure without a code.
    pub fn permanent(message: impl Into<String>) -> Self {
        SendError::Permanent { code: None, message: message.into() }
    }

    /// WhatsApp's error code, when the failure came with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            SendError::Retryable { code, .. }
            | SendError::Throttled { code, .. }
            | SendError::Permanent { code, .. } => *code,
            SendError::CircuitOpen { .. } => None,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SendError::Permanent { .. })
    }

    /// Whether the breaker should count it: only failures that look like an outage.
    pub fn is_outage(&self) -> bool {
        matches!(self, SendError::Retryable { .. })
    }

    /// The `failure_type` a reply that ends with this error is dead-lettered as.
    pub fn failure_type(&self) -> FailureType {
        match self {
            // A bad parameter is our request's fault, not WhatsApp's.
            SendError::Permanent { code: Some(100), .. } => FailureType::ValidationError,
            _ => FailureType::ExternalServiceError,
        }
    }
}

/// Delivers replies to WhatsApp users.
///
/// The business number to send from is the reply's
/// [`ResponseReady::business_number`] (set by the pipeline from the inbound
/// message); a sender falls back to its own default.
///
/// ```
/// use orchestrator::event::ResponseReady;
/// use orchestrator::outbound::{SendError, Sent, WhatsAppSender};
///
/// /// Sends nothing; refuses replies to an unknown country.
/// struct OnlyUs;
///
/// #[orchestrator::async_trait]
/// impl WhatsAppSender for OnlyUs {
///     async fn send(&self, reply: &ResponseReady) -> Result<Sent, SendError> {
///         if !reply.to_phone.starts_with("+1") {
///             return Err(SendError::permanent("only +1 numbers"));
///         }
///         Ok(Sent { wamid: Some(format!("wamid.{}", reply.original_message_id)) })
///     }
/// }
/// ```
#[async_trait]
pub trait WhatsAppSender: Send + Sync {
    /// Sends one reply.
    async fn send(&self, reply: &ResponseReady) -> Result<Sent, SendError>;

    /// The sender's circuit breaker, if it has one: an open breaker makes
    /// the reply sender defer replies instead of spending their attempts.
    fn breaker(&self) -> Option<&std::sync::Arc<crate::breaker::CircuitBreaker>> {
        None
    }
}

/// The default sender: logs the message it would send and sends nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRunSender;

#[async_trait]
impl WhatsAppSender for DryRunSender {
    async fn send(&self, reply: &ResponseReady) -> Result<Sent, SendError> {
        let text = match &reply.content {
            ResponseContent::Text { message } => message.clone(),
            ResponseContent::Interactive { body_text, buttons } => {
                let titles: Vec<&str> = buttons.iter().map(|b| b.title.as_str()).collect();
                format!("{body_text} {titles:?}")
            }
            other => format!("{other:?}"),
        };
        tracing::info!(
            to = %crate::mask_phone(&reply.to_phone),
            in_reply_to = %reply.original_message_id,
            priority = ?reply.priority,
            %text,
            "dry run (no WHATSAPP_TOKEN): would send this reply"
        );
        Ok(Sent::default())
    }
}
