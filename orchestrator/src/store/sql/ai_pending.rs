//! `ai_pending`: messages waiting for the external AI service.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, QueryResult};

use super::statement::stmt;
use crate::store::{PendingClassification, StoreError, to_chrono};

const COLUMNS: &str = r#"processing_id, key, message_id, topic, "partition", "offset", payload, requested_at"#;

fn from_row(row: &QueryResult) -> Result<PendingClassification, StoreError> {
    Ok(PendingClassification {
        processing_id: row.try_get("", "processing_id")?,
        key: row.try_get("", "key")?,
        message_id: row.try_get("", "message_id")?,
        topic: row.try_get("", "topic")?,
        partition: row.try_get("", "partition")?,
        offset: row.try_get("", "offset")?,
        payload: row.try_get("", "payload")?,
        requested_at: row.try_get("", "requested_at")?,
    })
}

pub(super) async fn register(
    db: &impl ConnectionTrait,
    pending: &PendingClassification,
) -> Result<(PendingClassification, bool), StoreError> {
    let backend = db.get_database_backend();
    let inserted = db
        .execute_raw(stmt(
            backend,
            &format!(
                "INSERT INTO ai_pending ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (key, message_id) DO NOTHING"
            ),
            vec![
                pending.processing_id.as_str().into(),
                pending.key.as_str().into(),
                pending.message_id.as_str().into(),
                pending.topic.as_str().into(),
                pending.partition.into(),
                pending.offset.into(),
                pending.payload.as_str().into(),
                pending.requested_at.into(),
            ],
        ))
        .await?
        .rows_affected()
        == 1;
    if inserted {
        return Ok((pending.clone(), true));
    }
    let row = db
        .query_one_raw(stmt(
            backend,
            &format!("SELECT {COLUMNS} FROM ai_pending WHERE key = ? AND message_id = ?"),
            vec![pending.key.as_str().into(), pending.message_id.as_str().into()],
        ))
        .await?;
    match row {
        Some(row) => Ok((from_row(&row)?, false)),
        // Finished between the two statements: the redelivery is a duplicate, and
        // the pipeline's dedupe says so once it is processed.
        None => Ok((pending.clone(), false)),
    }
}

pub(super) async fn take(
    db: &impl ConnectionTrait,
    processing_id: &str,
    hold: Duration,
) -> Result<Option<PendingClassification>, StoreError> {
    let now = Utc::now();
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            &format!(
                "UPDATE ai_pending SET held_until = ?
                 WHERE processing_id = ? AND (held_until IS NULL OR held_until < ?) RETURNING {COLUMNS}"
            ),
            vec![(now + to_chrono(hold)).into(), processing_id.into(), now.into()],
        ))
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub(super) async fn overdue(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<PendingClassification>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT {COLUMNS} FROM ai_pending WHERE requested_at < ? AND (held_until IS NULL OR held_until < ?)
                 ORDER BY requested_at LIMIT ?"
            ),
            vec![before.into(), Utc::now().into(), i64::from(limit).into()],
        ))
        .await?;
    rows.iter().map(from_row).collect()
}

pub(super) async fn waiting(db: &impl ConnectionTrait, key: &str, message_id: &str) -> Result<bool, StoreError> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT 1 AS found FROM ai_pending WHERE key = ? AND message_id = ?",
            vec![key.into(), message_id.into()],
        ))
        .await?;
    Ok(row.is_some())
}

pub(super) async fn resolve(db: &impl ConnectionTrait, processing_id: &str) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "DELETE FROM ai_pending WHERE processing_id = ?",
        vec![processing_id.into()],
    ))
    .await?;
    Ok(())
}
