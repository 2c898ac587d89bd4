//! `outbound_messages`: claims on sending a reply (coalesced, like the
//! dedupe claims), the fenced result writes, and the statuses the webhook
//! reports by `wamid`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, QueryResult, TransactionTrait, Value};

use super::corrupt;
use super::statement::{push_rows, stmt};
use crate::store::outbound::{
    AttemptFailure, OutboundMessage, OutboundReply, OutboundStatus, ReplyKey, ReplyLease, SendClaim,
};
use crate::store::{NewDeadLetter, StoreError, to_chrono};

/// One claim waiting for its batch.
pub(super) struct ClaimRequest {
    pub(super) reply: OutboundReply,
    pub(super) lease: Duration,
}

/// Inserts replies, or takes over those queued whose lease is free or ran
/// out: either way a new attempt. Sent, delivered, read and failed replies
/// are left alone. Row values: tenant, original, index, number, recipient,
/// payload, token, lease end, now, now.
fn claim_sql(rows: usize) -> String {
    const ROW: &str = "(?, ?, ?, ?, ?, 'queued', 1, ?, ?, ?, ?, ?)";
    let mut sql = String::from(
        "INSERT INTO outbound_messages
           (tenant_id, original_message_id, reply_index, phone_number_id, recipient_phone, status, attempt_count,
            payload, lease_token, lease_expires_at, created_at, updated_at)
         VALUES ",
    );
    push_rows(&mut sql, rows, ROW);
    sql.push_str(
        "
         ON CONFLICT (tenant_id, original_message_id, reply_index) DO UPDATE SET
           attempt_count = outbound_messages.attempt_count + 1,
           lease_token = excluded.lease_token,
           lease_expires_at = excluded.lease_expires_at,
           updated_at = excluded.updated_at
         WHERE outbound_messages.status = 'queued'
           AND (outbound_messages.lease_expires_at IS NULL
                OR outbound_messages.lease_expires_at < excluded.updated_at)
         RETURNING id, tenant_id, original_message_id, reply_index, attempt_count, lease_token",
    );
    sql
}

fn claim_values(reply: &OutboundReply, token: i64, now: DateTime<Utc>, lease: Duration) -> [Value; 10] {
    let key = &reply.key;
    [
        key.tenant_id.as_str().into(),
        key.original_message_id.as_str().into(),
        (key.reply_index as i32).into(),
        reply.phone_number_id.clone().into(),
        reply.recipient_phone.as_str().into(),
        reply.payload.as_str().into(),
        token.into(),
        (now + to_chrono(lease)).into(),
        now.into(),
        now.into(),
    ]
}

fn row_key(row: &QueryResult) -> Result<ReplyKey, StoreError> {
    Ok(ReplyKey {
        tenant_id: row.try_get("", "tenant_id")?,
        original_message_id: row.try_get("", "original_message_id")?,
        reply_index: row.try_get::<i32>("", "reply_index")?.max(0) as u32,
    })
}

/// A random lease token.
fn new_token() -> i64 {
    uuid::Uuid::new_v4().as_u64_pair().0 as i64
}

/// Claims many replies with one multi-row upsert. A reply repeated in the
/// batch (an upsert cannot touch a row twice) is claimed after it, alone,
/// and finds it held; refused claims are explained by one query. Rows go in
/// key order so concurrent batches lock shared rows in one order.
pub(super) async fn claim_many(
    db: &DatabaseConnection,
    batch: Vec<ClaimRequest>,
) -> Vec<Result<SendClaim, StoreError>> {
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    let (mut first, repeats): (Vec<usize>, Vec<usize>) =
        (0..batch.len()).partition(|&i| seen.insert(&batch[i].reply.key));
    first.sort_unstable_by(|&a, &b| batch[a].reply.key.cmp(&batch[b].reply.key));
    let mut results: Vec<Option<Result<SendClaim, StoreError>>> = (0..batch.len()).map(|_| None).collect();
    match claim_rows(db, &batch, &first).await {
        Ok(claims) => {
            for (i, claim) in first.iter().zip(claims) {
                results[*i] = Some(Ok(claim));
            }
        }
        Err(error) => return super::batch::fail_all(&error, batch.len()),
    }
    for i in repeats {
        results[i] = Some(claim_rows(db, &batch, &[i]).await.map(|mut claims| claims.remove(0)));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(corrupt("outbound_messages", "claim unanswered".into()))))
        .collect()
}

