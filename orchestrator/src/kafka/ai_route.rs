//! The external AI route for intents (`INTENT_SOURCE=ai`).
//!
//! Instead of classifying in process, the runtime stores the message as
//! pending, blocks its phone (later messages of the phone park behind it, as
//! behind a retry), publishes an `AiProcessRequest` and moves its offset on.
//! The matching `AiProcessResult` on `ai.process.result` finishes the
//! message with the AI's intent and releases the phone. A message whose
//! result does not come within the timeout is finished with the runtime's
//! own classifier, so a silent AI service delays a phone but never blocks it.

use std::sync::Arc;
use std::time::Duration;

use crate::store::PendingClassifications;

/// Where intents come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentSource {
    /// The runtime's own classifier (the built-in keyword classifier by default).
    Classifier,
    /// The external AI service over `ai.process.request` / `ai.process.result`.
    Ai,
}

impl std::str::FromStr for IntentSource {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "ai" => Ok(Self::Ai),
            "classifier" | "keywords" | "local" => Ok(Self::Classifier),
            _ => Err("expected `ai` or `keywords`".to_owned()),
        }
    }
}

/// Settings of the AI route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiRouteSettings {
    /// How long a message waits for its result before the fallback classifier finishes it.
    pub timeout: Duration,
    /// How long a worker holds a pending message while finishing it; if it
    /// dies meanwhile, another takes the message over after this.
    pub hold: Duration,
    /// How much longer than `timeout + hold` a phone block may sit untouched,
    /// its holder no longer waiting, before the sweeper lifts it (a worker
    /// died between finishing a message and releasing its phone). Retry and
    /// deferral delays are seconds to a minute; the default leaves ample room.
    pub stale_block_margin: Duration,
}

impl Default for AiRouteSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            hold: Duration::from_secs(60),
            stale_block_margin: Duration::from_secs(600),
        }
    }
}

impl AiRouteSettings {
    /// How often overdue messages are looked for.
    pub(crate) fn sweep_interval(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// The AI route as the runtime uses it: where pending messages are kept, and its settings.
#[derive(Clone)]
pub(crate) struct AiRoute {
    pub(crate) pending: Arc<dyn PendingClassifications>,
    pub(crate) settings: AiRouteSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_source_parses_both_names_and_refuses_others() {
        assert_eq!("AI".parse::<IntentSource>(), Ok(IntentSource::Ai));
        assert_eq!("keywords".parse::<IntentSource>(), Ok(IntentSource::Classifier));
        assert!("openai".parse::<IntentSource>().is_err());
    }

    #[test]
    fn sweep_interval_follows_the_timeout_within_bounds() {
        let with = |ms| AiRouteSettings { timeout: Duration::from_millis(ms), ..Default::default() };
        assert_eq!(with(1_000).sweep_interval(), Duration::from_millis(250));
        assert_eq!(with(100).sweep_interval(), Duration::from_millis(100));
        assert_eq!(with(600_000).sweep_interval(), Duration::from_secs(5));
    }
}
