//! The external AI route (`INTENT_SOURCE=ai`) on the embedded broker: the
//! runtime asks `ai.process.request`, a fake AI service answers on
//! `ai.process.result`, and the pipeline continues with the AI's intent;
//! a phone keeps its order while it waits; a silent service falls back to
//! the keyword classifier. On SQLite and (with TEST_DATABASE_URL) PostgreSQL.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Running, count, fast_config, kafka_config, message_received, read, read_within};
use orchestrator::event::{AiProcessRequest, AiProcessResult, Envelope, EventData, topics};
use orchestrator::kafka::{AiRouteSettings, ConsumerRuntime, EmbeddedKafka, Publisher, RuntimeSettings};
use orchestrator::testing;
use orchestrator::{KeywordClassifier, Orchestrator, SqlStore};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};

fn runtime(kafka: &EmbeddedKafka, db: &sea_orm::DatabaseConnection, timeout: Duration) -> ConsumerRuntime {
    let store = Arc::new(SqlStore::new(db.clone()));
    let orch = Orchestrator::builder()
        .handlers(handlers::builtin())
        .executors(executors::builtin(db))
        .store(store.clone())
        .config(fast_config())
        .build()
        .unwrap();
    let settings = RuntimeSettings { shutdown_grace: Duration::from_secs(10), ..Default::default() };
    ConsumerRuntime::new(
        &kafka_config(kafka, "orchestrator"),
        Arc::new(orch),
        Arc::new(KeywordClassifier),
        store.clone(),
        settings,
    )
    .unwrap()
    .with_ai_route(store, AiRouteSettings { timeout, ..Default::default() })
}

fn consumer(kafka: &EmbeddedKafka, topic: &str) -> StreamConsumer {
    let group = format!("reader-{}", uuid::Uuid::new_v4());
    let reader: StreamConsumer = kafka_config(kafka, &group).consumer_config(&group).create().unwrap();
    reader.subscribe(&[topic]).unwrap();
    reader
}

fn decode<T>(message: &OwnedMessage, pick: impl Fn(EventData) -> Option<T>) -> T {
    let envelope = Envelope::decode(message.payload().expect("a payload")).expect("an envelope");
    pick(envelope.data).expect("the expected event type")
}

/// The answer a fake AI gives to one request.
fn result_for(request: &AiProcessRequest, intent: &str, confidence: f64) -> Envelope {
    Envelope::new(
        EventData::AiProcessResult(AiProcessResult {
            processing_id: request.processing_id.clone(),
            message_id: request.message_id.clone(),
            lead_id: None,
            business_id: None,
            tenant_id: None,
            intent: intent.to_owned(),
            confidence,
            entities: Default::default(),
        }),
        "fake_ai",
    )
}

