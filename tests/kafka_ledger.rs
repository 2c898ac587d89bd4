//! Many messages through several consumers of one group, with members
//! joining and leaving mid-run; then a ledger: every message's effects
//! exactly once, and each phone's messages completed in produced order.
//! On SQLite and (with TEST_DATABASE_URL) PostgreSQL.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Running, count, fast_config, kafka_config};
use orchestrator::event::{Envelope, EventData, MessageContent, MessageReceived, MessageType};
use orchestrator::kafka::runtime::RuntimeSettings;
use orchestrator::kafka::{ConsumerRuntime, EmbeddedKafka, KafkaConfig, Publisher};
use orchestrator::testing::{self, TestDb};
use orchestrator::{KeywordClassifier, Orchestrator, SqlStore};
use sea_orm::{ConnectionTrait, Statement};

const PHONES: usize = 100;

/// In process, on both databases; the chaos suite (tests/chaos) runs the
/// larger rebalance against the consumer binary.
const DEFAULT_MESSAGES: usize = 3_000;

fn phone(index: usize) -> String {
    format!("+1555{index:07}")
}

fn join(kafka: &EmbeddedKafka, t: &TestDb, store: &Arc<SqlStore>) -> Running {
    join_with_grace(kafka, t, store, Duration::from_secs(20))
}

fn join_with_grace(kafka: &EmbeddedKafka, t: &TestDb, store: &Arc<SqlStore>, grace: Duration) -> Running {
    let orch = Orchestrator::builder()
        .handlers(handlers::builtin())
        .executors(executors::builtin(&t.db))
        .store(store.clone())
        .config(fast_config())
        .build()
        .unwrap();
    let config = kafka_config(kafka, "orchestrator");
    let settings = RuntimeSettings { shutdown_grace: grace, ..Default::default() };
    let runtime =
        ConsumerRuntime::new(&config, Arc::new(orch), Arc::new(KeywordClassifier), store.clone(), settings).unwrap();
    Running::start(runtime)
}

async fn leave(member: Running) {
    member.stop().await;
}

async fn completed(db: &sea_orm::DatabaseConnection) -> i64 {
    count(db, "processed_messages", "status = 'completed'").await
}

