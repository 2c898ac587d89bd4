//! `dead_letter_queue`: park, list, show, and move entries between statuses.

use crate::dlq::{failure_fingerprint, normalize_error};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection, QueryResult, TransactionTrait, Value};

use super::statement::{push_rows, stmt};
use super::{claims, corrupt};
use crate::event::FailureType;
use crate::store::{DeadLetter, DlqFilter, DlqStatus, FailureGroup, MessageKey, Page, SourceInfo, StoreError};
use crate::store::{Lease, NewDeadLetter};

const COLUMNS: &str = r#"id, message_id, topic, "partition", "offset", "key", payload, payload_encoding,
  failure_type, error, attempt_count, status, replay_count, tenant_id, fingerprint, trace_context, created_at,
  updated_at"#;

/// The insert's head; each row's values are [`row_values`] around the fixed status and replay count.
const INSERT: &str = r#"INSERT INTO dead_letter_queue (message_id, topic, "partition", "offset", "key", payload,
     payload_encoding, failure_type, error, attempt_count, status, replay_count, tenant_id,
     fingerprint, trace_context, created_at, updated_at)
   VALUES "#;

/// One entry to park, with the lease of the claim it dead-letters (if any).
pub(super) struct DlqWrite {
    pub(super) lease: Option<Lease>,
    pub(super) entry: NewDeadLetter,
}

/// Parks many entries in one transaction: one fenced update marks the held
/// claims dead-lettered, one multi-row insert files the entries. An entry
/// whose lease was lost gets `LeaseLost` and files nothing; the others
/// commit together and get their row ids.
pub(super) async fn insert_many(db: &DatabaseConnection, batch: Vec<DlqWrite>) -> Vec<Result<i64, StoreError>> {
    match insert_batch(db, &batch).await {
        Ok(ids) => ids,
        Err(error) => super::batch::fail_all(&error, batch.len()),
    }
}

async fn insert_batch(db: &DatabaseConnection, batch: &[DlqWrite]) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let backend = txn.get_database_backend();
    let leases: Vec<&Lease> = batch.iter().filter_map(|write| write.lease.as_ref()).collect();
    let held =
        if leases.is_empty() { Default::default() } else { claims::mark_many_dead_lettered(&txn, &leases).await? };
    // Per entry, the lease it held if that was lost: such an entry files nothing.
    let lost: Vec<Option<&Lease>> = batch
        .iter()
        .map(|write| write.lease.as_ref().filter(|lease| !held.contains(&claims::HeldKey::of(lease))))
        .collect();
    let rows = lost.iter().filter(|lost| lost.is_none()).count();
    let mut ids = Vec::with_capacity(rows);
    if rows > 0 {
        let mut sql = String::from(INSERT);
        push_rows(&mut sql, rows, "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'failed', 0, ?, ?, ?, ?, ?)");
        sql.push_str(" RETURNING id");
        let values: Vec<Value> = batch
            .iter()
            .zip(&lost)
            .filter(|(_, lost)| lost.is_none())
            .flat_map(|(write, _)| row_values(&write.entry, now))
            .collect();
        for row in txn.query_all_raw(stmt(backend, &sql, values)).await? {
            ids.push(row.try_get::<i64>("", "id")?);
        }
        if ids.len() != rows {
            return Err(corrupt("dead_letter_queue", format!("insert returned {} ids for {rows} rows", ids.len())));
        }
        // One statement inserts its rows in list order and the id sequence
        // only grows, so the ids in ascending order are the rows in list
        // order (RETURNING itself promises no order on SQLite).
        ids.sort_unstable();
        let turns: Vec<(&str, &crate::store::ConversationTurn)> = batch
            .iter()
            .zip(&lost)
            .filter(|(_, lost)| lost.is_none())
            .filter_map(|(write, _)| Some((write.entry.tenant_id.as_deref()?, write.entry.conversation.as_ref()?)))
            .collect();
        super::conversations::write_turns(&txn, &turns, now).await?;
    }
    txn.commit().await?;
    let mut ids = ids.into_iter();
    Ok(lost
        .into_iter()
        .map(|lost| match lost {
            None => Ok(ids.next().expect("one id per filed entry")),
            Some(lease) => Err(StoreError::LeaseLost(lease.key.message_id.clone())),
        })
        .collect())
}

/// Files one entry on `db` (a transaction of the caller's); returns its id.
pub(super) async fn insert_one(db: &impl ConnectionTrait, entry: &NewDeadLetter) -> Result<i64, StoreError> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            &format!("{INSERT} (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'failed', 0, ?, ?, ?, ?, ?) RETURNING id"),
            row_values(entry, Utc::now()).to_vec(),
        ))
        .await?
        .ok_or_else(|| corrupt("dead_letter_queue", "insert returned no id".into()))?;
    Ok(row.try_get::<i64>("", "id")?)
}

