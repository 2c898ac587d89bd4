//! placeholder
use axum::Router;
/// placeholder
#[derive(Clone)]
pub struct AdminState;
/// placeholder
pub fn routes(_: AdminState) -> Router { Router::new() }
