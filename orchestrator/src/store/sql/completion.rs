//! Completions: many messages' claims, audit rows, lead moves and trailing
//! local steps (see [`crate::local`]) in one transaction.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait, Value};

use super::claims::{HeldKey, LeadMove, move_leads, returned_keys};
use super::statement::{push_rows, stmt};
use crate::executor::{ActionContext, ActionError, ActionOutput};
use crate::local::{LocalExecutor, LocalFailure, LocalStep};
use crate::store::{ConversationTurn, Lease, LocalCompletion, NewActivity, StageChange, StoreError};

/// One completion to write while `lease` is held, or, when `unclaimed`,
/// of a message never claimed: its row is inserted completed unless one exists.
pub(super) struct Completion {
    pub(super) lease: Lease,
    /// The message was not claimed: `lease` is a fresh token for its new row.
    pub(super) unclaimed: bool,
    pub(super) activities: Vec<NewActivity>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) reply: Option<serde_json::Value>,
    /// The lead's move to a stage, in the lease's tenant.
    pub(super) lead: Option<(String, String)>,
    /// The trailing local run, written in the transaction.
    pub(super) local: Vec<LocalStep>,
    /// The message and its reply in the inbox's history.
    pub(super) conversation: Option<ConversationTurn>,
}

/// Per completion, the stage its lead was in before its move (`None` for a
/// completion that moved no lead; `Some(None)` for a lead not seen before).
pub(super) type PreviousStage = Option<Option<String>>;

/// What one completion wrote.
pub(super) struct Finished {
    pub(super) previous: PreviousStage,
    /// The local steps' outputs, in the completion's order.
    pub(super) outputs: Vec<ActionOutput>,
}

impl Finished {
    /// What the store answers: the outputs, and the lead's move when `moved_lead`.
    pub(super) fn into_local(self, moved_lead: bool) -> LocalCompletion {
        let stage = moved_lead.then(|| StageChange::Moved { from: self.previous.flatten() });
        LocalCompletion { outputs: self.outputs, stage }
    }
}

/// Completes many messages in one transaction: one fenced `UPDATE ... FROM
/// (VALUES ...)` for the claims and one `INSERT ... ON CONFLICT DO NOTHING`
/// for the unclaimed; then, for those whose lease was still held or whose
/// row was new, their local steps (one call per action for the whole
/// batch), one `INSERT` for the lead activities, one `INSERT` and one
/// upsert for the inbox's history, and one read and one upsert for the lead
/// moves. A message fenced out (or, unclaimed, found stored
/// already) gets `LeaseLost` and leaves nothing behind; the others commit
/// together. When a local step fails, the batch rolls back and each message
/// is written alone, so only the failing one fails.
pub(super) async fn complete_many(
    db: &DatabaseConnection,
    batch: Vec<Completion>,
) -> Vec<Result<Finished, StoreError>> {
    match complete_batch(db, &batch).await {
        Ok(results) => results,
        Err(error) if batch.len() == 1 => vec![Err(error)],
        Err(StoreError::Local(_)) => {
            let mut results = Vec::with_capacity(batch.len());
            for completion in &batch {
                let alone = complete_batch(db, std::slice::from_ref(completion)).await;
                let nothing =
                    || Err(StoreError::Database(sea_orm::DbErr::Custom("a batch of one answered nothing".into())));
                results.push(alone.and_then(|mut one| one.pop().unwrap_or_else(nothing)));
            }
            results
        }
        Err(error) => super::batch::fail_all(&error, batch.len()),
    }
}

