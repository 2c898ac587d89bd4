//! The send API's rows of `outbound_messages` and its `api_usage` counts.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, TransactionTrait, Value};

use super::corrupt;
use super::statement::{push_rows, stmt};
use crate::store::api_messages::{
    ApiMessage, ApiMessageFilter, ApiMessagePage, Cancellation, DueClaim, DueMessage, Inserted, Insertion,
    NewApiMessage,
};
use crate::store::outbound::OutboundStatus;
use crate::store::{ConversationTurn, Direction, NewDeadLetter, StoreError, ThreadEntry, to_chrono};

/// Counter rows per organisation and day: concurrent requests update different rows.
const USAGE_SHARDS: u64 = 16;

/// Rows per insert (13 parameters each).
const INSERT_CHUNK: usize = 500;

const COLUMNS: &str = "id, api_message_id, tenant_id, recipient_phone, phone_number_id, status, attempt_count, wamid,
    error_code, error, payload, request_hash, created_at, updated_at, scheduled_at, dispatched_at, sent_at,
    delivered_at, read_at, failed_at, cancelled_at";

fn read(row: &QueryResult) -> Result<ApiMessage, StoreError> {
    Ok(ApiMessage {
        id: row.try_get("", "api_message_id")?,
        tenant_id: row.try_get("", "tenant_id")?,
        recipient_phone: row.try_get("", "recipient_phone")?,
        phone_number_id: row.try_get("", "phone_number_id")?,
        status: super::outbound::status_of(row)?,
        attempt_count: row.try_get::<i32>("", "attempt_count")?.max(0) as u32,
        wamid: row.try_get("", "wamid")?,
        error_code: row.try_get("", "error_code")?,
        error: row.try_get("", "error")?,
        payload: row.try_get("", "payload")?,
        request_hash: row.try_get("", "request_hash")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
        scheduled_at: row.try_get("", "scheduled_at")?,
        dispatched_at: row.try_get("", "dispatched_at")?,
        sent_at: row.try_get("", "sent_at")?,
        delivered_at: row.try_get("", "delivered_at")?,
        read_at: row.try_get("", "read_at")?,
        failed_at: row.try_get("", "failed_at")?,
        cancelled_at: row.try_get("", "cancelled_at")?,
    })
}

/// A send API message's `original_message_id`: its id, apart from replies' message ids.
fn outbound_key(id: &str) -> String {
    format!("api:{id}")
}

/// `?, ?, ...` for `n` values.
fn placeholders(n: usize) -> String {
    let mut sql = String::new();
    push_rows(&mut sql, n, "?");
    sql
}

async fn by_ids(db: &impl ConnectionTrait, ids: &[&str]) -> Result<HashMap<String, ApiMessage>, StoreError> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(INSERT_CHUNK) {
        let sql =
            format!("SELECT {COLUMNS} FROM outbound_messages WHERE api_message_id IN ({})", placeholders(chunk.len()));
        let values = chunk.iter().map(|id| Value::from(*id)).collect();
        for row in db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await? {
            let message = read(&row)?;
            found.insert(message.id.clone(), message);
        }
    }
    Ok(found)
}

