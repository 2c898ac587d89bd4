//! The HTTP server end to end: the WhatsApp webhook (every message type
//! from Cloud API fixtures to the right Kafka topic, signatures, the
//! verify-token handshake, bad bodies, Kafka down), health and metrics.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use common::{Running, count, fast_config, kafka_config, read_within};
use orchestrator::event::{Envelope, EventData, MessageContent, MessageType, topics};
use orchestrator::http::{self, HealthState, WebhookSettings, WebhookState};
use orchestrator::kafka::{ConsumerRuntime, EmbeddedKafka, KafkaConfig, Publisher, RuntimeSettings};
use orchestrator::store::DeliveryStatuses;
use orchestrator::testing;
use orchestrator::webhook::{NotifiedMessage, parse, signature::sign};
use orchestrator::{KeywordClassifier, MemoryStore, Orchestrator, SqlStore};
use rdkafka::message::Message;

const SECRET: &str = "app-secret";

const FIXTURES: &[(&str, &str)] = &[
    ("text", include_str!("fixtures/webhook/text.json")),
    ("image", include_str!("fixtures/webhook/image.json")),
    ("audio", include_str!("fixtures/webhook/audio.json")),
    ("video", include_str!("fixtures/webhook/video.json")),
    ("document", include_str!("fixtures/webhook/document.json")),
    ("sticker", include_str!("fixtures/webhook/sticker.json")),
    ("location", include_str!("fixtures/webhook/location.json")),
    ("contacts", include_str!("fixtures/webhook/contacts.json")),
    ("button_reply", include_str!("fixtures/webhook/button_reply.json")),
    ("list_reply", include_str!("fixtures/webhook/list_reply.json")),
    ("button", include_str!("fixtures/webhook/button.json")),
    ("reaction", include_str!("fixtures/webhook/reaction.json")),
    ("batch", include_str!("fixtures/webhook/batch.json")),
    ("quickstart", include_str!("fixtures/webhook/quickstart.json")),
];
const STATUSES: &str = include_str!("fixtures/webhook/statuses.json");

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, app, std::future::pending()));
    url
}

fn webhook_app(publisher: Publisher, statuses: Arc<dyn DeliveryStatuses>, settings: WebhookSettings) -> Router {
    http::webhook::routes(WebhookState::new(settings, publisher, statuses))
}

