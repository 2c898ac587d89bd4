//! The send API over HTTP (`/api/v1`): every route and every bad input,
//! JWT authentication per organisation, idempotency, the daily and
//! per-second limits, scheduling and cancelling, listing, metrics, health
//! and the OpenAPI document. On SQLite and (with TEST_DATABASE_URL)
//! PostgreSQL; the publishing side is a recording [`Publish`].

mod common;

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use chrono::{SecondsFormat, Utc};
use orchestrator::SqlStore;
use orchestrator::event::{Envelope, EventData, ResponseContent, ResponseReady};
use orchestrator::http::api::RequestRate;
use orchestrator::http::auth::{JwtVerifier, mint_hs256};
use orchestrator::http::{self, ApiState, HealthState};
use orchestrator::message_service::{MessageService, MessageServiceSettings, Scheduler, SchedulerSettings};
use orchestrator::publish::{Publish, PublishError};
use orchestrator::store::{
    ApiMessages, DeliveryStatus, DeliveryStatuses, OutboundMessages, OutboundReply, ReplyKey, ReplyLease, SendClaim,
};
use orchestrator::testing;
use serde_json::{Value, json};

const SECRET: &[u8] = b"send-api-test-secret";

/// Records what is published; fails every publish while `failing`.
#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<ResponseReady>>,
    failing: std::sync::atomic::AtomicBool,
}

impl Recorder {
    fn replies(&self) -> Vec<ResponseReady> {
        self.published.lock().unwrap().clone()
    }

    fn ids(&self) -> Vec<String> {
        self.replies().iter().map(|r| r.original_message_id.trim_start_matches("api:").to_owned()).collect()
    }
}

#[async_trait]
impl Publish for Recorder {
    async fn send_record(
        &self,
        topic: &str,
        _key: Option<&str>,
        payload: &[u8],
        _headers: &[(&str, &[u8])],
    ) -> Result<(), PublishError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PublishError::new(topic, "broker down", false));
        }
        assert_eq!(topic, "conversation.responses");
        let envelope = Envelope::decode(payload).unwrap();
        let EventData::ResponseReady(reply) = envelope.data else { panic!("not a reply: {envelope:?}") };
        self.published.lock().unwrap().push(reply);
        Ok(())
    }
}

fn token(org: Option<&str>) -> String {
    mint_hs256(SECRET, "org_id", org, "", Duration::from_secs(600)).unwrap()
}

/// A running API: its URL, store and recorder.
struct Api {
    url: String,
    client: reqwest::Client,
    store: Arc<SqlStore>,
    recorder: Arc<Recorder>,
    service: MessageService,
    _db: testing::TestDb,
}

