//! `processed_messages`: claims with a lease, completion, TTL cleanup.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Value};

use super::corrupt;
use super::statement::{push_pairs, push_rows, stmt};
use crate::store::to_chrono;
use crate::store::{Claim, Lease, MessageKey, StoreError};

/// Inserts claims, or takes over those whose lease is free or ran out. Every
/// claim is an attempt; a released claim (lease NULL) also starts a new run,
/// an expired one resumes its run. Completed and dead-lettered claims are left
/// alone. One row per claim; each row's values are tenant, message, now,
/// lease end, token, expiry.
fn claim_sql(rows: usize) -> String {
    const ROW: &str = "(?, ?, 'in_progress', 1, 1, ?, ?, ?, ?)";
    let mut sql = String::with_capacity(700 + rows * (ROW.len() + 2));
    sql.push_str(
        "INSERT INTO processed_messages
           (tenant_id, message_id, status, attempt_count, run_count, claimed_at, lease_expires_at, lease_token, expires_at)
         VALUES ",
    );
    push_rows(&mut sql, rows, ROW);
    sql.push_str(
        "
         ON CONFLICT (tenant_id, message_id) DO UPDATE SET
           attempt_count = processed_messages.attempt_count + 1,
           run_count = CASE WHEN processed_messages.lease_expires_at IS NULL
             THEN processed_messages.run_count + 1 ELSE processed_messages.run_count END,
           claimed_at = excluded.claimed_at,
           lease_expires_at = excluded.lease_expires_at,
           lease_token = excluded.lease_token
         WHERE processed_messages.status = 'in_progress'
           AND processed_messages.dead_lettered_at IS NULL
           AND (processed_messages.lease_expires_at IS NULL
                OR processed_messages.lease_expires_at < excluded.claimed_at)
         RETURNING tenant_id, message_id, attempt_count, run_count",
    );
    sql
}

/// A claim row's values (see [`claim_sql`]).
fn claim_values(lease: &Lease, now: DateTime<Utc>, duration: Duration) -> [Value; 6] {
    let lease_until = now + to_chrono(duration);
    [
        lease.key.tenant_id.as_str().into(),
        lease.key.message_id.as_str().into(),
        now.into(),
        lease_until.into(),
        lease.token.into(),
        lease_until.into(),
    ]
}

/// The claim a returned row grants.
fn acquired(lease: Lease, row: &sea_orm::QueryResult) -> Result<Claim, DbErr> {
    let attempt: i32 = row.try_get("", "attempt_count")?;
    let run: i32 = row.try_get("", "run_count")?;
    Ok(Claim::Acquired { lease, attempt: attempt.max(1) as u32, run: run.max(1) as u32 })
}

/// The condition every fenced write adds: the lease is still this worker's.
pub(super) const HELD: &str = "tenant_id = ? AND message_id = ? AND lease_token = ? AND lease_expires_at IS NOT NULL
  AND status = 'in_progress'";

fn held_values(lease: &Lease) -> [Value; 3] {
    [lease.key.tenant_id.as_str().into(), lease.key.message_id.as_str().into(), lease.token.into()]
}

/// Runs a fenced update: no row changed means the lease was lost.
async fn fenced(db: &impl ConnectionTrait, sql: &str, mut values: Vec<Value>, lease: &Lease) -> Result<(), StoreError> {
    values.extend(held_values(lease));
    let result = db.execute_raw(stmt(db.get_database_backend(), sql, values)).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::LeaseLost(lease.key.message_id.clone()));
    }
    Ok(())
}

pub(super) async fn claim(db: &impl ConnectionTrait, key: &MessageKey, lease: Duration) -> Result<Claim, StoreError> {
    let now = Utc::now();
    let held = Lease::new(key.clone());
    let values = claim_values(&held, now, lease).to_vec();
    match db.query_one_raw(stmt(db.get_database_backend(), &claim_sql(1), values)).await? {
        Some(row) => Ok(acquired(held, &row)?),
        None => refused(db, key, now).await,
    }
}

/// One claim waiting for its batch.
pub(super) struct ClaimRequest {
    pub(super) key: MessageKey,
    pub(super) lease: Duration,
}

