//! `saga_steps`: the append-only saga log.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;

use super::corrupt;
use super::statement::stmt;
use crate::store::{Lease, MessageKey, StepRecord, StepStatus, StoreError};

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

pub(super) async fn record_step(
    db: &impl ConnectionTrait,
    lease: &Lease,
    run: u32,
    step: &StepRecord,
) -> Result<(), StoreError> {
    let key = &lease.key;
    // Inserted only while the lease is held: a worker that lost its lease
    // stops at its next step instead of interleaving with the new holder.
    let sql = format!(
        "INSERT INTO saga_steps (tenant_id, message_id, run, step_index, action, status, output, error, retryable, created_at)
         SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
         WHERE EXISTS (SELECT 1 FROM processed_messages WHERE {})",
        super::claims::HELD
    );
    let values = vec![
        key.tenant_id.as_str().into(),
        key.message_id.as_str().into(),
        (run as i32).into(),
        (step.step_index as i32).into(),
        step.action.as_str().into(),
        step.status.as_str().into(),
        step.output.clone().into(),
        step.error.clone().into(),
        step.retryable.into(),
        step.at.into(),
        key.tenant_id.as_str().into(),
        key.message_id.as_str().into(),
        lease.token.into(),
    ];
    let result = db.execute_raw(stmt(db.get_database_backend(), &sql, values)).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::LeaseLost(key.message_id.clone()));
    }
    Ok(())
}