fn signed_settings() -> WebhookSettings {
    WebhookSettings {
        verify_token: Some("verify-me".into()),
        app_secret: Some(SECRET.into()),
        ..WebhookSettings::default()
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &[u8], signature: Option<String>) -> reqwest::StatusCode {
    let mut request =
        client.post(format!("{url}/webhook")).header("content-type", "application/json").body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_webhook_message_type_lands_on_its_topic_keyed_by_phone() {
    let kafka = EmbeddedKafka::start(2).unwrap();
    let publisher = Publisher::new(&kafka_config(&kafka, "webhook")).unwrap();
    let store = Arc::new(MemoryStore::new());
    let url = serve(webhook_app(publisher, store.clone(), signed_settings())).await;
    let client = common::http_client();

    // What each topic must receive, by message id, with the sender it must be keyed by.
    let mut expected: HashMap<&str, HashMap<String, String>> = HashMap::new();
    for (name, body) in FIXTURES {
        let status = post(&client, &url, body.as_bytes(), Some(sign(SECRET.as_bytes(), body.as_bytes()))).await;
        assert_eq!(status, 200, "{name}");
        for event in parse(body.as_bytes()).unwrap().events {
            let (topic, id) = match &event {
                NotifiedMessage::Message(m) => (topics::MESSAGES, m.message_id.clone()),
                NotifiedMessage::Interaction(i) => (topics::INTERACTIONS, i.message_id.clone().unwrap()),
                NotifiedMessage::Other(o) => (topics::WEBHOOK_UNHANDLED, o.message_id.clone()),
            };
            expected.entry(topic).or_default().insert(id, event.phone().to_owned());
        }
    }
    assert!(expected[topics::MESSAGES].len() >= 10, "fixtures cover the message types: {expected:?}");
    assert_eq!(expected[topics::INTERACTIONS].len(), 3, "button_reply, list_reply, button");
    assert!(!expected[topics::WEBHOOK_UNHANDLED].is_empty(), "reaction kept as WhatsApp sent it");

    let mut types_seen = HashSet::new();
    for (topic, ids) in &expected {
        let got = read_within(&kafka, topic, ids.len(), Duration::from_secs(30)).await;
        let mut arrived = HashMap::new();
        for message in &got {
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            let payload = message.payload().unwrap();
            let id = match Envelope::decode(payload) {
                Ok(envelope) => {
                    assert_eq!(envelope.metadata.processed_by, http::webhook::PROCESSED_BY);
                    match envelope.data {
                        EventData::MessageReceived(m) => {
                            types_seen.insert(m.message_type);
                            if m.message_type == MessageType::Image {
                                assert!(matches!(m.content, MessageContent::Media { .. }), "image content");
                            }
                            assert_eq!(m.metadata.get("whatsapp_type").map(String::is_empty), Some(false));
                            m.message_id
                        }
                        EventData::InteractionReceived(i) => i.message_id.unwrap(),
                        other => panic!("unexpected event {other:?}"),
                    }
                }
                Err(_) => {
                    // The unhandled topic carries WhatsApp's message object as sent.
                    assert_eq!(*topic, topics::WEBHOOK_UNHANDLED);
                    let raw: serde_json::Value = serde_json::from_slice(payload).unwrap();
                    assert_eq!(raw["type"], "reaction");
                    assert!(orchestrator::kafka::headers::value(message, "x-phone-number-id").is_some());
                    raw["id"].as_str().unwrap().to_owned()
                }
            };
            arrived.insert(id, key);
        }
        assert_eq!(&arrived, ids, "{topic}: every message once, keyed by its sender's phone");
    }
    for kind in [
        MessageType::Text,
        MessageType::Image,
        MessageType::Audio,
        MessageType::Video,
        MessageType::Document,
        MessageType::Sticker,
        MessageType::Location,
        MessageType::Contact,
    ] {
        assert!(types_seen.contains(&kind), "{kind:?} published");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_handshake_and_bad_bodies_get_the_right_answers() {
    let kafka = EmbeddedKafka::start(2).unwrap();
    let publisher = Publisher::new(&kafka_config(&kafka, "webhook")).unwrap();
    let url = serve(webhook_app(publisher.clone(), Arc::new(MemoryStore::new()), signed_settings())).await;
    let client = common::http_client();
    let body = FIXTURES.iter().find(|(n, _)| *n == "quickstart").unwrap().1.as_bytes();

    assert_eq!(post(&client, &url, body, None).await, 401, "missing signature");
    assert_eq!(post(&client, &url, body, Some(sign(b"wrong-secret", body))).await, 401, "bad signature");
    assert_eq!(post(&client, &url, body, Some("sha256=nothex".into())).await, 401, "malformed signature");
    assert_eq!(post(&client, &url, body, Some(sign(SECRET.as_bytes(), body))).await, 200, "valid signature");

    let signed = |b: &[u8]| Some(sign(SECRET.as_bytes(), b));
    assert_eq!(post(&client, &url, b"{not json", signed(b"{not json")).await, 400);
    let other = br#"{"object":"instagram","entry":[]}"#;
    assert_eq!(post(&client, &url, other, signed(other)).await, 200, "another object is acknowledged and ignored");
    let oversized = vec![b' '; http::webhook::MAX_BODY_BYTES + 1];
    assert_eq!(post(&client, &url, &oversized, signed(&oversized)).await, 413);
    let half_bad = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{
        "messages":[{"id":"wamid.nofrom","type":"text","text":{"body":"x"}},
                    {"from":"15557654321","id":"wamid.kept","timestamp":"1700000000","type":"text","text":{"body":"y"}}]}}]}]}"#;
    assert_eq!(post(&client, &url, half_bad, signed(half_bad)).await, 200, "a bad entry does not cost its sibling");

    let challenge =
        |token: &str| format!("{url}/webhook?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444");
    let answer = client.get(challenge("verify-me")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "1158201444");
    assert_eq!(client.get(challenge("guess")).send().await.unwrap().status(), 403);

    // Only the valid quickstart and the kept sibling were published.
    let published = read_within(&kafka, topics::MESSAGES, 3, Duration::from_secs(8)).await;
    let ids: Vec<String> = published
        .iter()
        .map(|m| match Envelope::decode(m.payload().unwrap()).unwrap().data {
            EventData::MessageReceived(m) => m.message_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"wamid.test1".to_owned()) && ids.contains(&"wamid.kept".to_owned()), "{ids:?}");

    // No verify token configured: the handshake is refused.
    let open = serve(webhook_app(publisher, Arc::new(MemoryStore::new()), WebhookSettings::default())).await;
    let refused = client.get(format!("{open}/webhook?hub.mode=subscribe&hub.verify_token=&hub.challenge=1")).send();
    assert_eq!(refused.await.unwrap().status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_recorded_once_and_kafka_down_answers_503() {
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(2).unwrap();
        let publisher = Publisher::new(&kafka_config(&kafka, "webhook")).unwrap();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let url = serve(webhook_app(publisher, store.clone(), WebhookSettings::default())).await;
        let client = common::http_client();
        // Delivered twice, as WhatsApp retries: kept once.
        for _ in 0..2 {
            assert_eq!(post(&client, &url, STATUSES.as_bytes(), None).await, 200, "{}", t.label);
        }
        let expected = parse(STATUSES.as_bytes()).unwrap().statuses;
        assert!(expected.iter().any(|s| s.status == "failed" && s.error.is_some()));
        assert_eq!(count(&t.db, "delivery_statuses", "1 = 1").await as usize, expected.len(), "{}", t.label);
        for status in &expected {
            let stored = store.statuses_of(&status.message_id).await.unwrap();
            let same = stored.iter().find(|s| s.status == status.status).expect("stored");
            assert_eq!((&same.recipient_phone, &same.error), (&status.recipient_phone, &status.error), "{}", t.label);
        }
    }

    // A broker nobody listens on: the POST is not acknowledged, so WhatsApp will retry.
    let unreachable = KafkaConfig { timeout: Duration::from_millis(300), ..KafkaConfig::default() }
        .with_bootstrap_servers("127.0.0.1:9");
    let settings = WebhookSettings { publish_timeout: Duration::from_millis(800), ..WebhookSettings::default() };
    let url = serve(webhook_app(Publisher::new(&unreachable).unwrap(), Arc::new(MemoryStore::new()), settings)).await;
    let body = FIXTURES.iter().find(|(n, _)| *n == "quickstart").unwrap().1.as_bytes();
    assert_eq!(post(&common::http_client(), &url, body, None).await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_again_is_published_once_unless_its_first_publish_failed() {
    let kafka = EmbeddedKafka::start(2).unwrap();
    let publisher = Publisher::new(&kafka_config(&kafka, "webhook")).unwrap();
    let state = WebhookState::new(signed_settings(), publisher, Arc::new(MemoryStore::new()));
    let url = serve(http::webhook::routes(state.clone())).await;
    let client = common::http_client();
    let body = FIXTURES.iter().find(|(n, _)| *n == "text").unwrap().1.as_bytes();
    let signature = || Some(sign(SECRET.as_bytes(), body));
    let skipped_before = orchestrator::metrics::metrics().webhook_duplicates.get();

    // Three deliveries at once (Meta's retries can overlap the first), then one more:
    // one publishes, the others are acknowledged without publishing again.
    let deliver = || post(&client, &url, body, signature());
    let answers = tokio::join!(deliver(), deliver(), deliver());
    assert_eq!(answers, (reqwest::StatusCode::OK, reqwest::StatusCode::OK, reqwest::StatusCode::OK));
    assert_eq!(deliver().await, 200, "a later redelivery is acknowledged");
    let published = read_within(&kafka, topics::MESSAGES, 2, Duration::from_secs(8)).await;
    assert_eq!(published.len(), 1, "published once");
    assert!(orchestrator::metrics::metrics().webhook_duplicates.get() >= skipped_before + 3, "the skips counted");

    // Kafka unreachable: 503, and the message's reservation is released, so the
    // redelivery (here through a replica sharing the same set) publishes it.
    let unreachable = KafkaConfig { timeout: Duration::from_millis(300), ..KafkaConfig::default() }
        .with_bootstrap_servers("127.0.0.1:9");
    let down = WebhookState {
        settings: WebhookSettings { publish_timeout: Duration::from_millis(800), ..signed_settings() },
        publisher: Arc::new(Publisher::new(&unreachable).unwrap()),
        ..state.clone()
    };
    let down_url = serve(http::webhook::routes(down)).await;
    let quickstart = FIXTURES.iter().find(|(n, _)| *n == "quickstart").unwrap().1.as_bytes();
    let signed = Some(sign(SECRET.as_bytes(), quickstart));
    assert_eq!(post(&client, &down_url, quickstart, signed.clone()).await, 503);
    assert!(!state.recent.contains("wamid.test1"), "released after the 503");
    assert_eq!(post(&client, &url, quickstart, signed).await, 200);
    let published = read_within(&kafka, topics::MESSAGES, 3, Duration::from_secs(8)).await;
    assert_eq!(published.len(), 2, "the redelivery after a 503 was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivered_twice_is_processed_once_and_health_and_metrics_report_it() {
    for t in testing::databases().await {
        let kafka = EmbeddedKafka::start(2).unwrap();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = Arc::new(
            Orchestrator::builder()
                .handlers(handlers::builtin())
                .executors(executors::builtin(&t.db))
                .store(store.clone())
                .config(fast_config())
                .build()
                .unwrap(),
        );
        let settings = RuntimeSettings { statistics_interval: Duration::from_millis(200), ..Default::default() };
        let config = kafka_config(&kafka, "orchestrator");
        let runtime =
            ConsumerRuntime::new(&config, orch.clone(), Arc::new(KeywordClassifier), store.clone(), settings).unwrap();
        let stats = runtime.stats();
        let running = Running::start(runtime);

        let publisher = Publisher::new(&config).unwrap();
        let mut health = HealthState::new().probe("kafka", publisher.clone()).probe("database", t.db.clone());
        health.breakers = Some(orch.breakers().clone());
        health.stats = Some(stats.clone());
        let app = webhook_app(publisher.clone(), store.clone(), WebhookSettings::default())
            .merge(http::health::routes(health))
            .merge(http::metrics::routes(Some(orch.breakers().clone())));
        let url = serve(app).await;
        // A second webhook replica: each remembers only what it published itself, so the
        // redelivery reaching it is published again, and the consumer's dedupe keeps one effect.
        let replica = serve(webhook_app(publisher, store.clone(), WebhookSettings::default())).await;
        let client = common::http_client();
        let body = FIXTURES.iter().find(|(n, _)| *n == "quickstart").unwrap().1.as_bytes();
        assert_eq!(post(&client, &url, body, None).await, 200);
        assert_eq!(post(&client, &replica, body, None).await, 200);

        let replies = read_within(&kafka, topics::RESPONSES, 2, Duration::from_secs(20)).await;
        assert_eq!(replies.len(), 1, "{}: one reply for the message delivered twice", t.label);
        let deadline = Instant::now() + Duration::from_secs(20);
        while stats.snapshot()[4] < 1 {
            assert!(Instant::now() < deadline, "{}: the second delivery was never seen", t.label);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.test1'").await, 1, "{}: one order", t.label);

        let health = client.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{}", t.label);
        let health: serde_json::Value = health.json().await.unwrap();
        assert_eq!(health["status"], "ok");
        assert_eq!(health["checks"]["kafka"]["status"], "ok");
        assert_eq!(health["checks"]["database"]["status"], "ok");
        // The webhook-worker design's shape, which monitors parse.
        assert!(health["checks"]["database"]["latencyMs"].as_f64().is_some());
        assert!(health["uptime"].as_f64().is_some_and(|u| u > 0.0), "{health}");
        assert!(health["timestamp"].is_string());
        assert_eq!(health["worker"]["running"], true);
        assert_eq!(health["worker"]["metrics"]["processed"], 1, "{}", t.label);
        assert_eq!(health["worker"]["metrics"]["deadLettered"], 0);
        for counter in ["failed", "retried"] {
            assert!(health["worker"]["metrics"][counter].is_u64(), "{counter}: {health}");
        }
        assert_eq!(health["circuit_breakers"]["create_order"], "closed");
        assert_eq!(health["circuit_breakers"]["database"], "closed", "the store's calls go through a breaker");
        assert_eq!(client.get(format!("{url}/health/live")).send().await.unwrap().status(), 200);

        // Lag is reported from librdkafka's statistics, a moment after consuming.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        for line in [
            "whatsapp_messages_received_total{business_id=\"123456\",source=\"webhook\"}",
            "whatsapp_messages_received_total{business_id=\"123456\",source=\"kafka\"}",
            "ai_intent_detected_total{intent=\"ORDER_REQUEST\"}",
            "ai_intent_confidence_bucket{intent=\"ORDER_REQUEST\"",
            "ai_processing_duration_seconds_bucket{intent=\"ORDER_REQUEST\"",
            "whatsapp_action_executed_total{action=\"create_order\",status=\"succeeded\"}",
            "lead_state_changed_total{from=\"new\",to=\"customer\"}",
            "message_duplicate_total",
            "circuit_breaker_state{circuit=\"create_order\",state=\"closed\"} 1",
            "circuit_breaker_state{circuit=\"create_order\",state=\"open\"} 0",
            "circuit_breaker_state{circuit=\"database\",state=\"closed\"} 1",
            // Labels render sorted: partition, then topic.
            ",topic=\"conversation.messages\"} 0",
            "orchestrator_in_flight_messages",
            "orchestrator_messages_total{outcome=\"completed\"}",
            "orchestrator_messages_total{outcome=\"duplicate\"}",
            "whatsapp_webhook_requests_total{status=\"200\"}",
        ] {
            assert!(metrics.contains(line), "{}: {line} missing from /metrics:\n{metrics}", t.label);
        }
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_503_naming_the_failing_probe() {
    let t = testing::sqlite().await;
    let unreachable = KafkaConfig { timeout: Duration::from_millis(300), ..KafkaConfig::default() }
        .with_bootstrap_servers("127.0.0.1:9");
    let health =
        HealthState::new().probe("kafka", Publisher::new(&unreachable).unwrap()).probe("database", t.db.clone());
    let url = serve(http::health::routes(health)).await;
    let answer = common::http_client().get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["checks"]["kafka"]["status"], "failed");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    assert!(body["reason"].as_str().unwrap().starts_with("kafka: "), "{body}");

    // The database gone: its probe fails too, and says so.
    let kafka = EmbeddedKafka::start(1).unwrap();
    let health = HealthState::new()
        .probe("kafka", Publisher::new(&kafka_config(&kafka, "health")).unwrap())
        .probe("database", t.db.clone());
    let url = serve(http::health::routes(health)).await;
    assert_eq!(common::http_client().get(format!("{url}/health")).send().await.unwrap().status(), 200);
    t.db.clone().close().await.unwrap();
    let answer = common::http_client().get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["checks"]["database"]["status"], "failed", "{body}");
    assert_eq!(body["checks"]["kafka"]["status"], "ok", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("database: "), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_the_cloud_api_with_its_token_and_reports_its_status_code() {
    use orchestrator::outbound::{CloudApiConfig, CloudApiSender};
    use orchestrator::testing::fake_cloud_api::{FakeCloudApi, FakeSettings};
    let api = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    let config = CloudApiConfig {
        token: "system-user-token".into(),
        tokens: Default::default(),
        phone_number_id: "123456".into(),
        api_url: api.url().to_owned(),
        timeout: Duration::from_secs(2),
    };
    let sender = CloudApiSender::new(config, orchestrator::BreakerConfig::default()).unwrap();
    let health = HealthState::new().probe("whatsapp_cloud_api", sender);
    let url = serve(http::health::routes(health)).await;
    let client = common::http_client();

    let answer = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["checks"]["whatsapp_cloud_api"]["status"], "ok", "{body}");
    assert!(body["checks"]["whatsapp_cloud_api"]["latencyMs"].as_f64().is_some());

    api.set_down(true);
    let answer = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    let check = &body["checks"]["whatsapp_cloud_api"];
    assert_eq!((check["status"].as_str(), check["statusCode"].as_u64()), (Some("failed"), Some(503)), "{body}");
    assert!(check["error"].as_str().unwrap().contains("503"), "{body}");
    assert_eq!(api.accepted().len(), 0, "the probe sends nothing");
}
