//! What every effect table's executor shares: insert once per idempotency
//! key, and move a row's status for compensation.

use chrono::Utc;
use orchestrator::{ActionError, ActionOutput};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};

/// Inserts `row` unless a row with the same idempotency key exists; returns the stored row.
pub(crate) async fn insert_once<A>(
    db: &DatabaseConnection,
    row: A,
    key_column: <A::Entity as EntityTrait>::Column,
    key: &str,
) -> Result<<A::Entity as EntityTrait>::Model, ActionError>
where
    A: ActiveModelTrait + Send,
{
    <A::Entity as EntityTrait>::insert(row).on_conflict_do_nothing_on([key_column]).exec(db).await.map_err(db_error)?;
    <A::Entity as EntityTrait>::find()
        .filter(key_column.eq(key))
        .one(db)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ActionError::retryable(format!("row with idempotency key {key} vanished after insert")))
}

/// Moves the row `id` from `from` to `to` (a no-op when it already moved, so
/// compensation can run twice).
pub(crate) async fn set_status<E: EntityTrait>(
    db: &DatabaseConnection,
    columns: StatusColumns<E>,
    id: i64,
    from: &str,
    to: &str,
) -> Result<(), ActionError> {
    E::update_many()
        .col_expr(columns.status, Expr::value(to))
        .col_expr(columns.updated_at, Expr::value(Utc::now()))
        .filter(columns.id.eq(id))
        .filter(columns.status.eq(from))
        .exec(db)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The columns [`set_status`] touches.
pub(crate) struct StatusColumns<E: EntityTrait> {
    pub id: E::Column,
    pub status: E::Column,
    pub updated_at: E::Column,
}

/// The row id an executor put in its output under `field`.
pub(crate) fn output_id(output: &ActionOutput, field: &str) -> Result<i64, ActionError> {
    output
        .get(field)
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| ActionError::permanent(format!("output has no `{field}` to compensate")))
}

/// Database failures are transient from the saga's point of view.
pub(crate) fn db_error(error: DbErr) -> ActionError {
    ActionError::retryable(format!("database: {error}"))
}
