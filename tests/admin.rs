//! The dead-letter queue operated by people: the admin HTTP API (bearer
//! token, filters, paging, groups, show, discard, replay one and in bulk)
//! and the consumer binary's `dlq` commands. On SQLite and (with
//! TEST_DATABASE_URL) PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use chrono::{DateTime, SecondsFormat, Utc};
use common::{CallLog, Running, Scripted, count, fast_config, kafka_config, message_received};
use orchestrator::dlq::failure_fingerprint;
use orchestrator::dlq::{DlqService, REPLAY_OF_HEADER};
use orchestrator::event::{Envelope, EventData, FailureType, topics};
use orchestrator::http::{self, AdminState};
use orchestrator::kafka::{ConsumerRuntime, EmbeddedKafka, Publisher, RuntimeSettings};
use orchestrator::store::{DeadLetterQueue, DlqStatus, NewDeadLetter, SourceInfo, Store};
use orchestrator::testing;
use orchestrator::{ActionError, KeywordClassifier, Orchestrator, SqlStore};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

const TOKEN: &str = "admin-s3cret";

/// Non-UTF-8 bytes and their base64.
const BINARY: &[u8] = &[0xff, 0xfe, 0x00, 0x01];
const BINARY_BASE64: &str = "//4AAQ==";

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, app, std::future::pending()));
    url
}

/// The admin routes over `store`, replaying with `publisher`, behind `token`.
async fn admin_server(store: Arc<SqlStore>, publisher: Option<Publisher>, token: &str) -> String {
    let dlq = match publisher {
        Some(publisher) => DlqService::new(store).with_publisher(publisher),
        None => DlqService::new(store),
    };
    serve(http::admin::routes(AdminState::new(dlq, token))).await
}

/// Percent-encodes a query-string value (reqwest is built without its `query` feature).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An authorized client of the admin API.
struct Admin {
    client: reqwest::Client,
    url: String,
}

impl Admin {
    fn new(url: &str) -> Self {
        Self { client: common::http_client(), url: url.to_owned() }
    }

    fn address(&self, path: &str, query: &[(&str, &str)]) -> String {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        if query.is_empty() { format!("{}{path}", self.url) } else { format!("{}{path}?{}", self.url, query.join("&")) }
    }

    /// Status and body (JSON, or the text as a JSON string when it is not JSON).
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(TOKEN).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        self.send(self.client.get(self.address(path, query))).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.post(self.address(path, &[]));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// The ids `GET /admin/dlq` lists for `query`, in order.
    async fn ids(&self, query: &[(&str, &str)]) -> Vec<i64> {
        let (status, body) = self.get("/admin/dlq", query).await;
        assert_eq!(status, 200, "GET /admin/dlq {query:?}: {body}");
        body["items"].as_array().unwrap().iter().map(|item| item["id"].as_i64().unwrap()).collect()
    }

    /// `GET /admin/dlq/{id}`, which must answer 200.
    async fn show(&self, id: i64) -> Value {
        let (status, body) = self.get(&format!("/admin/dlq/{id}"), &[]).await;
        assert_eq!(status, 200, "GET /admin/dlq/{id}: {body}");
        body
    }
}

/// A dead letter as the pipeline would park it.
fn entry(
    message_id: Option<&str>,
    tenant: Option<&str>,
    source: Option<(&str, &str)>,
    failure_type: FailureType,
    error: &str,
    payload: &[u8],
) -> NewDeadLetter {
    NewDeadLetter {
        message_id: message_id.map(str::to_owned),
        tenant_id: tenant.map(str::to_owned),
        source: source.map(|(topic, key)| SourceInfo {
            topic: topic.to_owned(),
            partition: 1,
            offset: 42,
            key: Some(key.to_owned()),
        }),
        payload: payload.to_vec(),
        failure_type,
        error: error.to_owned(),
        attempt_count: 3,
        trace_context: None,
        conversation: None,
    }
}

/// Reads every partition of `topic` from the start (no consumer-group join)
/// until `done` holds for what arrived, or `wait` passed.
async fn read_until(
    kafka: &EmbeddedKafka,
    topic: &str,
    wait: Duration,
    done: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let group = format!("reader-{}", uuid::Uuid::new_v4());
    let reader: StreamConsumer = kafka_config(kafka, &group).consumer_config(&group).create().unwrap();
    let metadata = reader.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        partitions.add_partition_offset(topic, partition.id(), Offset::Beginning).unwrap();
    }
    assert!(partitions.count() > 0, "{topic} has no partitions");
    reader.assign(&partitions).unwrap();
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while !done(&got) && Instant::now() < deadline {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), reader.recv()).await {
            got.push(message.detach());
        }
    }
    got
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    orchestrator::kafka::headers::value(message, name)
}

/// The message id of a MessageReceived on the wire, if it is one.
fn received_id(message: &OwnedMessage) -> Option<String> {
    match Envelope::decode(message.payload()?).ok()?.data {
        EventData::MessageReceived(m) => Some(m.message_id),
        _ => None,
    }
}