/// One transaction for `batch`; `Err` when it rolled back.
async fn complete_batch(
    db: &DatabaseConnection,
    batch: &[Completion],
) -> Result<Vec<Result<Finished, StoreError>>, StoreError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let mut held = mark_completed(&txn, batch, now).await?;
    held.extend(insert_completed(&txn, batch, now).await?);
    let written: Vec<bool> = batch.iter().map(|c| held.contains(&HeldKey::of(&c.lease))).collect();
    let mut outputs = run_local(&txn, batch, &written).await?;
    insert_activities(&txn, batch, &written, &outputs, now).await?;
    let turns: Vec<(&str, &ConversationTurn)> = batch
        .iter()
        .zip(&written)
        .filter_map(|(c, written)| {
            Some((c.lease.key.tenant_id.as_str(), c.conversation.as_ref().filter(|_| *written)?))
        })
        .collect();
    super::conversations::write_turns(&txn, &turns, now).await?;
    // The lead moves of the completions written, in batch order.
    let mut moved_by = Vec::new();
    let mut moves = Vec::new();
    for (i, completion) in batch.iter().enumerate() {
        if let (true, Some((lead_id, stage))) = (written[i], completion.lead.clone()) {
            moved_by.push(i);
            moves.push(LeadMove { tenant_id: completion.lease.key.tenant_id.clone(), lead_id, stage });
        }
    }
    let mut previous: Vec<PreviousStage> = vec![None; batch.len()];
    if !moves.is_empty() {
        for (i, before) in moved_by.into_iter().zip(move_leads(&txn, &moves).await?) {
            previous[i] = Some(before);
        }
    }
    txn.commit().await?;
    Ok(batch
        .iter()
        .zip(written)
        .zip(previous)
        .enumerate()
        .map(|(i, ((completion, written), previous))| match written {
            true => Ok(Finished { previous, outputs: std::mem::take(&mut outputs[i]) }),
            false => Err(StoreError::LeaseLost(completion.lease.key.message_id.clone())),
        })
        .collect())
}

/// The batch's claimed (or, with `unclaimed`, unclaimed) completions in key
/// order, as the claims: concurrent batches lock shared rows in one order.
fn in_key_order(batch: &[Completion], unclaimed: bool) -> Vec<&Completion> {
    let mut ordered: Vec<&Completion> = batch.iter().filter(|c| c.unclaimed == unclaimed).collect();
    ordered.sort_unstable_by(|a, b| a.lease.key.cmp(&b.lease.key));
    ordered
}

/// Marks the batch's held claims completed with their replies; answers
/// the leases still held.
async fn mark_completed(
    txn: &DatabaseTransaction,
    batch: &[Completion],
    now: DateTime<Utc>,
) -> Result<HashSet<HeldKey>, StoreError> {
    let ordered = in_key_order(batch, false);
    if ordered.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sql = String::from(
        "UPDATE processed_messages AS p
           SET status = 'completed', completed_at = v.column3, lease_expires_at = NULL, expires_at = v.column4,
               reply = v.column5
          FROM (VALUES ",
    );
    let mut values = Vec::with_capacity(ordered.len() * 6);
    push_rows(&mut sql, ordered.len(), "(?, ?, ?, ?, ?, ?)");
    for completion in ordered {
        let key = &completion.lease.key;
        values.extend([
            key.tenant_id.as_str().into(),
            key.message_id.as_str().into(),
            now.into(),
            completion.expires_at.into(),
            completion.reply.clone().into(),
            completion.lease.token.into(),
        ]);
    }
    sql.push_str(
        ") AS v
         WHERE p.tenant_id = v.column1 AND p.message_id = v.column2 AND p.lease_token = v.column6
           AND p.lease_expires_at IS NOT NULL AND p.status = 'in_progress'
         RETURNING tenant_id, message_id, lease_token",
    );
    returned_keys(txn, &sql, values).await
}

/// Inserts the batch's unclaimed messages completed, skipping those stored
/// already (a redelivery, or a message another worker holds: the caller
/// claims those); answers the rows inserted. The unique key does the
/// deduper's job, with no claim before.
async fn insert_completed(
    txn: &DatabaseTransaction,
    batch: &[Completion],
    now: DateTime<Utc>,
) -> Result<HashSet<HeldKey>, StoreError> {
    let ordered = in_key_order(batch, true);
    if ordered.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sql = String::from(
        "INSERT INTO processed_messages
           (tenant_id, message_id, status, attempt_count, run_count, claimed_at, completed_at, lease_token,
            expires_at, reply)
         VALUES ",
    );
    push_rows(&mut sql, ordered.len(), "(?, ?, 'completed', 1, 1, ?, ?, ?, ?, ?)");
    sql.push_str(" ON CONFLICT (tenant_id, message_id) DO NOTHING RETURNING tenant_id, message_id, lease_token");
    let mut values = Vec::with_capacity(ordered.len() * 7);
    for completion in ordered {
        let key = &completion.lease.key;
        values.extend([
            key.tenant_id.as_str().into(),
            key.message_id.as_str().into(),
            now.into(),
            now.into(),
            completion.lease.token.into(),
            completion.expires_at.into(),
            completion.reply.clone().into(),
        ]);
    }
    returned_keys(txn, &sql, values).await
}

/// One action's executor and its steps in a batch, as (completion, position) pairs.
type ActionGroup<'a> = (&'a Arc<dyn LocalExecutor>, Vec<(usize, usize)>);