async fn wait_for(db: &sea_orm::DatabaseConnection, target: i64, label: &str) {
    let limit = std::env::var("LEDGER_WAIT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let deadline = Instant::now() + Duration::from_secs(limit);
    while completed(db).await < target {
        if Instant::now() >= deadline {
            dump_state(db).await;
            panic!("{label}: only {} of {target} completed", completed(db).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What is not finished, to tell a stuck message from a lost one.
async fn dump_state(db: &sea_orm::DatabaseConnection) {
    let backend = db.get_database_backend();
    let total: usize = std::env::var("LEDGER_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_MESSAGES);
    let seen: std::collections::HashSet<String> = db
        .query_all_raw(Statement::from_string(backend, "SELECT message_id FROM processed_messages"))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String>("", "message_id").unwrap())
        .collect();
    let missing: Vec<String> =
        (0..total).map(|i| format!("wamid.{}.{}", i % PHONES, i / PHONES)).filter(|id| !seen.contains(id)).collect();
    eprintln!("never processed: {missing:?}");
    for sql in [
        "SELECT key, holder_message_id FROM key_blocks",
        "SELECT key, message_id, topic FROM parked_messages",
        "SELECT message_id, status, attempt_count, run_count, lease_expires_at, dead_lettered_at FROM processed_messages WHERE status <> 'completed'",
    ] {
        let rows = db.query_all_raw(Statement::from_string(backend, sql)).await.unwrap();
        eprintln!("{sql}: {} rows", rows.len());
        for row in rows.iter().take(20) {
            eprintln!("  {row:?}");
        }
    }
}

async fn produce(publisher: &Publisher, range: std::ops::Range<usize>) {
    for i in range {
        let (p, seq) = (i % PHONES, i / PHONES);
        let envelope = Envelope::new(
            EventData::MessageReceived(MessageReceived {
                message_id: format!("wamid.{p}.{seq}"),
                from_phone: phone(p),
                message_type: MessageType::Text,
                content: MessageContent::Text { body: format!("I want to order 2 tacos (#{seq})") },
                received_at: Utc::now(),
                metadata: HashMap::new(),
            }),
            "ledger",
        );
        publisher.publish(&envelope).await.unwrap();
    }
}

/// Each message's order exactly once, nothing dead-lettered, per-phone order.
async fn check_ledger(db: &sea_orm::DatabaseConnection, total: usize, label: &str) {
    let backend = db.get_database_backend();
    let duplicated = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT message_id FROM orders WHERE status = 'created' GROUP BY message_id HAVING COUNT(*) <> 1",
        ))
        .await
        .unwrap();
    assert!(duplicated.is_empty(), "{label}: {} messages with duplicated orders", duplicated.len());
    assert_eq!(count(db, "orders", "status = 'created'").await, total as i64, "{label}: one order per message");
    assert_eq!(count(db, "dead_letter_queue", "1 = 1").await, 0, "{label}: nothing dead-lettered");

    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT message_id, completed_at FROM processed_messages WHERE status = 'completed'",
        ))
        .await
        .unwrap();
    let mut per_phone: HashMap<usize, Vec<(usize, chrono::DateTime<Utc>)>> = HashMap::new();
    for row in rows {
        let id: String = row.try_get("", "message_id").unwrap();
        let at: chrono::DateTime<Utc> = row.try_get("", "completed_at").unwrap();
        let mut parts = id.trim_start_matches("wamid.").split('.');
        let p: usize = parts.next().unwrap().parse().unwrap();
        let seq: usize = parts.next().unwrap().parse().unwrap();
        per_phone.entry(p).or_default().push((seq, at));
    }
    let mut violations = 0;
    for completions in per_phone.values_mut() {
        completions.sort();
        violations += completions.windows(2).filter(|w| w[0].1 >= w[1].1).count();
    }
    assert_eq!(violations, 0, "{label}: messages of a phone completed out of produced order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_through_two_consumers_and_two_rebalances_lose_and_duplicate_nothing() {
    let total: usize = std::env::var("LEDGER_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_MESSAGES);
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(8).unwrap();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let publisher =
            Publisher::new(&KafkaConfig::default().with_bootstrap_servers(kafka.bootstrap_servers())).unwrap();
        let started = Instant::now();
        let first = join(&kafka, &t, &store);
        let second = join(&kafka, &t, &store);
        produce(&publisher, 0..total / 3).await;
        wait_for(&t.db, (total / 6) as i64, t.label).await;

        // A member joins mid-run, then an original one leaves: two rebalances under load.
        let third = join(&kafka, &t, &store);
        produce(&publisher, total / 3..2 * total / 3).await;
        wait_for(&t.db, (total / 2) as i64, t.label).await;
        leave(first).await;
        produce(&publisher, 2 * total / 3..total).await;

        wait_for(&t.db, total as i64, t.label).await;
        let elapsed = started.elapsed();
        leave(second).await;
        leave(third).await;
        check_ledger(&t.db, total, t.label).await;
        println!(
            "{}: {total} messages over {PHONES} phones, 3 consumers with 2 rebalances: {:.1} s, {:.0} msg/s",
            t.label,
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_load_loses_nothing_after_a_restart() {
    let total: usize = 3_000;
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(8).unwrap();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let publisher =
            Publisher::new(&KafkaConfig::default().with_bootstrap_servers(kafka.bootstrap_servers())).unwrap();
        // A grace period too short to finish: in-flight messages are abandoned uncommitted.
        let consumer = join_with_grace(&kafka, &t, &store, Duration::from_millis(50));
        let producing = tokio::spawn(async move { produce(&publisher, 0..total).await });
        wait_for(&t.db, 200, t.label).await;
        leave(consumer).await;
        let at_stop = completed(&t.db).await;
        assert!(at_stop < (total / 2) as i64, "{}: stopped mid-load ({at_stop})", t.label);

        let restarted = join(&kafka, &t, &store);
        producing.await.unwrap();
        wait_for(&t.db, total as i64, t.label).await;
        leave(restarted).await;
        check_ledger(&t.db, total, t.label).await;
        println!("{}: stopped at {at_stop} of {total}, restarted, all completed once", t.label);
    }
}