/// Claims the replies `at` (distinct keys) of `batch`; one answer each, in order.
async fn claim_rows(
    db: &DatabaseConnection,
    batch: &[ClaimRequest],
    at: &[usize],
) -> Result<Vec<SendClaim>, StoreError> {
    let now = Utc::now();
    let tokens: Vec<i64> = at.iter().map(|_| new_token()).collect();
    let values: Vec<Value> = at
        .iter()
        .zip(&tokens)
        .flat_map(|(&i, &token)| claim_values(&batch[i].reply, token, now, batch[i].lease))
        .collect();
    let rows = db.query_all_raw(stmt(db.get_database_backend(), &claim_sql(at.len()), values)).await?;
    let mut granted: HashMap<ReplyKey, (i64, u32, i64)> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let attempt = row.try_get::<i32>("", "attempt_count")?.max(1) as u32;
        granted.insert(row_key(row)?, (row.try_get("", "id")?, attempt, row.try_get("", "lease_token")?));
    }
    let refused: Vec<&ReplyKey> =
        at.iter().map(|&i| &batch[i].reply.key).filter(|key| !granted.contains_key(*key)).collect();
    let mut why = if refused.is_empty() { HashMap::new() } else { refusals(db, &refused, now).await? };
    at.iter()
        .zip(tokens)
        .map(|(&i, token)| {
            let key = &batch[i].reply.key;
            match granted.get(key) {
                Some(&(id, attempt, held)) if held == token => {
                    Ok(SendClaim::Acquired { lease: ReplyLease { id, key: key.clone(), token }, attempt })
                }
                Some(_) => Err(corrupt("outbound_messages", "claim returned another lease".into())),
                None => why.remove(key).ok_or_else(|| corrupt("outbound_messages", "refused claim has no row".into())),
            }
        })
        .collect()
}

