//! Built-in action executors of WhatsApp Orchestrator, one file per action.
//!
//! Each is an [`effect::EffectExecutor`] over its table's entity: the file
//! holds the entity and the row one step writes. Rows are keyed by the
//! step's idempotency key so a step re-executed after a crash writes nothing
//! twice, and compensation changes the row's `status` (rows are never
//! deleted, so an audit can count effects per `message_id`).
//!
//! | action | table | compensation |
//! | --- | --- | --- |
//! | `create_order` | `orders` | status `cancelled` |
//! | `notify_sales` | `sales_notifications` | status `retracted` |
//! | `create_support_ticket` | `support_tickets` | status `closed` |
//! | `flag_for_review` | `review_flags` | status `cleared` |

use std::sync::Arc;

use orchestrator::{ExecutorRegistry, LocalExecutor};
use sea_orm::DatabaseConnection;

pub mod create_order;
pub mod create_support_ticket;
pub mod effect;
pub mod flag_for_review;
pub mod notify_sales;

pub use create_order::CreateOrder;
pub use create_support_ticket::CreateSupportTicket;
pub use flag_for_review::FlagForReview;
pub use notify_sales::NotifySales;

/// Action names of the built-in executors.
pub mod actions {
    /// See [`super::CreateOrder`].
    pub const CREATE_ORDER: &str = "create_order";
    /// See [`super::NotifySales`].
    pub const NOTIFY_SALES: &str = "notify_sales";
    /// See [`super::CreateSupportTicket`].
    pub const CREATE_SUPPORT_TICKET: &str = "create_support_ticket";
    /// See [`super::FlagForReview`].
    pub const FLAG_FOR_REVIEW: &str = "flag_for_review";
}

/// Every built-in executor, writing to `db`.
fn all(db: &DatabaseConnection) -> [Arc<dyn LocalExecutor>; 4] {
    [
        Arc::new(CreateOrder::new(db.clone())),
        Arc::new(NotifySales::new(db.clone())),
        Arc::new(CreateSupportTicket::new(db.clone())),
        Arc::new(FlagForReview::new(db.clone())),
    ]
}

/// Registers every built-in executor on `registry`, writing to `db`, as
/// local executors: `db` must be the orchestrator's own database, whose
/// completion transaction their trailing steps join (see [`orchestrator::local`]).
pub fn register_builtin(mut registry: ExecutorRegistry, db: &DatabaseConnection) -> ExecutorRegistry {
    for executor in all(db) {
        registry.register_local(executor);
    }
    registry
}

/// A registry with every built-in executor.
pub fn builtin(db: &DatabaseConnection) -> ExecutorRegistry {
    register_builtin(ExecutorRegistry::new(), db)
}

/// A registry with every built-in executor registered as an external one:
/// each step in a transaction of its own, claimed and logged in the saga
/// log like a call to another service. For measuring that path (`loadgen
/// --external`) and for a `db` that is not the orchestrator's own database.
pub fn builtin_external(db: &DatabaseConnection) -> ExecutorRegistry {
    let mut registry = ExecutorRegistry::new();
    for executor in all(db) {
        registry.register(executor);
    }
    registry
}
