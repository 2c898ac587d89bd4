//! Delivery statuses WhatsApp reports (the webhook's `statuses[]`) for the
//! messages we sent, and the store that keeps them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;

/// The status of a message we sent (an entry of a webhook's `statuses[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryStatus {
    /// Our message's WhatsApp id.
    pub message_id: String,
    /// Who it was sent to, E.164 with `+`.
    pub recipient_phone: String,
    /// `sent`, `delivered`, `read`, `failed` (others kept as sent).
    pub status: String,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// For `failed`: the errors, as `code: title (details)` joined by `; `.
    pub error: Option<String>,
    /// Our business number's id (`metadata.phone_number_id`).
    pub phone_number_id: Option<String>,
}

impl DeliveryStatus {
    /// WhatsApp's code of the first error of a `failed` status (the `code`
    /// that [`error`](Self::error) starts with), if it has one.
    pub fn error_code(&self) -> Option<i64> {
        self.error.as_deref()?.split(':').next()?.trim().parse().ok()
    }
}

/// The message we sent that a status moved forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedMessage {
    /// Its organisation.
    pub tenant_id: String,
    /// Its `outbound_messages` key: the message replied to, or `api:<id>`.
    pub message_id: String,
}

/// Delivery statuses reported by the webhook for messages we sent.
#[async_trait]
pub trait DeliveryStatuses: Send + Sync {
    /// Records a status; the same status of the same message again is a no-op (webhook retries).
    /// Answers the organisation and key of the message it moved forward
    /// (`None`: not one of ours, or the status was not news).
    async fn record_status(&self, status: &DeliveryStatus) -> Result<Option<MovedMessage>, StoreError>;

    /// The statuses of one message, oldest first.
    async fn statuses_of(&self, message_id: &str) -> Result<Vec<DeliveryStatus>, StoreError>;
}