/// Why claims were refused, by key.
async fn refusals(
    db: &impl ConnectionTrait,
    keys: &[&ReplyKey],
    now: DateTime<Utc>,
) -> Result<HashMap<ReplyKey, SendClaim>, StoreError> {
    let mut sql = String::from(
        "SELECT o.tenant_id, o.original_message_id, o.reply_index, o.status, o.wamid, o.lease_expires_at
         FROM outbound_messages o JOIN (VALUES ",
    );
    push_rows(&mut sql, keys.len(), "(?, ?, ?)");
    sql.push_str(
        ") AS v ON o.tenant_id = v.column1 AND o.original_message_id = v.column2
           AND o.reply_index = CAST(v.column3 AS INTEGER)",
    );
    let values: Vec<Value> = keys
        .iter()
        .flat_map(|k| {
            [k.tenant_id.as_str().into(), k.original_message_id.as_str().into(), k.reply_index.to_string().into()]
        })
        .collect();
    let mut why = HashMap::with_capacity(keys.len());
    for row in db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await? {
        let status: String = row.try_get("", "status")?;
        let claim = match OutboundStatus::parse(&status) {
            Some(OutboundStatus::Sent | OutboundStatus::Delivered | OutboundStatus::Read) => {
                SendClaim::AlreadySent { wamid: row.try_get("", "wamid")? }
            }
            Some(OutboundStatus::Failed) => SendClaim::Failed,
            Some(status @ (OutboundStatus::Scheduled | OutboundStatus::Cancelled)) => SendClaim::Withheld { status },
            Some(OutboundStatus::Queued) => SendClaim::Busy {
                lease_expires_at: row.try_get::<Option<DateTime<Utc>>>("", "lease_expires_at")?.unwrap_or(now),
            },
            None => return Err(corrupt("outbound_messages", format!("unknown status `{status}`"))),
        };
        why.insert(row_key(&row)?, claim);
    }
    Ok(why)
}

/// One reply's result waiting for its batch.
pub(super) struct SentWrite {
    pub(super) lease: ReplyLease,
    pub(super) wamid: Option<String>,
}

/// Marks many replies sent with one fenced update; a reply whose lease was
/// lost gets `LeaseLost`.
pub(super) async fn record_sent_many(db: &DatabaseConnection, batch: Vec<SentWrite>) -> Vec<Result<(), StoreError>> {
    let now = Utc::now();
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_unstable_by_key(|&i| batch[i].lease.id);
    let mut sql = String::from(
        "UPDATE outbound_messages AS o SET status = 'sent', wamid = v.column3, sent_at = ?, updated_at = ?,
           lease_token = NULL, lease_expires_at = NULL, error = NULL, error_code = NULL
         FROM (VALUES ",
    );
    let mut values: Vec<Value> = vec![now.into(), now.into()];
    push_rows(&mut sql, order.len(), "(?, ?, ?)");
    for &i in &order {
        let write = &batch[i];
        values.extend([write.lease.id.into(), write.lease.token.into(), write.wamid.clone().into()]);
    }
    sql.push_str(
        ") AS v WHERE o.id = v.column1 AND o.lease_token = v.column2 AND o.status = 'queued'
         RETURNING id",
    );
    // SQLite knows no types for VALUES columns, PostgreSQL takes them from the parameters: both compare as given.
    let rows = match db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await {
        Ok(rows) => rows,
        Err(error) => return super::batch::fail_all(&StoreError::from(error), batch.len()),
    };
    let mut written = std::collections::HashSet::with_capacity(rows.len());
    for row in rows {
        match row.try_get::<i64>("", "id") {
            Ok(id) => written.insert(id),
            Err(error) => return super::batch::fail_all(&StoreError::from(error), batch.len()),
        };
    }
    batch
        .iter()
        .map(|write| {
            if written.contains(&write.lease.id) {
                Ok(())
            } else {
                Err(StoreError::LeaseLost(write.lease.key.dead_letter_id()))
            }
        })
        .collect()
}

/// The condition of a fenced write.
const HELD: &str = "id = ? AND lease_token = ? AND status = 'queued'";

pub(super) async fn release(
    db: &impl ConnectionTrait,
    lease: &ReplyLease,
    failure: &AttemptFailure<'_>,
) -> Result<(), StoreError> {
    let refund = i32::from(failure.refund);
    let result = db
        .execute_raw(stmt(
            db.get_database_backend(),
            &format!(
                "UPDATE outbound_messages SET lease_token = NULL, lease_expires_at = NULL,
                   attempt_count = attempt_count - ?, error_code = ?, error = ?, updated_at = ?
                 WHERE {HELD}"
            ),
            vec![
                refund.into(),
                failure.code.into(),
                failure.error.into(),
                Utc::now().into(),
                lease.id.into(),
                lease.token.into(),
            ],
        ))
        .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::LeaseLost(lease.key.dead_letter_id()));
    }
    Ok(())
}

pub(super) async fn fail(
    db: &DatabaseConnection,
    lease: Option<&ReplyLease>,
    code: Option<i64>,
    entry: &NewDeadLetter,
) -> Result<i64, StoreError> {
    let txn = db.begin().await?;
    let id = super::dead_letters::insert_one(&txn, entry).await?;
    if let Some(lease) = lease {
        let now = Utc::now();
        let result = txn
            .execute_raw(stmt(
                txn.get_database_backend(),
                &format!(
                    "UPDATE outbound_messages SET status = 'failed', failed_at = ?, updated_at = ?, error_code = ?,
                       error = ?, dead_letter_id = ?, lease_token = NULL, lease_expires_at = NULL
                     WHERE {HELD}"
                ),
                vec![
                    now.into(),
                    now.into(),
                    code.into(),
                    entry.error.as_str().into(),
                    id.into(),
                    lease.id.into(),
                    lease.token.into(),
                ],
            ))
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::LeaseLost(lease.key.dead_letter_id()));
        }
    }
    txn.commit().await?;
    Ok(id)
}

