//! The edge-function path: records on `whatsapp.webhook.inbound` are handled
//! like POSTs to `/webhook` (signature, parsing, statuses, unhandled types),
//! a message published by either path is published once, and bad records
//! go to `whatsapp.webhook.inbound.dlq` and the DLQ table with their reason
//! while later records flow; unreadable entries of a readable notification
//! are filed in the DLQ table by either path while their siblings flow.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use common::{kafka_config, read_within};
use orchestrator::event::{Envelope, EventData, topics};
use orchestrator::http::{self, WebhookSettings, WebhookState};
use orchestrator::kafka::{EmbeddedKafka, Publisher, WebhookIngest, headers};
use orchestrator::store::{DeadLetterQueue, DeliveryStatuses, DlqFilter, Page};
use orchestrator::webhook::signature::sign;
use orchestrator::{SqlStore, testing};
use rdkafka::message::Message;
use serde_json::{Value, json};

const SECRET: &str = "edge-secret";
const TEXT: &str = include_str!("fixtures/webhook/text.json");
const REACTION: &str = include_str!("fixtures/webhook/reaction.json");
const STATUSES: &str = include_str!("fixtures/webhook/statuses.json");

/// The body as a compact string, the way WhatsApp POSTs it.
fn compact(body: &str) -> String {
    serde_json::to_string(&serde_json::from_str::<Value>(body).unwrap()).unwrap()
}

