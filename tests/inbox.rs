//! The live inbox: the conversation history the pipeline and the send API
//! write in their own transactions (SQLite and, with TEST_DATABASE_URL,
//! PostgreSQL), with delivery statuses read from the sender's rows; the
//! `/api/v1/conversations` routes and `/api/v1/stream` (SSE from
//! `conversation.processed`, resumable with `Last-Event-ID`, per
//! organisation), fed by the consumer runtime; and who may call them, and
//! the console.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{CallLog, Plan, Scripted, count, orchestrator, order_intent, text};
use orchestrator::event::{Envelope, EventData, MessageProcessed, ProcessedKind};
use orchestrator::http::auth::{Credentials, JwtVerifier, mint_hs256};
use orchestrator::http::{self, InboxState};
use orchestrator::kafka::{ConsumerRuntime, EmbeddedKafka, InboxFeed, Publisher, RuntimeSettings};
use orchestrator::store::{
    ApiMessages, ConversationCursor, Conversations, DeliveryStatus, DeliveryStatuses, NewApiMessage, OutboundMessages,
    OutboundReply, ReplyKey, SendClaim,
};
use orchestrator::{ActionRequest, HandlerRegistry, Incoming, KeywordClassifier, Outcome, SqlStore, testing};
use serde_json::{Value, json};

const SECRET: &[u8] = b"inbox-test-secret";
const ADMIN: &str = "inbox-admin-token";

fn from(phone: &str, id: &str, body: &str) -> Incoming {
    Incoming::new(text(id, phone, body), order_intent())
}

#[tokio::test]
async fn completions_write_the_thread_once_and_statuses_come_from_the_senders_row() {
    for t in testing::databases().await {
        let label = t.label;
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = orchestrator(store.clone(), handlers::builtin(), executors::builtin(store.connection()));
        // All local (no claim before): the history joins the completion's insert.
        let Outcome::Completed(done) = orch.process(from("+15550000001", "wamid.h1", "2 tacos please")).await.unwrap()
        else {
            panic!("{label}")
        };
        let reply = done.response.clone().expect("the order handler replies");
        // A redelivery is a duplicate: it adds nothing.
        let again = orch.process(from("+15550000001", "wamid.h1", "2 tacos please")).await.unwrap();
        assert!(matches!(again, Outcome::Duplicate(_)), "{label}: {again:?}");
        let thread = store.thread("default", "+15550000001", None, 50).await.unwrap();
        let shown: Vec<(&str, &str, Option<&str>)> =
            thread.iter().map(|m| (m.direction.as_str(), m.status.as_str(), m.intent.as_deref())).collect();
        assert_eq!(shown, [("outbound", "pending", None), ("inbound", "received", Some("ORDER_REQUEST"))], "{label}");
        assert_eq!(thread[1].text.as_deref(), Some("2 tacos please"));
        assert_eq!(thread[0].text.as_deref(), Some(reply.content.preview().as_str()));
        let listed = store.conversations(Some("default"), None, 10).await.unwrap();
        assert_eq!((listed.len(), listed[0].unread, listed[0].message_count), (1, 1, 2), "{label}: {listed:?}");
        assert_eq!(listed[0].last_direction.as_str(), "outbound");

        // The sender takes the reply; WhatsApp reports it delivered: the thread says so, from the sender's row.
        let key = ReplyKey { tenant_id: "default".into(), original_message_id: "wamid.h1".into(), reply_index: 0 };
        let outbound = OutboundReply {
            key,
            phone_number_id: None,
            recipient_phone: "+15550000001".into(),
            payload: serde_json::to_string(&reply).unwrap(),
        };
        let SendClaim::Acquired { lease, .. } = store.claim_send(&outbound, Duration::from_secs(30)).await.unwrap()
        else {
            panic!("{label}: not claimed")
        };
        store.record_sent(&lease, Some("wamid.out1")).await.unwrap();
        let delivered = DeliveryStatus {
            message_id: "wamid.out1".into(),
            recipient_phone: "+15550000001".into(),
            status: "delivered".into(),
            timestamp: Utc::now(),
            error: None,
            phone_number_id: None,
        };
        let moved = store.record_status(&delivered).await.unwrap().expect("the status moved our reply");
        assert_eq!((moved.tenant_id.as_str(), moved.message_id.as_str()), ("default", "wamid.h1"), "{label}");
        assert_eq!(store.record_status(&delivered).await.unwrap(), None, "{label}: the same status is no news");
        let thread = store.thread("default", "+15550000001", None, 50).await.unwrap();
        assert_eq!(thread[0].status, "delivered", "{label}");

        // With an external step (claimed first), the completion under the lease writes it too.
        let log = CallLog::default();
        let plan = Plan(vec![ActionRequest::new("crm", json!({}))]);
        let with_crm = orchestrator(
            store.clone(),
            HandlerRegistry::new(plan),
            orchestrator::ExecutorRegistry::new().with(Scripted::new("crm", &log)),
        );
        let second = with_crm.process(from("+15550000001", "wamid.h2", "and a soda")).await.unwrap();
        assert!(matches!(second, Outcome::Completed(_)), "{label}: {second:?}");
        let listed = store.conversations(Some("default"), None, 10).await.unwrap();
        assert_eq!((listed[0].unread, listed[0].message_count), (2, 4), "{label}: {listed:?}");
        let newest = store.thread("default", "+15550000001", None, 2).await.unwrap();
        assert_eq!(newest.iter().map(|m| m.text.as_deref().unwrap()).collect::<Vec<_>>(), ["done", "and a soda"]);
        let older = store.thread("default", "+15550000001", Some(newest[1].id), 10).await.unwrap();
        assert_eq!(older.len(), 2, "{label}: paged by id");
        assert!(store.mark_read("default", "+15550000001").await.unwrap());
        assert_eq!(store.conversations(Some("default"), None, 1).await.unwrap()[0].unread, 0);
        assert!(!store.mark_read("default", "+15559999999").await.unwrap(), "{label}: no such conversation");
        assert_eq!(count(&t.db, "conversation_messages", "1 = 1").await, 4, "{label}");
    }
}

