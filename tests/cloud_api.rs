//! The WhatsApp Cloud API sender against a local fake server.

mod common;

use common::kafka_config;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use orchestrator::event::{Button, Envelope, EventData, Priority, ResponseContent, ResponseReady};
use orchestrator::kafka::cloud_api::cloud_api_body;
use orchestrator::kafka::{
    CloudApiConfig, CloudApiSender, EmbeddedKafka, Publisher, ResponseSender, SendError, WhatsAppSender,
};
use orchestrator::{BreakerConfig, BreakerState};
use serde_json::{Value, json};
use tokio::sync::watch;

#[derive(Default)]
struct FakeCloudApi {
    requests: Mutex<Vec<(String, Option<String>, Value)>>,
    statuses: Mutex<VecDeque<u16>>,
}

async fn messages(
    State(fake): State<Arc<FakeCloudApi>>,
    Path(phone_number_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    fake.requests.lock().unwrap().push((phone_number_id, auth, body));
    let status = fake.statuses.lock().unwrap().pop_front().unwrap_or(200);
    (StatusCode::from_u16(status).unwrap(), Json(json!({ "messages": [{ "id": "wamid.sent" }] })))
}

async fn fake_server() -> (Arc<FakeCloudApi>, String) {
    let fake = Arc::new(FakeCloudApi::default());
    let app = Router::new().route("/{phone_number_id}/messages", post(messages)).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}"))
}

fn sender(api_url: &str, failure_threshold: u32) -> CloudApiSender {
    let config = CloudApiConfig {
        token: "secret-token".into(),
        phone_number_id: "1234567890".into(),
        api_url: api_url.to_owned(),
        timeout: Duration::from_secs(5),
    };
    CloudApiSender::new(config, BreakerConfig { failure_threshold, open_timeout: Duration::from_secs(60) }).unwrap()
}

fn reply(content: ResponseContent) -> ResponseReady {
    ResponseReady {
        original_message_id: "wamid.in".into(),
        to_phone: "+15551234567".into(),
        response_type: content.response_type(),
        content,
        generated_at: Utc::now(),
        priority: Priority::Normal,
    }
}

#[tokio::test]
async fn sends_with_the_bearer_token_in_the_cloud_api_format() {
    let (fake, url) = fake_server().await;
    let sender = sender(&url, 5);
    sender.send(&reply(ResponseContent::text("Your order is on its way"))).await.unwrap();
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let (phone_number_id, auth, body) = &requests[0];
    assert_eq!(phone_number_id, "1234567890");
    assert_eq!(auth.as_deref(), Some("Bearer secret-token"));
    assert_eq!(
        body,
        &json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "15551234567",
                 "type": "text", "text": { "preview_url": false, "body": "Your order is on its way" } })
    );
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
    }));
    assert_eq!(template["template"]["language"]["code"], "es_MX");
    assert_eq!(template["template"]["components"][0]["parameters"][0], json!({ "type": "text", "text": "Ana" }));
}

#[tokio::test]
async fn client_errors_are_permanent_server_errors_retryable_and_the_breaker_opens() {
    let (fake, url) = fake_server().await;
    let sender = sender(&url, 2);
    fake.statuses.lock().unwrap().extend([400, 429, 503]);
    let text = reply(ResponseContent::text("hi"));
    assert!(matches!(sender.send(&text).await, Err(SendError::Permanent(ref e)) if e.contains("400")));
    assert_eq!(sender.breaker().state(), BreakerState::Closed, "a bad request is not an outage");
    assert!(matches!(sender.send(&text).await, Err(SendError::Retryable(ref e)) if e.contains("429")));
    assert!(matches!(sender.send(&text).await, Err(SendError::Retryable(ref e)) if e.contains("503")));
    assert_eq!(sender.breaker().state(), BreakerState::Open);
    let before = fake.requests.lock().unwrap().len();
    assert!(matches!(sender.send(&text).await, Err(SendError::Retryable(ref e)) if e.contains("circuit open")));
    assert_eq!(fake.requests.lock().unwrap().len(), before, "an open breaker calls nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_sender_delivers_replies_from_kafka_retrying_a_5xx() {
    let (fake, url) = fake_server().await;
    fake.statuses.lock().unwrap().push_back(503);
    let kafka = EmbeddedKafka::start(2).unwrap();
    let config = kafka_config(&kafka, "orchestrator");
    let response_sender = ResponseSender::new(&config, Arc::new(sender(&url, 5))).unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(response_sender.run(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let envelope = Envelope::new(EventData::ResponseReady(reply(ResponseContent::text("hello"))), "test");
    Publisher::new(&config).unwrap().publish(&envelope).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.requests.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "reply not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    let requests = fake.requests.lock().unwrap();
    assert_eq!(requests.len(), 2, "one 503, then delivered once");
    assert_eq!(requests[1].2["text"]["body"], "hello");
}
