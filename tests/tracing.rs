//! Traces end to end: a webhook POST carrying a W3C `traceparent`, the
//! Kafka hop, the pipeline's stages and the reply all land in one trace,
//! exported over OTLP/HTTP to a stub collector that records the spans.
//! One test per binary: it installs the process's global subscriber.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{Running, Scripted, count, fast_config, kafka_config};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use orchestrator::http::{self, WebhookSettings, WebhookState};
use orchestrator::kafka::{ConsumerRuntime, EmbeddedKafka, Publisher, ReplySettings, ResponseSender, RuntimeSettings};
use orchestrator::outbound::DryRunSender;
use orchestrator::telemetry::{self, TelemetryConfig};
use orchestrator::{ActionError, KeywordClassifier, Orchestrator, SqlStore};
use prost::Message as _;

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// Span ids this span links to.
    links: Vec<String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

async fn collect(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = spans.lock().unwrap();
    for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
        spans.push(Received {
            name: span.name.clone(),
            trace_id: hex::encode(&span.trace_id),
            span_id: hex::encode(&span.span_id),
            parent_span_id: hex::encode(&span.parent_span_id),
            links: span.links.iter().map(|l| hex::encode(&l.span_id)).collect(),
        });
    }
    "{}"
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, app, std::future::pending()));
    url
}