/// Waits until `condition` counts at least one row of `table` (or fails after `wait`).
async fn wait_for_row(db: &sea_orm::DatabaseConnection, table: &str, condition: &str, wait: Duration, what: &str) {
    let deadline = Instant::now() + wait;
    while count(db, table, condition).await == 0 {
        assert!(Instant::now() < deadline, "{what}: no row in {table} WHERE {condition} after {wait:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_requests_without_the_token() {
    let t = testing::sqlite().await;
    let store = Arc::new(SqlStore::new(t.db.clone()));
    let id = store
        .dead_letter(None, &entry(Some("wamid.auth"), Some("acme"), None, FailureType::UnknownError, "boom", b"{}"))
        .await
        .unwrap();
    let url = admin_server(store.clone(), None, TOKEN).await;
    let client = common::http_client();
    let list = format!("{url}/admin/dlq");

    let anonymous = client.get(&list).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "no Authorization header");
    assert_eq!(anonymous.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(body.get("items").is_none(), "nothing leaks to an anonymous caller: {body}");

    for (case, value) in [
        ("wrong token", "Bearer wrong-token".to_owned()),
        ("the token with a suffix", format!("Bearer {TOKEN}x")),
        ("a prefix of the token", format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        ("empty bearer", "Bearer ".to_owned()),
        ("the token without the scheme", TOKEN.to_owned()),
        ("another scheme", format!("Basic {TOKEN}")),
    ] {
        let status = client.get(&list).header("authorization", value).send().await.unwrap().status();
        assert_eq!(status, 401, "{case}");
    }
    // Every route is behind the token, the mutating ones too.
    for path in [format!("/admin/dlq/{id}"), "/admin/dlq/groups".to_owned()] {
        let status = client.get(format!("{url}{path}")).bearer_auth("wrong").send().await.unwrap().status();
        assert_eq!(status, 401, "GET {path}");
    }
    for path in [format!("/admin/dlq/{id}/discard"), format!("/admin/dlq/{id}/replay"), "/admin/dlq/replay".to_owned()]
    {
        let status = client.post(format!("{url}{path}")).bearer_auth("wrong").send().await.unwrap().status();
        assert_eq!(status, 401, "POST {path}");
    }
    let untouched = store.get(id).await.unwrap().unwrap();
    assert_eq!((untouched.status, untouched.replay_count), (DlqStatus::Failed, 0), "refused requests change nothing");

    let allowed = client.get(&list).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(allowed.status(), 200, "the right token");
    let body: Value = allowed.json().await.unwrap();
    assert_eq!(body["items"][0]["id"], id, "{body}");

    // No token configured: nothing gets in, not even an empty bearer.
    let closed = admin_server(store, None, "").await;
    for value in ["Bearer ", "Bearer"] {
        let status =
            client.get(format!("{closed}/admin/dlq")).header("authorization", value).send().await.unwrap().status();
        assert_eq!(status, 401, "empty configured token, {value:?}");
    }
}

#[tokio::test]
async fn an_admin_scoped_jwt_opens_the_admin_routes_and_other_tokens_do_not() {
    const SECRET: &[u8] = b"jwt-test-secret";
    let t = testing::databases().await.remove(0);
    let store = Arc::new(SqlStore::new(t.db.clone()));
    let id = store
        .dead_letter(None, &entry(Some("wamid.jwt"), Some("acme"), None, FailureType::UnknownError, "boom", b"{}"))
        .await
        .unwrap();
    // JWTs only: no static token.
    let jwt = http::auth::JwtVerifier::hs256(SECRET, "org_id");
    let state = AdminState { dlq: DlqService::new(store.clone()), token: None, jwt: Some(jwt) };
    let url = serve(http::admin::routes(state)).await;
    let client = common::http_client();
    let list = format!("{url}/admin/dlq");
    let mint = |scope: &str, ttl: u64| {
        http::auth::mint_hs256(SECRET, "org_id", Some("acme"), scope, Duration::from_secs(ttl)).unwrap()
    };

    let admin = client.get(&list).bearer_auth(mint("messages admin", 60)).send().await.unwrap();
    assert_eq!(admin.status(), 200);
    let body: Value = admin.json().await.unwrap();
    assert_eq!(body["items"][0]["id"], id, "{body}");

    let plain = client.get(&list).bearer_auth(mint("messages", 60)).send().await.unwrap();
    assert_eq!(plain.status(), 403, "a valid token without the admin scope");
    let body: Value = plain.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");

    // An hour-old token, well past the minute of clock skew a verifier allows.
    let old = chrono::Utc::now().timestamp() - 3600;
    let claims = json!({ "exp": old, "nbf": old - 60, "org_id": "acme", "scope": "admin" });
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let foreign = http::auth::mint_hs256(b"another secret", "org_id", None, "admin", Duration::from_secs(60)).unwrap();
    for (case, token) in [("expired", expired), ("signed with another secret", foreign)] {
        let refused = client.get(&list).bearer_auth(token).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{case}");
    }
    let status = client.post(format!("{url}/admin/dlq/{id}/discard")).bearer_auth(mint("", 60)).send().await.unwrap();
    assert_eq!(status.status(), 403);
    assert_eq!(store.get(id).await.unwrap().unwrap().status, DlqStatus::Failed, "a refused discard changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_groups_and_discard_over_http() {
    for t in testing::databases().await {
        let l = t.label;
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let crm_1234 = "CRM returned 503 for lead 1234";
        let crm_98765 = "CRM returned 503 for lead 98765";
        let order = message_received("wamid.a", "+15551234567", "I want to order 2 tacos").encode();
        let park = |e: NewDeadLetter| {
            let store = store.clone();
            async move { store.dead_letter(None, &e).await.unwrap() }
        };
        let a = park(entry(
            Some("wamid.a"),
            Some("acme"),
            Some((topics::MESSAGES, "+15551234567")),
            FailureType::ExternalServiceError,
            crm_1234,
            &order,
        ))
        .await;
        let b = park(entry(
            Some("wamid.b"),
            Some("acme"),
            Some((topics::MESSAGES, "+15551234568")),
            FailureType::ValidationError,
            "from_phone `call me` is not a phone number",
            b"{\"not\": \"an envelope\"}",
        ))
        .await;
        let c = park(entry(
            None,
            None,
            Some((topics::MESSAGES, "+15551234569")),
            FailureType::SerializationError,
            "malformed envelope: expected value at line 1 column 1",
            BINARY,
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let cutoff = Utc::now();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let d = park(entry(Some("wamid.d"), Some("globex"), None, FailureType::ExternalServiceError, crm_98765, b"{}"))
            .await;
        let e = park(entry(
            Some("wamid.e"),
            Some("globex"),
            None,
            FailureType::ProcessingTimeout,
            "step 1 `notify_sales` timed out after 30s",
            b"{}",
        ))
        .await;
        let url = admin_server(store.clone(), None, TOKEN).await;
        let admin = Admin::new(&url);

        // Everything, newest first, without payloads.
        let (status, all) = admin.get("/admin/dlq", &[]).await;
        assert_eq!(status, 200, "{l}: {all}");
        let items = all["items"].as_array().unwrap();
        let ids: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, [e, d, c, b, a], "{l}: newest first");
        assert!(items.iter().all(|i| i.get("payload").is_none()), "{l}: the list carries no payloads");
        let item_a = &items[4];
        assert_eq!(item_a["message_id"], "wamid.a", "{l}");
        assert_eq!(item_a["tenant_id"], "acme", "{l}");
        assert_eq!(item_a["topic"], topics::MESSAGES, "{l}");
        assert_eq!((item_a["partition"].as_i64(), item_a["offset"].as_i64()), (Some(1), Some(42)), "{l}");
        assert_eq!(item_a["key"], "+15551234567", "{l}");
        assert_eq!(item_a["failure_type"], "ExternalServiceError", "{l}");
        assert_eq!(item_a["error"], crm_1234, "{l}");
        assert_eq!((item_a["attempt_count"].as_u64(), item_a["replay_count"].as_u64()), (Some(3), Some(0)), "{l}");
        assert_eq!(item_a["status"], "failed", "{l}");
        let item_d = &items[1];
        assert_eq!(item_d["topic"], Value::Null, "{l}: no Kafka source");
        let fingerprint = failure_fingerprint(FailureType::ExternalServiceError, crm_1234);
        assert_eq!(item_a["fingerprint"], fingerprint, "{l}");
        assert_eq!(item_d["fingerprint"], fingerprint, "{l}: errors differing only in numbers share a fingerprint");
        assert_ne!(items[3]["fingerprint"], fingerprint, "{l}: another cause, another fingerprint");
        assert_eq!((all["limit"].as_u64(), all["offset"].as_u64()), (Some(100), Some(0)), "{l}: default page");

        // Paging.
        assert_eq!(admin.ids(&[("limit", "2")]).await, [e, d], "{l}");
        assert_eq!(admin.ids(&[("limit", "2"), ("offset", "2")]).await, [c, b], "{l}");
        assert_eq!(admin.ids(&[("limit", "2"), ("offset", "4")]).await, [a], "{l}");
        assert_eq!(admin.ids(&[("offset", "5")]).await, Vec::<i64>::new(), "{l}");
        let (_, page) = admin.get("/admin/dlq", &[("limit", "5000"), ("offset", "1")]).await;
        assert_eq!((page["limit"].as_u64(), page["offset"].as_u64()), (Some(1000), Some(1)), "{l}: limit capped");

        // Filters, alone and together.
        assert_eq!(admin.ids(&[("status", "failed")]).await, [e, d, c, b, a], "{l}");
        assert_eq!(admin.ids(&[("status", "discarded")]).await, Vec::<i64>::new(), "{l}");
        assert_eq!(admin.ids(&[("tenant", "acme")]).await, [b, a], "{l}");
        assert_eq!(admin.ids(&[("tenant", "globex")]).await, [e, d], "{l}");
        assert_eq!(admin.ids(&[("tenant", "nobody")]).await, Vec::<i64>::new(), "{l}");
        assert_eq!(admin.ids(&[("failure_type", "ExternalServiceError")]).await, [d, a], "{l}");
        assert_eq!(admin.ids(&[("failure_type", "SerializationError")]).await, [c], "{l}");
        let since = cutoff.to_rfc3339_opts(SecondsFormat::Micros, true);
        assert_eq!(admin.ids(&[("since", &since)]).await, [e, d], "{l}: since {since}");
        let since_offset = cutoff.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap()).to_rfc3339();
        assert_eq!(admin.ids(&[("since", &since_offset)]).await, [e, d], "{l}: since {since_offset}");
        assert_eq!(admin.ids(&[("fingerprint", &fingerprint)]).await, [d, a], "{l}");
        assert_eq!(admin.ids(&[("fingerprint", "0000000000000000")]).await, Vec::<i64>::new(), "{l}");
        assert_eq!(
            admin.ids(&[("tenant", "globex"), ("failure_type", "ExternalServiceError")]).await,
            [d],
            "{l}: filters combine"
        );
        assert_eq!(admin.ids(&[("fingerprint", &fingerprint), ("since", &since), ("limit", "1")]).await, [d], "{l}");

        // Groups: the two CRM errors are one cause.
        let (status, groups) = admin.get("/admin/dlq/groups", &[]).await;
        assert_eq!(status, 200, "{l}: {groups}");
        let groups = groups["groups"].as_array().unwrap().clone();
        assert_eq!(groups.len(), 4, "{l}: {groups:?}");
        let top = &groups[0];
        assert_eq!(top["count"], 2, "{l}: largest group first: {groups:?}");
        assert_eq!(top["fingerprint"], fingerprint, "{l}");
        assert_eq!(top["failure_type"], "ExternalServiceError", "{l}");
        assert_eq!(top["pattern"], "CRM returned # for lead #", "{l}");
        let at = |v: &Value| v.as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
        assert_eq!(at(&top["first_at"]), at(&item_a["created_at"]), "{l}: first_at is the oldest");
        assert_eq!(at(&top["last_at"]), at(&item_d["created_at"]), "{l}: last_at is the newest");
        assert!(groups[1..].iter().all(|g| g["count"] == 1), "{l}: {groups:?}");
        let total: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
        assert_eq!(total, 5, "{l}");
        let (_, recent) = admin.get("/admin/dlq/groups", &[("since", &since)]).await;
        let recent = recent["groups"].as_array().unwrap();
        assert_eq!(recent.len(), 2, "{l}: groups take the filters: {recent:?}");
        assert!(recent.iter().all(|g| g["count"] == 1), "{l}: only d of the CRM group is recent: {recent:?}");
        let (_, one) = admin.get("/admin/dlq/groups", &[("limit", "1")]).await;
        assert_eq!(one["groups"].as_array().unwrap().len(), 1, "{l}: groups take the limit");

        // One entry, with its payload.
        let shown = admin.show(a).await;
        assert_eq!(shown["payload_encoding"], "utf8", "{l}");
        assert_eq!(shown["payload"].as_str().unwrap().as_bytes(), &order[..], "{l}: the payload as parked");
        assert_eq!(shown["error"], crm_1234, "{l}");
        assert_eq!(shown["fingerprint"], fingerprint, "{l}");
        let binary = admin.show(c).await;
        assert_eq!(binary["payload_encoding"], "base64", "{l}: non-UTF-8 bytes");
        assert_eq!(binary["payload"], BINARY_BASE64, "{l}");
        assert_eq!(binary["message_id"], Value::Null, "{l}");
        let unknown = e + 1000;
        let (status, body) = admin.get(&format!("/admin/dlq/{unknown}"), &[]).await;
        assert_eq!(status, 404, "{l}: {body}");
        assert!(body["error"].as_str().unwrap().contains(&unknown.to_string()), "{l}: {body}");
        assert_eq!(admin.get("/admin/dlq/not-a-number", &[]).await.0, 400, "{l}");

        // Bad filter values.
        for query in [
            [("status", "bogus")],
            [("failure_type", "Nope")],
            [("failure_type", "externalserviceerror")],
            [("since", "yesterday")],
            [("limit", "-1")],
            [("limit", "many")],
            [("offset", "x")],
        ] {
            let (status, body) = admin.get("/admin/dlq", &query).await;
            assert_eq!(status, 400, "{l}: {query:?}: {body}");
            let (status, _) = admin.get("/admin/dlq/groups", &query).await;
            assert_eq!(status, 400, "{l}: groups {query:?}");
        }
        let (_, body) = admin.get("/admin/dlq", &[("status", "bogus")]).await;
        assert!(body["error"].as_str().unwrap().contains("bogus"), "{l}: the error names the value: {body}");
        let (status, _) = admin.post("/admin/dlq/replay", Some(json!({ "dry_run": true, "status": "bogus" }))).await;
        assert_eq!(status, 400, "{l}: bulk replay with a bad filter");

        // Replaying needs Kafka: refused before anything changes.
        let (status, body) = admin.post(&format!("/admin/dlq/{a}/replay"), None).await;
        assert_eq!(status, 503, "{l}: {body}");
        assert!(body["error"].as_str().unwrap().contains("Kafka"), "{l}: {body}");
        let (status, body) =
            admin.post("/admin/dlq/replay", Some(json!({ "failure_type": "ExternalServiceError" }))).await;
        assert_eq!(status, 503, "{l}: bulk replay without Kafka: {body}");
        let (status, body) = admin.post("/admin/dlq/replay", Some(json!({ "tenant": "nobody" }))).await;
        assert_eq!((status, &body["matched"]), (200, &json!([])), "{l}: nothing to replay needs no Kafka: {body}");
        let a_now = admin.show(a).await;
        assert_eq!((a_now["status"].as_str(), a_now["replay_count"].as_u64()), (Some("failed"), Some(0)), "{l}");

        // Discard, once.
        let (status, discarded) = admin.post(&format!("/admin/dlq/{b}/discard"), None).await;
        assert_eq!(status, 200, "{l}: {discarded}");
        assert_eq!(discarded["status"], "discarded", "{l}");
        assert_eq!(discarded["id"], b, "{l}");
        assert_eq!(admin.show(b).await["status"], "discarded", "{l}");
        assert_eq!(store.get(b).await.unwrap().unwrap().status, DlqStatus::Discarded, "{l}: in the database");
        let (status, body) = admin.post(&format!("/admin/dlq/{b}/discard"), None).await;
        assert_eq!(status, 409, "{l}: discarding twice: {body}");
        assert!(body["error"].as_str().unwrap().contains("discarded"), "{l}: {body}");
        assert_eq!(admin.post(&format!("/admin/dlq/{unknown}/discard"), None).await.0, 404, "{l}");
        assert_eq!(admin.ids(&[("status", "discarded")]).await, [b], "{l}");
        assert_eq!(admin.ids(&[("status", "failed")]).await, [e, d, c, a], "{l}");
        let (_, acme) = admin.get("/admin/dlq/groups", &[("status", "failed"), ("tenant", "acme")]).await;
        assert_eq!(acme["groups"].as_array().unwrap().len(), 1, "{l}: the discarded entry left the failed groups");

        // A dry bulk replay lists the failed entries only, oldest first, and changes nothing.
        let (status, report) = admin.post("/admin/dlq/replay", Some(json!({ "dry_run": true }))).await;
        assert_eq!(status, 200, "{l}: {report}");
        assert_eq!(report["matched"], json!([a, c, d, e]), "{l}: {report}");
        assert_eq!((report["dry_run"].as_bool(), &report["replayed"]), (Some(true), &json!([])), "{l}");
        let (_, report) =
            admin.post("/admin/dlq/replay", Some(json!({ "dry_run": true, "fingerprint": fingerprint }))).await;
        assert_eq!(report["matched"], json!([a, d]), "{l}: {report}");
        assert_eq!(admin.ids(&[("status", "failed")]).await, [e, d, c, a], "{l}: a dry run changes nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_message_is_processed_again() {
    // One broker for both databases; the runtime's group commits on stop, so
    // the second runtime starts where the first stopped.
    let kafka = EmbeddedKafka::start(2).unwrap();
    for t in testing::databases().await {
        let l = t.label;
        let log = CallLog::default();
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = Orchestrator::builder()
            .handlers(handlers::builtin())
            .executors(executors::builtin(&t.db).with(
                Scripted::new("create_order", &log).failing([ActionError::permanent("menu service: unknown item")]),
            ))
            .store(store.clone())
            .config(fast_config())
            .build()
            .unwrap();
        let settings = RuntimeSettings { shutdown_grace: Duration::from_secs(10), ..Default::default() };
        let runtime = ConsumerRuntime::new(
            &kafka_config(&kafka, "orchestrator"),
            Arc::new(orch),
            Arc::new(KeywordClassifier),
            store.clone(),
            settings,
        )
        .unwrap();
        let running = Running::start(runtime);
        let publisher = Publisher::new(&kafka_config(&kafka, "producer")).unwrap();
        let url = admin_server(store.clone(), Some(publisher.clone()), TOKEN).await;
        let admin = Admin::new(&url);

        let message_id = format!("wamid.replay-{l}");
        let phone = "+15551230001";
        publisher.publish(&message_received(&message_id, phone, "I want to order 2 tacos")).await.unwrap();
        let in_dlq = format!("message_id = '{message_id}'");
        wait_for_row(&t.db, "dead_letter_queue", &in_dlq, Duration::from_secs(60), l).await;

        let (status, listed) = admin.get("/admin/dlq", &[("status", "failed")]).await;
        assert_eq!(status, 200, "{l}");
        let items = listed["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{l}: {listed}");
        let dead = &items[0];
        let id = dead["id"].as_i64().unwrap();
        assert_eq!(dead["message_id"], message_id.as_str(), "{l}");
        assert_eq!(dead["failure_type"], "ExternalServiceError", "{l}: a permanent action failure: {dead}");
        assert!(dead["error"].as_str().unwrap().contains("create_order"), "{l}: {dead}");
        assert_eq!(dead["topic"], topics::MESSAGES, "{l}");
        assert_eq!(dead["key"], phone, "{l}");
        assert!(dead["tenant_id"].is_string(), "{l}: the tenant is known, so the replay reopens the claim: {dead}");
        let done = format!("message_id = '{message_id}' AND status = 'completed'");
        assert_eq!(count(&t.db, "processed_messages", &done).await, 0, "{l}");
        assert_eq!(log.count("execute create_order"), 1, "{l}");

        // A dry bulk replay finds it and changes nothing.
        let dry = json!({ "dry_run": true, "failure_type": "ExternalServiceError" });
        let (status, report) = admin.post("/admin/dlq/replay", Some(dry)).await;
        assert_eq!(status, 200, "{l}: {report}");
        assert_eq!(report["matched"], json!([id]), "{l}: {report}");
        assert_eq!(report["replayed"], json!([]), "{l}");
        assert_eq!(report["dry_run"], true, "{l}");
        let (_, other) =
            admin.post("/admin/dlq/replay", Some(json!({ "dry_run": true, "failure_type": "ValidationError" }))).await;
        assert_eq!(other["matched"], json!([]), "{l}: the filter applies: {other}");
        let still = admin.show(id).await;
        assert_eq!((still["status"].as_str(), still["replay_count"].as_u64()), (Some("failed"), Some(0)), "{l}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(log.count("execute create_order"), 1, "{l}: a dry run sends nothing");

        // Replay it: processed again, and this time it succeeds.
        let (status, replayed) = admin.post(&format!("/admin/dlq/{id}/replay"), None).await;
        assert_eq!(status, 200, "{l}: {replayed}");
        assert_eq!(replayed["status"], "replayed", "{l}");
        assert_eq!(replayed["replay_count"], 1, "{l}");
        wait_for_row(&t.db, "processed_messages", &done, Duration::from_secs(60), l).await;
        assert_eq!(log.count("execute create_order"), 2, "{l}: executed again after the replay");
        assert_eq!(count(&t.db, "dead_letter_queue", &in_dlq).await, 1, "{l}: not dead-lettered again");

        let mine = |m: &OwnedMessage| match Envelope::decode(m.payload().unwrap_or_default()).map(|e| e.data) {
            Ok(EventData::ResponseReady(ready)) => ready.original_message_id == message_id,
            _ => false,
        };
        let replies = read_until(&kafka, topics::RESPONSES, Duration::from_secs(30), |got| got.iter().any(mine)).await;
        let replies: Vec<&OwnedMessage> = replies.iter().filter(|m| mine(m)).collect();
        assert_eq!(replies.len(), 1, "{l}: one reply, after the replay");
        assert_eq!(replies[0].key(), Some(phone.as_bytes()), "{l}");

        let copies = |got: &[OwnedMessage]| -> Vec<OwnedMessage> {
            got.iter().filter(|m| received_id(m).as_deref() == Some(message_id.as_str())).cloned().collect()
        };
        let sent = read_until(&kafka, topics::MESSAGES, Duration::from_secs(30), |got| copies(got).len() >= 2).await;
        let sent = copies(&sent);
        assert_eq!(sent.len(), 2, "{l}: the original and the replayed copy");
        assert_eq!(header(&sent[0], REPLAY_OF_HEADER), None, "{l}: the original is no replay");
        let copy = &sent[1];
        assert_eq!(header(copy, REPLAY_OF_HEADER), Some(id.to_string()), "{l}: the copy names its entry");
        assert_eq!(copy.key(), Some(phone.as_bytes()), "{l}: same key, same partition order");
        assert_eq!(Envelope::decode(copy.payload().unwrap()).unwrap().attempt_count, 1, "{l}");

        // Once replayed, not again.
        let (status, body) = admin.post(&format!("/admin/dlq/{id}/replay"), None).await;
        assert_eq!(status, 409, "{l}: {body}");
        assert!(body["error"].as_str().unwrap().contains("replayed"), "{l}: {body}");
        let after = admin.show(id).await;
        assert_eq!((after["status"].as_str(), after["replay_count"].as_u64()), (Some("replayed"), Some(1)), "{l}");
        assert_eq!(admin.post("/admin/dlq/999999/replay", None).await.0, 404, "{l}");

        running.stop().await;
    }
}

/// A bulk-replay body is honoured or refused, never ignored: clients such as
/// Python's `requests.post(url, data=json.dumps(...))` send JSON without a
/// `Content-Type`, and a `{"dry_run": true}` dropped on the floor would
/// replay every failed entry for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_body_without_content_type_is_not_ignored() {
    let t = testing::sqlite().await;
    let store = Arc::new(SqlStore::new(t.db.clone()));
    let payload = message_received("wamid.ct", "+15551230009", "hi").encode();
    let id = store
        .dead_letter(
            None,
            &entry(Some("wamid.ct"), Some("acme"), None, FailureType::ExternalServiceError, "CRM down", &payload),
        )
        .await
        .unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let publisher = Publisher::new(&kafka_config(&kafka, "admin")).unwrap();
    let url = admin_server(store.clone(), Some(publisher), TOKEN).await;
    let client = common::http_client();

    let response = client
        .post(format!("{url}/admin/dlq/replay"))
        .bearer_auth(TOKEN)
        .body(r#"{"dry_run": true}"#)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let entry = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (entry.status, entry.replay_count),
        (DlqStatus::Failed, 0),
        "a dry run sent without Content-Type replayed for real (answer {status}: {body})"
    );
    assert!(status == 200 && body.contains(r#""dry_run":true"#) || (400..500).contains(&status), "{status}: {body}");
}

/// The compiled `consumer` example next to this test binary.
fn consumer_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/admin-<hash> -> <target>/debug/examples/consumer
    let debug = exe.parent().and_then(Path::parent).expect("the test binary lives in <target>/debug/deps");
    let binary = debug.join("examples").join(format!("consumer{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --example consumer` (plain `cargo test` builds it too)",
        binary.display()
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/consumer.rs");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(edited)) = (modified(&binary), modified(&source)) {
        assert!(
            built >= edited,
            "{} is older than examples/consumer.rs: run `cargo build --example consumer`",
            binary.display()
        );
    }
    binary
}

/// What one run of the binary did.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `consumer dlq ...` against one SQLite file.
struct Cli {
    binary: PathBuf,
    dir: PathBuf,
    database_url: String,
}

impl Cli {
    async fn dlq(&self, args: &[&str], kafka: Option<&str>) -> Run {
        let mut command = std::process::Command::new(&self.binary);
        command.arg("dlq").args(args).env("DATABASE_URL", &self.database_url).env("RUST_LOG", "warn");
        for var in ["LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT", "KAFKA_SECURITY_PROTOCOL", "KAFKA_TIMEOUT_MS"] {
            command.env_remove(var);
        }
        match kafka {
            Some(servers) => command.env("KAFKA_BOOTSTRAP_SERVERS", servers),
            None => command.env_remove("KAFKA_BOOTSTRAP_SERVERS"),
        };
        let name = uuid::Uuid::new_v4().simple().to_string();
        let (out, err) = (self.dir.join(format!("{name}.out")), self.dir.join(format!("{name}.err")));
        command.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`consumer dlq {}` did not finish within 60 s", args.join(" "));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let run = Run {
            success: status.success(),
            stdout: std::fs::read_to_string(&out).unwrap(),
            stderr: std::fs::read_to_string(&err).unwrap(),
        };
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        run
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn ok(&self, args: &[&str], kafka: Option<&str>) -> String {
        let run = self.dlq(args, kafka).await;
        assert!(run.success, "`consumer dlq {}` failed:\n{}\n{}", args.join(" "), run.stdout, run.stderr);
        run.stdout
    }

    /// Runs a command that must fail; returns its stderr.
    async fn fails(&self, args: &[&str], kafka: Option<&str>) -> String {
        let run = self.dlq(args, kafka).await;
        assert!(!run.success, "`consumer dlq {}` should have failed:\n{}", args.join(" "), run.stdout);
        assert!(!run.stderr.trim().is_empty(), "`consumer dlq {}` failed silently", args.join(" "));
        run.stderr
    }
}

/// A scratch directory with a migrated SQLite database, removed on drop.
struct Scratch {
    dir: PathBuf,
    db: sea_orm::DatabaseConnection,
    url: String,
}

impl Scratch {
    async fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("orchestrator-admin-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("dlq.db").display());
        let db = orchestrator::db::connect(&url).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        Self { dir, db, url }
    }

    fn cli(&self) -> Cli {
        Cli { binary: consumer_binary(), dir: self.dir.clone(), database_url: self.url.clone() }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The data rows of a table printed by the CLI, split on whitespace: the
/// lines after the header that start with a number (not the `N entries` line).
fn rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.len() >= 4 && cells[0].parse::<i64>().is_ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_replays_and_discards() {
    let scratch = Scratch::new().await;
    let cli = scratch.cli();
    let store = SqlStore::new(scratch.db.clone());
    let phone = "+15557770001";
    let mut parked = message_received("wamid.cli-1", phone, "I want to order 2 tacos");
    parked.attempt_count = 3;
    let parked_bytes = parked.encode();
    let crm = "CRM returned 503 for lead 1234";
    // Parked from the retry topic: the replay goes to the original topic.
    let first = store
        .dead_letter(
            None,
            &entry(
                Some("wamid.cli-1"),
                Some("acme"),
                Some((&format!("{}.retry", topics::MESSAGES), phone)),
                FailureType::ExternalServiceError,
                crm,
                &parked_bytes,
            ),
        )
        .await
        .unwrap();
    let second_bytes = message_received("wamid.cli-2", "+15557770002", "hola").encode();
    let second = store
        .dead_letter(
            None,
            &entry(
                Some("wamid.cli-2"),
                Some("acme"),
                Some((topics::MESSAGES, "+15557770002")),
                FailureType::ExternalServiceError,
                "CRM returned 503 for lead 98765",
                &second_bytes,
            ),
        )
        .await
        .unwrap();
    let poison = store
        .dead_letter(
            None,
            &entry(
                None,
                None,
                Some((topics::MESSAGES, "+15557770003")),
                FailureType::SerializationError,
                "malformed envelope: key must be a string at line 1 column 2",
                b"{oops, not json",
            ),
        )
        .await
        .unwrap();
    let status_of = |id: i64| {
        let store = store.clone();
        async move { store.get(id).await.unwrap().unwrap() }
    };

    // list: a header and one row per entry, newest first.
    let listed = cli.ok(&["list"], None).await;
    let head = listed.lines().next().unwrap_or_default();
    for column in ["ID", "STATUS", "FAILURE"] {
        assert!(head.split_whitespace().any(|c| c == column), "{column} in the header: {listed}");
    }
    let table = rows(&listed);
    let ids: Vec<&str> = table.iter().map(|r| r[0]).collect();
    assert_eq!(ids, [poison.to_string(), second.to_string(), first.to_string()], "{listed}");
    assert!(table.iter().all(|r| r.contains(&"failed")), "{listed}");
    assert!(table[0].contains(&"SerializationError"), "{listed}");
    assert!(table[2].contains(&"ExternalServiceError") && table[2].contains(&"wamid.cli-1"), "{listed}");
    assert!(listed.contains("3 entries"), "{listed}");
    let filtered = cli.ok(&["list", "--failure-type", "ExternalServiceError"], None).await;
    assert_eq!(rows(&filtered).iter().map(|r| r[0]).collect::<Vec<_>>(), [second.to_string(), first.to_string()]);
    let paged = cli.ok(&["list", "--tenant", "acme", "--limit", "1", "--offset", "1"], None).await;
    assert_eq!(rows(&paged).iter().map(|r| r[0]).collect::<Vec<_>>(), [first.to_string()], "{paged}");
    let stderr = cli.fails(&["list", "--status", "bogus"], None).await;
    assert!(stderr.contains("bogus"), "{stderr}");

    // list --groups: the two CRM errors are one group.
    let grouped = cli.ok(&["list", "--groups"], None).await;
    let head = grouped.lines().next().unwrap_or_default();
    assert!(head.contains("COUNT") && head.contains("FINGERPRINT"), "{grouped}");
    let fingerprint = failure_fingerprint(FailureType::ExternalServiceError, crm);
    let groups = rows(&grouped);
    assert_eq!(groups.len(), 2, "{grouped}");
    assert_eq!(groups[0][..3], ["2", fingerprint.as_str(), "ExternalServiceError"], "{grouped}");
    assert_eq!(groups[1][0], "1", "{grouped}");

    // show: the entry as JSON, with its payload.
    let shown: Value = serde_json::from_str(&cli.ok(&["show", &first.to_string()], None).await).unwrap();
    assert_eq!(shown["id"], first);
    assert_eq!(shown["payload"].as_str().unwrap().as_bytes(), &parked_bytes[..]);
    assert_eq!(shown["payload_encoding"], "utf8");
    assert_eq!(shown["fingerprint"], fingerprint);
    assert_eq!(shown["status"], "failed");
    cli.fails(&["show", "424242"], None).await;

    // discard.
    let out = cli.ok(&["discard", &poison.to_string()], None).await;
    assert!(out.contains(&poison.to_string()), "{out}");
    assert_eq!(status_of(poison).await.status, DlqStatus::Discarded, "discarded in the database");
    let stderr = cli.fails(&["discard", &poison.to_string()], None).await;
    assert!(stderr.contains(&poison.to_string()), "names the entry: {stderr}");
    let stderr = cli.fails(&["discard", "424242"], None).await;
    assert!(stderr.contains("424242"), "names the entry: {stderr}");
    assert_eq!(status_of(poison).await.status, DlqStatus::Discarded);

    // replay without Kafka: refused, nothing changed.
    cli.fails(&["replay", &first.to_string()], None).await;
    let unchanged = status_of(first).await;
    assert_eq!((unchanged.status, unchanged.replay_count), (DlqStatus::Failed, 0));

    // A dry bulk replay: the failed entries, oldest first; nothing changes.
    let out = cli.ok(&["replay", "--all", "--dry-run"], None).await;
    assert!(out.contains("would replay 2 entries"), "{out}");
    assert!(out.contains(&format!("[{first}, {second}]")), "{out}");
    let out = cli.ok(&["replay", "--all", "--dry-run", "--tenant", "nobody"], None).await;
    assert!(out.contains("would replay 0 entries"), "{out}");
    for id in [first, second] {
        let entry = status_of(id).await;
        assert_eq!((entry.status, entry.replay_count), (DlqStatus::Failed, 0), "a dry run changes nothing");
    }
    let dry = cli.fails(&["replay", "--all", "--dry-run", "7"], None).await;
    assert!(dry.contains("--all") || dry.contains("cannot be used"), "an id and --all conflict: {dry}");

    // replay with Kafka: the copy goes to the original topic.
    let kafka = EmbeddedKafka::start(2).unwrap();
    let servers = kafka.bootstrap_servers().to_owned();
    let out = cli.ok(&["replay", &first.to_string()], Some(&servers)).await;
    assert!(out.contains(&format!("replayed {first}")), "{out}");
    let replayed = status_of(first).await;
    assert_eq!((replayed.status, replayed.replay_count), (DlqStatus::Replayed, 1));
    let arrived = read_until(&kafka, topics::MESSAGES, Duration::from_secs(30), |got| !got.is_empty()).await;
    assert_eq!(arrived.len(), 1, "the copy on {}", topics::MESSAGES);
    let copy = &arrived[0];
    assert_eq!(received_id(copy).as_deref(), Some("wamid.cli-1"));
    assert_eq!(copy.key(), Some(phone.as_bytes()));
    assert_eq!(header(copy, REPLAY_OF_HEADER), Some(first.to_string()));
    let envelope = Envelope::decode(copy.payload().unwrap()).unwrap();
    assert_eq!(envelope.attempt_count, 1, "attempts start over");
    assert_eq!(envelope.event_id, parked.event_id, "the same event");
    let retried = read_until(&kafka, &format!("{}.retry", topics::MESSAGES), Duration::from_secs(2), |_| false).await;
    assert!(retried.is_empty(), "nothing goes to the retry topic");
    let stderr = cli.fails(&["replay", &first.to_string()], Some(&servers)).await;
    assert!(stderr.contains(&first.to_string()), "a second replay is refused: {stderr}");
    // The discarded entry stays discarded; the other is still failed.
    let out = cli.ok(&["replay", "--all", "--dry-run"], Some(&servers)).await;
    assert!(out.contains(&format!("would replay 1 entry: [{second}]")), "{out}");
    assert_eq!(status_of(second).await.status, DlqStatus::Failed);
}

/// The CLI's failures read as sentences (the errors' `Display`), not as
/// Rust debug output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_failures_print_readable_messages() {
    let scratch = Scratch::new().await;
    let cli = scratch.cli();
    let store = SqlStore::new(scratch.db.clone());
    let id = store
        .dead_letter(None, &entry(Some("wamid.x"), Some("acme"), None, FailureType::UnknownError, "boom", b"{}"))
        .await
        .unwrap();

    let stderr = cli.fails(&["discard", "424242"], None).await;
    assert!(stderr.contains("dead letter 424242 not found"), "{stderr}");
    let stderr = cli.fails(&["show", "424242"], None).await;
    assert!(stderr.contains("dead letter 424242 not found"), "{stderr}");
    let stderr = cli.fails(&["replay", &id.to_string()], None).await;
    assert!(stderr.contains("KAFKA_BOOTSTRAP_SERVERS"), "says replaying needs Kafka: {stderr}");
    cli.ok(&["discard", &id.to_string()], None).await;
    let stderr = cli.fails(&["discard", &id.to_string()], None).await;
    assert!(stderr.contains("is discarded"), "{stderr}");
    let stderr = cli.fails(&["list", "--status", "bogus"], None).await;
    assert!(stderr.contains("unknown status `bogus`") && !stderr.contains('"'), "{stderr}");
}
