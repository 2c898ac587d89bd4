//! The table of intent handlers, in the order they are tried.

use std::sync::Arc;

use crate::context::MessageContext;
use crate::handler::IntentHandler;

/// Intent handlers sorted by priority, with a fallback for messages none accepts.
///
/// ```
/// # use orchestrator::prelude::*;
/// # struct Unknown;
/// # #[async_trait] impl IntentHandler for Unknown {
/// #   fn intent(&self) -> &str { "UNKNOWN" }
/// #   async fn handle(&self, _: &MessageContext) -> Result<IntentOutcome, HandlerError> { Ok(IntentOutcome::default()) } }
/// # struct Order;
/// # #[async_trait] impl IntentHandler for Order {
/// #   fn intent(&self) -> &str { "ORDER_REQUEST" }
/// #   async fn handle(&self, _: &MessageContext) -> Result<IntentOutcome, HandlerError> { Ok(IntentOutcome::default()) } }
/// let registry = HandlerRegistry::new(Unknown).with(Order);
/// assert_eq!(registry.len(), 1);
/// ```
#[derive(Clone)]
pub struct HandlerRegistry {
    handlers: Vec<Arc<dyn IntentHandler>>,
    fallback: Arc<dyn IntentHandler>,
}

impl HandlerRegistry {
    /// An empty registry whose fallback takes every message nobody else accepts.
    pub fn new(fallback: impl IntentHandler + 'static) -> Self {
        Self { handlers: Vec::new(), fallback: Arc::new(fallback) }
    }

    /// Registers a handler (builder style).
    pub fn with(mut self, handler: impl IntentHandler + 'static) -> Self {
        self.register(Arc::new(handler));
        self
    }

    /// Registers a shared handler, keeping the table sorted by descending
    /// priority; equal priorities keep registration order.
    pub fn register(&mut self, handler: Arc<dyn IntentHandler>) -> &mut Self {
        let priority = handler.priority();
        let at = self.handlers.partition_point(|h| h.priority() >= priority);
        self.handlers.insert(at, handler);
        self
    }

    /// The handler for a message: the first, by priority, that accepts it,
    /// else the fallback.
    pub fn route(&self, ctx: &MessageContext) -> &dyn IntentHandler {
        self.handlers.iter().find(|h| h.can_handle(ctx)).map_or(self.fallback.as_ref(), Arc::as_ref)
    }

    /// The registered handlers in the order they are tried (fallback excluded).
    pub fn handlers(&self) -> impl Iterator<Item = &dyn IntentHandler> {
        self.handlers.iter().map(Arc::as_ref)
    }

    /// The fallback handler.
    pub fn fallback(&self) -> &dyn IntentHandler {
        self.fallback.as_ref()
    }

    /// Number of registered handlers (fallback excluded).
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Whether only the fallback is there.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerRegistry")
            .field("handlers", &self.handlers.iter().map(|h| (h.intent(), h.priority())).collect::<Vec<_>>())
            .field("fallback", &self.fallback.intent())
            .finish()
    }
}
