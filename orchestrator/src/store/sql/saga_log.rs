//! `saga_steps`: the append-only saga log.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;

use super::corrupt;
use super::statement::{push_rows, stmt};
use crate::store::{MessageKey, StepRecord, StepStatus, StoreError};

pub(super) async fn load_steps(
    db: &impl ConnectionTrait,
    key: &MessageKey,
    run: u32,
) -> Result<Vec<StepRecord>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT step_index, action, status, output, error, retryable, created_at FROM saga_steps
             WHERE tenant_id = ? AND message_id = ? AND run = ? ORDER BY id",
            vec![key.tenant_id.as_str().into(), key.message_id.as_str().into(), (run as i32).into()],
        ))
        .await?;
    rows.into_iter()
        .map(|row| {
            let status: String = row.try_get("", "status")?;
            let step_index: i32 = row.try_get("", "step_index")?;
            Ok(StepRecord {
                step_index: step_index.max(0) as u32,
                action: row.try_get("", "action")?,
                status: StepStatus::parse(&status)
                    .ok_or_else(|| corrupt("saga_steps", format!("unknown status `{status}`")))?,
                output: row.try_get("", "output")?,
                error: row.try_get("", "error")?,
                retryable: row.try_get("", "retryable")?,
                at: row.try_get::<DateTime<Utc>>("", "created_at")?,
            })
        })
        .collect()
}

/// Saga-log rows of one message to append, in order, while `token` holds its lease.
pub(super) struct StepWrite {
    pub(super) key: MessageKey,
    pub(super) token: i64,
    pub(super) run: u32,
    pub(super) steps: Vec<StepRecord>,
}

/// Appends many messages' saga-log rows, one statement for the batch. Each
/// row is inserted only while its own lease is held (the token matches and
/// the claim is in progress); a row left out comes back as `LeaseLost` for
/// its caller alone. The rows returned do not say which lease wrote them, so
/// a message written twice in one batch (a stale worker beside the holder)
/// has its second write in a statement of its own.
pub(super) async fn record_steps(db: &impl ConnectionTrait, writes: Vec<StepWrite>) -> Vec<Result<(), StoreError>> {
    let mut seen = std::collections::HashSet::with_capacity(writes.len());
    let repeated: Vec<bool> = writes.iter().map(|write| !seen.insert(&write.key)).collect();
    if !repeated.contains(&true) {
        return record_distinct(db, &writes).await;
    }
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for (write, repeat) in writes.into_iter().zip(&repeated) {
        if *repeat { again.push(write) } else { first.push(write) }
    }
    let mut first = record_distinct(db, &first).await.into_iter();
    let mut again = Box::pin(record_steps(db, again)).await.into_iter();
    repeated
        .iter()
        .map(|repeat| if *repeat { again.next() } else { first.next() }.expect("every write answered"))
        .collect()
}

/// [`record_steps`] for writes of distinct messages.
async fn record_distinct(db: &impl ConnectionTrait, writes: &[StepWrite]) -> Vec<Result<(), StoreError>> {
    let mut sql = String::from(
        "INSERT INTO saga_steps (tenant_id, message_id, run, step_index, action, status, output, error, retryable, created_at)
         SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9, column10 FROM (VALUES ",
    );
    let mut values = Vec::with_capacity(writes.len() * 11);
    push_rows(&mut sql, writes.iter().map(|write| write.steps.len()).sum(), "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    for (write, step) in writes.iter().flat_map(|write| write.steps.iter().map(move |step| (write, step))) {
        values.extend([
            write.key.tenant_id.as_str().into(),
            write.key.message_id.as_str().into(),
            (write.run as i32).into(),
            (step.step_index as i32).into(),
            step.action.as_str().into(),
            step.status.as_str().into(),
            step.output.clone().into(),
            step.error.clone().into(),
            step.retryable.into(),
            step.at.into(),
            write.token.into(),
        ]);
    }
    // Inserted only while the lease is held: a worker that lost its lease
    // stops at its next step instead of interleaving with the new holder.
    sql.push_str(
        ") AS v WHERE EXISTS (SELECT 1 FROM processed_messages p
           WHERE p.tenant_id = v.column1 AND p.message_id = v.column2 AND p.lease_token = v.column11
             AND p.lease_expires_at IS NOT NULL AND p.status = 'in_progress')
         RETURNING tenant_id, message_id, run, step_index, status",
    );
    let rows = match db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await {
        Ok(rows) => rows,
        Err(error) => return super::batch::fail_all(&StoreError::from(error), writes.len()),
    };
    // Which rows went in, as (tenant, message, run, step, status) -> how many.
    let mut inserted: std::collections::HashMap<(String, String, i32, i32, String), usize> = Default::default();
    for row in rows {
        let read = || -> Result<_, sea_orm::DbErr> {
            Ok((
                row.try_get::<String>("", "tenant_id")?,
                row.try_get::<String>("", "message_id")?,
                row.try_get::<i32>("", "run")?,
                row.try_get::<i32>("", "step_index")?,
                row.try_get::<String>("", "status")?,
            ))
        };
        match read() {
            Ok(id) => *inserted.entry(id).or_default() += 1,
            Err(error) => return super::batch::fail_all(&StoreError::from(error), writes.len()),
        }
    }
    // A write's rows share its lease: all of them went in, or none.
    writes
        .iter()
        .map(|write| {
            let mut all_in = true;
            for step in &write.steps {
                let id = (
                    write.key.tenant_id.clone(),
                    write.key.message_id.clone(),
                    write.run as i32,
                    step.step_index as i32,
                    step.status.as_str().to_owned(),
                );
                match inserted.get_mut(&id) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => all_in = false,
                }
            }
            if all_in { Ok(()) } else { Err(StoreError::LeaseLost(write.key.message_id.clone())) }
        })
        .collect()
}
