//! The table of action executors, by action name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::executor::ActionExecutor;
use crate::handler::ActionRequest;
use crate::local::LocalExecutor;

/// Action executors keyed by [`ActionExecutor::name`].
#[derive(Clone, Default)]
pub struct ExecutorRegistry {
    executors: HashMap<String, Arc<dyn ActionExecutor>>,
    /// The executors among them that can write in the completion transaction.
    local: HashMap<String, Arc<dyn LocalExecutor>>,
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
        self.local.remove(executor.name());
        self.executors.insert(executor.name().to_owned(), executor);
        self
    }

    /// Registers a local executor (builder style): its trailing steps write
    /// in the completion transaction (see [`crate::local`]).
    pub fn with_local(mut self, executor: impl LocalExecutor + 'static) -> Self {
        self.register_local(Arc::new(executor));
        self
    }

    /// Registers a shared local executor under its name.
    pub fn register_local(&mut self, executor: Arc<dyn LocalExecutor>) -> &mut Self {
        let name = executor.name().to_owned();
        self.executors.insert(name.clone(), executor.clone());
        self.local.insert(name, executor);
        self
    }

    /// The executor for an action.
    pub fn get(&self, action: &str) -> Option<&Arc<dyn ActionExecutor>> {
        self.executors.get(action)
    }

    /// The local executor for an action, if it is one.
    pub fn local(&self, action: &str) -> Option<&Arc<dyn LocalExecutor>> {
        self.local.get(action)
    }

    /// Where the trailing local run of `actions` starts: the index after the
    /// last step that is not local (`actions.len()` when the last one is not).
    pub fn local_tail(&self, actions: &[ActionRequest]) -> usize {
        actions.iter().rposition(|a| !self.local.contains_key(&a.action)).map_or(0, |last| last + 1)
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
