//! The SQL store's contracts, on SQLite and (with TEST_DATABASE_URL) PostgreSQL:
//! atomic claims, the DLQ queries operators run, TTL cleanup, migrations.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::count;
use migrations::{Migrator, MigratorTrait, SchemaManager, TABLES};
use orchestrator::event::FailureType;
use orchestrator::store::{
    Claim, DlqFilter, DlqStatus, MessageKey, NewActivity, NewDeadLetter, Page, SagaLog, StageChange, StageMove,
    StepRecord, StepStatus,
};
use orchestrator::testing;
use orchestrator::{DeadLetterQueue, SqlStore, Store, StoreError};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use serde_json::json;

/// Long enough that two back-to-back claims fall inside it even on a loaded machine.
const LEASE: Duration = Duration::from_secs(1);

fn lease_of(claim: Claim) -> orchestrator::store::Lease {
    match claim {
        Claim::Acquired { lease, .. } => lease,
        other => panic!("expected a lease, got {other:?}"),
    }
}

#[tokio::test]
async fn claims_count_attempts_resume_runs_and_skip_finished_messages() {
    for t in testing::databases().await {
        let store = SqlStore::new(t.db.clone());
        let key = MessageKey::new("acme", "m1");
        let first = store.claim(&key, LEASE).await.unwrap();
        assert_eq!(first.acquired(), Some((1, 1)), "{}", t.label);
        assert!(matches!(store.claim(&key, LEASE).await.unwrap(), Claim::Busy { .. }), "{}: leased", t.label);

        // A released claim (failed attempt) starts a new attempt and run.
        store.release(&lease_of(first), false).await.unwrap();
        let second = store.claim(&key, LEASE).await.unwrap();
        assert_eq!(second.acquired(), Some((2, 2)), "{}", t.label);

        // An expired lease (the worker died) is taken over: a new attempt resuming the same run.
        tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
        let third = store.claim(&key, LEASE).await.unwrap();
        assert_eq!(third.acquired(), Some((3, 2)), "{}", t.label);

        // A refunded attempt (deferred) is not counted; the run still advances.
        store.release(&lease_of(third), true).await.unwrap();
        let fourth = lease_of(store.claim(&key, LEASE).await.unwrap());
        let activity =
            NewActivity { lead_id: "lead-1".into(), activity_type: "message_handled".into(), details: json!({"x": 1}) };
        store.complete(&fourth, &[activity], Duration::from_secs(60), None).await.unwrap();
        assert_eq!(
            count(&t.db, "processed_messages", "message_id = 'm1' AND attempt_count = 3 AND run_count = 3").await,
            1
        );
        assert_eq!(store.claim(&key, LEASE).await.unwrap(), Claim::Done, "{}", t.label);
        assert_eq!(count(&t.db, "lead_activities", "message_id = 'm1' AND lead_id = 'lead-1'").await, 1);
    }
}

#[tokio::test]
async fn a_lease_taken_over_fences_out_its_old_holder() {
    for t in testing::databases().await {
        let store = SqlStore::new(t.db.clone());
        let key = MessageKey::new("acme", "fenced");
        let stale = lease_of(store.claim(&key, Duration::from_millis(100)).await.unwrap());
        // Renewal keeps it: nobody can take over while the holder renews.
        store.renew(&stale, LEASE).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(matches!(store.claim(&key, LEASE).await.unwrap(), Claim::Busy { .. }), "{}: renewed", t.label);

        // The holder stalls past its lease and another worker takes over.
        tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
        let current = lease_of(store.claim(&key, LEASE).await.unwrap());
        let step = StepRecord::new(0, "create_order", StepStatus::Started);
        for (what, result) in [
            ("renew", store.renew(&stale, LEASE).await),
            ("record_step", store.record_step(&stale, 1, &step).await),
            ("release", store.release(&stale, false).await),
            ("complete", store.complete(&stale, &[], Duration::from_secs(60), None).await),
            (
                "dead_letter",
                store
                    .dead_letter(Some(&stale), &dead_letter("fenced", "acme", FailureType::UnknownError))
                    .await
                    .map(|_| ()),
            ),
        ] {
            assert!(
                matches!(result, Err(StoreError::LeaseLost(_))),
                "{}: {what} by the old holder: {result:?}",
                t.label
            );
        }
        assert_eq!(count(&t.db, "saga_steps", "message_id = 'fenced'").await, 0, "{}", t.label);
        assert_eq!(count(&t.db, "dead_letter_queue", "message_id = 'fenced'").await, 0, "{}: rolled back", t.label);
        // The new holder is unaffected.
        store.record_step(&current, 1, &step).await.unwrap();
        store.complete(&current, &[], Duration::from_secs(60), None).await.unwrap();
        assert_eq!(store.claim(&key, LEASE).await.unwrap(), Claim::Done, "{}", t.label);
    }
}