#[tokio::test]
async fn a_dead_lettered_message_is_in_its_thread_marked_so() {
    for t in testing::databases().await {
        let label = t.label;
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let log = CallLog::default();
        let failing = Scripted::new("crm", &log).always_failing(orchestrator::ActionError::Permanent("refused".into()));
        let orch = orchestrator(
            store.clone(),
            HandlerRegistry::new(Plan(vec![ActionRequest::new("crm", json!({}))])),
            orchestrator::ExecutorRegistry::new().with(failing),
        );
        let outcome = orch.process(from("+15550000031", "wamid.d1", "this will fail")).await.unwrap();
        assert!(matches!(outcome, Outcome::DeadLettered(_)), "{label}: {outcome:?}");
        let thread = store.thread("default", "+15550000031", None, 10).await.unwrap();
        let shown: Vec<(&str, &str, Option<&str>)> =
            thread.iter().map(|m| (m.direction.as_str(), m.status.as_str(), m.text.as_deref())).collect();
        assert_eq!(shown, [("inbound", "dead_lettered", Some("this will fail"))], "{label}");
        assert_eq!(store.conversations(Some("default"), None, 1).await.unwrap()[0].unread, 1, "{label}");
    }
}

#[tokio::test]
async fn with_history_off_nothing_is_written_to_the_inbox() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()).with_history(false));
        let orch = orchestrator(store.clone(), handlers::builtin(), executors::builtin(store.connection()));
        let outcome = orch.process(from("+15550000041", "wamid.n1", "2 tacos please")).await.unwrap();
        assert!(matches!(outcome, Outcome::Completed(_)), "{}: {outcome:?}", t.label);
        store.insert_api_messages("acme", &[api_message("n1", "acme", "+15550000041", "hi")], None).await.unwrap();
        assert_eq!(count(&t.db, "conversation_messages", "1 = 1").await, 0, "{}", t.label);
        assert_eq!(count(&t.db, "conversations", "1 = 1").await, 0, "{}", t.label);
    }
}

fn api_message(id: &str, tenant: &str, phone: &str, text: &str) -> NewApiMessage {
    NewApiMessage {
        id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        recipient_phone: phone.to_owned(),
        phone_number_id: None,
        payload: "{}".to_owned(),
        preview: text.to_owned(),
        request_hash: format!("hash-{id}"),
        scheduled_at: None,
        dispatch_due_at: Utc::now(),
    }
}