pub(super) async fn insert(
    db: &DatabaseConnection,
    tenant: &str,
    messages: &[NewApiMessage],
    daily_limit: Option<u64>,
    history: bool,
) -> Result<Inserted, StoreError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let backend = txn.get_database_backend();
    let mut created = std::collections::HashSet::with_capacity(messages.len());
    for chunk in messages.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO outbound_messages
               (tenant_id, original_message_id, reply_index, phone_number_id, recipient_phone, status, attempt_count,
                payload, created_at, updated_at, api_message_id, request_hash, scheduled_at, dispatch_due_at)
             VALUES ",
        );
        push_rows(&mut sql, chunk.len(), "(?, ?, 0, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)");
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING api_message_id");
        let values: Vec<Value> = chunk
            .iter()
            .flat_map(|m| {
                let status = if m.scheduled_at.is_some() { OutboundStatus::Scheduled } else { OutboundStatus::Queued };
                [
                    m.tenant_id.as_str().into(),
                    outbound_key(&m.id).into(),
                    m.phone_number_id.clone().into(),
                    m.recipient_phone.as_str().into(),
                    status.as_str().into(),
                    m.payload.as_str().into(),
                    now.into(),
                    now.into(),
                    m.id.as_str().into(),
                    m.request_hash.as_str().into(),
                    m.scheduled_at.into(),
                    m.dispatch_due_at.into(),
                ]
            })
            .collect();
        for row in txn.query_all_raw(stmt(backend, &sql, values)).await? {
            created.insert(row.try_get::<String>("", "api_message_id")?);
        }
    }
    if !created.is_empty() {
        // Counted in the transaction that stores them: a refusal rolls both back.
        let day = now.format("%Y-%m-%d").to_string();
        let shard = (uuid::Uuid::new_v4().as_u64_pair().0 % USAGE_SHARDS) as i32;
        txn.execute_raw(stmt(
            backend,
            "INSERT INTO api_usage (tenant_id, day, shard, messages) VALUES (?, ?, ?, ?)
             ON CONFLICT (tenant_id, day, shard) DO UPDATE SET messages = api_usage.messages + excluded.messages",
            vec![tenant.into(), day.as_str().into(), shard.into(), (created.len() as i64).into()],
        ))
        .await?;
        let row = txn
            .query_one_raw(stmt(
                backend,
                "SELECT CAST(COALESCE(SUM(messages), 0) AS BIGINT) AS messages FROM api_usage WHERE tenant_id = ? AND day = ?",
                vec![tenant.into(), day.into()],
            ))
            .await?
            .ok_or_else(|| corrupt("api_usage", "SUM returned no row".into()))?;
        let total = row.try_get::<i64>("", "messages")?.max(0) as u64;
        if let Some(limit) = daily_limit.filter(|limit| total > *limit) {
            txn.rollback().await?;
            return Ok(Inserted::OverDailyLimit { used: total - created.len() as u64, limit });
        }
    }
    // The new ones join their conversations' history, in this transaction.
    let turns: Vec<ConversationTurn> = messages
        .iter()
        .filter(|m| history && created.contains(&m.id))
        .map(|m| ConversationTurn {
            phone: m.recipient_phone.clone(),
            entries: vec![ThreadEntry {
                direction: Direction::Outbound,
                message_id: outbound_key(&m.id),
                reply_index: 0,
                text: Some(m.preview.clone()),
                intent: None,
            }],
        })
        .collect();
    let turns: Vec<(&str, &ConversationTurn)> = turns.iter().map(|turn| (tenant, turn)).collect();
    super::conversations::write_turns(&txn, &turns, now).await?;
    let earlier: Vec<&str> = messages.iter().map(|m| m.id.as_str()).filter(|id| !created.contains(*id)).collect();
    let existing = if earlier.is_empty() { HashMap::new() } else { by_ids(&txn, &earlier).await? };
    txn.commit().await?;
    let answers = messages.iter().map(|m| {
        if created.contains(&m.id) {
            return Ok(Insertion::Created);
        }
        match existing.get(&m.id) {
            Some(found) => Ok(Insertion::Exists(Box::new(found.clone()))),
            None => Err(corrupt("outbound_messages", format!("message {} neither stored nor found", m.id))),
        }
    });
    answers.collect::<Result<Vec<_>, _>>().map(Inserted::Stored)
}

pub(super) async fn claim_due(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    limit: u64,
    lease: Duration,
) -> Result<DueClaim, StoreError> {
    let backend = db.get_database_backend();
    // Replicas skip each other's rows instead of waiting for them; SQLite has one writer anyway.
    let skip_locked = if backend == DbBackend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
    let token = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
    let sql = format!(
        "UPDATE outbound_messages
         SET dispatch_lease_until = ?, dispatch_token = ?, updated_at = ?,
             status = CASE WHEN status = 'scheduled' THEN 'queued' ELSE status END
         WHERE id IN (
           SELECT id FROM outbound_messages
           WHERE dispatch_due_at <= ? AND status IN ('scheduled', 'queued')
             AND (dispatch_lease_until IS NULL OR dispatch_lease_until < ?)
           ORDER BY dispatch_due_at LIMIT ? {skip_locked})
         RETURNING api_message_id, payload, dispatch_due_at"
    );
    let values =
        vec![(now + to_chrono(lease)).into(), token.into(), now.into(), now.into(), now.into(), (limit as i64).into()];
    let mut due: Vec<(DateTime<Utc>, DueMessage)> = Vec::new();
    for row in db.query_all_raw(stmt(backend, &sql, values)).await? {
        due.push((
            row.try_get("", "dispatch_due_at")?,
            DueMessage { id: row.try_get("", "api_message_id")?, payload: row.try_get("", "payload")? },
        ));
    }
    due.sort_by_key(|(at, _)| *at);
    Ok(DueClaim { token, messages: due.into_iter().map(|(_, m)| m).collect() })
}

pub(super) async fn mark_dispatched(
    db: &DatabaseConnection,
    claim: Option<i64>,
    ids: &[String],
) -> Result<u64, StoreError> {
    let now = Utc::now();
    // A scheduler's claim fences its own rows; the API's own publish may mark only rows no scheduler holds.
    let held = if claim.is_some() { "dispatch_token = ?" } else { "dispatch_token IS NULL" };
    let mut marked = 0;
    for chunk in ids.chunks(INSERT_CHUNK) {
        let sql = format!(
            "UPDATE outbound_messages
             SET dispatched_at = ?, dispatch_due_at = NULL, dispatch_lease_until = NULL, dispatch_token = NULL
             WHERE dispatch_due_at IS NOT NULL AND {held} AND api_message_id IN ({})",
            placeholders(chunk.len())
        );
        let mut values: Vec<Value> = vec![now.into()];
        values.extend(claim.map(Value::from));
        values.extend(chunk.iter().map(|id| Value::from(id.as_str())));
        marked += db.execute_raw(stmt(db.get_database_backend(), &sql, values)).await?.rows_affected();
    }
    Ok(marked)
}