#[tokio::test]
async fn saga_log_rows_of_concurrent_messages_are_batched_and_each_fenced_by_its_own_lease() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let mut leases = Vec::new();
        for i in 0..60 {
            leases.push(lease_of(store.claim(&MessageKey::new("acme", format!("batch-{i}")), LEASE).await.unwrap()));
        }
        // One of them loses its lease (released): only its rows may be refused.
        store.release(&leases[17], false).await.unwrap();
        let writes: Vec<_> = leases
            .iter()
            .cloned()
            .map(|lease| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut results = Vec::new();
                    for (index, status) in
                        [(0, StepStatus::Started), (0, StepStatus::Succeeded), (1, StepStatus::Started)]
                    {
                        results
                            .push(store.record_step(&lease, 1, &StepRecord::new(index, "create_order", status)).await);
                    }
                    (lease.key.message_id.clone(), results)
                })
            })
            .collect();
        for write in writes {
            let (id, results) = write.await.unwrap();
            for result in results {
                match id.as_str() {
                    "batch-17" => assert!(matches!(result, Err(StoreError::LeaseLost(_))), "{}: {result:?}", t.label),
                    _ => assert!(result.is_ok(), "{}: {id}: {result:?}", t.label),
                }
            }
        }
        assert_eq!(count(&t.db, "saga_steps", "message_id = 'batch-17'").await, 0, "{}", t.label);
        assert_eq!(count(&t.db, "saga_steps", "message_id LIKE 'batch-%'").await, 59 * 3, "{}", t.label);
        // Each message's rows read back in the order it wrote them.
        let steps = store.load_steps(&MessageKey::new("acme", "batch-3"), 1).await.unwrap();
        let order: Vec<_> = steps.iter().map(|s| (s.step_index, s.status)).collect();
        assert_eq!(
            order,
            [(0, StepStatus::Started), (0, StepStatus::Succeeded), (1, StepStatus::Started)],
            "{}",
            t.label
        );
    }
}

#[tokio::test]
async fn concurrent_completions_commit_together_except_the_one_fenced_out() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let mut leases = Vec::new();
        for i in 0..40 {
            leases.push(lease_of(store.claim(&MessageKey::new("acme", format!("done-{i}")), LEASE).await.unwrap()));
        }
        store.release(&leases[5], false).await.unwrap();
        let completions: Vec<_> = leases
            .iter()
            .cloned()
            .map(|lease| {
                let store = store.clone();
                tokio::spawn(async move {
                    let activity = NewActivity {
                        lead_id: format!("lead-{}", lease.key.message_id),
                        activity_type: "message_handled".into(),
                        details: json!({}),
                    };
                    let reply = json!({ "to": lease.key.message_id });
                    let result = store.complete(&lease, &[activity], Duration::from_secs(60), Some(&reply)).await;
                    (lease.key.clone(), result)
                })
            })
            .collect();
        for completion in completions {
            let (key, result) = completion.await.unwrap();
            if key.message_id == "done-5" {
                assert!(matches!(result, Err(StoreError::LeaseLost(_))), "{}: {result:?}", t.label);
                assert!(matches!(store.claim(&key, LEASE).await.unwrap(), Claim::Acquired { .. }), "{}", t.label);
            } else {
                result.unwrap_or_else(|e| panic!("{}: {}: {e}", t.label, key.message_id));
                assert_eq!(store.claim(&key, LEASE).await.unwrap(), Claim::Done, "{}", t.label);
                // Each message keeps its own reply until it is marked published.
                assert_eq!(
                    store.pending_reply(&key).await.unwrap(),
                    Some(json!({ "to": key.message_id })),
                    "{}",
                    t.label
                );
            }
        }
        assert_eq!(count(&t.db, "lead_activities", "message_id LIKE 'done-%'").await, 39, "{}", t.label);
        assert_eq!(count(&t.db, "lead_activities", "message_id = 'done-5'").await, 0, "{}", t.label);
        let marks: Vec<_> = (0..40)
            .filter(|i| *i != 5)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.mark_reply_published(&MessageKey::new("acme", format!("done-{i}"))).await },
                )
            })
            .collect();
        for mark in marks {
            mark.await.unwrap().unwrap();
        }
        assert_eq!(store.pending_reply(&MessageKey::new("acme", "done-7")).await.unwrap(), None, "{}", t.label);
        assert_eq!(count(&t.db, "processed_messages", "reply_published_at IS NOT NULL").await, 39, "{}", t.label);
        // A published reply is not kept: the marked row shrinks (and stays in its page on PostgreSQL).
        assert_eq!(count(&t.db, "processed_messages", "reply IS NOT NULL").await, 0, "{}", t.label);
    }
}

