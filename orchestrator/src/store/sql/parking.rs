//! `key_blocks` and `parked_messages`.
//!
//! Parking and unblocking both begin by writing the key's block row, which
//! takes its lock (a row lock on PostgreSQL, the write lock on SQLite): a
//! message can never be parked behind a block that is being removed.

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

use super::statement::{push_rows, stmt};
use crate::store::{ParkCheck, ParkedMessage, StoreError};

const TOUCH: &str = "UPDATE key_blocks SET touched_at = ? WHERE key = ?";

/// Touches the block rows of many keys in one statement; per key, the
/// holder of its block (`None`: the key is not blocked). Keys may repeat.
pub(super) async fn touch_many(
    db: &impl ConnectionTrait,
    keys: Vec<String>,
) -> Vec<Result<Option<String>, StoreError>> {
    let mut sql = String::from("UPDATE key_blocks SET touched_at = ? WHERE key IN (");
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(keys.len() + 1);
    values.push(Utc::now().into());
    push_rows(&mut sql, keys.len(), "?");
    values.extend(keys.iter().map(|key| sea_orm::Value::from(key.as_str())));
    sql.push_str(") RETURNING key, holder_message_id");
    let rows = match db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await {
        Ok(rows) => rows,
        Err(error) => return super::batch::fail_all(&StoreError::from(error), keys.len()),
    };
    let mut holders = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        match (row.try_get::<String>("", "key"), row.try_get::<String>("", "holder_message_id")) {
            (Ok(key), Ok(holder)) => holders.insert(key, holder),
            (Err(error), _) | (_, Err(error)) => return super::batch::fail_all(&StoreError::from(error), keys.len()),
        };
    }
    keys.iter().map(|key| Ok(holders.get(key).cloned())).collect()
}

/// Parks `message` unless its key's block went away or is its own, after a
/// touch found the key blocked by another message (see [`touch_many`]).
/// Parking holds the block row's lock from the touch to the insert.
pub(super) async fn park_behind(db: &DatabaseConnection, message: &ParkedMessage) -> Result<ParkCheck, StoreError> {
    let txn = db.begin().await?;
    let backend = txn.get_database_backend();
    let touched = txn
        .query_one_raw(stmt(
            backend,
            &format!("{TOUCH} RETURNING holder_message_id"),
            vec![Utc::now().into(), message.key.as_str().into()],
        ))
        .await?;
    let Some(row) = touched else {
        txn.commit().await?;
        return Ok(ParkCheck::Open { holder: false });
    };
    let holder: String = row.try_get("", "holder_message_id")?;
    if holder == message.message_id {
        txn.commit().await?;
        return Ok(ParkCheck::Open { holder: true });
    }
    txn.execute_raw(stmt(
        backend,
        r#"INSERT INTO parked_messages (key, message_id, topic, "partition", "offset", payload, parked_at)
           VALUES (?, ?, ?, ?, ?, ?, ?)"#,
        vec![
            message.key.as_str().into(),
            message.message_id.as_str().into(),
            message.topic.as_str().into(),
            message.partition.into(),
            message.offset.into(),
            message.payload.as_str().into(),
            Utc::now().into(),
        ],
    ))
    .await?;
    txn.commit().await?;
    Ok(ParkCheck::Parked)
}

pub(super) async fn block(db: &impl ConnectionTrait, key: &str, message_id: &str) -> Result<(), StoreError> {
    let now = Utc::now();
    db.execute_raw(stmt(
        db.get_database_backend(),
        "INSERT INTO key_blocks (key, holder_message_id, blocked_at, touched_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (key) DO UPDATE SET holder_message_id = excluded.holder_message_id, touched_at = excluded.touched_at",
        vec![key.into(), message_id.into(), now.into(), now.into()],
    ))
    .await?;
    Ok(())
}

pub(super) async fn next_parked(db: &impl ConnectionTrait, key: &str) -> Result<Option<ParkedMessage>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            r#"SELECT id, key, message_id, topic, "partition", "offset", payload FROM parked_messages
               WHERE key = ? ORDER BY id LIMIT 1"#,
            vec![key.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(ParkedMessage {
        id: row.try_get("", "id")?,
        key: row.try_get("", "key")?,
        message_id: row.try_get("", "message_id")?,
        topic: row.try_get("", "topic")?,
        partition: row.try_get("", "partition")?,
        offset: row.try_get("", "offset")?,
        payload: row.try_get("", "payload")?,
    }))
}

pub(super) async fn unpark(db: &impl ConnectionTrait, id: i64) -> Result<(), StoreError> {
    db.execute_raw(stmt(db.get_database_backend(), "DELETE FROM parked_messages WHERE id = ?", vec![id.into()]))
        .await?;
    Ok(())
}

pub(super) async fn holder(db: &impl ConnectionTrait, key: &str) -> Result<Option<String>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT holder_message_id FROM key_blocks WHERE key = ?",
            vec![key.into()],
        ))
        .await?;
    Ok(row.map(|row| row.try_get("", "holder_message_id")).transpose()?)
}

pub(super) async fn stale_blocks(
    db: &impl ConnectionTrait,
    before: chrono::DateTime<Utc>,
    limit: u32,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT key, holder_message_id FROM key_blocks WHERE touched_at < ? ORDER BY touched_at LIMIT ?",
            vec![before.into(), i64::from(limit).into()],
        ))
        .await?;
    rows.iter().map(|row| Ok((row.try_get("", "key")?, row.try_get("", "holder_message_id")?))).collect()
}

pub(super) async fn unblock_if_empty(db: &DatabaseConnection, key: &str) -> Result<bool, StoreError> {
    let txn = db.begin().await?;
    let backend = txn.get_database_backend();
    let locked = txn.execute_raw(stmt(backend, TOUCH, vec![Utc::now().into(), key.into()])).await?;
    if locked.rows_affected() == 0 {
        txn.commit().await?;
        return Ok(true);
    }
    let waiting = txn
        .query_one_raw(stmt(backend, "SELECT COUNT(*) AS n FROM parked_messages WHERE key = ?", vec![key.into()]))
        .await?
        .map(|row| row.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    if waiting > 0 {
        txn.commit().await?;
        return Ok(false);
    }
    txn.execute_raw(stmt(backend, "DELETE FROM key_blocks WHERE key = ?", vec![key.into()])).await?;
    txn.commit().await?;
    Ok(true)
}
