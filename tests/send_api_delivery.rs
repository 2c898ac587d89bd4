//! The send API end to end: HTTP, the database, Kafka (the embedded
//! broker), the reply sender and a fake WhatsApp Cloud API. A batch of
//! 1,000 is delivered; a scheduled message goes out once across a
//! scheduler's restart and a scheduler that died after publishing; a
//! cancelled message never reaches WhatsApp.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use common::kafka_config;
use orchestrator::event::{Envelope, EventData, ResponseReady};
use orchestrator::http::auth::{JwtVerifier, mint_hs256};
use orchestrator::http::{self, ApiState};
use orchestrator::kafka::{EmbeddedKafka, Publisher, ReplySettings, ResponseSender};
use orchestrator::message_service::{MessageService, MessageServiceSettings, Scheduler, SchedulerSettings};
use orchestrator::outbound::{CloudApiConfig, CloudApiSender, RateSettings};
use orchestrator::store::ApiMessages;
use orchestrator::testing::fake_cloud_api::{FakeCloudApi, FakeSettings};
use orchestrator::{BreakerConfig, SqlStore, testing};
use serde_json::{Value, json};
use tokio::sync::watch;

const SECRET: &[u8] = b"delivery-test-secret";

/// Kafka, the database, a reply sender sending to a fake Cloud API, and the API.
struct Stage {
    _kafka: EmbeddedKafka,
    fake: FakeCloudApi,
    store: Arc<SqlStore>,
    publisher: Publisher,
    url: String,
    stop: watch::Sender<bool>,
    sender: tokio::task::JoinHandle<Result<(), rdkafka::error::KafkaError>>,
    db: testing::TestDb,
}

