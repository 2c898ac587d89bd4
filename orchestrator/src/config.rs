//! Settings read from the environment, with the names and defaults of the design.

use std::str::FromStr;
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

/// Reads and parses `name`, or `default` when unset or empty.
pub fn env_parse<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().map_err(|e: T::Err| ConfigError { name, value, reason: e.to_string() })
        }
        _ => Ok(default),
    }
}

/// `DATABASE_URL`, or the embedded SQLite file `./orchestrator.db`.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| crate::db::DEFAULT_DATABASE_URL.to_owned())
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

impl PipelineConfig {
    /// The defaults, with `CLAIM_LEASE_MS` and `ACTION_TIMEOUT_MS` from the
    /// environment when set. A shorter lease resumes a crashed worker's
    /// messages sooner; the lease is renewed every third of its length.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let millis = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            let value = env_parse(name, default.as_millis() as u64)?;
            if value == 0 {
                return Err(ConfigError { name, value: "0".to_owned(), reason: "must be positive".to_owned() });
            }
            Ok(Duration::from_millis(value))
        };
        Ok(Self {
            claim_lease: millis("CLAIM_LEASE_MS", defaults.claim_lease)?,
            action_timeout: millis("ACTION_TIMEOUT_MS", defaults.action_timeout)?,
            ..defaults
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_parse_reads_defaults_and_rejects_garbage() {
        // Unique names: tests run in parallel within one process.
        assert_eq!(env_parse("ORCH_TEST_UNSET_VAR", 7u32), Ok(7));
        unsafe { std::env::set_var("ORCH_TEST_SET_VAR", " 12 ") };
        assert_eq!(env_parse("ORCH_TEST_SET_VAR", 7u32), Ok(12));
        unsafe { std::env::set_var("ORCH_TEST_BAD_VAR", "twelve") };
        let error = env_parse("ORCH_TEST_BAD_VAR", 7u32).unwrap_err();
        assert_eq!(error.name, "ORCH_TEST_BAD_VAR");
        assert!(error.to_string().contains("twelve"));
    }

    #[test]
    fn pipeline_config_reads_lease_and_action_timeout() {
        // The only test touching these two variables.
        unsafe { std::env::set_var("CLAIM_LEASE_MS", "5000") };
        unsafe { std::env::set_var("ACTION_TIMEOUT_MS", "") };
        let config = PipelineConfig::from_env().unwrap();
        assert_eq!(config.claim_lease, Duration::from_secs(5));
        assert_eq!(config.action_timeout, PipelineConfig::default().action_timeout);
        unsafe { std::env::set_var("ACTION_TIMEOUT_MS", "0") };
        assert_eq!(PipelineConfig::from_env().unwrap_err().name, "ACTION_TIMEOUT_MS");
        unsafe { std::env::remove_var("CLAIM_LEASE_MS") };
        unsafe { std::env::remove_var("ACTION_TIMEOUT_MS") };
    }
}
