//! The one executor of every effect table: insert once per idempotency key
//! (coalesced over concurrent messages), and move a row's status for
//! compensation. An effect table is an entity with [`EffectTable`] (its
//! columns and statuses) and [`Effect`] (its action and row);
//! [`EffectExecutor`] does the rest.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orchestrator::coalesce::Coalescer;
use orchestrator::local::LocalExecutor;
use orchestrator::{ActionContext, ActionError, ActionExecutor, ActionOutput};
use sea_orm::sea_query::{Expr, ValueType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    IntoActiveModel, ModelTrait, QueryFilter, TryInsertResult, Value,
};
use serde_json::Value as Json;

/// One effect table's rows, written by its executor: inserts of concurrent
/// messages are coalesced into one multi-row `INSERT` per batch (see
/// [`orchestrator::coalesce`]), so a busy database sees one round trip for
/// many steps; an idle one writes each row at once.
///
/// Undos go through the same single writer, after the inserts of their
/// batch: a step that timed out while its insert was queued or being
/// written is undone after that insert, never before it.
pub(crate) struct EffectRows<E: EffectTable> {
    db: DatabaseConnection,
    writes: Arc<OnceLock<Writes<E>>>,
}

/// A write to an effect table.
enum Write<A> {
    /// Insert the row unless its idempotency key is stored already.
    Insert(A),
    /// Undo the row stored under this idempotency key.
    Undo(String),
}

/// The coalesced writes of `E`'s rows; an insert is answered with its stored row.
type Writes<E> =
    Coalescer<Write<<E as EntityTrait>::ActiveModel>, Result<Option<<E as EntityTrait>::Model>, ActionError>>;

impl<E: EffectTable> Clone for EffectRows<E> {
    fn clone(&self) -> Self {
        Self { db: self.db.clone(), writes: self.writes.clone() }
    }
}

impl<E: EffectTable> std::fmt::Debug for EffectRows<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EffectRows").field("table", &E::default().table_name()).finish_non_exhaustive()
    }
}

/// Writer tasks per table: one, so batches grow while one is written and an
/// undo cannot overtake the insert it undoes.
const WRITERS: usize = 1;

/// Rows per `INSERT` (about a dozen parameters each, far below both databases' limits).
const MAX_ROWS: usize = 256;

impl<E> EffectRows<E>
where
    E: EffectTable,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send + 'static,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone + Send + Sync + 'static,
{
    /// Rows of `E` in `db`; the batch writer starts on first use, in the caller's tokio runtime.
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self { db, writes: Arc::default() }
    }

    fn writes(&self) -> &Writes<E> {
        self.writes.get_or_init(|| {
            let db = self.db.clone();
            Coalescer::spawn(WRITERS, MAX_ROWS, move |writes| {
                let db = db.clone();
                async move { write_batch::<E>(&db, writes).await }
            })
        })
    }

    /// Inserts `row` unless a row with its idempotency key exists; returns the stored row.
    pub(crate) async fn insert_once(&self, row: E::ActiveModel) -> Result<E::Model, ActionError> {
        let stored = self.writes().call(Write::Insert(row)).await.map_err(ActionError::retryable)??;
        stored.ok_or_else(|| ActionError::retryable("an insert was answered without its row"))
    }

    /// Compensates the step whose idempotency key is `key` (see [`undo`]).
    pub(crate) async fn undo(&self, key: &str) -> Result<(), ActionError> {
        self.writes().call(Write::Undo(key.to_owned())).await.map_err(ActionError::retryable)??;
        Ok(())
    }
}

/// Serves a batch: its inserts in one statement, then its undos in order.
async fn write_batch<E>(
    db: &DatabaseConnection,
    writes: Vec<Write<E::ActiveModel>>,
) -> Vec<Result<Option<E::Model>, ActionError>>
where
    E: EffectTable,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone,
{
    let mut answers: Vec<Option<Result<Option<E::Model>, ActionError>>> = writes.iter().map(|_| None).collect();
    let mut inserts = Vec::new();
    let mut undos = Vec::new();
    for (i, write) in writes.into_iter().enumerate() {
        match write {
            Write::Insert(row) => inserts.push((i, row)),
            Write::Undo(key) => undos.push((i, key)),
        }
    }
    if !inserts.is_empty() {
        let (slots, rows): (Vec<usize>, Vec<_>) = inserts.into_iter().unzip();
        for (slot, stored) in slots.into_iter().zip(insert_many_once::<E>(db, rows).await) {
            answers[slot] = Some(stored.map(Some));
        }
    }
    for (slot, key) in undos {
        answers[slot] = Some(undo::<E>(db, &key).await.map(|()| None));
    }
    answers.into_iter().map(|answer| answer.unwrap_or(Ok(None))).collect()
}

/// The idempotency key of a row to insert or a stored one.
fn key_of(value: Value) -> Option<String> {
    <String as ValueType>::try_from(value).ok()
}

/// Inserts `rows` in one statement, skipping those whose idempotency key
/// is stored already (a resumed step), and answers each with its stored
/// row: the one just inserted, or the one written the first time.
async fn insert_many_once<E>(db: &impl ConnectionTrait, rows: Vec<E::ActiveModel>) -> Vec<Result<E::Model, ActionError>>
where
    E: EffectTable,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone,
{
    let keys: Vec<Option<String>> =
        rows.iter().map(|row| row.get(E::IDEMPOTENCY_KEY).into_value().and_then(key_of)).collect();
    match store_rows::<E>(db, rows, &keys).await {
        Ok(stored) => keys
            .into_iter()
            .map(|key| {
                let key = key.ok_or_else(|| ActionError::permanent("an effect row has no idempotency key"))?;
                stored.get(&key).cloned().ok_or_else(|| {
                    ActionError::retryable(format!("row with idempotency key {key} vanished after insert"))
                })
            })
            .collect(),
        Err(error) => keys.iter().map(|_| Err(error.clone())).collect(),
    }
}

