//! The HTTP server (axum): the WhatsApp webhook, health checks, Prometheus
//! metrics, the dead-letter admin API and the send API (`api`, `/api/v1`),
//! with bearer authentication (`auth`: the admin token, and JWTs).
//!
//! Each part is a [`Router`] with its own state, merged by the caller, so a
//! service embedding the library mounts only what it wants:
//!
//! ```no_run
//! # async fn run(webhook: orchestrator::http::WebhookState, health: orchestrator::http::HealthState)
//! # -> std::io::Result<()> {
//! use orchestrator::http;
//! let app = http::webhook::routes(webhook).merge(http::health::routes(health)).merge(http::metrics::routes(None));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! http::serve(listener, app, std::future::pending()).await
//! # }
//! ```

use axum::Router;

pub mod admin;
pub mod api;
pub mod auth;
pub mod console;
pub mod health;
pub mod inbox;
pub mod metrics;
pub mod webhook;

pub use admin::AdminState;
pub use api::ApiState;
pub use health::HealthState;
pub use inbox::InboxState;
pub use webhook::{WebhookSettings, WebhookState};

/// Serves `app` on `listener` until `shutdown` resolves, then finishes the
/// requests in progress.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