#[tokio::test]
async fn a_burst_of_claims_is_answered_per_message() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        for id in ["burst-done", "burst-done2"] {
            let done = lease_of(store.claim(&MessageKey::new("acme", id), LEASE).await.unwrap());
            store.complete(&done, &[], Duration::from_secs(60), None).await.unwrap();
        }
        let _held = lease_of(store.claim(&MessageKey::new("acme", "burst-held"), LEASE).await.unwrap());
        let _held2 = lease_of(store.claim(&MessageKey::new("acme", "burst-held2"), LEASE).await.unwrap());
        let mut ids: Vec<String> = (0..40).map(|i| format!("burst-{i}")).collect();
        ids.extend(
            ["burst-done", "burst-held", "burst-done2", "burst-held2", "burst-dup", "burst-dup", "burst-dup"]
                .map(String::from),
        );
        let claims: Vec<_> = ids
            .iter()
            .map(|id| {
                let (store, key) = (store.clone(), MessageKey::new("acme", id.as_str()));
                tokio::spawn(async move { (key.message_id.clone(), store.claim(&key, LEASE).await.unwrap()) })
            })
            .collect();
        let mut tokens = std::collections::HashSet::new();
        let mut dup_acquired = 0;
        for claim in claims {
            let (id, claim) = claim.await.unwrap();
            match (id.as_str(), claim) {
                ("burst-done" | "burst-done2", claim) => assert_eq!(claim, Claim::Done, "{}", t.label),
                ("burst-held" | "burst-held2", claim) => {
                    assert!(matches!(claim, Claim::Busy { .. }), "{}: {claim:?}", t.label)
                }
                ("burst-dup", Claim::Acquired { .. }) => dup_acquired += 1,
                ("burst-dup", claim) => assert!(matches!(claim, Claim::Busy { .. }), "{}: {claim:?}", t.label),
                (id, Claim::Acquired { lease, attempt, run }) => {
                    assert_eq!((attempt, run), (1, 1), "{}: {id}", t.label);
                    assert_eq!(lease.key.message_id, id, "{}", t.label);
                    assert!(tokens.insert(lease.token), "{}: {id} shares a lease token", t.label);
                    // The lease returned is the one stored: a fenced write with it succeeds.
                    store.renew(&lease, LEASE).await.unwrap_or_else(|e| panic!("{}: {id}: {e}", t.label));
                }
                (id, claim) => panic!("{}: {id}: {claim:?}", t.label),
            }
        }
        assert_eq!(dup_acquired, 1, "{}: one of three claims of one message acquires it", t.label);
        assert_eq!(count(&t.db, "processed_messages", "message_id = 'burst-dup'").await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn concurrent_claims_on_one_message_admit_exactly_one_worker() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let key = MessageKey::new("acme", "contended");
        let claims = futures_join(store.clone(), key.clone(), 16).await;
        let acquired = claims.iter().filter(|c| matches!(c, Claim::Acquired { .. })).count();
        let busy = claims.iter().filter(|c| matches!(c, Claim::Busy { .. })).count();
        assert_eq!((acquired, busy), (1, 15), "{}: {claims:?}", t.label);
    }
}

async fn futures_join(store: Arc<SqlStore>, key: MessageKey, n: usize) -> Vec<Claim> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.claim(&key, Duration::from_secs(30)).await })
        })
        .collect();
    let mut claims = Vec::new();
    for task in tasks {
        claims.push(task.await.expect("task").expect("claim"));
    }
    claims
}