/// One entry's values, in the column order of the insert.
fn row_values(entry: &NewDeadLetter, now: chrono::DateTime<Utc>) -> [Value; 15] {
    // Text stays readable in SQL; bytes that are not UTF-8 are kept losslessly as base64.
    // NUL bytes too: PostgreSQL text cannot hold them.
    let (payload, encoding) = match std::str::from_utf8(&entry.payload) {
        Ok(text) if !text.contains('\0') => (text.to_owned(), "utf8"),
        _ => (BASE64.encode(&entry.payload), "base64"),
    };
    // A NUL in an id or the error (a refused message's own) is shown as U+FFFD.
    let without_nul = |text: &str| text.replace('\0', "\u{FFFD}");
    let source = entry.source.as_ref();
    [
        entry.message_id.as_deref().map(without_nul).into(),
        source.map(|s| s.topic.clone()).into(),
        source.map(|s| s.partition).into(),
        source.map(|s| s.offset).into(),
        source.and_then(|s| s.key.as_deref()).map(without_nul).into(),
        payload.into(),
        encoding.into(),
        entry.failure_type.as_str().into(),
        without_nul(&entry.error).into(),
        (entry.attempt_count as i32).into(),
        entry.tenant_id.as_deref().map(without_nul).into(),
        failure_fingerprint(entry.failure_type, &entry.error).into(),
        entry.trace_context.clone().into(),
        now.into(),
        now.into(),
    ]
}

/// The `WHERE` clause (empty or starting with a space) and its values for `filter`.
fn conditions(filter: &DlqFilter) -> (String, Vec<Value>) {
    let mut conditions: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(status) = filter.status {
        conditions.push("status = ?");
        values.push(status.as_str().into());
    }
    if let Some(tenant) = &filter.tenant_id {
        conditions.push("tenant_id = ?");
        values.push(tenant.as_str().into());
    }
    if let Some(failure_type) = filter.failure_type {
        conditions.push("failure_type = ?");
        values.push(failure_type.as_str().into());
    }
    if let Some(since) = filter.since {
        conditions.push("created_at >= ?");
        values.push(since.into());
    }
    if let Some(fingerprint) = &filter.fingerprint {
        conditions.push("fingerprint = ?");
        values.push(fingerprint.as_str().into());
    }
    if conditions.is_empty() {
        return (String::new(), values);
    }
    (format!(" WHERE {}", conditions.join(" AND ")), values)
}

pub(super) async fn list(
    db: &impl ConnectionTrait,
    filter: &DlqFilter,
    page: Page,
) -> Result<Vec<DeadLetter>, StoreError> {
    let (clause, mut values) = conditions(filter);
    let mut sql = format!("SELECT {COLUMNS} FROM dead_letter_queue{clause}");
    sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?");
    values.push((page.limit.min(i64::MAX as u64) as i64).into());
    values.push((page.offset.min(i64::MAX as u64) as i64).into());
    let rows = db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await?;
    rows.iter().map(read_row).collect()
}

pub(super) async fn get(db: &impl ConnectionTrait, id: i64) -> Result<Option<DeadLetter>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letter_queue WHERE id = ?");
    let row = db.query_one_raw(stmt(db.get_database_backend(), &sql, vec![id.into()])).await?;
    row.as_ref().map(read_row).transpose()
}

pub(super) async fn mark(db: &DatabaseConnection, id: i64, status: DlqStatus) -> Result<DeadLetter, StoreError> {
    let allowed_from: Vec<&str> = [DlqStatus::Failed, DlqStatus::Replayed, DlqStatus::Discarded, DlqStatus::Resolved]
        .into_iter()
        .filter(|from| from.can_become(status))
        .map(DlqStatus::as_str)
        .collect();
    if allowed_from.is_empty() {
        // Nothing may become `status` (e.g. `failed`): refuse before an empty `IN ()`.
        let from = get(db, id).await?.ok_or(StoreError::NotFound(id))?.status;
        return Err(StoreError::InvalidTransition { id, from: from.as_str(), to: status.as_str() });
    }
    let replayed = i32::from(status == DlqStatus::Replayed);
    let txn = db.begin().await?;
    let backend = txn.get_database_backend();
    // A conditional update: concurrent operators cannot both replay one entry.
    let placeholders = vec!["?"; allowed_from.len()].join(", ");
    let mut values: Vec<Value> = vec![status.as_str().into(), Utc::now().into(), replayed.into(), id.into()];
    values.extend(allowed_from.iter().map(|s| Value::from(*s)));
    let updated = txn
        .execute_raw(stmt(
            backend,
            &format!(
                "UPDATE dead_letter_queue SET status = ?, updated_at = ?, replay_count = replay_count + ?
                 WHERE id = ? AND status IN ({placeholders})"
            ),
            values,
        ))
        .await?;
    let entry = get(&txn, id).await?.ok_or(StoreError::NotFound(id))?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::InvalidTransition { id, from: entry.status.as_str(), to: status.as_str() });
    }
    if status == DlqStatus::Replayed
        && let (Some(tenant), Some(message)) = (&entry.tenant_id, &entry.message_id)
    {
        claims::reopen(&txn, &MessageKey::new(tenant, message)).await?;
    }
    if status == DlqStatus::Replayed {
        // A reply's entry: the reply may be sent again.
        super::outbound::reopen(&txn, id).await?;
    }
    txn.commit().await?;
    Ok(entry)
}

