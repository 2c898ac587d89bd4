//! The WhatsApp Cloud API webhook, independent of any HTTP framework:
//! notification parsing ([`payload`]), the `X-Hub-Signature-256` check
//! ([`signature`]) and the deduplication of redelivered messages
//! ([`recent`]). The axum routes are in [`crate::http`].

pub mod payload;
pub mod recent;
pub mod signature;

pub use payload::{DeliveryStatus, InboundEvent, Notification, OtherMessage, PayloadError, parse};
pub use recent::RecentMessageIds;
pub use signature::{SignatureError, verify_signature};