fn dead_letter(message_id: &str, tenant: &str, failure_type: FailureType) -> NewDeadLetter {
    NewDeadLetter {
        message_id: Some(message_id.into()),
        tenant_id: Some(tenant.into()),
        source: None,
        payload: format!("{{\"id\":\"{message_id}\"}}").into_bytes(),
        failure_type,
        error: format!("{failure_type} for {message_id}"),
        attempt_count: 3,
        trace_context: None,
        conversation: None,
    }
}

#[tokio::test]
async fn a_burst_of_dead_letters_files_each_entry_under_its_own_id() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let mut leases = Vec::new();
        for i in 0..30 {
            leases.push(lease_of(store.claim(&MessageKey::new("acme", format!("dead-{i}")), LEASE).await.unwrap()));
        }
        // One lost its lease: its entry must not be filed, nor its claim marked.
        store.release(&leases[9], false).await.unwrap();
        let mut entries: Vec<(Option<orchestrator::store::Lease>, NewDeadLetter)> = leases
            .into_iter()
            .map(|lease| {
                let entry = dead_letter(&lease.key.message_id, "acme", FailureType::ExternalServiceError);
                (Some(lease), entry)
            })
            .collect();
        // Undecodable input has no claim; one is not even UTF-8.
        for i in 0..20 {
            let mut entry = dead_letter(&format!("poison-{i}"), "acme", FailureType::SerializationError);
            entry.message_id = None;
            if i == 4 {
                entry.payload = vec![0xff, 0x00, b'x'];
            }
            entries.push((None, entry));
        }
        let filed: Vec<_> = entries
            .iter()
            .cloned()
            .map(|(lease, entry)| {
                let store = store.clone();
                tokio::spawn(async move { store.dead_letter(lease.as_ref(), &entry).await })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for ((lease, entry), result) in entries.iter().zip(filed) {
            let result = result.await.unwrap();
            if lease.as_ref().is_some_and(|l| l.key.message_id == "dead-9") {
                assert!(matches!(result, Err(StoreError::LeaseLost(_))), "{}: {result:?}", t.label);
                continue;
            }
            let id = result.unwrap_or_else(|e| panic!("{}: {}: {e}", t.label, entry.error));
            assert!(ids.insert(id), "{}: id {id} given twice", t.label);
            // The id answers with this very entry, not a neighbour of its batch.
            let stored = store.get(id).await.unwrap().unwrap();
            assert_eq!((&stored.error, &stored.payload), (&entry.error, &entry.payload), "{}", t.label);
            if let Some(lease) = lease {
                assert_eq!(store.claim(&lease.key, LEASE).await.unwrap(), Claim::DeadLettered, "{}", t.label);
            }
        }
        assert_eq!(ids.len(), 49, "{}", t.label);
        assert_eq!(count(&t.db, "dead_letter_queue", "message_id = 'dead-9'").await, 0, "{}", t.label);
        let dead_9 = MessageKey::new("acme", "dead-9");
        assert!(matches!(store.claim(&dead_9, LEASE).await.unwrap(), Claim::Acquired { .. }), "{}", t.label);
    }
}

