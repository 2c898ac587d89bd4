//! What every effect table's executor shares: insert once per idempotency
//! key, and move a row's status for compensation.

use chrono::Utc;
use orchestrator::ActionError;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, IntoActiveModel, QueryFilter,
    TryInsertResult,
};

/// Inserts `row` unless a row with the same idempotency key exists; returns the stored row.
pub(crate) async fn insert_once<A>(
    db: &DatabaseConnection,
    row: A,
    key: &str,
) -> Result<<A::Entity as EntityTrait>::Model, ActionError>
where
    A: ActiveModelTrait + Send,
    A::Entity: EffectTable,
    <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
{
    let key_column = <A::Entity as EffectTable>::IDEMPOTENCY_KEY;
    // One round trip when the row is new (the usual case); a conflict (a
    // resumed step) reads the row written the first time.
    let inserted =
        <A::Entity as EntityTrait>::insert(row).on_conflict_do_nothing_on([key_column]).exec_with_returning(db).await;
    match inserted {
        Ok(TryInsertResult::Inserted(model)) => return Ok(model),
        // sea-orm reports a conflict on SQLite as "inserted item not found".
        Ok(_) | Err(DbErr::RecordNotFound(_)) => {}
        Err(error) => return Err(db_error(error)),
    }
    <A::Entity as EntityTrait>::find()
        .filter(key_column.eq(key))
        .one(db)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ActionError::retryable(format!("row with idempotency key {key} vanished after insert")))
}

/// An effect table: its columns and the lifecycle its compensation moves along.
pub(crate) trait EffectTable: EntityTrait {
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
    /// Field of the executor's output holding the row id (for callers; undo goes by key).
    const OUTPUT_ID: &'static str;
}

/// Compensates: moves the row stored under `idempotency_key` from `DONE` to
/// `UNDONE`. Keyed on the step rather than on its output, so it also undoes
/// an execution whose result was never recorded; a no-op when there is no
/// such row or it already moved, so compensation can run twice.
pub(crate) async fn undo<E: EffectTable>(db: &DatabaseConnection, idempotency_key: &str) -> Result<(), ActionError> {
    E::update_many()
        .col_expr(E::STATUS, Expr::value(E::UNDONE))
        .col_expr(E::UPDATED_AT, Expr::value(Utc::now()))
        .filter(E::IDEMPOTENCY_KEY.eq(idempotency_key))
        .filter(E::STATUS.eq(E::DONE))
        .exec(db)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Database failures are transient from the saga's point of view.
pub(crate) fn db_error(error: DbErr) -> ActionError {
    ActionError::retryable(format!("database: {error}"))
}
