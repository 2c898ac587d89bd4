//! The way back to the customer: sending replies to WhatsApp.
//!
//! | part | what it does |
//! | --- | --- |
//! | [`WhatsAppSender`] | sends one reply ([`CloudApiSender`], [`DryRunSender`], or yours) |
//! | [`SendError`] | why a send failed, and so what happens next |
//! | [`rate::SendLimits`] | WhatsApp's throughput and pair-rate limits, adaptive |
//!
//! The Kafka side (consuming `conversation.responses`, retries, dead
//! letters, sending each reply once) is [`crate::kafka::ResponseSender`];
//! the record of every reply is the `outbound_messages` table
//! ([`crate::store::OutboundMessages`]).

#[cfg(feature = "cloud-api")]
pub mod cloud_api;
pub mod rate;
mod send;

#[cfg(feature = "cloud-api")]
pub use cloud_api::{CloudApiConfig, CloudApiSender};
pub use rate::{RateSettings, SendLimits};
pub use send::{DryRunSender, SendError, Sent, WhatsAppSender};
