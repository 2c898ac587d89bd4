//! The WhatsApp Cloud API webhook, independent of any HTTP framework:
//! notification parsing ([`payload`]), the `X-Hub-Signature-256` check
//! ([`signature`]), the deduplication of redelivered messages ([`recent`])
//! and what a notification turns into ([`forward`]). The axum routes are in
//! [`crate::http`]; the edge-function path in [`crate::kafka::webhook_ingest`].

pub mod forward;
pub mod payload;
pub mod recent;
pub mod signature;

pub use payload::{DeliveryStatus, Notification, NotifiedMessage, OtherMessage, PayloadError, parse};
pub use recent::RecentMessageIds;
pub use signature::{SignatureError, verify_signature};
