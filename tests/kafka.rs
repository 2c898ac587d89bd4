//! The whole flow on the embedded broker: a MessageReceived produced to
//! Kafka becomes a ResponseReady on conversation.responses; poison goes to
//! the .dlq topic and the table; retries go through .retry. On SQLite and
//! (with TEST_DATABASE_URL) PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{CallLog, Running, Scripted, count, fast_config, kafka_config, message_received, read};
use orchestrator::event::{EventData, ResponseContent, topics};
use orchestrator::kafka::runtime::RuntimeSettings;
use orchestrator::kafka::{ConsumerRuntime, EmbeddedKafka, Publisher, headers};
use orchestrator::testing;
use orchestrator::{ActionError, KeywordClassifier, Orchestrator, RetryPolicy, SqlStore};
use rdkafka::message::{Message, OwnedMessage};

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    orchestrator::kafka::headers::value(message, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_becomes_a_reply_and_poison_goes_to_the_dlq() {
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(4).unwrap();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = Orchestrator::builder()
            .handlers(handlers::builtin())
            .executors(executors::builtin(&t.db))
            .store(store.clone())
            .config(fast_config())
            .build()
            .unwrap();
        let settings = RuntimeSettings { shutdown_grace: Duration::from_secs(10), ..Default::default() };
        let runtime = ConsumerRuntime::new(
            &kafka_config(&kafka, "orchestrator"),
            Arc::new(orch),
            Arc::new(KeywordClassifier),
            store,
            settings,
        )
        .unwrap();
        let stats = runtime.stats();
        let running = Running::start(runtime);

        let publisher = Publisher::new(&kafka_config(&kafka, "producer")).unwrap();
        let phone = "+15551234567";
        publisher.publish(&message_received("wamid.k1", phone, "I want to order 2 tacos")).await.unwrap();
        publisher.send(topics::MESSAGES, Some(phone), b"{not json", &[]).await.unwrap();
        // Decodes, but fails validation: a permanent failure.
        publisher.publish(&message_received("wamid.bad", "call me maybe", "hi")).await.unwrap();
        publisher.publish(&message_received("wamid.k2", phone, "how much is the pizza?")).await.unwrap();

        let replies = read(&kafka, topics::RESPONSES, 2).await;
        assert_eq!(replies.len(), 2, "{}: two replies", t.label);
        let mut answered = Vec::new();
        for reply in &replies {
            assert_eq!(reply.key(), Some(phone.as_bytes()), "{}: replies are keyed by phone", t.label);
            let envelope = orchestrator::event::Envelope::decode(reply.payload().unwrap()).unwrap();
            let EventData::ResponseReady(ready) = envelope.data else { panic!("not a ResponseReady") };
            assert!(matches!(ready.content, ResponseContent::Text { .. }));
            answered.push(ready.original_message_id);
        }
        // Same phone: processed in the order produced, the poison between them did not stall it.
        assert_eq!(answered, ["wamid.k1", "wamid.k2"], "{}", t.label);

        let dead = read(&kafka, &format!("{}.dlq", topics::MESSAGES), 2).await;
        assert_eq!(dead.len(), 2, "{}", t.label);
        let poison = dead.iter().find(|m| m.payload() == Some(&b"{not json"[..])).expect("the poison, as sent");
        assert!(header(poison, headers::ERROR).unwrap().starts_with("SerializationError"), "{}", t.label);
        assert_eq!(header(poison, headers::SOURCE_TOPIC).as_deref(), Some(topics::MESSAGES));
        let invalid = dead.iter().find(|m| m.payload() != Some(&b"{not json"[..])).unwrap();
        assert!(header(invalid, headers::ERROR).unwrap().starts_with("ValidationError"), "{}", t.label);
        assert_eq!(header(invalid, headers::ATTEMPTS).as_deref(), Some("1"), "{}", t.label);
        let failures = read(&kafka, topics::FAILURES, 2).await;
        assert_eq!(failures.len(), 2, "{}: a MessageFailed for each", t.label);

        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.k1' AND status = 'created'").await, 1, "{}", t.label);
        assert_eq!(count(&t.db, "dead_letter_queue", "failure_type = 'SerializationError'").await, 1, "{}", t.label);
        assert_eq!(
            count(&t.db, "dead_letter_queue", "message_id = 'wamid.bad' AND failure_type = 'ValidationError'").await,
            1
        );

        running.stop().await;
        let [processed, _, _, dead_lettered, _] = stats.snapshot();
        assert_eq!((processed, dead_lettered), (2, 2), "{}", t.label);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_goes_through_the_retry_topic_and_succeeds_on_attempt_2() {
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(2).unwrap();
        let log = CallLog::default();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = Orchestrator::builder()
            .handlers(handlers::builtin())
            .executors(
                executors::builtin(&t.db)
                    .with(Scripted::new("notify_sales", &log).failing([ActionError::retryable("CRM timeout")])),
            )
            .store(store.clone())
            .retry_policy(RetryPolicy::steps(vec![Duration::from_millis(300)]))
            .config(fast_config())
            .build()
            .unwrap();
        let runtime = ConsumerRuntime::new(
            &kafka_config(&kafka, "orchestrator"),
            Arc::new(orch),
            Arc::new(KeywordClassifier),
            store,
            RuntimeSettings::default(),
        )
        .unwrap();
        let stats = runtime.stats();
        let running = Running::start(runtime);
        let publisher = Publisher::new(&kafka_config(&kafka, "producer")).unwrap();
        publisher.publish(&message_received("wamid.r1", "+15557654321", "how much is the pizza?")).await.unwrap();

        let replies = read(&kafka, topics::RESPONSES, 1).await;
        assert_eq!(replies.len(), 1, "{}: the retried message completes", t.label);
        let retries = read(&kafka, &format!("{}.retry", topics::MESSAGES), 1).await;
        assert_eq!(retries.len(), 1, "{}", t.label);
        assert!(header(&retries[0], headers::DUE_AT).is_some(), "{}: the retry copy carries its due time", t.label);
        let copy = orchestrator::event::Envelope::decode(retries[0].payload().unwrap()).unwrap();
        assert_eq!(copy.attempt_count, 2, "{}: attempt_count raised", t.label);
        assert_eq!(log.count("execute notify_sales"), 2, "{}", t.label);
        assert_eq!(count(&t.db, "processed_messages", "message_id = 'wamid.r1' AND status = 'completed'").await, 1);

        running.stop().await;
        let [processed, failed, retried, dead_lettered, _] = stats.snapshot();
        assert_eq!((processed, failed, retried, dead_lettered), (1, 1, 1, 0), "{}", t.label);
    }
}

/// `completed_at` of a processed message.
async fn completed_at(db: &sea_orm::DatabaseConnection, message_id: &str) -> chrono::DateTime<Utc> {
    use sea_orm::{ConnectionTrait, Statement};
    let sql = format!("SELECT completed_at FROM processed_messages WHERE message_id = '{message_id}'");
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().expect("row");
    row.try_get::<Option<chrono::DateTime<Utc>>>("", "completed_at").unwrap().expect("completed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_waits_behind_its_message_in_retry_across_a_restart_while_others_flow() {
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(2).unwrap();
        let log = CallLog::default();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        // The first notify_sales fails (retryable); the retry is due 3 s later.
        let failing_once = Arc::new(Scripted::new("notify_sales", &log).failing([ActionError::retryable("CRM down")]));
        let runtime = |grace: Duration| {
            let mut executors = executors::builtin(&t.db);
            executors.register(failing_once.clone());
            let orch = Orchestrator::builder()
                .handlers(handlers::builtin())
                .executors(executors)
                .store(store.clone())
                .retry_policy(RetryPolicy::steps(vec![Duration::from_secs(3)]))
                .config(fast_config())
                .build()
                .unwrap();
            let settings = RuntimeSettings { shutdown_grace: grace, ..Default::default() };
            ConsumerRuntime::new(
                &kafka_config(&kafka, "orchestrator"),
                Arc::new(orch),
                Arc::new(KeywordClassifier),
                store.clone(),
                settings,
            )
            .unwrap()
        };
        let running = Running::start(runtime(Duration::from_millis(200)));
        let publisher = Publisher::new(&kafka_config(&kafka, "producer")).unwrap();
        let (p, q) = ("+15550000001", "+15550000002");
        publisher.publish(&message_received("wamid.p1", p, "how much is the pizza?")).await.unwrap();
        publisher.publish(&message_received("wamid.p2", p, "and how much are the tacos?")).await.unwrap();

        // p1 is in retry, p2 parked behind it. (Generous: the whole suite shares two cores.)
        let deadline = Instant::now() + Duration::from_secs(90);
        while count(&t.db, "parked_messages", "message_id = 'wamid.p2'").await == 0 {
            if Instant::now() > deadline {
                let p1 = count(&t.db, "processed_messages", "message_id = 'wamid.p1'").await;
                let p2 = count(&t.db, "processed_messages", "message_id = 'wamid.p2'").await;
                panic!("{}: p2 was never parked (claims: p1 {p1}, p2 {p2}; calls {:?})", t.label, log.entries());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(count(&t.db, "key_blocks", &format!("key = '{p}' AND holder_message_id = 'wamid.p1'")).await, 1);
        // Another phone is not held up.
        publisher.publish(&message_received("wamid.q1", q, "how much is the soda?")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&t.db, "processed_messages", "message_id = 'wamid.q1' AND status = 'completed'").await == 0 {
            assert!(Instant::now() < deadline, "{}: q1 was held up", t.label);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(count(&t.db, "processed_messages", "message_id = 'wamid.p2' AND status = 'completed'").await, 0);

        // Restart while p1 waits in retry: the block and the parked p2 are in the database.
        running.stop().await;
        let running = Running::start(runtime(Duration::from_secs(10)));

        let replies = read(&kafka, topics::RESPONSES, 3).await;
        assert_eq!(replies.len(), 3, "{}", t.label);
        let (p1, p2, q1) = (
            completed_at(&t.db, "wamid.p1").await,
            completed_at(&t.db, "wamid.p2").await,
            completed_at(&t.db, "wamid.q1").await,
        );
        assert!(q1 < p1, "{}: the other phone flowed while p waited", t.label);
        assert!(p1 < p2, "{}: p2 did not overtake p1 ({p1} vs {p2})", t.label);
        assert_eq!(count(&t.db, "parked_messages", "1 = 1").await, 0, "{}: nothing left parked", t.label);
        assert_eq!(count(&t.db, "key_blocks", "1 = 1").await, 0, "{}: the block was lifted", t.label);
        running.stop().await;
    }
}