/// The stored rows of `keys` after inserting `rows`, by idempotency key.
async fn store_rows<E>(
    db: &impl ConnectionTrait,
    mut rows: Vec<E::ActiveModel>,
    keys: &[Option<String>],
) -> Result<HashMap<String, E::Model>, ActionError>
where
    E: EffectTable,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    E::Model: IntoActiveModel<E::ActiveModel>,
{
    // Key order: concurrent batches take the unique index's locks in one order.
    rows.sort_by_cached_key(|row| row.get(E::IDEMPOTENCY_KEY).into_value().and_then(key_of));
    let inserted =
        E::insert_many(rows).on_conflict_do_nothing_on([E::IDEMPOTENCY_KEY]).exec_with_returning_many(db).await;
    let mut stored = HashMap::with_capacity(keys.len());
    match inserted {
        Ok(TryInsertResult::Inserted(models)) => {
            for model in models {
                if let Some(key) = key_of(model.get(E::IDEMPOTENCY_KEY)) {
                    stored.insert(key, model);
                }
            }
        }
        // Every row conflicted (sea-orm reports that on SQLite as "not found").
        Ok(_) | Err(DbErr::RecordNotFound(_)) => {}
        Err(error) => return Err(db_error(error)),
    }
    // Rows written the first time (resumed steps): read back, one query for all.
    let missing: Vec<&String> = keys.iter().flatten().filter(|key| !stored.contains_key(*key)).collect();
    if !missing.is_empty() {
        for model in E::find().filter(E::IDEMPOTENCY_KEY.is_in(missing)).all(db).await.map_err(db_error)? {
            if let Some(key) = key_of(model.get(E::IDEMPOTENCY_KEY)) {
                stored.insert(key, model);
            }
        }
    }
    Ok(stored)
}

/// An effect table: its columns and the lifecycle its compensation moves along.
pub trait EffectTable: EntityTrait {
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

/// An effect table's action: its name, the row one step writes, and what
/// the step answers. With [`EffectExecutor`] that is the whole executor.
pub trait Effect: EffectTable {
    /// The action name the executor is registered under.
    const ACTION: &'static str;

    /// The row this step writes under `key` (its idempotency key), with
    /// status [`EffectTable::DONE`] and both timestamps `now`; a permanent
    /// error when the parameters cannot make one.
    fn row(ctx: &ActionContext<'_>, key: String, now: DateTime<Utc>) -> Result<Self::ActiveModel, ActionError>;

    /// The step's output from the stored row (its id under [`EffectTable::OUTPUT_ID`], at least).
    fn output(row: &Self::Model) -> Json;
}

/// The executor of an effect table `E`: writes [`Effect::row`] once per
/// step and undoes it by the step's idempotency key, whether or not its
/// output was recorded.
///
/// It is a [`LocalExecutor`]: registered with
/// [`ExecutorRegistry::with_local`](orchestrator::ExecutorRegistry::with_local),
/// a plan's trailing steps write their rows in the completion transaction
/// (one `INSERT` per table for a batch of messages). Run on its own (before
/// an external step, or on a store without transactions), it writes through
/// its own coalesced writer and is compensated by status.
pub struct EffectExecutor<E: EffectTable> {
    rows: EffectRows<E>,
}

impl<E> EffectExecutor<E>
where
    E: EffectTable,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send + 'static,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone + Send + Sync + 'static,
{
    /// Writes to `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { rows: EffectRows::new(db) }
    }
}

impl<E: EffectTable> Clone for EffectExecutor<E> {
    fn clone(&self) -> Self {
        Self { rows: self.rows.clone() }
    }
}

impl<E: EffectTable> std::fmt::Debug for EffectExecutor<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EffectExecutor").field("rows", &self.rows).finish()
    }
}

#[async_trait]
impl<E> ActionExecutor for EffectExecutor<E>
where
    E: Effect + Send + Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send + 'static,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        E::ACTION
    }

    async fn execute(&self, ctx: &ActionContext<'_>) -> Result<ActionOutput, ActionError> {
        let row = E::row(ctx, ctx.idempotency_key(), Utc::now())?;
        let stored = self.rows.insert_once(row).await?;
        Ok(ActionOutput(E::output(&stored)))
    }

    async fn compensate(&self, ctx: &ActionContext<'_>, _output: &ActionOutput) -> Result<(), ActionError> {
        self.rows.undo(&ctx.idempotency_key()).await
    }

    async fn compensate_unknown(&self, ctx: &ActionContext<'_>) -> Result<(), ActionError> {
        self.rows.undo(&ctx.idempotency_key()).await
    }
}

#[async_trait]
impl<E> LocalExecutor for EffectExecutor<E>
where
    E: Effect + Send + Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send + 'static,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone + Send + Sync + 'static,
{
    fn check(&self, ctx: &ActionContext<'_>) -> Result<(), ActionError> {
        E::row(ctx, ctx.idempotency_key(), Utc::now()).map(drop)
    }

    async fn execute_in(
        &self,
        txn: &DatabaseTransaction,
        steps: &[ActionContext<'_>],
    ) -> Result<Vec<ActionOutput>, ActionError> {
        let now = Utc::now();
        let rows = steps.iter().map(|ctx| E::row(ctx, ctx.idempotency_key(), now)).collect::<Result<Vec<_>, _>>()?;
        let mut outputs = Vec::with_capacity(rows.len());
        for stored in insert_many_once::<E>(txn, rows).await {
            outputs.push(ActionOutput(E::output(&stored?)));
        }
        Ok(outputs)
    }
}