/// Claims many messages with one multi-row upsert. A key repeated in the
/// batch (an upsert cannot touch a row twice) is claimed after it, alone,
/// and finds it held; a refused claim is looked up alone to say why. Rows
/// go in key order, as in the completions and reply marks, so concurrent
/// batches lock the rows they share in one order.
pub(super) async fn claim_many(db: &DatabaseConnection, batch: Vec<ClaimRequest>) -> Vec<Result<Claim, StoreError>> {
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    let (mut first, repeats): (Vec<usize>, Vec<usize>) =
        (0..batch.len()).partition(|&i| seen.insert((&batch[i].key.tenant_id, &batch[i].key.message_id)));
    first.sort_unstable_by(|&a, &b| {
        (&batch[a].key.tenant_id, &batch[a].key.message_id).cmp(&(&batch[b].key.tenant_id, &batch[b].key.message_id))
    });
    let now = Utc::now();
    let leases: Vec<Lease> = first.iter().map(|&i| Lease::new(batch[i].key.clone())).collect();
    let values: Vec<Value> =
        first.iter().zip(&leases).flat_map(|(&i, lease)| claim_values(lease, now, batch[i].lease)).collect();
    let rows = match db.query_all_raw(stmt(db.get_database_backend(), &claim_sql(first.len()), values)).await {
        Ok(rows) => rows,
        Err(error) => return super::batch::fail_all(&StoreError::from(error), batch.len()),
    };
    // Each returned row by its key; the rest were refused.
    let mut granted = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        match (row.try_get::<String>("", "tenant_id"), row.try_get::<String>("", "message_id")) {
            (Ok(tenant), Ok(message)) => granted.insert((tenant, message), row),
            (Err(error), _) | (_, Err(error)) => return super::batch::fail_all(&StoreError::from(error), batch.len()),
        };
    }
    let mut results: Vec<Option<Result<Claim, StoreError>>> = (0..batch.len()).map(|_| None).collect();
    let mut refused_at = Vec::new();
    for (&i, lease) in first.iter().zip(leases) {
        let key = (lease.key.tenant_id.clone(), lease.key.message_id.clone());
        match granted.get(&key) {
            Some(row) => results[i] = Some(acquired(lease, row).map_err(StoreError::from)),
            None => refused_at.push(i),
        }
    }
    // Why the others were refused: one query for all (a redelivery burst
    // after a rebalance is many completed messages at once).
    if !refused_at.is_empty() {
        let keys: Vec<MessageKey> = refused_at.iter().map(|&i| batch[i].key.clone()).collect();
        match refusals(db, &keys, now).await {
            Ok(mut why) => {
                for &i in &refused_at {
                    let busy = || Ok(Claim::Busy { lease_expires_at: now });
                    results[i] = Some(why.remove(&batch[i].key).unwrap_or_else(busy));
                }
            }
            Err(error) => {
                for (&i, failed) in refused_at.iter().zip(super::batch::fail_all(&error, refused_at.len())) {
                    results[i] = Some(failed);
                }
            }
        }
    }
    for i in repeats {
        results[i] = Some(claim(db, &batch[i].key, batch[i].lease).await);
    }
    results.into_iter().map(|r| r.expect("every request answered")).collect()
}

/// Why a claim was refused: the message is completed, dead-lettered or held.
async fn refused(db: &impl ConnectionTrait, key: &MessageKey, now: DateTime<Utc>) -> Result<Claim, StoreError> {
    let mut why = refusals(db, std::slice::from_ref(key), now).await?;
    why.remove(key).unwrap_or(Ok(Claim::Busy { lease_expires_at: now }))
}