fn webhook_body(id: &str, text: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{
        "messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550000000","phone_number_id":"123456"}},
        "messages":[{{"from":"15551230000","id":"{id}","timestamp":"1700000000","type":"text","text":{{"body":"{text}"}}}}]}}}}]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_webhook_through_kafka_and_the_saga_to_the_reply() {
    let spans: Spans = Arc::default();
    let collector = serve(Router::new().route("/v1/traces", post(collect)).with_state(spans.clone())).await;
    let config = TelemetryConfig {
        service_name: "tracing-test".into(),
        otlp_endpoint: Some(collector),
        json_logs: true,
        ansi: false,
        filter: "info".into(),
    };
    let telemetry = telemetry::init(&config).unwrap();

    let t = orchestrator::testing::sqlite().await;
    let kafka = EmbeddedKafka::start(2).unwrap();
    let store = Arc::new(SqlStore::new(t.db.clone()));
    // notify_sales fails permanently once: the first order is compensated and dead-lettered, the second completes.
    let log = common::CallLog::default();
    let mut executors = executors::builtin(&t.db);
    executors.register(Arc::new(Scripted::new("notify_sales", &log).failing([ActionError::permanent("CRM refused")])));
    let orch = Orchestrator::builder()
        .handlers(handlers::builtin())
        .executors(executors)
        .store(store.clone())
        .config(fast_config())
        .build()
        .unwrap();
    let kafka_settings = kafka_config(&kafka, "orchestrator");
    let runtime = ConsumerRuntime::new(
        &kafka_settings,
        Arc::new(orch),
        Arc::new(KeywordClassifier),
        store.clone(),
        RuntimeSettings::default(),
    )
    .unwrap();
    let running = Running::start(runtime);
    let (stop_sender, sender_stopped) = tokio::sync::oneshot::channel::<()>();
    let sender =
        ResponseSender::new(&kafka_settings, Arc::new(DryRunSender), store.clone(), ReplySettings::default()).unwrap();
    let sender_task = tokio::spawn(sender.run(async {
        let _ = sender_stopped.await;
    }));

    let publisher = Publisher::new(&kafka_settings).unwrap();
    let webhook =
        http::webhook::routes(WebhookState::new(WebhookSettings::default(), publisher.clone(), store.clone()));
    let url = serve(webhook).await;
    let client = common::http_client();
    let failing_trace = "0af7651916cd43dd8448eb211c80319c";
    let ok_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (trace, id, text) in [
        (failing_trace, "wamid.trace-fail", "I want to order 3 tacos"),
        (ok_trace, "wamid.trace-ok", "I want to order 2 pizzas"),
    ] {
        let answer = client
            .post(format!("{url}/webhook"))
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .body(webhook_body(id, text))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&t.db, "processed_messages", "message_id = 'wamid.trace-ok' AND status = 'completed'").await == 0
        || count(&t.db, "dead_letter_queue", "message_id = 'wamid.trace-fail'").await == 0
    {
        assert!(Instant::now() < deadline, "messages not finished: {:?}", log.entries());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replayed (notify_sales works again), the failed message continues its own trace.
    let dlq = orchestrator::dlq::DlqService::new(store.clone()).with_publisher(publisher);
    let filter = orchestrator::store::DlqFilter::default();
    let entries = dlq.list(&filter, orchestrator::store::Page::default()).await.unwrap();
    let entry = entries.iter().find(|e| e.message_id.as_deref() == Some("wamid.trace-fail")).unwrap();
    assert!(entry.trace_context.as_deref().unwrap().contains(failing_trace), "{entry:?}");
    dlq.replay(entry.id).await.unwrap();
    while count(&t.db, "processed_messages", "message_id = 'wamid.trace-fail' AND status = 'completed'").await == 0 {
        assert!(Instant::now() < deadline, "the replay never completed: {:?}", log.entries());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the reply sender its message, then stop everything so every span ends.
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.stop().await;
    let _ = stop_sender.send(());
    sender_task.await.unwrap().unwrap();
    telemetry.flush();

    let deadline = Instant::now() + Duration::from_secs(20);
    let by_trace = loop {
        let received = spans.lock().unwrap().clone();
        let mut by_trace: HashMap<String, Vec<Received>> = HashMap::new();
        for span in received {
            by_trace.entry(span.trace_id.clone()).or_default().push(span);
        }
        let names = |trace: &str| -> Vec<String> {
            by_trace.get(trace).map(|s| s.iter().map(|s| s.name.clone()).collect()).unwrap_or_default()
        };
        if names(ok_trace).contains(&"reply.send".to_owned())
            && names(failing_trace).contains(&"compensation".to_owned())
        {
            break by_trace;
        }
        assert!(Instant::now() < deadline, "spans never arrived: {:?}", by_trace.keys().collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let ok = &by_trace[ok_trace];
    let one = |name: &str| -> &Received {
        let found: Vec<&Received> = ok.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one `{name}` span in the trace: {ok:?}");
        found[0]
    };
    let webhook = one("webhook");
    assert_eq!(webhook.parent_span_id, "00f067aa0ba902b7", "the webhook span continues the caller's trace");
    let consumed = one("kafka.message");
    assert_eq!(consumed.parent_span_id, webhook.span_id, "the Kafka hop carries the trace (traceparent header)");
    let message = one("message");
    assert_eq!(message.parent_span_id, consumed.span_id);
    for stage in ["dedupe", "validation", "intent"] {
        assert_eq!(one(stage).parent_span_id, message.span_id, "{stage} is a child of the message span");
    }
    let actions: Vec<&Received> = ok.iter().filter(|s| s.name == "action").collect();
    assert_eq!(actions.len(), 2, "create_order and notify_sales");
    assert!(actions.iter().all(|a| a.parent_span_id == message.span_id));
    let reply = one("reply.send");
    assert_eq!(reply.parent_span_id, consumed.span_id, "the reply continues the trace across conversation.responses");

    let failed = &by_trace[failing_trace];
    let compensation = failed.iter().find(|s| s.name == "compensation").unwrap();
    let failed_message = failed.iter().find(|s| s.span_id == compensation.parent_span_id);
    assert_eq!(failed_message.map(|s| s.name.as_str()), Some("message"), "compensation is a child of its message");
    let failed_message = failed_message.unwrap();
    // The replayed attempt is in the same trace, a child of (and linked to) the attempt that gave up.
    let hops: Vec<&Received> = failed.iter().filter(|s| s.name == "kafka.message").collect();
    assert_eq!(hops.len(), 2, "the first delivery and the replay: {failed:?}");
    let replay = hops.iter().find(|s| s.parent_span_id == failed_message.span_id).expect("the replay's span");
    assert_eq!(replay.links, std::slice::from_ref(&failed_message.span_id), "the replay links to the failed attempt");
    let replayed_message = failed.iter().find(|s| s.name == "message" && s.parent_span_id == replay.span_id);
    assert!(replayed_message.is_some(), "the replayed attempt's pipeline spans are in the original trace");
}