/// A fake AI service: answers every request with COMPLAINT after `delay`,
/// and records the requests in the order it saw them.
fn spawn_fake_ai(
    kafka: &EmbeddedKafka,
    delay: Duration,
) -> (Arc<Mutex<Vec<AiProcessRequest>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = consumer(kafka, topics::AI_REQUEST);
    let publisher = Publisher::new(&kafka_config(kafka, "fake-ai")).unwrap();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok(message) = reader.recv().await else { continue };
            let request = decode(&message.detach(), |data| match data {
                EventData::AiProcessRequest(request) => Some(request),
                _ => None,
            });
            log.lock().unwrap().push(request.clone());
            tokio::time::sleep(delay).await;
            publisher.publish(&result_for(&request, "COMPLAINT", 0.97)).await.unwrap();
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_come_from_the_ai_service_in_per_phone_order_across_a_restart() {
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(4).unwrap();
        let publisher = Publisher::new(&kafka_config(&kafka, "producer")).unwrap();
        let (slow, other) = ("+15550000001", "+15550000002");

        // The AI service is down while the first runtime asks: the request waits on the topic.
        let running = Running::start(runtime(&kafka, &t.db, Duration::from_secs(120)));
        publisher.publish(&message_received("wamid.s1", slow, "hello there")).await.unwrap();
        let first = read(&kafka, topics::AI_REQUEST, 1).await;
        assert_eq!(first.len(), 1, "{}: the first message was sent to the AI service", t.label);
        // Its phone is blocked: these park behind it, unasked.
        publisher.publish(&message_received("wamid.s2", slow, "second")).await.unwrap();
        publisher.publish(&message_received("wamid.s3", slow, "third")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        running.stop().await;
        assert_eq!(count(&t.db, "ai_pending", "message_id = 'wamid.s1'").await, 1, "{}", t.label);

        // Restarted, with the AI service up: everything is answered, in order.
        let running = Running::start(runtime(&kafka, &t.db, Duration::from_secs(120)));
        let (seen, fake_ai) = spawn_fake_ai(&kafka, Duration::from_millis(100));
        publisher.publish(&message_received("wamid.o1", other, "hi")).await.unwrap();
        let replies = read(&kafka, topics::RESPONSES, 4).await;
        running.stop().await;
        fake_ai.abort();

        let answered = |phone: &str| -> Vec<String> {
            replies
                .iter()
                .map(|m| {
                    decode(m, |data| match data {
                        EventData::ResponseReady(ready) => Some(ready),
                        _ => None,
                    })
                })
                .filter(|ready| ready.to_phone == phone)
                .map(|ready| ready.original_message_id)
                .collect()
        };
        assert_eq!(answered(slow), ["wamid.s1", "wamid.s2", "wamid.s3"], "{}: per-phone order", t.label);
        assert_eq!(answered(other), ["wamid.o1"], "{}", t.label);
        // The keyword classifier calls none of these a complaint: the tickets are the AI's intent at work.
        for id in ["wamid.s1", "wamid.s2", "wamid.s3", "wamid.o1"] {
            assert_eq!(count(&t.db, "support_tickets", &format!("message_id = '{id}'")).await, 1, "{}: {id}", t.label);
        }
        // The phone's later messages were asked about only after the earlier one finished.
        let asked: Vec<String> =
            seen.lock().unwrap().iter().filter(|r| r.from_phone == slow).map(|r| r.message_id.clone()).collect();
        assert_eq!(asked, ["wamid.s1", "wamid.s2", "wamid.s3"], "{}", t.label);
        assert_eq!(count(&t.db, "ai_pending", "1 = 1").await, 0, "{}: nothing left pending", t.label);
        assert_eq!(count(&t.db, "key_blocks", "1 = 1").await, 0, "{}: no phone left blocked", t.label);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_ai_service_falls_back_to_the_keyword_classifier_and_late_results_are_ignored() {
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(4).unwrap();
        let publisher = Publisher::new(&kafka_config(&kafka, "producer")).unwrap();
        let phone = "+15550000003";
        let runtime = runtime(&kafka, &t.db, Duration::from_millis(800));
        let stats = runtime.stats();
        let running = Running::start(runtime);
        publisher.publish(&message_received("wamid.f1", phone, "I want to order 2 tacos")).await.unwrap();
        publisher.publish(&message_received("wamid.f2", phone, "this is the worst service")).await.unwrap();

        let replies = read(&kafka, topics::RESPONSES, 2).await;
        let order: Vec<String> = replies
            .iter()
            .map(|m| {
                decode(m, |data| match data {
                    EventData::ResponseReady(ready) => Some(ready.original_message_id),
                    _ => None,
                })
            })
            .collect();
        assert_eq!(order, ["wamid.f1", "wamid.f2"], "{}", t.label);
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.f1'").await, 1, "{}: keyword ORDER_REQUEST", t.label);
        assert_eq!(
            count(&t.db, "support_tickets", "message_id = 'wamid.f2'").await,
            1,
            "{}: keyword COMPLAINT",
            t.label
        );
        assert_eq!(stats.ai_requests.load(std::sync::atomic::Ordering::Relaxed), 2, "{}", t.label);
        assert_eq!(stats.ai_timeouts.load(std::sync::atomic::Ordering::Relaxed), 2, "{}", t.label);

        // The AI answers at last, and also sends garbage: neither changes anything.
        let requests = read(&kafka, topics::AI_REQUEST, 2).await;
        let first = decode(&requests[0], |data| match data {
            EventData::AiProcessRequest(request) => Some(request),
            _ => None,
        });
        assert_eq!(first.message_id, "wamid.f1");
        assert_eq!(first.text.as_deref(), Some("I want to order 2 tacos"));
        // One key: the runtime handles them in this order, so once the garbage is recorded the late result was handled.
        publisher
            .send(topics::AI_RESULT, Some(phone), &result_for(&first, "COMPLAINT", 0.99).encode(), &[])
            .await
            .unwrap();
        publisher.send(topics::AI_RESULT, Some(phone), b"{garbage", &[]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&t.db, "dead_letter_queue", &format!("topic = '{}'", topics::AI_RESULT)).await == 0 {
            assert!(Instant::now() < deadline, "{}: the garbage result was never recorded", t.label);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        running.stop().await;
        assert_eq!(
            count(&t.db, "support_tickets", "message_id = 'wamid.f1'").await,
            0,
            "{}: late result ignored",
            t.label
        );
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.f1' AND status = 'created'").await, 1, "{}", t.label);
        let replies = read_within(&kafka, topics::RESPONSES, 3, Duration::from_secs(5)).await;
        assert_eq!(replies.len(), 2, "{}: no third reply", t.label);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_stranded_behind_a_vanished_holder_is_freed_by_the_sweeper() {
    use orchestrator::store::KeyParking;
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(2).unwrap();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let phone = "+15550000009";
        // A holder that finished without releasing its phone (a crash at the wrong moment).
        store.block(phone, "wamid.vanished").await.unwrap();
        let orch = Orchestrator::builder()
            .handlers(handlers::builtin())
            .executors(executors::builtin(&t.db))
            .store(store.clone())
            .config(fast_config())
            .build()
            .unwrap();
        let settings = RuntimeSettings { shutdown_grace: Duration::from_secs(10), ..Default::default() };
        let ai = AiRouteSettings {
            timeout: Duration::from_millis(300),
            hold: Duration::from_millis(300),
            stale_block_margin: Duration::from_secs(1),
        };
        let runtime = ConsumerRuntime::new(
            &kafka_config(&kafka, "orchestrator"),
            Arc::new(orch),
            Arc::new(KeywordClassifier),
            store.clone(),
            settings,
        )
        .unwrap()
        .with_ai_route(store.clone(), ai);
        let running = Running::start(runtime);
        let publisher = Publisher::new(&kafka_config(&kafka, "producer")).unwrap();
        publisher.publish(&message_received("wamid.stranded", phone, "I want to order 2 tacos")).await.unwrap();

        // Parked behind the vanished holder, then freed, asked about, and finished by the fallback.
        let replies = read(&kafka, topics::RESPONSES, 1).await;
        running.stop().await;
        assert_eq!(replies.len(), 1, "{}: the stranded phone's message was answered", t.label);
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.stranded'").await, 1, "{}", t.label);
        assert_eq!(store.holder(phone).await.unwrap(), None, "{}: the phone is free", t.label);
    }
}