#[tokio::test]
async fn send_api_messages_join_their_conversation_and_conversations_page_latest_first() {
    for t in testing::databases().await {
        let label = t.label;
        let store = Arc::new(SqlStore::new(t.db.clone()));
        for (i, phone) in ["+15550000011", "+15550000012", "+15550000013"].iter().enumerate() {
            let message = api_message(&format!("m{i}"), "acme", phone, &format!("hello {i}"));
            store.insert_api_messages("acme", &[message], None).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // One request to three more phones: their conversations share an instant.
        let batch: Vec<NewApiMessage> =
            (0..3).map(|i| api_message(&format!("t{i}"), "acme", &format!("+1555000002{i}"), "same instant")).collect();
        store.insert_api_messages("acme", &batch, None).await.unwrap();
        // A retried request (same id) adds nothing; another organisation's stays apart.
        store.insert_api_messages("acme", &[api_message("m0", "acme", "+15550000011", "hello 0")], None).await.unwrap();
        store.insert_api_messages("beta", &[api_message("b0", "beta", "+15550000011", "beta's")], None).await.unwrap();
        // Pages of two, each after the last one's cursor (as the API hands it out): every conversation once, latest first.
        let (mut paged, mut before) = (Vec::new(), None);
        loop {
            let page = store.conversations(Some("acme"), before.as_ref(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            let cursor = ConversationCursor::after(last).encode();
            before = Some(ConversationCursor::decode(&cursor).expect("the cursor reads back"));
            paged.extend(page.into_iter().map(|c| c.phone));
        }
        let expected = ["+15550000022", "+15550000021", "+15550000020", "+15550000013", "+15550000012", "+15550000011"];
        assert_eq!(paged, expected, "{label}: ties included, none twice");
        let earliest = store.conversations(Some("acme"), None, 10).await.unwrap().pop().unwrap();
        assert_eq!((earliest.message_count, earliest.unread, earliest.last_direction.as_str()), (1, 0, "outbound"));
        let thread = store.thread("acme", "+15550000011", None, 10).await.unwrap();
        assert_eq!(thread.len(), 1, "{label}");
        assert_eq!((thread[0].status.as_str(), thread[0].text.as_deref()), ("queued", Some("hello 0")), "{label}");
        assert_eq!(store.conversations(None, None, 10).await.unwrap().len(), 7, "{label}: every organisation's");
    }
}

#[tokio::test]
async fn a_phone_without_its_plus_is_the_same_conversation() {
    for t in testing::databases().await {
        let label = t.label;
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = orchestrator(store.clone(), handlers::builtin(), executors::builtin(store.connection()));
        // A producer that leaves the + out, and the send API (which keeps it), to one customer.
        orch.process(from("5215512345678", "wamid.p1", "hola")).await.unwrap();
        store
            .insert_api_messages("default", &[api_message("p1", "default", "+5215512345678", "hi")], None)
            .await
            .unwrap();
        let listed = store.conversations(Some("default"), None, 10).await.unwrap();
        assert_eq!(listed.iter().map(|c| c.phone.as_str()).collect::<Vec<_>>(), ["+5215512345678"], "{label}");
        assert_eq!(listed[0].message_count, 3, "{label}");
    }
}

/// An inbox server: history on SQLite, the stream from `kafka`.
async fn serve(kafka: &EmbeddedKafka, max_streams: usize) -> (String, testing::TestDb) {
    let db = testing::sqlite().await;
    let store = Arc::new(SqlStore::new(db.db.clone()));
    let config = common::kafka_config(kafka, "inbox-test");
    let credentials = Credentials { admin_token: Some(ADMIN.into()), jwt: Some(JwtVerifier::hs256(SECRET, "org_id")) };
    let state = InboxState {
        credentials: credentials.clone(),
        conversations: store,
        feed: Some(InboxFeed::new(&config, max_streams)),
    };
    let app = http::inbox::routes(state).merge(http::console::routes(credentials));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, app, std::future::pending()));
    (url, db)
}

fn org_token(org: &str) -> String {
    mint_hs256(SECRET, "org_id", Some(org), "", Duration::from_secs(600)).unwrap()
}

/// An open SSE response, read event by event.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

#[derive(Debug)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
}

impl Sse {
    async fn open(url: &str, token: &str, last_event_id: Option<&str>) -> Self {
        Self::open_query(url, "", token, last_event_id).await
    }

