//! The per-message pipeline: dedupe, validate, route, run the saga, decide.
//!
//! [`Orchestrator::process`] is the one entry point the Kafka runtime (or any
//! other transport) calls with a decoded message and its intent; it returns
//! what happened and what to publish.
//!
//! | file | what it holds |
//! | --- | --- |
//! | `incoming` | [`Incoming`]: the message and intent going in |
//! | `outcome` | [`Outcome`] and its parts: what came out |
//! | `builder` | [`OrchestratorBuilder`] |
//! | `process` | [`Orchestrator`] and the decision path |
//! | `unclaimed` | a new message with an all-local plan, completed with no claim before |
//! | `dead_letter` | rejecting input, retry-or-give-up, dead-lettering |
//! | `audit` | the audit rows and reply metadata of a completed message |
//! | `observe` | the pipeline's metrics, recorded from the outcome |

mod audit;
mod builder;
mod dead_letter;
mod incoming;
mod observe;
mod outcome;
mod process;
mod unclaimed;

pub use builder::{BuildError, OrchestratorBuilder};
pub use incoming::Incoming;
use incoming::Provenance;
pub use outcome::{Completed, DeadLettered, DuplicateOf, LeadStage, Outcome, PipelineError};
pub use process::Orchestrator;

/// `processed_by` stamped on events the orchestrator produces.
pub const PROCESSED_BY: &str = "whatsapp_orchestrator";