/// Why each of `keys`' claims was refused (completed, dead-lettered or
/// held), in one query. A key missing from the answer was purged between
/// the two statements: nothing holds it now.
async fn refusals(
    db: &impl ConnectionTrait,
    keys: &[MessageKey],
    now: DateTime<Utc>,
) -> Result<std::collections::HashMap<MessageKey, Result<Claim, StoreError>>, StoreError> {
    let mut sql = String::from(
        "SELECT p.tenant_id, p.message_id, p.status, p.dead_lettered_at, p.lease_expires_at
           FROM processed_messages AS p JOIN (VALUES ",
    );
    let values = push_pairs(&mut sql, keys.iter().map(|key| (key.tenant_id.as_str(), key.message_id.as_str())));
    sql.push_str(") AS v ON p.tenant_id = v.column1 AND p.message_id = v.column2");
    let mut why = std::collections::HashMap::with_capacity(keys.len());
    for row in db.query_all_raw(stmt(db.get_database_backend(), &sql, values)).await? {
        let key = MessageKey::new(row.try_get::<String>("", "tenant_id")?, row.try_get::<String>("", "message_id")?);
        let status: String = row.try_get("", "status")?;
        let dead_lettered_at: Option<DateTime<Utc>> = row.try_get("", "dead_lettered_at")?;
        let lease_expires_at: Option<DateTime<Utc>> = row.try_get("", "lease_expires_at")?;
        let claim = match (status.as_str(), dead_lettered_at) {
            ("completed", _) => Ok(Claim::Done),
            (_, Some(_)) => Ok(Claim::DeadLettered),
            ("in_progress", None) => Ok(Claim::Busy { lease_expires_at: lease_expires_at.unwrap_or(now) }),
            (other, None) => Err(corrupt("processed_messages", format!("unknown status `{other}`"))),
        };
        why.insert(key, claim);
    }
    Ok(why)
}

pub(super) async fn renew(db: &impl ConnectionTrait, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
    let until = Utc::now() + to_chrono(duration);
    fenced(db, &format!("UPDATE processed_messages SET lease_expires_at = ? WHERE {HELD}"), vec![until.into()], lease)
        .await
}

pub(super) async fn release(db: &impl ConnectionTrait, lease: &Lease, refund_attempt: bool) -> Result<(), StoreError> {
    let refund = i32::from(refund_attempt);
    fenced(
        db,
        &format!(
            "UPDATE processed_messages
               SET lease_expires_at = NULL,
                   attempt_count = CASE WHEN attempt_count >= ? THEN attempt_count - ? ELSE attempt_count END
             WHERE {HELD}"
        ),
        vec![refund.into(), refund.into()],
        lease,
    )
    .await
}

/// Marks many messages' replies published, in one statement.
pub(super) async fn mark_replies_published(
    db: &impl ConnectionTrait,
    keys: Vec<MessageKey>,
) -> Vec<Result<(), StoreError>> {
    // A join on the keys, not a chain of ORs: PostgreSQL rechecks an OR
    // chain on every row it finds, which grows with the square of the batch.
    // The reply is dropped with the mark: nothing reads it once published,
    // and the smaller row fits in its page (a HOT update, see migration 13).
    let mut sql = String::from("UPDATE processed_messages AS p SET reply_published_at = ?, reply = NULL FROM (VALUES ");
    // Key order, as the claims (every request gets the same answer, so order is free).
    let mut ordered: Vec<&MessageKey> = keys.iter().collect();
    ordered.sort_unstable();
    let mut values: Vec<Value> = vec![Utc::now().into()];
    values
        .extend(push_pairs(&mut sql, ordered.into_iter().map(|key| (key.tenant_id.as_str(), key.message_id.as_str()))));
    sql.push_str(") AS v WHERE p.tenant_id = v.column1 AND p.message_id = v.column2");
    match db.execute_raw(stmt(db.get_database_backend(), &sql, values)).await {
        Ok(_) => keys.iter().map(|_| Ok(())).collect(),
        Err(error) => super::batch::fail_all(&StoreError::from(error), keys.len()),
    }
}

pub(super) async fn pending_reply(
    db: &impl ConnectionTrait,
    key: &MessageKey,
) -> Result<Option<serde_json::Value>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT reply FROM processed_messages
             WHERE tenant_id = ? AND message_id = ? AND status = 'completed'
               AND reply IS NOT NULL AND reply_published_at IS NULL",
            vec![key.tenant_id.as_str().into(), key.message_id.as_str().into()],
        ))
        .await?;
    Ok(row.map(|row| row.try_get::<Option<serde_json::Value>>("", "reply")).transpose()?.flatten())
}

/// A claim as one lease holds it: a stale worker's lease and the holder's
/// on the same message are different keys, so a batched write that
/// returns the rows it changed credits only the lease that changed them.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct HeldKey {
    tenant_id: String,
    message_id: String,
    token: i64,
}

impl HeldKey {
    pub(super) fn of(lease: &Lease) -> Self {
        Self { tenant_id: lease.key.tenant_id.clone(), message_id: lease.key.message_id.clone(), token: lease.token }
    }

    /// The key of a row returned as `tenant_id, message_id, lease_token`.
    fn read(row: &sea_orm::QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            tenant_id: row.try_get("", "tenant_id")?,
            message_id: row.try_get("", "message_id")?,
            token: row.try_get("", "lease_token")?,
        })
    }
}

/// Marks the held claims among `leases` dead-lettered, in one statement
/// inside the caller's transaction; returns those that were held.
pub(super) async fn mark_many_dead_lettered(
    db: &impl ConnectionTrait,
    leases: &[&Lease],
) -> Result<std::collections::HashSet<HeldKey>, StoreError> {
    let mut sql =
        String::from("UPDATE processed_messages AS p SET dead_lettered_at = ?, lease_expires_at = NULL FROM (VALUES ");
    // Key order, as the claims: concurrent batches lock shared rows in one order.
    let mut ordered = leases.to_vec();
    ordered.sort_unstable_by(|a, b| (&a.key, a.token).cmp(&(&b.key, b.token)));
    push_rows(&mut sql, ordered.len(), "(?, ?, ?)");
    let mut values: Vec<Value> = Vec::with_capacity(1 + 3 * ordered.len());
    values.push(Utc::now().into());
    values.extend(ordered.into_iter().flat_map(held_values));
    sql.push_str(
        ") AS v
         WHERE p.tenant_id = v.column1 AND p.message_id = v.column2 AND p.lease_token = v.column3
           AND p.lease_expires_at IS NOT NULL AND p.status = 'in_progress'
         RETURNING tenant_id, message_id, lease_token",
    );
    returned_keys(db, &sql, values).await
}

