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

use orchestrator::ExecutorRegistry;
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

/// Registers every built-in executor on `registry`, writing to `db`, as
/// local executors: `db` must be the orchestrator's own database, whose
/// completion transaction their trailing steps join (see [`orchestrator::local`]).
pub fn register_builtin(registry: ExecutorRegistry, db: &DatabaseConnection) -> ExecutorRegistry {
    registry
        .with_local(CreateOrder::new(db.clone()))
        .with_local(NotifySales::new(db.clone()))
        .with_local(CreateSupportTicket::new(db.clone()))
        .with_local(FlagForReview::new(db.clone()))
}

/// A registry with every built-in executor.
pub fn builtin(db: &DatabaseConnection) -> ExecutorRegistry {
    register_builtin(ExecutorRegistry::new(), db)
}
