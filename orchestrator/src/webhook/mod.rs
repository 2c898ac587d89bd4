//! The WhatsApp Cloud API webhook, independent of any HTTP framework:
//! notification parsing ([`payload`]) and the `X-Hub-Signature-256` check
//! ([`signature`]). The axum routes are in [`crate::http`].

pub mod payload;
pub mod signature;

pub use payload::{DeliveryStatus, InboundEvent, Notification, OtherMessage, PayloadError, parse};
pub use signature::{SignatureError, verify_signature};
