//! The intent of a message: what the user wants, how sure we are, and what was extracted.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::AiProcessResult;

/// Built-in intent names, as the AI service sends them.
pub mod names {
    /// The user wants to order something.
    pub const ORDER_REQUEST: &str = "ORDER_REQUEST";
    /// The user asks for a price.
    pub const PRICING_INQUIRY: &str = "PRICING_INQUIRY";
    /// The user complains.
    pub const COMPLAINT: &str = "COMPLAINT";
    /// The user asks whether something is available.
    pub const AVAILABILITY_INQUIRY: &str = "AVAILABILITY_INQUIRY";
    /// The user wants a call.
    pub const SCHEDULE_CALL: &str = "SCHEDULE_CALL";
    /// Nothing recognised.
    pub const UNKNOWN: &str = "UNKNOWN";
    /// Every built-in name.
    pub const ALL: [&str; 6] =
        [ORDER_REQUEST, PRICING_INQUIRY, COMPLAINT, AVAILABILITY_INQUIRY, SCHEDULE_CALL, UNKNOWN];
}

/// A classified intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// Intent name, e.g. [`names::ORDER_REQUEST`]; custom handlers may use their own.
    pub name: String,
    /// Confidence in 0..=1.
    pub confidence: f64,
    /// Extracted entities (`products`, `quantity`, `preferred_time`, ...).
    #[serde(default)]
    pub entities: Map<String, Value>,
    /// The lead, when the classifier knows it.
    #[serde(default)]
    pub lead_id: Option<String>,
    /// The business, when known.
    #[serde(default)]
    pub business_id: Option<String>,
    /// The tenant, when known; wins over the message's own.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

impl Intent {
    /// An intent with no entities and no ids.
    pub fn new(name: impl Into<String>, confidence: f64) -> Self {
        Self { name: name.into(), confidence, entities: Map::new(), lead_id: None, business_id: None, tenant_id: None }
    }

    /// The [`names::UNKNOWN`] intent with zero confidence.
    pub fn unknown() -> Self {
        Self::new(names::UNKNOWN, 0.0)
    }

    /// Adds an entity.
    pub fn with_entity(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.entities.insert(key.into(), value.into());
        self
    }

    /// An entity as a string, if it is one.
    pub fn entity_str(&self, key: &str) -> Option<&str> {
        self.entities.get(key).and_then(Value::as_str)
    }
}

impl From<AiProcessResult> for Intent {
    fn from(result: AiProcessResult) -> Self {
        Self {
            name: result.intent,
            confidence: result.confidence,
            entities: result.entities,
            lead_id: result.lead_id,
            business_id: result.business_id,
            tenant_id: result.tenant_id,
        }
    }
}