pub(super) async fn dead_letter_due(
    db: &DatabaseConnection,
    claim: i64,
    id: &str,
    entry: &NewDeadLetter,
) -> Result<Option<i64>, StoreError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let backend = txn.get_database_backend();
    // Fenced by the claim: failed now, and out of the scheduler's way.
    let held = txn
        .query_one_raw(stmt(
            backend,
            "UPDATE outbound_messages
             SET status = 'failed', failed_at = ?, updated_at = ?, error = ?, dispatch_due_at = NULL,
                 dispatch_lease_until = NULL, dispatch_token = NULL
             WHERE api_message_id = ? AND dispatch_token = ? RETURNING tenant_id",
            vec![now.into(), now.into(), entry.error.as_str().into(), id.into(), claim.into()],
        ))
        .await?;
    let Some(row) = held else { return Ok(None) };
    let entry = NewDeadLetter { tenant_id: Some(row.try_get("", "tenant_id")?), ..entry.clone() };
    let dlq_id = super::dead_letters::insert_one(&txn, &entry).await?;
    txn.execute_raw(stmt(
        backend,
        "UPDATE outbound_messages SET dead_letter_id = ? WHERE api_message_id = ?",
        vec![dlq_id.into(), id.into()],
    ))
    .await?;
    txn.commit().await?;
    Ok(Some(dlq_id))
}

pub(super) async fn get(db: &impl ConnectionTrait, id: &str) -> Result<Option<ApiMessage>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM outbound_messages WHERE api_message_id = ?");
    db.query_one_raw(stmt(db.get_database_backend(), &sql, vec![id.into()])).await?.map(|row| read(&row)).transpose()
}

pub(super) async fn list(
    db: &DatabaseConnection,
    tenant: &str,
    filter: &ApiMessageFilter,
) -> Result<ApiMessagePage, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM outbound_messages WHERE tenant_id = ? AND api_message_id IS NOT NULL");
    let mut values: Vec<Value> = vec![tenant.into()];
    if let Some(recipient) = &filter.recipient {
        sql.push_str(" AND recipient_phone = ?");
        values.push(recipient.as_str().into());
    }
    if let Some(status) = filter.status {
        sql.push_str(" AND status = ?");
        values.push(status.as_str().into());
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND created_at >= ?");
        values.push(since.into());
    }
    if let Some(before) = filter.before {
        sql.push_str(" AND id < ?");
        values.push(before.into());
    }
    // One more than asked: whether a next page exists.
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    values.push((filter.limit as i64 + 1).into());
    let rows = db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await?;
    let more = rows.len() as u64 > filter.limit;
    let mut messages = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in rows.iter().take(filter.limit as usize) {
        messages.push(read(row)?);
        last = Some(row.try_get::<i64>("", "id")?);
    }
    Ok(ApiMessagePage { messages, next: last.filter(|_| more) })
}

pub(super) async fn cancel(db: &DatabaseConnection, tenant: &str, id: &str) -> Result<Cancellation, StoreError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let changed = txn
        .execute_raw(stmt(
            txn.get_database_backend(),
            "UPDATE outbound_messages
             SET status = 'cancelled', cancelled_at = ?, updated_at = ?, dispatch_due_at = NULL,
                 dispatch_lease_until = NULL, dispatch_token = NULL
             WHERE api_message_id = ? AND tenant_id = ?
               AND (status = 'scheduled'
                    OR (status = 'queued' AND (lease_expires_at IS NULL OR lease_expires_at < ?)))",
            vec![now.into(), now.into(), id.into(), tenant.into(), now.into()],
        ))
        .await?
        .rows_affected();
    let found = get(&txn, id).await?.filter(|m| m.tenant_id == tenant);
    txn.commit().await?;
    Ok(match found {
        None => Cancellation::NotFound,
        Some(message) if changed > 0 => Cancellation::Cancelled(Box::new(message)),
        Some(message) => Cancellation::TooLate(Box::new(message)),
    })
}

pub(super) async fn due_count(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT COUNT(*) AS due FROM outbound_messages
             WHERE dispatch_due_at <= ? AND status IN ('scheduled', 'queued')",
            vec![now.into()],
        ))
        .await?
        .ok_or_else(|| corrupt("outbound_messages", "COUNT returned no row".into()))?;
    Ok(row.try_get::<i64>("", "due")?.max(0) as u64)
}
