//! Events exchanged with the external AI service.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `AiProcessRequest`: asks the AI service to classify a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiProcessRequest {
    /// Correlates the result with this request.
    pub processing_id: String,
    /// The message to classify.
    pub message_id: String,
    /// Its sender.
    pub from_phone: String,
    /// The text to classify, when the message has any.
    #[serde(default)]
    pub text: Option<String>,
    /// The lead, when known.
    #[serde(default)]
    pub lead_id: Option<String>,
    /// The business, when known.
    #[serde(default)]
    pub business_id: Option<String>,
    /// The tenant, when known.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// When the request was made.
    #[serde(deserialize_with = "super::timestamp::deserialize")]
    pub requested_at: DateTime<Utc>,
}

/// `AiProcessResult`: the AI service's classification of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiProcessResult {
    /// The request this answers.
    pub processing_id: String,
    /// The classified message.
    pub message_id: String,
    /// The lead the message belongs to.
    #[serde(default)]
    pub lead_id: Option<String>,
    /// The business the lead belongs to.
    #[serde(default)]
    pub business_id: Option<String>,
    /// The tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Intent name, e.g. `ORDER_REQUEST`.
    pub intent: String,
    /// Confidence in 0..=1.
    pub confidence: f64,
    /// Extracted entities.
    #[serde(default)]
    pub entities: Map<String, Value>,
}