#[tokio::test]
async fn a_stale_worker_beside_the_new_holder_in_one_burst_gets_lease_lost() {
    let short = Duration::from_millis(200);
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        for (n, write) in ["steps", "completion", "dead letter"].into_iter().enumerate() {
            let key = MessageKey::new("acme", format!("stale-{n}"));
            let stale = lease_of(store.claim(&key, short).await.unwrap());
            tokio::time::sleep(short + Duration::from_millis(100)).await;
            let holder = lease_of(store.claim(&key, LEASE).await.unwrap());
            // Both write at once, so they can share a batch: only the holder's lands.
            let results: Vec<_> = [stale.clone(), holder.clone()]
                .into_iter()
                .map(|lease| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        match write {
                            "steps" => {
                                let step = StepRecord::new(0, "create_order", StepStatus::Started);
                                store.record_step(&lease, 1, &step).await.map(|_| ())
                            }
                            "completion" => store.complete(&lease, &[], Duration::from_secs(60), None).await,
                            _ => {
                                let entry = dead_letter(&lease.key.message_id, "acme", FailureType::UnknownError);
                                store.dead_letter(Some(&lease), &entry).await.map(|_| ())
                            }
                        }
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for result in results {
                answers.push(result.await.unwrap());
            }
            assert!(matches!(answers[0], Err(StoreError::LeaseLost(_))), "{} {write}: stale {:?}", t.label, answers[0]);
            assert!(answers[1].is_ok(), "{} {write}: holder {:?}", t.label, answers[1]);
        }
        assert_eq!(count(&t.db, "saga_steps", "message_id = 'stale-0'").await, 1, "{}", t.label);
        assert_eq!(count(&t.db, "dead_letter_queue", "message_id = 'stale-2'").await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn dead_letters_list_newest_first_with_filters_and_pages() {
    for t in testing::databases().await {
        let store = SqlStore::new(t.db.clone());
        let mut ids = Vec::new();
        for (i, (tenant, failure)) in [
            ("acme", FailureType::ValidationError),
            ("acme", FailureType::ExternalServiceError),
            ("globex", FailureType::ExternalServiceError),
            ("acme", FailureType::ExternalServiceError),
        ]
        .into_iter()
        .enumerate()
        {
            ids.push(store.dead_letter(None, &dead_letter(&format!("d{i}"), tenant, failure)).await.unwrap());
        }
        let all = store.list(&DlqFilter::default(), Page::default()).await.unwrap();
        assert_eq!(all.iter().map(|d| d.id).collect::<Vec<_>>(), ids.iter().rev().copied().collect::<Vec<_>>());

        let filter = DlqFilter {
            tenant_id: Some("acme".into()),
            failure_type: Some(FailureType::ExternalServiceError),
            ..Default::default()
        };
        let acme_external = store.list(&filter, Page::default()).await.unwrap();
        assert_eq!(acme_external.iter().map(|d| d.message_id.clone().unwrap()).collect::<Vec<_>>(), ["d3", "d1"]);

        let second_page = store.list(&DlqFilter::default(), Page { limit: 2, offset: 2 }).await.unwrap();
        assert_eq!(second_page.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[1], ids[0]], "{}", t.label);

        store.mark(ids[0], DlqStatus::Discarded).await.unwrap();
        let failed = DlqFilter { status: Some(DlqStatus::Failed), ..Default::default() };
        assert_eq!(store.list(&failed, Page::default()).await.unwrap().len(), 3, "{}", t.label);
        let future = DlqFilter { since: Some(Utc::now() + chrono::Duration::minutes(1)), ..Default::default() };
        assert!(store.list(&future, Page::default()).await.unwrap().is_empty(), "{}", t.label);

        let shown = store.get(ids[2]).await.unwrap().expect("row");
        assert_eq!((shown.tenant_id.as_deref(), shown.payload.as_slice()), (Some("globex"), &b"{\"id\":\"d2\"}"[..]));
        assert!(store.get(9_999_999).await.unwrap().is_none());
        assert!(matches!(store.mark(9_999_999, DlqStatus::Resolved).await, Err(StoreError::NotFound(_))));
        let refused = store.mark(ids[0], DlqStatus::Replayed).await;
        assert!(matches!(refused, Err(StoreError::InvalidTransition { from: "discarded", to: "replayed", .. })));
        let resolved = store.mark(ids[1], DlqStatus::Resolved).await.unwrap();
        assert_eq!(resolved.status, DlqStatus::Resolved, "{}", t.label);
    }
}

/// The query DESIGN.md promises operators, verbatim.
const OPERATOR_QUERY: &str =
    "SELECT * FROM dead_letter_queue WHERE status = 'failed' ORDER BY created_at DESC LIMIT 100";

#[tokio::test]
async fn the_operator_query_works_and_uses_an_index() {
    for t in testing::databases().await {
        let store = SqlStore::new(t.db.clone());
        for i in 0..5 {
            store.dead_letter(None, &dead_letter(&format!("q{i}"), "acme", FailureType::UnknownError)).await.unwrap();
        }
        let backend = t.db.get_database_backend();
        let rows = t.db.query_all_raw(Statement::from_string(backend, OPERATOR_QUERY)).await.unwrap();
        assert_eq!(rows.len(), 5, "{}", t.label);
        let newest: String = rows[0].try_get("", "message_id").unwrap();
        assert_eq!(newest, "q4", "{}", t.label);

        let plan = match backend {
            DbBackend::Sqlite => {
                let rows =
                    t.db.query_all_raw(Statement::from_string(backend, format!("EXPLAIN QUERY PLAN {OPERATOR_QUERY}")))
                        .await
                        .unwrap();
                rows.iter().map(|r| r.try_get::<String>("", "detail").unwrap()).collect::<Vec<_>>().join("\n")
            }
            _ => {
                // With five rows the planner would rightly scan; forbid that to see which index it has.
                let txn = t.db.begin().await.unwrap();
                txn.execute_unprepared("SET LOCAL enable_seqscan = off").await.unwrap();
                let rows = txn
                    .query_all_raw(Statement::from_string(backend, format!("EXPLAIN {OPERATOR_QUERY}")))
                    .await
                    .unwrap();
                let plan =
                    rows.iter().map(|r| r.try_get::<String>("", "QUERY PLAN").unwrap()).collect::<Vec<_>>().join("\n");
                txn.rollback().await.unwrap();
                plan
            }
        };
        assert!(plan.contains("ix_dlq_status_created_at"), "{}: plan does not use the index:\n{plan}", t.label);
        assert!(!plan.contains("TEMP B-TREE"), "{}: the index should also give the order:\n{plan}", t.label);
    }
}

#[tokio::test]
async fn expired_completed_records_are_purged_and_live_ones_kept() {
    for t in testing::databases().await {
        let store = SqlStore::new(t.db.clone());
        let done = MessageKey::new("acme", "old");
        let running = MessageKey::new("acme", "running");
        let held = lease_of(store.claim(&done, LEASE).await.unwrap());
        store.complete(&held, &[], Duration::from_secs(60), None).await.unwrap();
        store.claim(&running, LEASE).await.unwrap();
        assert_eq!(store.purge_expired(Utc::now()).await.unwrap(), 0, "{}: TTL not reached", t.label);
        let later = Utc::now() + chrono::Duration::minutes(2);
        assert_eq!(store.purge_expired(later).await.unwrap(), 1, "{}", t.label);
        assert_eq!(count(&t.db, "processed_messages", "message_id = 'running'").await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn migrations_go_down_and_up_again() {
    for t in testing::databases().await {
        let manager = SchemaManager::new(&t.db);
        for table in TABLES {
            assert!(manager.has_table(*table).await.unwrap(), "{}: {table} missing after start-up", t.label);
        }
        Migrator::down(&t.db, None).await.unwrap();
        for table in TABLES {
            assert!(!manager.has_table(*table).await.unwrap(), "{}: {table} left after down", t.label);
        }
        Migrator::up(&t.db, None).await.unwrap();
        for table in TABLES {
            assert!(manager.has_table(*table).await.unwrap(), "{}: {table} missing after up", t.label);
        }
        assert_eq!(Migrator::get_pending_migrations(&t.db).await.unwrap().len(), 0);
    }
}

#[tokio::test]
async fn a_blocked_key_parks_later_messages_in_order_until_unblocked() {
    use orchestrator::store::{KeyParking, ParkCheck, ParkedMessage};
    for t in testing::databases().await {
        let store = SqlStore::new(t.db.clone());
        let message = |id: &str, offset: i64| ParkedMessage {
            id: 0,
            key: "+15551234567".into(),
            message_id: id.into(),
            topic: "conversation.messages".into(),
            partition: 1,
            offset,
            payload: format!("{{\"id\":\"{id}\"}}"),
        };
        assert_eq!(store.park_if_blocked(&message("m1", 1)).await.unwrap(), ParkCheck::Open { holder: false });
        assert_eq!(store.holder("+15551234567").await.unwrap(), None, "{}", t.label);
        store.block("+15551234567", "m1").await.unwrap();
        assert_eq!(store.holder("+15551234567").await.unwrap().as_deref(), Some("m1"), "{}", t.label);
        let future = Utc::now() + chrono::Duration::seconds(5);
        let stale = store.stale_blocks(future, 10).await.unwrap();
        assert_eq!(stale, [("+15551234567".to_owned(), "m1".to_owned())], "{}", t.label);
        let past = Utc::now() - chrono::Duration::seconds(60);
        assert!(store.stale_blocks(past, 10).await.unwrap().is_empty(), "{}: a fresh block is not stale", t.label);
        assert_eq!(store.park_if_blocked(&message("m1", 1)).await.unwrap(), ParkCheck::Open { holder: true });
        for (id, offset) in [("m2", 2), ("m3", 3)] {
            assert_eq!(store.park_if_blocked(&message(id, offset)).await.unwrap(), ParkCheck::Parked, "{}", t.label);
        }
        assert!(!store.unblock_if_empty("+15551234567").await.unwrap(), "{}: m2 and m3 wait", t.label);
        let first = store.next_parked("+15551234567").await.unwrap().expect("parked");
        assert_eq!((first.message_id.as_str(), first.offset, first.payload.as_str()), ("m2", 2, "{\"id\":\"m2\"}"));
        store.unpark(first.id).await.unwrap();
        let second = store.next_parked("+15551234567").await.unwrap().expect("parked");
        assert_eq!(second.message_id, "m3", "{}: parked in arrival order", t.label);
        store.unpark(second.id).await.unwrap();
        assert!(store.unblock_if_empty("+15551234567").await.unwrap(), "{}", t.label);
        assert_eq!(store.park_if_blocked(&message("m4", 4)).await.unwrap(), ParkCheck::Open { holder: false });
        assert!(store.unblock_if_empty("+19999999999").await.unwrap(), "{}: an unknown key is not blocked", t.label);
    }
}

/// The pending-classification contract, on any implementation.
async fn pending_classifications_behave(store: &dyn orchestrator::store::PendingClassifications, label: &str) {
    use orchestrator::store::PendingClassification;
    let pending = |processing_id: &str, message_id: &str, age_secs: i64| PendingClassification {
        processing_id: processing_id.into(),
        key: "+15551234567".into(),
        message_id: message_id.into(),
        topic: "conversation.messages".into(),
        partition: 2,
        offset: 7,
        payload: format!("{{\"id\":\"{message_id}\"}}"),
        // Whole milliseconds: what both databases keep.
        requested_at: chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis() - age_secs * 1000).unwrap(),
    };
    let (old, fresh) = store.register(&pending("p-old", "m1", 60)).await.unwrap();
    assert!(fresh, "{label}");
    // A redelivery of the same message reuses the waiting row and its processing id.
    let (again, fresh) = store.register(&pending("p-other", "m1", 0)).await.unwrap();
    assert!(!fresh, "{label}");
    assert_eq!(again, old, "{label}: the row as first registered");
    store.register(&pending("p-new", "m2", 0)).await.unwrap();

    let cutoff = Utc::now() - chrono::Duration::seconds(30);
    let overdue = store.overdue(cutoff, 10).await.unwrap();
    assert_eq!(overdue.iter().map(|p| p.processing_id.as_str()).collect::<Vec<_>>(), ["p-old"], "{label}");

    let taken = store.take("p-old", Duration::from_secs(60)).await.unwrap().expect("free to take");
    assert_eq!((taken.message_id.as_str(), taken.offset, taken.payload.as_str()), ("m1", 7, "{\"id\":\"m1\"}"));
    assert!(store.take("p-old", Duration::from_secs(60)).await.unwrap().is_none(), "{label}: held by the first taker");
    assert!(store.overdue(cutoff, 10).await.unwrap().is_empty(), "{label}: a held row is not overdue");
    // A hold that ran out (its worker died) can be taken over.
    assert!(store.take("p-new", Duration::ZERO).await.unwrap().is_some(), "{label}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.take("p-new", Duration::from_secs(60)).await.unwrap().is_some(), "{label}: hold expired");

    assert!(store.waiting("+15551234567", "m1").await.unwrap(), "{label}");
    store.resolve("p-old").await.unwrap();
    assert!(!store.waiting("+15551234567", "m1").await.unwrap(), "{label}: resolved");
    assert!(store.take("p-old", Duration::from_secs(60)).await.unwrap().is_none(), "{label}: finished");
    assert!(store.take("p-unknown", Duration::from_secs(60)).await.unwrap().is_none(), "{label}");
    let (after, fresh) = store.register(&pending("p-later", "m1", 0)).await.unwrap();
    assert!(fresh && after.processing_id == "p-later", "{label}: a finished message can be asked about again");
}

#[tokio::test]
async fn pending_classifications_are_registered_once_taken_exclusively_and_resolved() {
    for t in testing::databases().await {
        pending_classifications_behave(&SqlStore::new(t.db.clone()), t.label).await;
    }
    pending_classifications_behave(&orchestrator::MemoryStore::new(), "memory").await;
}

#[tokio::test]
async fn concurrent_parking_checks_answer_each_key_by_its_own_block() {
    use orchestrator::store::{KeyParking, ParkCheck, ParkedMessage};
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        // Keys 0..10 blocked by message b<i>, keys 10..20 free.
        for i in 0..10 {
            store.block(&format!("+1555000{i:04}"), &format!("b{i}")).await.unwrap();
        }
        let checks: Vec<_> = (0..20)
            .flat_map(|i| [(i, format!("b{i}")), (i, format!("later{i}"))])
            .map(|(i, message_id)| {
                let store = store.clone();
                let message = ParkedMessage {
                    id: 0,
                    key: format!("+1555000{i:04}"),
                    message_id: message_id.clone(),
                    topic: "conversation.messages".into(),
                    partition: 0,
                    offset: i,
                    payload: "{}".into(),
                };
                tokio::spawn(async move { (i, message_id, store.park_if_blocked(&message).await.unwrap()) })
            })
            .collect();
        for check in checks {
            let (i, message_id, answer) = check.await.unwrap();
            let expected = match (i < 10, message_id.starts_with('b')) {
                (true, true) => ParkCheck::Open { holder: true },
                (true, false) => ParkCheck::Parked,
                (false, _) => ParkCheck::Open { holder: false },
            };
            assert_eq!(answer, expected, "{}: key {i}, message {message_id}", t.label);
        }
        assert_eq!(count(&t.db, "parked_messages", "message_id LIKE 'later%'").await, 10, "{}", t.label);
    }
}

#[tokio::test]
async fn completions_move_their_leads_in_the_same_transaction() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        for i in 0..5 {
            store.set_lead_stage("acme", &format!("buyer-{i}"), "interested").await.unwrap();
        }
        let mut leases = Vec::new();
        for i in 0..20 {
            leases.push(lease_of(store.claim(&MessageKey::new("acme", format!("moving-{i}")), LEASE).await.unwrap()));
        }
        // One completion is fenced out: its lead must not move.
        store.release(&leases[12], false).await.unwrap();
        let completions: Vec<_> = leases
            .into_iter()
            .enumerate()
            .map(|(i, lease)| {
                let store = store.clone();
                tokio::spawn(async move {
                    let lead = StageMove { lead_id: format!("buyer-{i}"), stage: "customer".into() };
                    let change = store.complete_moving_lead(&lease, &[], Duration::from_secs(60), None, &lead).await;
                    (i, change)
                })
            })
            .collect();
        for completion in completions {
            let (i, change) = completion.await.unwrap();
            match i {
                12 => assert!(matches!(change, Err(StoreError::LeaseLost(_))), "{}: {change:?}", t.label),
                _ => {
                    let from = (i < 5).then(|| "interested".to_owned());
                    assert_eq!(change.unwrap(), StageChange::Moved { from }, "{}: buyer-{i}", t.label);
                }
            }
        }
        assert_eq!(count(&t.db, "leads", "lead_id LIKE 'buyer-%' AND stage = 'customer'").await, 19, "{}", t.label);
        assert_eq!(count(&t.db, "leads", "lead_id = 'buyer-12'").await, 0, "{}", t.label);
        assert_eq!(count(&t.db, "processed_messages", "message_id LIKE 'moving-%' AND status = 'completed'").await, 19);
    }
}

#[tokio::test]
async fn concurrent_lead_moves_report_each_leads_previous_stage() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        for i in 0..10 {
            store.set_lead_stage("acme", &format!("lead-{i}"), "interested").await.unwrap();
        }
        // Leads 0..20 move at once: the first ten were `interested`, the rest are new;
        // even ones become customers, odd ones stay (or become) interested.
        let moves: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                let stage = if i % 2 == 0 { "customer" } else { "interested" };
                tokio::spawn(
                    async move { (i, store.set_lead_stage("acme", &format!("lead-{i}"), stage).await.unwrap()) },
                )
            })
            .collect();
        for task in moves {
            let (i, previous) = task.await.unwrap();
            let expected = (i < 10).then(|| "interested".to_owned());
            assert_eq!(previous, expected, "{}: lead-{i}", t.label);
        }
        assert_eq!(count(&t.db, "leads", "stage = 'customer'").await, 10, "{}", t.label);
        assert_eq!(count(&t.db, "leads", "stage = 'interested'").await, 10, "{}", t.label);
        // Another tenant's lead of the same id is its own.
        assert_eq!(store.set_lead_stage("other", "lead-0", "at_risk").await.unwrap(), None, "{}", t.label);
        assert_eq!(store.set_lead_stage("acme", "lead-0", "at_risk").await.unwrap().as_deref(), Some("customer"));
    }
}
