//! The pipeline's tunables, and the error a setting that cannot be read
//! gives (see [`crate::settings`] for reading them all at start).

use std::time::Duration;

/// A setting could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

/// Pipeline settings beyond the retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// How long a claim protects a message from concurrent processing; a
    /// claim whose lease ran out (its worker crashed) is resumed by the next delivery.
    pub claim_lease: Duration,
    /// Longest time one action may take before it counts as a retryable timeout.
    pub action_timeout: Duration,
    /// Tenant used when neither the intent nor the message names one; `None`
    /// makes a missing tenant a validation error.
    pub default_tenant: Option<String>,
    /// How long completed dedupe records are kept.
    pub dedupe_ttl: Duration,
    /// Delay before a message deferred by an open circuit is tried again, at least.
    pub min_defer: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            claim_lease: Duration::from_secs(30),
            action_timeout: Duration::from_secs(10),
            default_tenant: Some("default".to_owned()),
            dedupe_ttl: Duration::from_secs(7 * 24 * 3600),
            min_defer: Duration::from_secs(1),
        }
    }
}
