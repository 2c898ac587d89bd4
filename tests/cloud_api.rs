//! The reply path: the Cloud API client against a fake Cloud API, and the
//! reply sender consuming `conversation.responses` end to end (concurrency,
//! per-recipient order, retries, dead letters, sending once, the business
//! number, breaker deferrals, replays).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::kafka_config;
use orchestrator::dlq::DlqService;
use orchestrator::event::{
    Button, Envelope, EventData, FailureType, Priority, ResponseContent, ResponseReady, reply_meta, topics,
};
use orchestrator::kafka::{EmbeddedKafka, Publisher, ReplySettings, ResponseSender};
use orchestrator::outbound::cloud_api::cloud_api_body;
use orchestrator::outbound::{CloudApiConfig, CloudApiSender, RateSettings, SendError, WhatsAppSender};
use orchestrator::store::{
    DeadLetterQueue, DeliveryStatuses, DlqFilter, DlqStatus, OutboundMessages, OutboundStatus, Page, ReplyKey,
};
use orchestrator::testing::fake_cloud_api::{FakeCloudApi, FakeSettings};
use orchestrator::{BreakerConfig, BreakerState, RetryPolicy, SqlStore};
use serde_json::json;
use tokio::sync::watch;

fn sender(api_url: &str, failure_threshold: u32, open_timeout: Duration) -> CloudApiSender {
    let config = CloudApiConfig {
        token: "secret-token".into(),
        tokens: HashMap::from([("2222".to_owned(), "token-of-2222".to_owned())]),
        phone_number_id: "1234567890".into(),
        api_url: api_url.to_owned(),
        timeout: Duration::from_secs(5),
    };
    CloudApiSender::new(config, BreakerConfig { failure_threshold, open_timeout }).unwrap()
}

fn reply_to(phone: &str, original: &str, content: ResponseContent) -> ResponseReady {
    ResponseReady {
        original_message_id: original.into(),
        to_phone: phone.into(),
        response_type: content.response_type(),
        content,
        generated_at: Utc::now(),
        priority: Priority::Normal,
        metadata: BTreeMap::new(),
    }
}

fn reply(content: ResponseContent) -> ResponseReady {
    reply_to("+15551234567", "wamid.in", content)
}

#[tokio::test]
async fn sends_with_the_bearer_token_in_the_cloud_api_format_and_returns_the_wamid() {
    let fake = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    let sender = sender(fake.url(), 5, Duration::from_secs(60));
    let sent = sender.send(&reply(ResponseContent::text("Your order is on its way"))).await.unwrap();
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(sent.wamid.as_deref(), Some(accepted[0].wamid.as_str()));
    assert_eq!(accepted[0].phone_number_id, "1234567890", "no number on the reply: the default one");
    assert_eq!(accepted[0].authorization.as_deref(), Some("Bearer secret-token"));
    assert_eq!(
        accepted[0].body,
        json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "15551234567",
                 "type": "text", "text": { "preview_url": false, "body": "Your order is on its way" } })
    );
    // A reply to a message that reached another number goes out from it, with that number's token.
    let mut from_other = reply(ResponseContent::text("hi"));
    from_other.metadata.insert(reply_meta::PHONE_NUMBER_ID.into(), "2222".into());
    sender.send(&from_other).await.unwrap();
    let accepted = fake.accepted();
    assert_eq!(accepted[1].phone_number_id, "2222");
    assert_eq!(accepted[1].authorization.as_deref(), Some("Bearer token-of-2222"));
}

#[test]
fn interactive_replies_map_to_reply_buttons() {
    let body = cloud_api_body(&reply(ResponseContent::Interactive {
        body_text: "When should we call?".into(),
        buttons: vec![Button { id: "call_morning".into(), title: "Morning".into() }],
    }));
    assert_eq!(body["type"], "interactive");
    assert_eq!(body["interactive"]["type"], "button");
    assert_eq!(
        body["interactive"]["action"]["buttons"][0],
        json!({ "type": "reply", "reply": { "id": "call_morning", "title": "Morning" } })
    );
    let template = cloud_api_body(&reply(ResponseContent::Template {
        name: "order_ready".into(),
        language: "es_MX".into(),
        parameters: vec!["Ana".into()],
        components: vec![],
    }));
    assert_eq!(template["template"]["language"]["code"], "es_MX");
    assert_eq!(template["template"]["components"][0]["parameters"][0], json!({ "type": "text", "text": "Ana" }));
    // Components given are sent as they are, instead of the text parameters.
    let header =
        json!({ "type": "header", "parameters": [{ "type": "image", "image": { "link": "https://x/y.png" } }] });
    let template = cloud_api_body(&reply(ResponseContent::Template {
        name: "order_ready".into(),
        language: "es_MX".into(),
        parameters: vec!["ignored".into()],
        components: vec![header.clone()],
    }));
    assert_eq!(template["template"]["components"], json!([header]));
}

