//! The store's coalesced writes (see [`crate::coalesce`]): each batched
//! statement answers every request of its batch.

use crate::coalesce::Coalescer;
use crate::store::StoreError;

/// A coalescer whose batches answer each request with a store result.
pub(super) type Batched<Req, Resp> = Coalescer<Req, Result<Resp, StoreError>>;

/// Queues `request` on `batched` and waits for its result.
pub(super) async fn submit<Req: Send + 'static, Resp: Send + 'static>(
    batched: &Batched<Req, Resp>,
    request: Req,
) -> Result<Resp, StoreError> {
    batched.call(request).await.map_err(|error| StoreError::Database(sea_orm::DbErr::Custom(error.to_string())))?
}

/// The same database failure for every request of a failed batch.
pub(super) fn fail_all<Resp>(error: &StoreError, n: usize) -> Vec<Result<Resp, StoreError>> {
    let message = match error {
        StoreError::Database(inner) => inner.to_string(),
        other => other.to_string(),
    };
    (0..n).map(|_| Err(StoreError::Database(sea_orm::DbErr::Custom(message.clone())))).collect()
}
