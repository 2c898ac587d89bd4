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
    key: &str,
) -> Result<<A::Entity as EntityTrait>::Model, ActionError>
where
    A: ActiveModelTrait + Send,
    A::Entity: EffectTable,
{
    let key_column = <A::Entity as EffectTable>::IDEMPOTENCY_KEY;
    <A::Entity as EntityTrait>::insert(row).on_conflict_do_nothing_on([key_column]).exec(db).await.map_err(db_error)?;
    <A::Entity as EntityTrait>::find()
        .filter(key_column.eq(key))
        .one(db)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ActionError::retryable(format!("row with idempotency key {key} vanished after insert")))
}

/// An effect table: its columns and the lifecycle its compensation moves along.
pub(crate) trait EffectTable: EntityTrait {
    /// Primary key.
    const ID: Self::Column;
    /// `status`.
    const STATUS: Self::Column;
    /// `updated_at`.
    const UPDATED_AT: Self::Column;
    /// `idempotency_key`.
    const IDEMPOTENCY_KEY: Self::Column;
    /// Status of a row in effect (`created`, `open`, ...).
    const DONE: &'static str;
    /// Status after compensation (`cancelled`, `closed`, ...).
    const UNDONE: &'static str;
    /// Field of the executor's output holding the row id.
    const OUTPUT_ID: &'static str;
}

/// Compensates: moves the row named in `output` from `DONE` to `UNDONE`; a
/// no-op when it already moved, so compensation can run twice.
pub(crate) async fn undo<E: EffectTable>(db: &DatabaseConnection, output: &ActionOutput) -> Result<(), ActionError> {
    let id = output_id(output, E::OUTPUT_ID)?;
    E::update_many()
        .col_expr(E::STATUS, Expr::value(E::UNDONE))
        .col_expr(E::UPDATED_AT, Expr::value(Utc::now()))
        .filter(E::ID.eq(id))
        .filter(E::STATUS.eq(E::DONE))
        .exec(db)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The row id an executor put in its output under `field`.
fn output_id(output: &ActionOutput, field: &str) -> Result<i64, ActionError> {
    output
        .get(field)
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| ActionError::permanent(format!("output has no `{field}` to compensate")))
}

/// Database failures are transient from the saga's point of view.
pub(crate) fn db_error(error: DbErr) -> ActionError {
    ActionError::retryable(format!("database: {error}"))
}