#[tokio::test]
async fn error_codes_decide_and_only_outages_open_the_breaker() {
    let fake = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    let sender = sender(fake.url(), 2, Duration::from_secs(60));
    fake.script([(400, Some(131047)), (429, Some(130429)), (400, Some(130429)), (503, None), (500, Some(2))]);
    let text = reply(ResponseContent::text("hi"));
    let outside_window = sender.send(&text).await.unwrap_err();
    assert!(matches!(outside_window, SendError::Permanent { code: Some(131047), .. }), "{outside_window:?}");
    for _ in 0..2 {
        let throttled = sender.send(&text).await.unwrap_err();
        assert!(matches!(throttled, SendError::Throttled { code: Some(130429), .. }), "{throttled:?}");
    }
    assert_eq!(sender.breaker().state(), BreakerState::Closed, "neither a refusal nor a throttle is an outage");
    assert!(matches!(sender.send(&text).await, Err(SendError::Retryable { code: None, .. })));
    assert!(matches!(sender.send(&text).await, Err(SendError::Retryable { code: Some(2), .. })));
    assert_eq!(sender.breaker().state(), BreakerState::Open);
    let before = fake.counts();
    assert!(matches!(sender.send(&text).await, Err(SendError::CircuitOpen { .. })));
    assert_eq!(fake.counts(), before, "an open breaker calls nothing");
}

/// A reply sender on its own broker and SQLite database, against `fake`.
struct Stage {
    kafka: EmbeddedKafka,
    store: Arc<SqlStore>,
    publisher: Publisher,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), rdkafka::error::KafkaError>>,
    _db: orchestrator::testing::TestDb,
}