pub(super) async fn undo_replay(db: &DatabaseConnection, id: i64) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    let backend = txn.get_database_backend();
    let now = Utc::now();
    let undone = txn
        .execute_raw(stmt(
            backend,
            "UPDATE dead_letter_queue SET status = 'failed', replay_count = replay_count - 1, updated_at = ?
             WHERE id = ? AND status = 'replayed'",
            vec![now.into(), id.into()],
        ))
        .await?;
    if undone.rows_affected() == 1 {
        super::outbound::unreopen(&txn, id).await?;
    }
    if undone.rows_affected() == 1
        && let Some(entry) = get(&txn, id).await?
        && let (Some(tenant), Some(message)) = (&entry.tenant_id, &entry.message_id)
    {
        txn.execute_raw(stmt(
            backend,
            "UPDATE processed_messages SET dead_lettered_at = ?
             WHERE tenant_id = ? AND message_id = ? AND status = 'in_progress' AND lease_expires_at IS NULL",
            vec![now.into(), tenant.as_str().into(), message.as_str().into()],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

pub(super) async fn groups(
    db: &impl ConnectionTrait,
    filter: &DlqFilter,
    limit: u64,
) -> Result<Vec<FailureGroup>, StoreError> {
    let (clause, mut values) = conditions(filter);
    values.push((limit.min(i64::MAX as u64) as i64).into());
    let sql = format!(
        "SELECT fingerprint, failure_type, MIN(error) AS sample, COUNT(*) AS n,
                MIN(created_at) AS first_at, MAX(created_at) AS last_at
         FROM dead_letter_queue{clause}
         GROUP BY fingerprint, failure_type ORDER BY n DESC, last_at DESC LIMIT ?"
    );
    let rows = db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await?;
    rows.iter()
        .map(|row| {
            let failure_type: String = row.try_get("", "failure_type")?;
            let failure_type = FailureType::parse(&failure_type)
                .ok_or_else(|| corrupt("dead_letter_queue", format!("unknown failure_type `{failure_type}`")))?;
            let sample: String = row.try_get("", "sample")?;
            let count: i64 = row.try_get("", "n")?;
            let fingerprint: Option<String> = row.try_get("", "fingerprint")?;
            Ok(FailureGroup {
                fingerprint: fingerprint.unwrap_or_else(|| failure_fingerprint(failure_type, &sample)),
                failure_type,
                pattern: normalize_error(&sample),
                count: count.max(0) as u64,
                first_at: row.try_get("", "first_at")?,
                last_at: row.try_get("", "last_at")?,
            })
        })
        .collect()
}

fn read_row(row: &QueryResult) -> Result<DeadLetter, StoreError> {
    let encoding: String = row.try_get("", "payload_encoding")?;
    let payload_text: String = row.try_get("", "payload")?;
    let payload = match encoding.as_str() {
        "base64" => BASE64
            .decode(payload_text.as_bytes())
            .map_err(|e| corrupt("dead_letter_queue", format!("payload is not base64: {e}")))?,
        _ => payload_text.into_bytes(),
    };
    let failure_type: String = row.try_get("", "failure_type")?;
    let status: String = row.try_get("", "status")?;
    let topic: Option<String> = row.try_get("", "topic")?;
    let partition: Option<i32> = row.try_get("", "partition")?;
    let offset: Option<i64> = row.try_get("", "offset")?;
    let key: Option<String> = row.try_get("", "key")?;
    let attempt_count: i32 = row.try_get("", "attempt_count")?;
    let replay_count: i32 = row.try_get("", "replay_count")?;
    let error: String = row.try_get("", "error")?;
    let failure_type = FailureType::parse(&failure_type)
        .ok_or_else(|| corrupt("dead_letter_queue", format!("unknown failure_type `{failure_type}`")))?;
    // Rows parked before the fingerprint column existed get theirs computed.
    let fingerprint: Option<String> = row.try_get("", "fingerprint")?;
    Ok(DeadLetter {
        id: row.try_get("", "id")?,
        message_id: row.try_get("", "message_id")?,
        source: topic.map(|topic| SourceInfo {
            topic,
            partition: partition.unwrap_or_default(),
            offset: offset.unwrap_or_default(),
            key,
        }),
        payload,
        fingerprint: fingerprint.unwrap_or_else(|| failure_fingerprint(failure_type, &error)),
        trace_context: row.try_get("", "trace_context")?,
        failure_type,
        error,
        attempt_count: attempt_count.max(0) as u32,
        status: DlqStatus::parse(&status)
            .ok_or_else(|| corrupt("dead_letter_queue", format!("unknown status `{status}`")))?,
        replay_count: replay_count.max(0) as u32,
        tenant_id: row.try_get("", "tenant_id")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
    })
}
