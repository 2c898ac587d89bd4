//! WhatsApp Orchestrator: root package holding examples, benches and cross-crate tests.