impl Stage {
    async fn start(whatsapp: Arc<dyn WhatsAppSender>, settings: ReplySettings) -> Self {
        let kafka = EmbeddedKafka::start(4).unwrap();
        let config = kafka_config(&kafka, "orchestrator");
        let db = orchestrator::testing::sqlite().await;
        let store = Arc::new(SqlStore::new(db.db.clone()));
        let response_sender = ResponseSender::new(&config, whatsapp, store.clone(), settings).unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(response_sender.run(async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let publisher = Publisher::new(&config).unwrap();
        Self { kafka, store, publisher, stop, task, _db: db }
    }

    async fn publish(&self, reply: ResponseReady) -> Envelope {
        let envelope = Envelope::new(EventData::ResponseReady(reply), "test");
        self.publisher.publish(&envelope).await.unwrap();
        envelope
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.task).await.unwrap().unwrap().unwrap();
    }
}

/// Fast retries for tests: 200 ms, then 400 ms, then 800 ms.
fn quick_settings() -> ReplySettings {
    ReplySettings {
        retry: RetryPolicy::steps(vec![
            Duration::from_millis(200),
            Duration::from_millis(400),
            Duration::from_millis(800),
        ]),
        rate: RateSettings { max_rate: 10_000.0, ..RateSettings::default() },
        ..ReplySettings::default()
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it answers `Some`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn numbered(phone: &str, n: usize) -> ResponseReady {
    reply_to(phone, &format!("wamid.in-{phone}-{n}"), ResponseContent::text(format!("{phone} #{n}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_out_concurrently_once_each_and_in_order_per_recipient() {
    let fake =
        FakeCloudApi::start(FakeSettings { latency: Duration::from_millis(100), ..Default::default() }).await.unwrap();
    let stage = Stage::start(Arc::new(sender(fake.url(), 5, Duration::from_secs(60))), quick_settings()).await;
    let phones: Vec<String> = (0..20).map(|p| format!("+1555000{p:04}")).collect();
    for n in 0..5 {
        for phone in &phones {
            stage.publish(numbered(phone, n)).await;
        }
    }
    wait_until("100 replies sent", Duration::from_secs(60), || fake.accepted().len() >= 100).await;
    // A redelivery of a sent reply (a consumer that crashed before its commit) is not sent again.
    let again = numbered(&phones[0], 0);
    stage.publish(again).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 100, "each reply exactly once");
    for phone in &phones {
        let texts: Vec<&str> =
            accepted.iter().filter(|a| a.to() == phone.trim_start_matches('+')).map(|a| a.text()).collect();
        let expected: Vec<String> = (0..5).map(|n| format!("{phone} #{n}")).collect();
        assert_eq!(texts, expected, "{phone}'s replies in order");
    }
    // One recipient at a time each, but many recipients at once: at 100 ms
    // a reply, one-at-a-time sending would never have two in flight.
    assert!(fake.max_concurrency() >= 10, "only {} sends in flight at once", fake.max_concurrency());
    let key = ReplyKey {
        tenant_id: "default".into(),
        original_message_id: format!("wamid.in-{}-3", phones[7]),
        reply_index: 0,
    };
    let row = eventually("the reply recorded sent", Duration::from_secs(10), || async {
        stage.store.outbound(&key).await.unwrap().filter(|row| row.status == OutboundStatus::Sent)
    })
    .await;
    assert_eq!(row.attempt_count, 1);
    let sent = accepted.iter().find(|a| a.text() == format!("{} #3", phones[7])).unwrap();
    assert_eq!(row.wamid.as_deref(), Some(sent.wamid.as_str()), "the wamid WhatsApp returned is kept");
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_replies_overtake_a_saturated_backlog_but_not_their_recipients_earlier_reply() {
    let fake = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    // 20 sends a second: a backlog of 60 normal replies takes three seconds.
    let settings = ReplySettings {
        rate: RateSettings { max_rate: 20.0, ..RateSettings::default() },
        max_rate_wait: Duration::from_secs(60),
        ..quick_settings()
    };
    let stage = Stage::start(Arc::new(sender(fake.url(), 5, Duration::from_secs(60))), settings).await;
    let backlog: Vec<String> = (0..60).map(|p| format!("+1555100{p:04}")).collect();
    for phone in &backlog {
        stage.publish(numbered(phone, 0)).await;
    }
    // A recipient with a normal reply already waiting, then an urgent one for it and for another.
    stage.publish(numbered("+15552000000", 0)).await;
    wait_until("the backlog to start", Duration::from_secs(30), || fake.accepted().len() >= 3).await;
    let urgent = |phone: &str| {
        let mut reply = numbered(phone, 1);
        reply.priority = Priority::Urgent;
        reply
    };
    stage.publish(urgent("+15552000000")).await;
    stage.publish(urgent("+15553000000")).await;
    wait_until("every reply sent", Duration::from_secs(60), || fake.accepted().len() >= 63).await;
    let order: Vec<String> = fake.accepted().iter().map(|a| a.text().to_owned()).collect();
    let position = |text: &str| order.iter().position(|t| t == text).unwrap_or_else(|| panic!("{text} not sent"));
    let overtaken = order.len() - position("+15553000000 #1") - 1;
    assert!(overtaken >= 40, "the urgent reply overtook only {overtaken} of ~60 waiting: {order:?}");
    // Per recipient, order holds: its earlier normal reply still goes first.
    assert!(position("+15552000000 #0") < position("+15552000000 #1"), "{order:?}");
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_is_retried_through_the_retry_topic_and_the_recipients_next_reply_waits_for_it() {
    let fake = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    let stage = Stage::start(Arc::new(sender(fake.url(), 5, Duration::from_secs(60))), quick_settings()).await;
    // The first send fails (a 5xx); the recipient's second reply must not overtake it.
    fake.script([(500, None)]);
    stage.publish(numbered("+15550001111", 1)).await;
    stage.publish(numbered("+15550001111", 2)).await;
    wait_until("both replies sent", Duration::from_secs(30), || fake.accepted().len() >= 2).await;
    let texts: Vec<String> = fake.accepted().iter().map(|a| a.text().to_owned()).collect();
    assert_eq!(texts, ["+15550001111 #1", "+15550001111 #2"]);
    let retries = common::read(&stage.kafka, &format!("{}.retry", topics::RESPONSES), 1).await;
    assert_eq!(retries.len(), 1, "the failed reply went through the retry topic");
    let key =
        ReplyKey { tenant_id: "default".into(), original_message_id: "wamid.in-+15550001111-1".into(), reply_index: 0 };
    let row = eventually("the reply recorded sent", Duration::from_secs(10), || async {
        stage.store.outbound(&key).await.unwrap().filter(|row| row.status == OutboundStatus::Sent)
    })
    .await;
    assert_eq!(row.attempt_count, 2, "one failed attempt, one that sent it");
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_undecodable_replies_are_dead_lettered_and_a_replay_sends_them() {
    let fake = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    let stage = Stage::start(Arc::new(sender(fake.url(), 5, Duration::from_secs(60))), quick_settings()).await;
    fake.script([(400, Some(131047))]);
    stage.publish(numbered("+15550002222", 1)).await;
    stage.publisher.send(topics::RESPONSES, Some("+15550003333"), b"{not a reply", &[]).await.unwrap();
    let dlq_topic = format!("{}.dlq", topics::RESPONSES);
    let copies = common::read(&stage.kafka, &dlq_topic, 2).await;
    assert_eq!(copies.len(), 2, "both on {dlq_topic}");
    let failures = common::read(&stage.kafka, topics::FAILURES, 2).await;
    assert_eq!(failures.len(), 2, "a MessageFailed each");
    let entries = eventually("two dead-letter entries", Duration::from_secs(10), || async {
        let entries = stage.store.list(&DlqFilter::default(), Page::default()).await.unwrap();
        (entries.len() == 2).then_some(entries)
    })
    .await;
    let refused =
        entries.iter().find(|e| e.failure_type == FailureType::ExternalServiceError).expect("the refused reply");
    assert!(refused.error.contains("131047"), "{}", refused.error);
    assert_eq!(refused.message_id.as_deref(), Some("reply:wamid.in-+15550002222-1#0"));
    let garbage = entries.iter().find(|e| e.failure_type == FailureType::SerializationError).expect("the bad bytes");
    assert_eq!(garbage.payload, b"{not a reply");
    let key =
        ReplyKey { tenant_id: "default".into(), original_message_id: "wamid.in-+15550002222-1".into(), reply_index: 0 };
    let row = stage.store.outbound(&key).await.unwrap().unwrap();
    assert_eq!((row.status, row.error_code), (OutboundStatus::Failed, Some(131047)));
    assert!(fake.accepted().is_empty());

    // Once the customer writes again (the window reopens), the operator replays it.
    let service = DlqService::new(stage.store.clone()).with_publisher(stage.publisher.clone());
    service.replay(refused.id).await.unwrap();
    wait_until("the replayed reply sent", Duration::from_secs(30), || fake.accepted().len() == 1).await;
    assert_eq!(fake.accepted()[0].text(), "+15550002222 #1");
    eventually("its row sent", Duration::from_secs(10), || async {
        stage.store.outbound(&key).await.unwrap().filter(|row| row.status == OutboundStatus::Sent)
    })
    .await;
    assert_eq!(stage.store.get(refused.id).await.unwrap().unwrap().status, DlqStatus::Replayed);
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_defers_replies_without_spending_their_attempts() {
    let fake = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    let whatsapp = Arc::new(sender(fake.url(), 2, Duration::from_millis(500)));
    let breaker = whatsapp.breaker().clone();
    // Retries 200, 400 and 800 ms apart: without deferrals a 5 s outage would dead-letter every reply.
    let stage = Stage::start(whatsapp, quick_settings()).await;
    fake.set_down(true);
    for n in 0..3 {
        stage.publish(numbered(&format!("+1555000444{n}"), 1)).await;
    }
    wait_until("the breaker opens", Duration::from_secs(30), || breaker.state() == BreakerState::Open).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(fake.counts().down >= 2, "the outage was met");
    fake.set_down(false);
    wait_until("all three sent after the outage", Duration::from_secs(30), || fake.accepted().len() == 3).await;
    assert!(
        stage.store.list(&DlqFilter::default(), Page::default()).await.unwrap().is_empty(),
        "nothing dead-lettered"
    );
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_statuses_move_the_reply_forward_by_wamid() {
    let fake = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    let stage = Stage::start(Arc::new(sender(fake.url(), 5, Duration::from_secs(60))), quick_settings()).await;
    stage.publish(numbered("+15550005555", 1)).await;
    wait_until("sent", Duration::from_secs(30), || fake.accepted().len() == 1).await;
    let wamid = fake.accepted()[0].wamid.clone();
    let key =
        ReplyKey { tenant_id: "default".into(), original_message_id: "wamid.in-+15550005555-1".into(), reply_index: 0 };
    eventually("recorded", Duration::from_secs(10), || async {
        stage.store.outbound(&key).await.unwrap().filter(|row| row.wamid.is_some())
    })
    .await;
    let status = |state: &str, error: Option<&str>| orchestrator::webhook::DeliveryStatus {
        message_id: wamid.clone(),
        recipient_phone: "+15550005555".into(),
        status: state.into(),
        timestamp: Utc::now(),
        error: error.map(str::to_owned),
        phone_number_id: Some("1234567890".into()),
    };
    let status_of = || async { stage.store.outbound(&key).await.unwrap().unwrap() };
    stage.store.record_status(&status("read", None)).await.unwrap();
    assert_eq!(status_of().await.status, OutboundStatus::Read);
    stage.store.record_status(&status("delivered", None)).await.unwrap();
    assert_eq!(status_of().await.status, OutboundStatus::Read, "a late `delivered` does not move it back");
    stage.store.record_status(&status("failed", Some("131026: Message undeliverable"))).await.unwrap();
    let row = status_of().await;
    assert_eq!((row.status, row.error_code), (OutboundStatus::Failed, Some(131026)));
    stage.stop().await;
}