/// A replayed dead letter's reply may be sent again: queued, attempts from zero.
pub(super) async fn reopen(db: &impl ConnectionTrait, dead_letter_id: i64) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE outbound_messages SET status = 'queued', attempt_count = 0, updated_at = ?
         WHERE dead_letter_id = ? AND status = 'failed'",
        vec![Utc::now().into(), dead_letter_id.into()],
    ))
    .await?;
    Ok(())
}

/// A replay whose copy was not sent: the reply is failed again.
pub(super) async fn unreopen(db: &impl ConnectionTrait, dead_letter_id: i64) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE outbound_messages SET status = 'failed', updated_at = ?
         WHERE dead_letter_id = ? AND status = 'queued' AND lease_expires_at IS NULL",
        vec![Utc::now().into(), dead_letter_id.into()],
    ))
    .await?;
    Ok(())
}

/// A webhook status moves its reply forward (sent, delivered, read; failed
/// from any of them), never back: a late `delivered` after `read` changes nothing.
pub(super) async fn apply_status(
    db: &impl ConnectionTrait,
    wamid: &str,
    status: OutboundStatus,
    at: DateTime<Utc>,
    error: Option<&str>,
    error_code: Option<i64>,
) -> Result<Option<crate::store::MovedMessage>, StoreError> {
    let (column, before) = match status {
        OutboundStatus::Sent => ("sent_at", "('queued')"),
        OutboundStatus::Delivered => ("delivered_at", "('queued', 'sent')"),
        OutboundStatus::Read => ("read_at", "('queued', 'sent', 'delivered')"),
        OutboundStatus::Failed => ("failed_at", "('queued', 'sent', 'delivered', 'read')"),
        // Not statuses WhatsApp reports.
        OutboundStatus::Queued | OutboundStatus::Scheduled | OutboundStatus::Cancelled => return Ok(None),
    };
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            &format!(
                "UPDATE outbound_messages SET status = ?, {column} = ?, updated_at = ?,
               error = COALESCE(?, error), error_code = COALESCE(?, error_code)
             WHERE wamid = ? AND status IN {before}
             RETURNING tenant_id, original_message_id"
            ),
            vec![status.as_str().into(), at.into(), Utc::now().into(), error.into(), error_code.into(), wamid.into()],
        ))
        .await?;
    row.map(|row| {
        Ok(crate::store::MovedMessage {
            tenant_id: row.try_get("", "tenant_id")?,
            message_id: row.try_get("", "original_message_id")?,
        })
    })
    .transpose()
}

/// The row's `status` column, which this version must know.
pub(super) fn status_of(row: &QueryResult) -> Result<OutboundStatus, StoreError> {
    let status: String = row.try_get("", "status")?;
    OutboundStatus::parse(&status).ok_or_else(|| corrupt("outbound_messages", format!("unknown status `{status}`")))
}

pub(super) async fn get(db: &impl ConnectionTrait, key: &ReplyKey) -> Result<Option<OutboundMessage>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT id, tenant_id, original_message_id, reply_index, phone_number_id, recipient_phone, status,
               attempt_count, wamid, error_code, error, created_at, updated_at, sent_at
             FROM outbound_messages WHERE tenant_id = ? AND original_message_id = ? AND reply_index = ?",
            vec![
                key.tenant_id.as_str().into(),
                key.original_message_id.as_str().into(),
                (key.reply_index as i32).into(),
            ],
        ))
        .await?;
    row.map(|row| {
        Ok(OutboundMessage {
            id: row.try_get("", "id")?,
            key: row_key(&row)?,
            phone_number_id: row.try_get("", "phone_number_id")?,
            recipient_phone: row.try_get("", "recipient_phone")?,
            status: status_of(&row)?,
            attempt_count: row.try_get::<i32>("", "attempt_count")?.max(0) as u32,
            wamid: row.try_get("", "wamid")?,
            error_code: row.try_get("", "error_code")?,
            error: row.try_get("", "error")?,
            created_at: row.try_get("", "created_at")?,
            updated_at: row.try_get("", "updated_at")?,
            sent_at: row.try_get("", "sent_at")?,
        })
    })
    .transpose()
}