/// What an edge function publishes for a POST with `body` (the body as an
/// object, its signature in the carried headers).
fn edge_record(id: &str, body: &str, secret: &str) -> Vec<u8> {
    let body = compact(body);
    let signature = sign(secret.as_bytes(), body.as_bytes());
    // Built as text so the body keeps its exact bytes, as JSON.stringify of the parsed body would.
    format!(
        r#"{{"id":"{id}","headers":{{"content-type":"application/json","X-Hub-Signature-256":"{signature}"}},"body":{body},"timestamp":"2025-06-08T20:59:43.512Z"}}"#
    )
    .into_bytes()
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, app, std::future::pending()));
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_function_records_are_handled_like_webhook_posts() {
    let t = testing::sqlite().await;
    let store = Arc::new(SqlStore::new(t.db.clone()));
    let kafka = EmbeddedKafka::start(2).unwrap();
    let config = kafka_config(&kafka, "orchestrator");
    let publisher = Publisher::new(&config).unwrap();
    let settings = WebhookSettings { app_secret: Some(SECRET.into()), ..WebhookSettings::default() };
    let webhook = WebhookState::new(settings, publisher.clone(), store.clone()).with_dead_letters(store.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ingest = WebhookIngest::new(&config, webhook.clone(), store.clone()).unwrap();
    let running = tokio::spawn(ingest.run(async move {
        let _ = stopped.await;
    }));
    let url = serve(http::webhook::routes(webhook)).await;

    // Good and bad records, in one stream.
    let send = |key: &str, payload: Vec<u8>| {
        let (publisher, key) = (publisher.clone(), key.to_owned());
        async move { publisher.send(topics::WEBHOOK_INBOUND, Some(&key), &payload, &[]).await.unwrap() }
    };
    send("wh-1", edge_record("wh-1", TEXT, SECRET)).await;
    send("wh-2", b"{not json".to_vec()).await;
    send("wh-3", br#"{"id":"wh-3","headers":{}}"#.to_vec()).await;
    send("wh-4", edge_record("wh-4", TEXT, "someone-elses-secret")).await;
    send("wh-5", edge_record("wh-5", REACTION, SECRET)).await;
    send("wh-6", edge_record("wh-6", STATUSES, SECRET)).await;
    // The raw body as a string is checked byte for byte, whatever its formatting.
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(TEXT).unwrap()).unwrap();
    let as_string = json!({
        "id": "wh-7",
        "headers": { "x-hub-signature-256": sign(SECRET.as_bytes(), pretty.as_bytes()) },
        "body": pretty,
        "timestamp": "2025-06-08T20:59:44Z",
    });
    send("wh-7", serde_json::to_vec(&as_string).unwrap()).await;

    // The text message once, although wh-1 and wh-7 carry it and it is POSTed too.
    let messages = read_within(&kafka, topics::MESSAGES, 1, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 1);
    let envelope = Envelope::decode(messages[0].payload().unwrap()).unwrap();
    let EventData::MessageReceived(message) = envelope.data else { panic!("{envelope:?}") };
    assert_eq!(message.from_phone, "+16505551234");
    assert_eq!(messages[0].key(), Some(&b"+16505551234"[..]));
    // A notification with an unreadable entry beside a good one, by record and by POST,
    // sent after the text was read: its good sibling's phone may land on the other partition first.
    let partial = |id: &str| {
        json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
            "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000000","phone_number_id":"123456"},
            "messages":[
                {"id":format!("wamid.nofrom-{id}"),"timestamp":"1700000000","type":"text","text":{"body":"who am I"}},
                {"from":"15557770000","id":format!("wamid.good-{id}"),"timestamp":"1700000001","type":"text","text":{"body":"hi"}}
            ]}}]}]})
        .to_string()
    };
    send("wh-8", edge_record("wh-8", &partial("record"), SECRET)).await;

    let post_signed = |body: String| {
        let request = common::http_client()
            .post(format!("{url}/webhook"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), body.as_bytes()))
            .body(body);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(post_signed(compact(TEXT)).await, 200);
    assert_eq!(post_signed(partial("post")).await, 200, "the good entry is published, the bad one filed");

    // The reaction, as WhatsApp sent it, on the unhandled topic.
    let unhandled = read_within(&kafka, topics::WEBHOOK_UNHANDLED, 1, Duration::from_secs(30)).await;
    let reaction: Value = serde_json::from_slice(unhandled[0].payload().unwrap()).unwrap();
    assert_eq!(reaction["type"], "reaction");

    // Three dead letters, with their reasons, on the topic and in the table.
    let dead = read_within(&kafka, "whatsapp.webhook.inbound.dlq", 3, Duration::from_secs(30)).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            (key, headers::value(m, headers::ERROR).unwrap())
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].0 == "wh-2" && reasons[0].1.starts_with("SerializationError: not an edge-function request"));
    assert!(reasons[1].0 == "wh-3" && reasons[1].1.contains("missing field `body`"), "{reasons:?}");
    assert!(reasons[2].0 == "wh-4" && reasons[2].1.starts_with("ValidationError: invalid signature"), "{reasons:?}");
    assert_eq!(headers::value(&dead[0], headers::SOURCE_TOPIC).as_deref(), Some(topics::WEBHOOK_INBOUND));
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = store.list(&DlqFilter::default(), Page { limit: 10, offset: 0 }).await.unwrap();
        if rows.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (refused, skipped): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.message_id.is_some());
    let mut ids: Vec<String> = refused.iter().map(|r| r.message_id.clone().unwrap_or_default()).collect();
    ids.sort();
    assert_eq!(ids, ["wh-2", "wh-3", "wh-4"], "{rows:?}");
    assert!(refused.iter().all(|r| r.source.as_ref().is_some_and(|s| s.topic == topics::WEBHOOK_INBOUND)));
    // The unreadable entries, once per path, with the whole body to look at.
    assert_eq!(skipped.len(), 2, "{rows:?}");
    for row in &skipped {
        assert!(row.error.contains("missing `from`") && row.error.contains("wamid.nofrom-"), "{}", row.error);
        let body: Value = serde_json::from_slice(&row.payload).unwrap();
        assert_eq!(body["object"], "whatsapp_business_account");
    }
    let by_record = skipped.iter().filter(|r| r.source.as_ref().is_some_and(|s| s.topic == topics::WEBHOOK_INBOUND));
    assert_eq!(by_record.count(), 1, "the record's entry names its record; the POST's has no source");

    // Statuses from a record are stored like those of a POST.
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = store.statuses_of("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDNkY2NjYzQTdBRDEzMUQ3MEEA").await.unwrap();
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!stored.is_empty(), "the status of wh-6 was not stored");

    // A new reader waits about 3 s for its assignment: give it time to see a second copy.
    let more = read_within(&kafka, topics::MESSAGES, 4, Duration::from_secs(10)).await;
    let ids: std::collections::BTreeSet<String> = more
        .iter()
        .map(|m| match Envelope::decode(m.payload().unwrap()).unwrap().data {
            EventData::MessageReceived(m) => m.message_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(more.len(), 3, "the text once across both paths, and each good sibling: {ids:?}");
    assert!(ids.contains("wamid.good-record") && ids.contains("wamid.good-post"), "{ids:?}");
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