impl Stage {
    async fn start(db: testing::TestDb) -> Self {
        let kafka = EmbeddedKafka::start(4).unwrap();
        let config = kafka_config(&kafka, "orchestrator");
        let fake = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
        let cloud = CloudApiConfig {
            token: "token".into(),
            tokens: HashMap::new(),
            phone_number_id: "1234567890".into(),
            api_url: fake.url().to_owned(),
            timeout: Duration::from_secs(5),
        };
        let whatsapp = Arc::new(CloudApiSender::new(cloud, BreakerConfig::default()).unwrap());
        let store = Arc::new(SqlStore::new(db.db.clone()));
        let settings = ReplySettings {
            rate: RateSettings { max_rate: 10_000.0, ..RateSettings::default() },
            ..ReplySettings::default()
        };
        let response_sender = ResponseSender::new(&config, whatsapp, store.clone(), settings).unwrap();
        let (stop, stopped) = watch::channel(false);
        let sender = tokio::spawn(response_sender.run(async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let publisher = Publisher::new(&config).unwrap();
        let service = MessageService::new(
            store.clone(),
            Arc::new(publisher.clone()),
            MessageServiceSettings { daily_limit: None, ..Default::default() },
        );
        let app = http::api::routes(ApiState::new(service, JwtVerifier::hs256(SECRET, "org_id"), None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(http::serve(listener, app, std::future::pending()));
        Self { _kafka: kafka, fake, store, publisher, url, stop, sender, db }
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let token = mint_hs256(SECRET, "org_id", Some("acme"), "", Duration::from_secs(600)).unwrap();
        let response = common::http_client()
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        response.json().await.unwrap()
    }

    fn scheduler(&self, lease: Duration) -> Scheduler {
        let settings =
            SchedulerSettings { interval: Duration::from_millis(100), lease, ..SchedulerSettings::default() };
        Scheduler::new(self.store.clone(), Arc::new(self.publisher.clone()), settings)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.sender).await.unwrap().unwrap().unwrap();
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn in_seconds(seconds: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[tokio::test]
async fn a_batch_of_1000_is_delivered_to_the_cloud_api_once_each() {
    let stage = Stage::start(testing::sqlite().await).await;
    let entries: Vec<Value> = (0..1000)
        .map(|i| json!({ "recipient_phone": format!("+1555{i:07}"), "content": { "text": "Hi {n}" }, "variables": { "n": i } }))
        .collect();
    let answer = stage.post("/api/v1/messages/batch", &json!({ "messages": entries })).await;
    assert_eq!(answer["accepted"], 1000, "{answer}");
    wait_until("1,000 sends", Duration::from_secs(60), || stage.fake.accepted().len() >= 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let accepted = stage.fake.accepted();
    assert_eq!(accepted.len(), 1000, "none twice");
    let texts: HashSet<(String, String)> = accepted.iter().map(|s| (s.to().to_owned(), s.text().to_owned())).collect();
    for i in 0..1000 {
        assert!(texts.contains(&(format!("1555{i:07}"), format!("Hi {i}"))), "message {i} not delivered as written");
    }
    // Every row is marked sent with its wamid, for SQL.
    let sent = "api_message_id IS NOT NULL AND status = 'sent' AND wamid IS NOT NULL";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::count(&stage.db.db, "outbound_messages", sent).await < 1000 {
        assert!(std::time::Instant::now() < deadline, "rows not all marked sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stage.stop().await;
}

#[tokio::test]
async fn a_scheduled_message_is_sent_once_across_restarts_and_a_scheduler_that_died() {
    let stage = Stage::start(testing::sqlite().await).await;
    let body = |text: &str| json!({ "recipient_phone": "+15551234567", "content": { "text": text }, "scheduled_at": in_seconds(2) });
    let restarted = stage.post("/api/v1/messages", &body("across a restart")).await;
    let orphaned = stage.post("/api/v1/messages", &json!({
        "recipient_phone": "+15557654321", "content": { "text": "published by a dying scheduler" }, "scheduled_at": in_seconds(2)
    })).await;
    let cancelled = stage.post("/api/v1/messages", &body("never")).await;
    // The first scheduler runs, then stops (a restart) before anything is due.
    let (stop_first, first_stopped) = watch::channel(false);
    let first = tokio::spawn(stage.scheduler(Duration::from_secs(30)).run(async move {
        let mut stopped = first_stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_first.send(true).unwrap();
    first.await.unwrap();
    assert!(stage.fake.accepted().is_empty(), "nothing is due yet");
    // The cancelled one is cancelled in the database, where every replica sees it.
    stage.store.cancel_api_message("acme", cancelled["id"].as_str().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A scheduler claims one due message, publishes it and dies before marking it.
    let claim = stage.store.claim_due(Utc::now(), 1, Duration::from_millis(800)).await.unwrap();
    assert_eq!(claim.messages.len(), 1);
    let held = claim.messages[0].clone();
    let reply: ResponseReady = serde_json::from_str(&held.payload).unwrap();
    stage.publisher.publish(&Envelope::new(EventData::ResponseReady(reply), "dying-scheduler")).await.unwrap();
    // Its replacement publishes the other at once, and the dead one's after the lease.
    let (stop_second, second_stopped) = watch::channel(false);
    let second = tokio::spawn(stage.scheduler(Duration::from_secs(30)).run(async move {
        let mut stopped = second_stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    wait_until("both scheduled messages sent", Duration::from_secs(20), || stage.fake.accepted().len() >= 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stage.store.due_count(Utc::now()).await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "the orphaned message was never dispatched again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The second copy of the orphaned message reached the sender, which sent it once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_second.send(true).unwrap();
    second.await.unwrap();
    let mut texts: Vec<String> = stage.fake.accepted().iter().map(|s| s.text().to_owned()).collect();
    texts.sort();
    assert_eq!(texts, ["across a restart", "published by a dying scheduler"], "each once, the cancelled one never");
    for (answer, status) in [(&restarted, "sent"), (&orphaned, "sent"), (&cancelled, "cancelled")] {
        let message = stage.store.api_message(answer["id"].as_str().unwrap()).await.unwrap().unwrap();
        assert_eq!(message.status.as_str(), status, "{answer}");
    }
    stage.stop().await;
}

#[tokio::test]
async fn a_message_cancelled_after_it_was_published_is_withheld_by_the_sender() {
    let stage = Stage::start(testing::sqlite().await).await;
    let scheduled = stage
        .post(
            "/api/v1/messages",
            &json!({ "recipient_phone": "+15551234567", "content": { "text": "no" }, "scheduled_at": in_seconds(1) }),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Claimed and published, then cancelled before the sender took it.
    let claim = stage.store.claim_due(Utc::now(), 10, Duration::from_secs(30)).await.unwrap();
    let id = scheduled["id"].as_str().unwrap();
    assert!(matches!(
        stage.store.cancel_api_message("acme", id).await.unwrap(),
        orchestrator::store::Cancellation::Cancelled(_)
    ));
    let reply: ResponseReady = serde_json::from_str(&claim.messages[0].payload).unwrap();
    stage.publisher.publish(&Envelope::new(EventData::ResponseReady(reply), "scheduler")).await.unwrap();
    // A later message to another recipient shows the sender got past it.
    stage.post("/api/v1/messages", &json!({ "recipient_phone": "+15550000000", "content": { "text": "yes" } })).await;
    wait_until("the later message", Duration::from_secs(20), || !stage.fake.accepted().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts: Vec<String> = stage.fake.accepted().iter().map(|s| s.text().to_owned()).collect();
    assert_eq!(texts, ["yes"]);
    assert_eq!(stage.store.api_message(id).await.unwrap().unwrap().status.as_str(), "cancelled");
    stage.stop().await;
}
