//! The table of action executors, by action name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::executor::ActionExecutor;

/// Action executors keyed by [`ActionExecutor::name`].
#[derive(Clone, Default)]
pub struct ExecutorRegistry {
    executors: HashMap<String, Arc<dyn ActionExecutor>>,
}

impl ExecutorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an executor (builder style); a later one with the same name replaces it.
    pub fn with(mut self, executor: impl ActionExecutor + 'static) -> Self {
        self.register(Arc::new(executor));
        self
    }

    /// Registers a shared executor under its name.
    pub fn register(&mut self, executor: Arc<dyn ActionExecutor>) -> &mut Self {
        self.executors.insert(executor.name().to_owned(), executor);
        self
    }

    /// The executor for an action.
    pub fn get(&self, action: &str) -> Option<&Arc<dyn ActionExecutor>> {
        self.executors.get(action)
    }

    /// Registered action names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.executors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

impl std::fmt::Debug for ExecutorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorRegistry").field("actions", &self.names()).finish()
    }
}