/// The local steps of the written completions, one [`LocalExecutor::execute_in`]
/// call per action (in the order actions first appear); per completion, its
/// steps' outputs.
async fn run_local(
    txn: &DatabaseTransaction,
    batch: &[Completion],
    written: &[bool],
) -> Result<Vec<Vec<ActionOutput>>, StoreError> {
    let mut groups: Vec<ActionGroup<'_>> = Vec::new();
    for (i, completion) in batch.iter().enumerate().filter(|(i, _)| written[*i]) {
        for (j, step) in completion.local.iter().enumerate() {
            match groups.iter_mut().find(|(executor, _)| executor.name() == step.action()) {
                Some((_, members)) => members.push((i, j)),
                None => groups.push((&step.executor, vec![(i, j)])),
            }
        }
    }
    let mut outputs: Vec<Vec<ActionOutput>> =
        batch.iter().map(|c| vec![ActionOutput::default(); c.local.len()]).collect();
    for (executor, members) in groups {
        let contexts: Vec<ActionContext<'_>> = members.iter().map(|&(i, j)| batch[i].local[j].context()).collect();
        let failure = |error: ActionError| {
            let (i, j) = members[0];
            LocalFailure { step_index: batch[i].local[j].step_index, action: executor.name().to_owned(), error }
        };
        let answers = executor.execute_in(txn, &contexts).await.map_err(failure)?;
        if answers.len() != members.len() {
            let error = format!("answered {} outputs for {} steps", answers.len(), members.len());
            return Err(failure(ActionError::Permanent(error)).into());
        }
        for (&(i, j), output) in members.iter().zip(answers) {
            outputs[i][j] = output;
        }
    }
    Ok(outputs)
}

/// The written completions' activities, then an `action_executed` row per local step, in one `INSERT`.
async fn insert_activities(
    txn: &DatabaseTransaction,
    batch: &[Completion],
    written: &[bool],
    outputs: &[Vec<ActionOutput>],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut rows: Vec<(&Lease, NewActivity)> = Vec::new();
    for (i, completion) in batch.iter().enumerate().filter(|(i, _)| written[*i]) {
        rows.extend(completion.activities.iter().map(|activity| (&completion.lease, activity.clone())));
        for (step, output) in completion.local.iter().zip(&outputs[i]) {
            let row = NewActivity::action_executed(step.message.lead_id(), step.action(), step.step_index, output);
            rows.push((&completion.lease, row));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = String::from(
        "INSERT INTO lead_activities (tenant_id, lead_id, message_id, activity_type, details, created_at) VALUES ",
    );
    push_rows(&mut sql, rows.len(), "(?, ?, ?, ?, ?, ?)");
    let mut values: Vec<Value> = Vec::with_capacity(rows.len() * 6);
    for (lease, activity) in rows {
        values.extend([
            lease.key.tenant_id.as_str().into(),
            activity.lead_id.into(),
            lease.key.message_id.as_str().into(),
            activity.activity_type.into(),
            activity.details.into(),
            now.into(),
        ]);
    }
    txn.execute_raw(stmt(txn.get_database_backend(), &sql, values)).await?;
    Ok(())
}