    async fn open_query(url: &str, query: &str, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request = common::http_client().get(format!("{url}/api/v1/stream{query}")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self { response, buffer: String::new() }
    }

    /// The next event (keep-alive comments skipped), within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent { id: String::new(), event: String::new(), data: Value::Null };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                        event.id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                        event.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                        event.data = serde_json::from_str(v).unwrap();
                    }
                }
                if event.event.is_empty() {
                    continue;
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?.unwrap()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn processed(tenant: &str, phone: &str, id: &str) -> Envelope {
    Envelope::new(
        EventData::MessageProcessed(MessageProcessed::new(tenant, phone, id, ProcessedKind::Completed)),
        "test",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_serves_an_organisation_its_events_and_resumes_after_last_event_id() {
    let kafka = EmbeddedKafka::start(4).unwrap();
    let (url, _db) = serve(&kafka, 8).await;
    let publisher = Publisher::new(&common::kafka_config(&kafka, "inbox-publisher")).unwrap();
    let acme = org_token("acme");
    let mut stream = Sse::open(&url, &acme, None).await;
    let ready = stream.next(Duration::from_secs(10)).await.expect("ready");
    assert_eq!(ready.event, "ready");
    assert_eq!(ready.data["cursor"], ready.id.as_str());
    for (tenant, id) in [("acme", "a1"), ("beta", "b1"), ("acme", "a2")] {
        publisher.publish(&processed(tenant, &format!("+1555000{}", id.len()), id)).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = stream.next(Duration::from_secs(10)).await.expect("acme's events");
        assert_eq!(event.event, "message_processed");
        assert_eq!(event.data["tenant_id"], "acme", "another organisation's event: {:?}", event.data);
        seen.push(event);
    }
    assert_eq!(stream.next(Duration::from_millis(500)).await.map(|e| e.data), None, "beta's event is not acme's");
    let last_id = seen[1].id.clone();
    drop(stream);

    // Away: two more of acme's happen; back with Last-Event-ID, exactly those arrive.
    for id in ["a3", "a4"] {
        publisher.publish(&processed("acme", "+15550000003", id)).await.unwrap();
    }
    let mut resumed = Sse::open(&url, &acme, Some(&last_id)).await;
    assert_eq!(resumed.next(Duration::from_secs(10)).await.unwrap().event, "ready");
    let mut missed = Vec::new();
    while let Some(event) = resumed.next(Duration::from_secs(3)).await {
        missed.push(event.data["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(missed, ["a3", "a4"]);

    // An operator sees any organisation, or the one it names.
    let mut operator = Sse::open(&url, ADMIN, Some(&last_id)).await;
    operator.next(Duration::from_secs(10)).await.unwrap();
    let mut all = Vec::new();
    while let Some(event) = operator.next(Duration::from_secs(3)).await {
        all.push(event.data["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(all, ["a3", "a4"]);
    let mut beta = Sse::open_query(&url, "?organisation=beta", ADMIN, Some(&ready.id)).await;
    beta.next(Duration::from_secs(10)).await.unwrap();
    let mut betas = Vec::new();
    while let Some(event) = beta.next(Duration::from_secs(3)).await {
        betas.push(event.data["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(betas, ["b1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_streams_completed_and_dead_lettered_messages() {
    let kafka = EmbeddedKafka::start(4).unwrap();
    let (url, _db) = serve(&kafka, 8).await;
    let db = testing::sqlite().await;
    let store = Arc::new(SqlStore::new(db.db.clone()));
    let orch = Arc::new(orchestrator(store.clone(), handlers::builtin(), executors::builtin(store.connection())));
    let config = common::kafka_config(&kafka, "inbox-runtime");
    let runtime =
        ConsumerRuntime::new(&config, orch, Arc::new(KeywordClassifier), store.clone(), RuntimeSettings::default())
            .unwrap();
    let running = common::Running::start(runtime);
    let mut stream = Sse::open(&url, ADMIN, None).await;
    stream.next(Duration::from_secs(10)).await.unwrap();
    let publisher = Publisher::new(&config).unwrap();
    publisher.publish(&common::message_received("wamid.rt1", "+15550000021", "I want 2 tacos")).await.unwrap();
    publisher.send("conversation.messages", Some("+15550000022"), b"{not json", &[]).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let event = stream.next(Duration::from_secs(30)).await.expect("the runtime's events");
        kinds.push((event.data["kind"].as_str().unwrap().to_owned(), event.data.clone()));
    }
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    let (completed, dead) = (&kinds[0].1, &kinds[1].1);
    assert_eq!((kinds[0].0.as_str(), kinds[1].0.as_str()), ("completed", "dead_lettered"));
    assert_eq!(completed["message_id"], "wamid.rt1");
    assert_eq!(completed["text"], "I want 2 tacos");
    assert_eq!(completed["intent"], "ORDER_REQUEST");
    assert!(completed["actions"].as_array().unwrap().iter().any(|a| a == "create_order"), "{completed}");
    assert!(completed["reply"].as_str().is_some_and(|r| !r.is_empty()), "{completed}");
    assert_eq!(dead["phone"], "+15550000022");
    assert!(dead["error"].as_str().unwrap().starts_with("SerializationError"), "{dead}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_sender_streams_a_sent_reply() {
    use orchestrator::event::{ResponseContent, ResponseReady, reply_meta};
    use orchestrator::kafka::{ReplySettings, ResponseSender};
    use orchestrator::outbound::DryRunSender;
    let kafka = EmbeddedKafka::start(4).unwrap();
    let (url, _db) = serve(&kafka, 8).await;
    let db = testing::sqlite().await;
    let store = Arc::new(SqlStore::new(db.db.clone()));
    let config = common::kafka_config(&kafka, "inbox-sender");
    let sender = ResponseSender::new(&config, Arc::new(DryRunSender), store, ReplySettings::default()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sender.run(async move {
        let _ = stopped.await;
    }));
    let mut stream = Sse::open(&url, &org_token("acme"), None).await;
    stream.next(Duration::from_secs(10)).await.unwrap();
    let reply = ResponseReady {
        original_message_id: "wamid.s1".into(),
        to_phone: "+15550000051".into(),
        response_type: orchestrator::event::ResponseType::Text,
        content: ResponseContent::text("on its way"),
        generated_at: Utc::now(),
        priority: Default::default(),
        metadata: [(reply_meta::TENANT_ID.to_owned(), "acme".to_owned())].into(),
    };
    Publisher::new(&config).unwrap().publish(&Envelope::new(EventData::ResponseReady(reply), "test")).await.unwrap();
    let event = stream.next(Duration::from_secs(30)).await.expect("the sent reply's status");
    assert_eq!((event.data["kind"].as_str(), event.data["status"].as_str()), (Some("status"), Some("sent")));
    assert_eq!(
        (event.data["message_id"].as_str(), event.data["phone"].as_str()),
        (Some("wamid.s1"), Some("+15550000051"))
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_ends_every_open_stream_and_a_missing_topic_is_an_error() {
    let kafka = EmbeddedKafka::start(2).unwrap();
    let config = common::kafka_config(&kafka, "inbox-stop");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let feed = InboxFeed::new(&config, 4).with_shutdown(stopped);
    let mut open = feed.open(None, None).await.unwrap();
    stop.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), open.events.recv()).await.expect("the stream ended");
    assert!(ended.is_none(), "{ended:?}");
    let missing = InboxFeed::of_topic(&config, "conversation.nowhere", 4).open(None, None).await;
    assert!(matches!(missing, Err(orchestrator::kafka::FeedError::NoTopic(_))), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_gets_401_and_nothing_else_and_bad_input_a_clear_error() {
    let kafka = EmbeddedKafka::start(2).unwrap();
    let (url, _db) = serve(&kafka, 1).await;
    let client = common::http_client();
    for path in ["/api/v1/stream", "/api/v1/conversations", "/api/v1/conversations/%2B15551234567/messages", "/console"]
    {
        for token in [None, Some("wrong")] {
            let mut request = client.get(format!("{url}{path}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{path} with {token:?}");
            let body = response.text().await.unwrap();
            assert!(!body.contains("event:") && !body.contains("items") && !body.contains("<script"), "{path}: {body}");
        }
    }
    let acme = org_token("acme");
    let call = |path: &str, token: &str| {
        let (client, url, path, token) = (client.clone(), url.clone(), path.to_owned(), token.to_owned());
        async move {
            let response = client.get(format!("{url}{path}")).bearer_auth(token).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = call("/api/v1/conversations?organisation=beta", &acme).await;
    assert_eq!(status, 403, "another organisation's: {body}");
    let (status, body) = call("/api/v1/conversations/%2B15551234567/messages", ADMIN).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("organisation"), "{body}");
    let (status, body) = call("/api/v1/conversations/not-a-phone/messages", &acme).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("E.164"), "{body}");
    let (status, body) = call("/api/v1/conversations/15551234567/messages", &acme).await;
    assert_eq!((status, body["items"].as_array().map(Vec::len)), (200, Some(0)), "a phone without its +: {body}");
    let (status, body) = call("/api/v1/conversations?limit=0", &acme).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call("/api/v1/conversations?before=garbage!", &acme).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call("/api/v1/conversations?colour=red", &acme).await;
    assert_eq!(status, 400, "an unknown parameter: {body}");
    let bad_resume = client
        .get(format!("{url}/api/v1/stream"))
        .bearer_auth(&acme)
        .header("Last-Event-ID", "0:x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_resume.status(), 400);
    // One stream allowed here: a second waits its turn (503 with Retry-After).
    let _open = Sse::open(&url, &acme, None).await;
    let full = client.get(format!("{url}/api/v1/stream")).bearer_auth(&acme).send().await.unwrap();
    assert_eq!(full.status(), 503);
    assert!(full.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn only_an_operator_signs_in_to_the_console_and_its_cookie_opens_the_page() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    let (url, _db) = serve(&kafka, 1).await;
    let client = common::http_client();
    let login = client.get(format!("{url}/console/login")).send().await.unwrap();
    assert_eq!(login.status(), 200, "the sign-in form is public");
    assert!(login.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    let sign_in = |token: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(format!("{url}/console/login"))
                .header("content-type", "application/json")
                .body(json!({ "token": token }).to_string())
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(sign_in("wrong".into()).await.status(), 401);
    assert_eq!(sign_in(org_token("acme")).await.status(), 403, "an organisation's token is not an operator's");
    let bad = client.post(format!("{url}/console/login")).body("token=x").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let signed_in = sign_in(ADMIN.into()).await;
    assert_eq!(signed_in.status(), 200);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/console"));
    let session = cookie.split(';').next().unwrap().to_owned();
    assert!(!session.contains(ADMIN), "the cookie carries a signed expiry, not the token: {session}");
    let forged = session.replace("a.", "a.9").to_owned();
    let page = client.get(format!("{url}/console")).header("cookie", &forged).send().await.unwrap();
    assert_eq!(page.status(), 401, "a forged session: {forged}");
    for (path, kind) in
        [("/console", "text/html"), ("/console/console.js", "text/javascript"), ("/console/console.css", "text/css")]
    {
        let page = client.get(format!("{url}{path}")).header("cookie", &session).send().await.unwrap();
        assert_eq!(page.status(), 200, "{path}");
        assert!(page.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
    }
    // The cookie opens the page's files only, not the APIs.
    let api = client.get(format!("{url}/api/v1/conversations")).header("cookie", &session).send().await.unwrap();
    assert_eq!(api.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_offsets_kafka_no_longer_keeps_starts_at_the_oldest_kept_and_says_gap() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = EmbeddedKafka::start(2).unwrap();
    // One partition filled past what the embedded broker keeps (5 MiB): its oldest offsets vanish, as retention does.
    kafka.cluster().create_topic("inbox.gap", 1, 1).unwrap();
    let config = common::kafka_config(&kafka, "inbox-gap");
    let producer: FutureProducer = config.producer_config().set("compression.type", "none").create().unwrap();
    let payload: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    for _ in 0..120 {
        let record = FutureRecord::<(), [u8]>::to("inbox.gap").payload(&payload[..]);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(error, _)| error).unwrap();
    }
    let feed = InboxFeed::of_topic(&config, "inbox.gap", 4);
    let resumed = feed.open(None, Some(orchestrator::kafka::FeedCursor::parse("0:0").unwrap())).await.unwrap();
    assert!(resumed.gap, "offset 0 is gone: the client must hear that it missed events");
    let oldest = resumed.start.0[&0];
    assert!(oldest > 0 && oldest < 120, "starts at the oldest offset kept, not {oldest}");
    // A resume within what is kept is no gap and starts where it left off.
    let within = orchestrator::kafka::FeedCursor(std::collections::BTreeMap::from([(0, oldest + 1)]));
    let resumed = feed.open(None, Some(within)).await.unwrap();
    assert!(!resumed.gap);
    assert_eq!(resumed.start.0[&0], oldest + 1);
}