impl Api {
    async fn start(db: testing::TestDb, settings: MessageServiceSettings, rate: Option<RequestRate>) -> Self {
        let store = Arc::new(SqlStore::new(db.db.clone()));
        let recorder = Arc::new(Recorder::default());
        let service = MessageService::new(store.clone(), recorder.clone(), settings);
        let state = ApiState::new(service.clone(), JwtVerifier::hs256(SECRET, "org_id"), rate);
        let mut health = HealthState::new();
        health.message_service = Some(service.clone());
        let app: Router =
            http::api::routes(state).merge(http::health::routes(health)).merge(http::metrics::routes(None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(http::serve(listener, app, std::future::pending()));
        Self { url, client: common::http_client(), store, recorder, service, _db: db }
    }

    async fn default(db: testing::TestDb) -> Self {
        Self::start(db, MessageServiceSettings::default(), None).await
    }

    /// Status, `Retry-After` and JSON body of a request as `org`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        org: Option<&str>,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(org) = org {
            request = request.bearer_auth(token(Some(org)));
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        (status, retry_after, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post(&self, org: &str, body: &Value) -> (u16, Value) {
        let (status, _, body) = self.call(reqwest::Method::POST, "/api/v1/messages", Some(org), Some(body), None).await;
        (status, body)
    }

    /// Claims a published message's row as the reply sender does before sending it.
    async fn claim_as_sender(&self, reply: &ResponseReady) -> ReplyLease {
        let outbound = OutboundReply {
            key: ReplyKey {
                tenant_id: reply.tenant().unwrap().into(),
                original_message_id: reply.original_message_id.clone(),
                reply_index: 0,
            },
            phone_number_id: None,
            recipient_phone: reply.to_phone.clone(),
            payload: serde_json::to_string(reply).unwrap(),
        };
        match self.store.claim_send(&outbound, Duration::from_secs(30)).await.unwrap() {
            SendClaim::Acquired { lease, .. } => lease,
            other => panic!("the API's row is not claimable: {other:?}"),
        }
    }

    async fn get(&self, org: &str, path: &str) -> (u16, Value) {
        let (status, _, body) = self.call(reqwest::Method::GET, path, Some(org), None, None).await;
        (status, body)
    }
}

fn text_to(phone: &str, text: &str) -> Value {
    json!({ "recipient_phone": phone, "content": { "text": text } })
}

fn in_seconds(seconds: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn fields(body: &Value) -> Vec<String> {
    body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn every_bad_input_is_a_400_naming_its_field() {
    let api = Api::default(testing::sqlite().await).await;
    let long = "x".repeat(4097);
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({ "content": { "text": "hi" } }), &["recipient_phone"]),
        (text_to("15551234567", "hi"), &["recipient_phone"]),
        (text_to("+1555", "hi"), &["recipient_phone"]),
        (json!({ "recipient_phone": "+15551234567" }), &["content"]),
        (
            json!({ "recipient_phone": "+15551234567", "content": { "text": "hi" },
                    "template": { "name": "t", "language": "en" } }),
            &["content"],
        ),
        (
            json!({ "recipient_phone": "+15551234567", "content": { "text": "Hi {name} {order}" },
                    "variables": { "name": "Ana" } }),
            &["content.text"],
        ),
        (
            json!({ "recipient_phone": "+15551234567", "content": { "text": "Hi {name}" },
                    "variables": { "name": { "first": "Ana" } } }),
            &["variables.name"],
        ),
        (text_to("+15551234567", &long), &["content.text"]),
        (text_to("+15551234567", "   "), &["content.text"]),
        (
            json!({ "recipient_phone": "+15551234567", "content": { "text": "hi" }, "scheduled_at": in_seconds(-60) }),
            &["scheduled_at"],
        ),
        (
            json!({ "recipient_phone": "+15551234567", "content": { "text": "hi" },
                    "scheduled_at": in_seconds(31 * 24 * 3600) }),
            &["scheduled_at"],
        ),
        (
            json!({ "recipient_phone": "+15551234567", "content": { "text": "hi" }, "scheduled_at": "tomorrow" }),
            &["scheduled_at"],
        ),
        (
            json!({ "recipient_phone": "+15551234567",
                    "content": { "text": "listen", "media_url": "https://cdn.test/a.ogg" } }),
            &["content.text"],
        ),
        (
            json!({ "recipient_phone": "+15551234567",
                    "content": { "media_url": "https://cdn.test/a.bin", "media_type": "sticker" } }),
            &["content.media_type"],
        ),
        (
            json!({ "recipient_phone": "+15551234567", "content": { "media_url": "ftp://x/a.png" } }),
            &["content.media_url"],
        ),
        (
            json!({ "recipient_phone": "+15551234567", "template": { "name": "Order Ready!", "language": "" } }),
            &["template.name", "template.language"],
        ),
        (
            json!({ "recipient_phone": "+15551234567",
                    "template": { "name": "order_ready", "language": "en_US", "components": [{ "type": "footer" }] } }),
            &["template.components[0].type"],
        ),
        (
            json!({ "recipient_phone": "+15551234567", "content": { "text": "hi" }, "phone_number_id": "abc" }),
            &["phone_number_id"],
        ),
        // Wrong types and unknown fields are named by their path.
        (json!({ "recipient_phone": 15551234567_u64, "content": { "text": "hi" } }), &["recipient_phone"]),
        (json!({ "recipient_phone": "+15551234567", "content": { "text": 5 } }), &["content.text"]),
        (json!({ "recipient_phone": "+15551234567", "content": { "txt": "hi" } }), &["content.txt"]),
        (json!({ "recipient_phone": "+15551234567", "content": { "text": "hi" }, "priority": "Asap" }), &["priority"]),
    ];
    for (body, expected) in cases {
        let (status, answer) = api.post("acme", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{answer}");
        assert_eq!(fields(&answer), expected.iter().map(|f| f.to_string()).collect::<Vec<_>>(), "{body}: {answer}");
    }
    // Not JSON at all.
    let response = api
        .client
        .post(format!("{}/api/v1/messages", api.url))
        .bearer_auth(token(Some("acme")))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(fields(&answer), ["body"]);
    // An Idempotency-Key that is no key.
    let (status, _, answer) = api
        .call(reqwest::Method::POST, "/api/v1/messages", Some("acme"), Some(&text_to("+15551234567", "hi")), Some(""))
        .await;
    assert_eq!((status, fields(&answer)), (400, vec!["Idempotency-Key".to_owned()]));
    assert!(api.recorder.replies().is_empty(), "nothing refused was published");
    assert_eq!(common::count(&api._db.db, "outbound_messages", "1 = 1").await, 0, "nothing refused was stored");
}

#[tokio::test]
async fn text_media_and_template_messages_go_out_as_replies_of_the_organisation() {
    for db in testing::databases().await {
        let label = db.label;
        let api = Api::default(db).await;
        let (status, text) = api
            .post(
                "acme",
                &json!({ "recipient_phone": "+15551234567", "content": { "text": "Hi {name}, order {n} is {{ready}}" },
                         "variables": { "name": "Ana", "n": 42 }, "phone_number_id": "1234567890", "priority": "Urgent" }),
            )
            .await;
        assert_eq!((status, text["status"].as_str()), (202, Some("queued")), "{label}: {text}");
        let (_, media) = api
            .post(
                "acme",
                &json!({ "recipient_phone": "+5215512345678",
                         "content": { "text": "Your invoice", "media_url": "https://cdn.test/invoice.pdf" } }),
            )
            .await;
        let components = json!([{ "type": "body", "parameters": [{ "type": "text", "text": "Ana" }] }]);
        let (_, template) = api
            .post(
                "acme",
                &json!({ "recipient_phone": "+447700900123",
                         "template": { "name": "order_ready", "language": "en_GB", "components": components } }),
            )
            .await;
        let replies = api.recorder.replies();
        assert_eq!(replies.len(), 3, "{label}");
        let by_id = |answer: &Value| {
            let id = format!("api:{}", answer["id"].as_str().unwrap());
            replies.iter().find(|r| r.original_message_id == id).unwrap().clone()
        };
        let text_reply = by_id(&text);
        assert_eq!(text_reply.content, ResponseContent::text("Hi Ana, order 42 is {ready}"));
        assert_eq!(text_reply.to_phone, "+15551234567");
        assert_eq!(text_reply.tenant(), Some("acme"));
        assert_eq!(text_reply.business_number(), Some("1234567890"));
        assert_eq!(text_reply.priority, orchestrator::event::Priority::Urgent);
        assert_eq!(
            by_id(&media).content,
            ResponseContent::Media {
                media_type: "document".into(),
                media_id: None,
                url: Some("https://cdn.test/invoice.pdf".into()),
                caption: Some("Your invoice".into()),
            }
        );
        let ResponseContent::Template { name, language, components: sent, .. } = by_id(&template).content else {
            panic!("{label}: not a template")
        };
        assert_eq!((name.as_str(), language.as_str(), json!(sent)), ("order_ready", "en_GB", components.clone()));
        // The rows say the same, for SQL.
        let (_, shown) = api.get("acme", &format!("/api/v1/messages/{}", text["id"].as_str().unwrap())).await;
        assert_eq!(shown["status"], "queued", "{label}: {shown}");
        assert_eq!(shown["kind"], "text");
        assert_eq!(shown["recipient_phone"], "+15551234567");
        assert_eq!(shown["history"].as_array().unwrap().len(), 1);
        assert_eq!(
            common::count(&api._db.db, "outbound_messages", "tenant_id = 'acme' AND dispatched_at IS NOT NULL").await,
            3,
            "{label}: published messages are marked"
        );
        assert_eq!(api.service.due_count().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn an_idempotency_key_answers_the_first_answer_and_sends_once() {
    for db in testing::databases().await {
        let label = db.label;
        let api = Api::default(db).await;
        let body = text_to("+15551234567", "once");
        let post = |org: &'static str, body: Value, key: &'static str| {
            let api = &api;
            async move { api.call(reqwest::Method::POST, "/api/v1/messages", Some(org), Some(&body), Some(key)).await }
        };
        let (first_status, _, first) = post("acme", body.clone(), "order-77").await;
        let (again_status, _, again) = post("acme", body.clone(), "order-77").await;
        assert_eq!((first_status, again_status), (202, 202), "{label}");
        assert_eq!(first, again, "{label}: the retry gets the first answer");
        assert_eq!(api.recorder.replies().len(), 1, "{label}: sent once");
        // The same key with another body is a conflict, and sends nothing.
        let (status, _, conflict) = post("acme", text_to("+15551234567", "twice?"), "order-77").await;
        assert_eq!((status, conflict["error"].as_str()), (409, Some("conflict")), "{label}: {conflict}");
        // Keys are per organisation.
        let (status, _, other) = post("globex", body.clone(), "order-77").await;
        assert_eq!(status, 202);
        assert_ne!(other["id"], first["id"]);
        assert_eq!(api.recorder.replies().len(), 2, "{label}");
    }
}

#[tokio::test]
async fn a_message_stored_but_not_published_goes_out_with_the_retry_or_the_scheduler() {
    let api = Api::start(
        testing::sqlite().await,
        MessageServiceSettings { publish_grace: Duration::from_millis(300), ..Default::default() },
        None,
    )
    .await;
    api.recorder.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let key = Some("k-1");
    let body = text_to("+15551234567", "broker was down");
    let (status, _, first) = api.call(reqwest::Method::POST, "/api/v1/messages", Some("acme"), Some(&body), key).await;
    assert_eq!(status, 202, "stored is accepted: {first}");
    let (_, _, lost) = api
        .call(reqwest::Method::POST, "/api/v1/messages", Some("acme"), Some(&text_to("+15550001111", "x")), None)
        .await;
    assert!(api.recorder.replies().is_empty());
    api.recorder.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    // The client's retry publishes the first one.
    let (_, _, again) = api.call(reqwest::Method::POST, "/api/v1/messages", Some("acme"), Some(&body), key).await;
    assert_eq!(again, first);
    assert_eq!(api.recorder.ids(), [first["id"].as_str().unwrap()]);
    // The other one is the scheduler's once its grace is over.
    let scheduler = Scheduler::new(api.store.clone(), api.recorder.clone(), SchedulerSettings::default());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let round = scheduler.round().await.unwrap();
    assert_eq!((round.claimed, round.dispatched), (1, 1));
    assert_eq!(api.recorder.ids()[1], lost["id"].as_str().unwrap());
    assert_eq!(scheduler.round().await.unwrap().claimed, 0, "published once");
}

#[tokio::test]
async fn tokens_open_only_their_organisations_messages() {
    let api = Api::default(testing::sqlite().await).await;
    let (_, sent) = api.post("acme", &text_to("+15551234567", "mine")).await;
    let path = format!("/api/v1/messages/{}", sent["id"].as_str().unwrap());
    // No token, a forged one, an expired one: 401.
    let (status, _, _) = api.call(reqwest::Method::GET, &path, None, None, None).await;
    assert_eq!(status, 401);
    let forged = mint_hs256(b"another-secret", "org_id", Some("acme"), "", Duration::from_secs(60)).unwrap();
    let expired = {
        let claims = json!({ "org_id": "acme", "exp": Utc::now().timestamp() - 600 });
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET))
            .unwrap()
    };
    let not_yet = {
        let claims =
            json!({ "org_id": "acme", "exp": Utc::now().timestamp() + 600, "nbf": Utc::now().timestamp() + 300 });
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET))
            .unwrap()
    };
    for bad in [forged, expired, not_yet, "not-a-jwt".to_owned()] {
        for route in [("GET", path.as_str()), ("POST", "/api/v1/messages"), ("GET", "/api/v1/messages")] {
            let method = reqwest::Method::from_bytes(route.0.as_bytes()).unwrap();
            let response = api.client.request(method, format!("{}{}", api.url, route.1)).bearer_auth(&bad).send().await;
            assert_eq!(response.unwrap().status().as_u16(), 401, "{route:?}");
        }
    }
    // A valid token that names no organisation: 403.
    let response = api.client.get(format!("{}/api/v1/messages", api.url)).bearer_auth(token(None)).send().await;
    assert_eq!(response.unwrap().status().as_u16(), 403);
    // Another organisation's message: 403 to read or cancel it; an unknown id: 404.
    assert_eq!(api.get("globex", &path).await.0, 403);
    let (status, _, _) = api.call(reqwest::Method::DELETE, &path, Some("globex"), None, None).await;
    assert_eq!(status, 403);
    assert_eq!(api.get("acme", "/api/v1/messages/no-such-id").await.0, 404);
    assert_eq!(api.get("acme", &path).await.0, 200);
    // And its list does not show it.
    let (_, list) = api.get("globex", "/api/v1/messages").await;
    assert_eq!(list["messages"], json!([]));
}

#[tokio::test]
async fn a_scheduled_message_waits_for_its_time_and_can_be_cancelled_before() {
    for db in testing::databases().await {
        let label = db.label;
        let api = Api::default(db).await;
        let scheduler = Scheduler::new(api.store.clone(), api.recorder.clone(), SchedulerSettings::default());
        let body = |text: &str| json!({ "recipient_phone": "+15551234567", "content": { "text": text }, "scheduled_at": in_seconds(1) });
        let (status, later) = api.post("acme", &body("later")).await;
        assert_eq!((status, later["status"].as_str()), (202, Some("scheduled")), "{label}: {later}");
        assert!(later["scheduled_at"].is_string());
        let (_, cancelled) = api.post("acme", &body("never")).await;
        let cancel_path = format!("/api/v1/messages/{}", cancelled["id"].as_str().unwrap());
        let (status, _, view) = api.call(reqwest::Method::DELETE, &cancel_path, Some("acme"), None, None).await;
        assert_eq!((status, view["status"].as_str()), (200, Some("cancelled")), "{label}: {view}");
        let (status, _, again) = api.call(reqwest::Method::DELETE, &cancel_path, Some("acme"), None, None).await;
        assert_eq!(status, 409, "{label}: cancelled twice: {again}");
        // Not due yet: nothing goes out.
        assert_eq!(scheduler.round().await.unwrap().claimed, 0, "{label}");
        assert!(api.recorder.replies().is_empty());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(api.service.due_count().await.unwrap(), 1, "{label}: the cancelled one is not due");
        let round = scheduler.round().await.unwrap();
        assert_eq!((round.claimed, round.dispatched), (1, 1), "{label}");
        assert_eq!(api.recorder.ids(), [later["id"].as_str().unwrap()], "{label}");
        assert_eq!(scheduler.round().await.unwrap().claimed, 0, "{label}: once");
        let (_, shown) = api.get("acme", &format!("/api/v1/messages/{}", later["id"].as_str().unwrap())).await;
        let history: Vec<&str> =
            shown["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect();
        assert_eq!(history, ["scheduled", "queued"], "{label}: {shown}");
        assert_eq!(shown["status"], "queued");
        // Published and not being sent: still cancellable, and the sender then withholds it.
        let path = format!("/api/v1/messages/{}", later["id"].as_str().unwrap());
        let (status, _, _) = api.call(reqwest::Method::DELETE, &path, Some("acme"), None, None).await;
        assert_eq!(status, 200, "{label}");
        let (_, cancelled_view) = api.get("acme", &cancel_path).await;
        let history: Vec<&str> =
            cancelled_view["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect();
        assert_eq!(history, ["scheduled", "cancelled"], "{label}");
    }
}

#[tokio::test]
async fn the_status_history_follows_the_sender_and_the_webhook() {
    for db in testing::databases().await {
        let label = db.label;
        let api = Api::default(db).await;
        let (_, sent) = api.post("acme", &text_to("+15551234567", "track me")).await;
        let id = sent["id"].as_str().unwrap();
        // The reply sender claims and sends it as it would any reply.
        let lease = api.claim_as_sender(&api.recorder.replies()[0]).await;
        // While it is being sent it cannot be cancelled.
        let path = format!("/api/v1/messages/{id}");
        let (status, _, too_late) = api.call(reqwest::Method::DELETE, &path, Some("acme"), None, None).await;
        assert_eq!(status, 409, "{label}: {too_late}");
        api.store.record_sent(&lease, Some("wamid.T1")).await.unwrap();
        for status in ["delivered", "read"] {
            api.store
                .record_status(&DeliveryStatus {
                    message_id: "wamid.T1".into(),
                    recipient_phone: "15551234567".into(),
                    status: status.into(),
                    timestamp: Utc::now(),
                    error: None,
                    phone_number_id: None,
                })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_, shown) = api.get("acme", &path).await;
        let history: Vec<&str> =
            shown["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect();
        assert_eq!(history, ["queued", "sent", "delivered", "read"], "{label}: {shown}");
        assert_eq!((shown["status"].as_str(), shown["wamid"].as_str()), (Some("read"), Some("wamid.T1")));
        // A failure reported by the webhook keeps WhatsApp's code and title.
        let (_, failing) = api.post("acme", &text_to("+15557654321", "will fail")).await;
        let lease = api.claim_as_sender(&api.recorder.replies()[1]).await;
        api.store.record_sent(&lease, Some("wamid.T2")).await.unwrap();
        api.store
            .record_status(&DeliveryStatus {
                message_id: "wamid.T2".into(),
                recipient_phone: "15557654321".into(),
                status: "failed".into(),
                timestamp: Utc::now(),
                error: Some("131026: Message undeliverable".into()),
                phone_number_id: None,
            })
            .await
            .unwrap();
        let (_, shown) = api.get("acme", &format!("/api/v1/messages/{}", failing["id"].as_str().unwrap())).await;
        let last = shown["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["status"], "failed", "{label}: {shown}");
        assert_eq!(last["error_code"], 131026, "{label}: {shown}");
        assert_eq!(last["error"], "131026: Message undeliverable");
    }
}

#[tokio::test]
async fn the_list_filters_and_pages_newest_first() {
    for db in testing::databases().await {
        let label = db.label;
        let api = Api::default(db).await;
        let mut ids = Vec::new();
        for (i, phone) in
            ["+15550000001", "+15550000002", "+15550000001", "+15550000001", "+15550000002"].iter().enumerate()
        {
            let (_, sent) = api.post("acme", &text_to(phone, &format!("m{i}"))).await;
            ids.push(sent["id"].as_str().unwrap().to_owned());
        }
        api.post("globex", &text_to("+15550000001", "not acme's")).await;
        let mut seen = Vec::new();
        let mut path = "/api/v1/messages?limit=2".to_owned();
        loop {
            let (status, page) = api.get("acme", &path).await;
            assert_eq!(status, 200, "{label}: {page}");
            let messages = page["messages"].as_array().unwrap();
            assert!(messages.len() <= 2);
            seen.extend(messages.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/api/v1/messages?limit=2&cursor={cursor}"),
                None => break,
            }
        }
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, newest_first, "{label}");
        let (_, to_two) = api.get("acme", "/api/v1/messages?recipient=%2B15550000002").await;
        assert_eq!(to_two["messages"].as_array().unwrap().len(), 2, "{label}");
        let (_, queued) = api.get("acme", "/api/v1/messages?status=queued").await;
        assert_eq!(queued["messages"].as_array().unwrap().len(), 5);
        let (_, sent) = api.get("acme", "/api/v1/messages?status=sent").await;
        assert_eq!(sent["messages"], json!([]));
        let since = (Utc::now() + chrono::Duration::seconds(5)).to_rfc3339_opts(SecondsFormat::Secs, true);
        let (_, future) = api.get("acme", &format!("/api/v1/messages?since={since}")).await;
        assert_eq!(future["messages"], json!([]));
        for (query, field) in [
            ("status=lost", "status"),
            ("since=yesterday", "since"),
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            ("cursor=abc", "cursor"),
            ("recipient=555", "recipient"),
        ] {
            let (status, answer) = api.get("acme", &format!("/api/v1/messages?{query}")).await;
            assert_eq!((status, fields(&answer)), (400, vec![field.to_owned()]), "{query}");
        }
    }
}

#[tokio::test]
async fn a_batch_answers_each_entry_in_order_and_a_bad_one_refuses_no_good_one() {
    for db in testing::databases().await {
        let label = db.label;
        let api = Api::default(db).await;
        let batch = json!({ "messages": [
            text_to("+15551230001", "one"),
            text_to("not-a-phone", "two"),
            { "recipient_phone": "+15551230003", "content": { "text": "three" }, "scheduled_at": in_seconds(600) },
            { "recipient_phone": "+15551230004", "content": { "text": 4 } },
            text_to("+15551230005", "five"),
        ]});
        let (status, _, answer) =
            api.call(reqwest::Method::POST, "/api/v1/messages/batch", Some("acme"), Some(&batch), None).await;
        assert_eq!(status, 202, "{label}: {answer}");
        assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(3), Some(2)));
        let results = answer["results"].as_array().unwrap();
        let statuses: Vec<Option<&str>> = results.iter().map(|r| r["status"].as_str()).collect();
        assert_eq!(statuses, [Some("queued"), None, Some("scheduled"), None, Some("queued")], "{label}");
        assert_eq!(results[1]["errors"][0]["field"], "recipient_phone");
        assert_eq!(results[3]["errors"][0]["field"], "messages[3].content.text");
        assert!(results.iter().enumerate().all(|(i, r)| r["index"] == i));
        assert_eq!(api.recorder.replies().len(), 2, "{label}: the two due now are published");
        // Too many, none, all bad.
        let many: Vec<Value> = (0..1001).map(|i| text_to(&format!("+1555{i:07}"), "x")).collect();
        for (body, expected) in [
            (json!({ "messages": many }), 400),
            (json!({ "messages": [] }), 400),
            (json!({ "messages": [text_to("x", "y")] }), 400),
            (json!({ "message": [] }), 400),
        ] {
            let (status, _, answer) =
                api.call(reqwest::Method::POST, "/api/v1/messages/batch", Some("acme"), Some(&body), None).await;
            assert_eq!(status, expected, "{label}: {answer}");
        }
        // An Idempotency-Key makes the whole batch safe to retry.
        let small = json!({ "messages": [text_to("+15551239991", "a"), text_to("+15551239992", "b")] });
        let (_, _, first) =
            api.call(reqwest::Method::POST, "/api/v1/messages/batch", Some("acme"), Some(&small), Some("b-1")).await;
        let (_, _, again) =
            api.call(reqwest::Method::POST, "/api/v1/messages/batch", Some("acme"), Some(&small), Some("b-1")).await;
        assert_eq!(first, again, "{label}");
        assert_eq!(api.recorder.replies().len(), 4, "{label}");
    }
}

#[tokio::test]
async fn per_second_and_daily_limits_answer_429_with_retry_after_per_organisation() {
    for db in testing::databases().await {
        let label = db.label;
        let rate = RequestRate { per_second: NonZeroU32::new(1).unwrap(), burst: NonZeroU32::new(2).unwrap() };
        let settings = MessageServiceSettings { daily_limit: Some(3), ..Default::default() };
        let api = Api::start(db, settings, Some(rate)).await;
        let body = text_to("+15551234567", "hi");
        let post = |org: &'static str| {
            let (api, body) = (&api, &body);
            async move { api.call(reqwest::Method::POST, "/api/v1/messages", Some(org), Some(body), None).await }
        };
        assert_eq!(post("acme").await.0, 202);
        assert_eq!(post("acme").await.0, 202);
        let (status, retry_after, answer) = post("acme").await;
        assert_eq!((status, answer["error"].as_str()), (429, Some("rate_limited")), "{label}: {answer}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{label}");
        // Another organisation has its own rate.
        assert_eq!(post("globex").await.0, 202, "{label}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The daily limit: acme has 2 of 3; a batch of 2 would pass it and is refused whole.
        let batch = json!({ "messages": [text_to("+15551234567", "a"), text_to("+15551234568", "b")] });
        let (status, retry_after, answer) =
            api.call(reqwest::Method::POST, "/api/v1/messages/batch", Some("acme"), Some(&batch), None).await;
        assert_eq!(status, 429, "{label}: {answer}");
        let seconds: u64 = retry_after.unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&seconds), "{label}: until the next UTC day, {seconds}");
        assert_eq!(common::count(&api._db.db, "outbound_messages", "tenant_id = 'acme'").await, 2, "{label}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(post("acme").await.0, 202, "{label}: the third still fits");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(post("acme").await.0, 429, "{label}: the fourth does not");
        // The day's count is the sum of the organisation's counter rows.
        let three = "tenant_id = 'acme' AND (SELECT SUM(messages) FROM api_usage WHERE tenant_id = 'acme') = 3";
        assert!(common::count(&api._db.db, "api_usage", three).await >= 1, "{label}: 3 counted");
    }
}

#[tokio::test]
async fn metrics_health_and_openapi_describe_the_service() {
    let api = Api::default(testing::sqlite().await).await;
    api.post("acme", &text_to("+15551234567", "hi")).await;
    let scheduled =
        json!({ "recipient_phone": "+15551234567", "content": { "text": "soon" }, "scheduled_at": in_seconds(1) });
    api.post("acme", &scheduled).await;
    let batch = json!({ "messages": [text_to("+15551234567", "a")] });
    api.call(reqwest::Method::POST, "/api/v1/messages/batch", Some("acme"), Some(&batch), None).await;
    let metrics = api.client.get(format!("{}/metrics", api.url)).send().await.unwrap().text().await.unwrap();
    for line in [
        "message_service_processed_total{status=\"queued\"}",
        "message_service_processed_total{status=\"scheduled\"}",
        "message_service_processing_duration_seconds_count{route=\"send\"}",
        "message_service_processing_duration_seconds_count{route=\"batch\"}",
        "message_service_active_batches 0",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let health: Value = api.client.get(format!("{}/health", api.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["message_service"]["scheduledDue"], 1, "{health}");
    assert_eq!(health["message_service"]["activeBatches"], 0);

    // The document needs no token, and describes every route with the bearer scheme.
    let doc: Value =
        api.client.get(format!("{}/api/v1/openapi.json", api.url)).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().unwrap();
    let routes: HashSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| (m.clone(), path.clone())))
        .filter(|(method, _)| method != "parameters")
        .collect();
    for route in [
        ("post", "/api/v1/messages"),
        ("get", "/api/v1/messages"),
        ("post", "/api/v1/messages/batch"),
        ("get", "/api/v1/messages/{id}"),
        ("delete", "/api/v1/messages/{id}"),
    ] {
        assert!(routes.contains(&(route.0.to_owned(), route.1.to_owned())), "{route:?} not documented");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer_jwt"]["scheme"], "bearer");
    let schema = &doc["components"]["schemas"]["SendRequest"]["properties"];
    for field in ["recipient_phone", "content", "variables", "template", "scheduled_at"] {
        assert!(schema.get(field).is_some(), "SendRequest.{field} not in the schema");
    }
    assert!(paths["/api/v1/messages"]["post"]["responses"].get("429").is_some());
}

#[tokio::test]
async fn two_schedulers_on_postgresql_publish_each_due_message_once() {
    let Some(db) = testing::postgres().await else {
        assert!(std::env::var_os("ORCHESTRATOR_REQUIRE_POSTGRES").is_none(), "PostgreSQL required");
        return;
    };
    let store = Arc::new(SqlStore::new(db.db.clone()));
    let setup = MessageService::new(store.clone(), Arc::new(Recorder::default()), MessageServiceSettings::default());
    let due = in_seconds(1);
    let entries: Vec<Value> = (0..600)
        .map(
            |i| json!({ "recipient_phone": format!("+1555{i:07}"), "content": { "text": "due" }, "scheduled_at": due }),
        )
        .collect();
    for chunk in entries.chunks(300) {
        assert_eq!(setup.send_batch("acme", chunk, None).await.unwrap().accepted, 300);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let settings = SchedulerSettings { batch: 25, ..SchedulerSettings::default() };
    let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let (first, second) = (
        Scheduler::new(store.clone(), a.clone(), settings.clone()),
        Scheduler::new(store.clone(), b.clone(), settings),
    );
    let drain = |scheduler: Scheduler| async move {
        let mut rounds = 0;
        while scheduler.round().await.unwrap().claimed > 0 {
            rounds += 1;
        }
        rounds
    };
    let (rounds_a, rounds_b) = tokio::join!(drain(first), drain(second));
    let mut all = a.ids();
    all.extend(b.ids());
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (600, 600), "each published once");
    assert!(rounds_a > 0 && rounds_b > 0, "both worked: {rounds_a} and {rounds_b} rounds");
    assert_eq!(store.due_count(Utc::now()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_scheduler_that_dies_holding_messages_leaves_them_to_the_next_after_its_lease() {
    for db in testing::databases().await {
        let label = db.label;
        let api = Api::default(db).await;
        let body =
            json!({ "recipient_phone": "+15551234567", "content": { "text": "x" }, "scheduled_at": in_seconds(1) });
        let (_, scheduled) = api.post("acme", &body).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The first scheduler claims and dies before publishing.
        let claim = api.store.claim_due(Utc::now(), 10, Duration::from_millis(500)).await.unwrap();
        assert_eq!(claim.messages.len(), 1, "{label}");
        let next = Scheduler::new(api.store.clone(), api.recorder.clone(), SchedulerSettings::default());
        assert_eq!(next.round().await.unwrap().claimed, 0, "{label}: held by the first");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(next.round().await.unwrap().dispatched, 1, "{label}");
        assert_eq!(api.recorder.ids(), [scheduled["id"].as_str().unwrap()]);
        // The dead one's token no longer marks anything.
        assert_eq!(
            api.store
                .mark_dispatched(Some(claim.token), &[scheduled["id"].as_str().unwrap().to_owned()])
                .await
                .unwrap(),
            0
        );
    }
}

#[tokio::test]
async fn an_unreadable_stored_message_goes_to_the_dead_letter_queue_once_not_round_after_round() {
    use orchestrator::store::{DeadLetterQueue, DlqFilter, NewApiMessage, OutboundStatus, Page};
    for db in testing::databases().await {
        let label = db.label;
        let api = Api::default(db).await;
        let due = Utc::now() - chrono::Duration::seconds(1);
        let corrupt = NewApiMessage {
            id: "corrupt-1".into(),
            tenant_id: "acme".into(),
            recipient_phone: "+15551234567".into(),
            phone_number_id: None,
            payload: "{not a reply".into(),
            preview: "?".into(),
            request_hash: "h".into(),
            scheduled_at: Some(due),
            dispatch_due_at: due,
        };
        api.store.insert_api_messages("acme", &[corrupt], None).await.unwrap();
        let scheduler = Scheduler::new(api.store.clone(), api.recorder.clone(), SchedulerSettings::default());
        let round = scheduler.round().await.unwrap();
        assert_eq!((round.claimed, round.dispatched), (1, 0), "{label}");
        assert!(api.recorder.replies().is_empty(), "{label}: nothing published");
        let stored = api.store.api_message("corrupt-1").await.unwrap().unwrap();
        assert_eq!(stored.status, OutboundStatus::Failed, "{label}");
        let entries = api.store.list(&DlqFilter::default(), Page { limit: 10, offset: 0 }).await.unwrap();
        assert_eq!(entries.len(), 1, "{label}: {entries:?}");
        let entry = &entries[0];
        assert_eq!((entry.message_id.as_deref(), entry.tenant_id.as_deref()), (Some("corrupt-1"), Some("acme")));
        assert_eq!(entry.failure_type, orchestrator::event::FailureType::SerializationError, "{label}");
        assert_eq!(entry.payload, b"{not a reply", "{label}: the bytes as stored");
        assert!(entry.error.contains("corrupt-1"), "{label}: {}", entry.error);
        // Out of the scheduler's way: the next round has nothing to claim.
        assert_eq!(scheduler.round().await.unwrap().claimed, 0, "{label}");
    }
}
