//! The lead stages the built-in handlers move leads to (`leads.stage`,
//! `lead_state_changed_total{from,to}`); a lead not seen before is `new`.

/// Ordered something.
pub const CUSTOMER: &str = "customer";
/// Asked about prices or availability.
pub const INTERESTED: &str = "interested";
/// Asked to be called.
pub const CALL_SCHEDULED: &str = "call_scheduled";
/// Complained.
pub const AT_RISK: &str = "at_risk";
