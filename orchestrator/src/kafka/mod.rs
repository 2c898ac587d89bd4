//! The Kafka side: configuration, the embedded broker, publishing, and the
//! consumer runtime that feeds the pipeline.

pub mod bus;
pub mod cloud_api;
pub mod config;
pub mod embedded;
pub mod headers;
mod key_order;
mod offsets;
pub mod publisher;
pub mod runtime;
pub mod sender;

pub use bus::{EventHandler, KafkaEventBus, ProcessingResult, Subscription, SubscriptionConfig};
pub use cloud_api::{CloudApiConfig, CloudApiSender};
pub use config::KafkaConfig;
pub use embedded::EmbeddedKafka;
pub use publisher::{PublishError, Publisher};
pub use runtime::{ConsumerRuntime, RuntimeError, RuntimeSettings, RuntimeStats};
pub use sender::{DryRunSender, ResponseSender, SendError, WhatsAppSender};