/// The claims a statement returning `tenant_id, message_id, lease_token` changed.
pub(super) async fn returned_keys(
    db: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
) -> Result<std::collections::HashSet<HeldKey>, StoreError> {
    let mut held = std::collections::HashSet::new();
    for row in db.query_all_raw(stmt(db.get_database_backend(), sql, values)).await? {
        held.insert(HeldKey::read(&row)?);
    }
    Ok(held)
}

/// Reopens a dead-lettered claim with a fresh attempt budget, inside the caller's transaction.
pub(super) async fn reopen(db: &impl ConnectionTrait, key: &MessageKey) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE processed_messages SET dead_lettered_at = NULL, attempt_count = 0, lease_expires_at = NULL
         WHERE tenant_id = ? AND message_id = ? AND status = 'in_progress'",
        vec![key.tenant_id.as_str().into(), key.message_id.as_str().into()],
    ))
    .await?;
    Ok(())
}

pub(super) async fn purge_expired(db: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let result = db
        .execute_raw(stmt(
            db.get_database_backend(),
            "DELETE FROM processed_messages WHERE status = 'completed' AND expires_at < ?",
            vec![now.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// One lead's move to a stage.
pub(super) struct LeadMove {
    pub(super) tenant_id: String,
    pub(super) lead_id: String,
    pub(super) stage: String,
}

/// Moves many leads, in batch order; per move, the stage the lead was in
/// (`None` for a lead not seen before). One read and at most one upsert per
/// batch. A lead's messages are processed one at a time (same phone, same
/// key), so read-then-write is safe.
pub(super) async fn set_lead_stages(
    db: &impl ConnectionTrait,
    moves: Vec<LeadMove>,
) -> Vec<Result<Option<String>, StoreError>> {
    match move_leads(db, &moves).await {
        Ok(previous) => previous.into_iter().map(Ok).collect(),
        Err(error) => super::batch::fail_all(&error, moves.len()),
    }
}

pub(super) async fn move_leads(
    db: &impl ConnectionTrait,
    moves: &[LeadMove],
) -> Result<Vec<Option<String>>, StoreError> {
    let backend = db.get_database_backend();
    // A join on the leads, not a chain of ORs (see `mark_replies_published`).
    let mut sql = String::from("SELECT l.tenant_id, l.lead_id, l.stage FROM leads AS l JOIN (VALUES ");
    let values = push_pairs(&mut sql, moves.iter().map(|lead| (lead.tenant_id.as_str(), lead.lead_id.as_str())));
    sql.push_str(") AS v ON l.tenant_id = v.column1 AND l.lead_id = v.column2");
    let mut stages = std::collections::HashMap::with_capacity(moves.len());
    for row in db.query_all_raw(stmt(backend, &sql, values)).await? {
        let key = (row.try_get::<String>("", "tenant_id")?, row.try_get::<String>("", "lead_id")?);
        stages.insert(key, row.try_get::<String>("", "stage")?);
    }
    // Replay the moves in order; each lead is written once, with its last stage.
    let mut previous = Vec::with_capacity(moves.len());
    let mut changed: Vec<(String, String)> = Vec::new();
    let mut marked = std::collections::HashSet::new();
    for lead in moves {
        let key = (lead.tenant_id.clone(), lead.lead_id.clone());
        let before = stages.insert(key.clone(), lead.stage.clone());
        if before.as_deref() != Some(lead.stage.as_str()) && marked.insert(key.clone()) {
            changed.push(key);
        }
        previous.push(before);
    }
    if !changed.is_empty() {
        // Key order: concurrent batches lock shared rows in one order.
        changed.sort_unstable();
        let now = Utc::now();
        let mut sql = String::from("INSERT INTO leads (tenant_id, lead_id, stage, updated_at) VALUES ");
        let mut values: Vec<Value> = Vec::with_capacity(changed.len() * 4);
        push_rows(&mut sql, changed.len(), "(?, ?, ?, ?)");
        for key in &changed {
            values.extend([key.0.as_str().into(), key.1.as_str().into(), stages[key].as_str().into(), now.into()]);
        }
        sql.push_str(
            " ON CONFLICT (tenant_id, lead_id) DO UPDATE SET stage = excluded.stage, updated_at = excluded.updated_at",
        );
        db.execute_raw(stmt(backend, &sql, values)).await?;
    }
    Ok(previous)
}
