//! The whole pipeline with the built-in handlers and executors, on SQLite
//! and (with TEST_DATABASE_URL) PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use orchestrator::event::{Envelope, EventData, FailureType, Priority, ResponseContent, ResponseType};
use orchestrator::store::{DlqStatus, SourceInfo};
use orchestrator::testing;
use orchestrator::{
    ActionError, ActionRequest, BreakerConfig, DeadLetterQueue, DuplicateOf, ExecutorRegistry, HandlerRegistry,
    Incoming, Intent, Orchestrator, Outcome, PipelineConfig, SqlStore, Store, StoreError,
};
use serde_json::json;

fn builtin(store: &Arc<SqlStore>) -> Orchestrator {
    orchestrator(store.clone(), handlers::builtin(), executors::builtin(store.connection()))
}

/// create_order with real items, then a scripted step.
fn order_then(step: &'static str) -> Plan {
    Plan(vec![ActionRequest::new("create_order", json!({ "items": ["tacos"] })), ActionRequest::new(step, json!({}))])
}

#[tokio::test]
async fn order_request_creates_the_order_notifies_sales_and_replies() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = builtin(&store);
        let incoming = Incoming::new(text("wamid.o1", "+15551234567", "2 tacos please"), order_intent());
        let Outcome::Completed(done) = orch.process(incoming).await.unwrap() else { panic!("{}", t.label) };
        assert_eq!(done.handler, "ORDER_REQUEST", "{}", t.label);
        let actions: Vec<&str> = done.steps.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(actions, ["create_order", "notify_sales"], "{}", t.label);
        let reply = done.response.expect("a reply");
        assert_eq!((reply.to_phone.as_str(), reply.original_message_id.as_str()), ("+15551234567", "wamid.o1"));
        assert_eq!(reply.response_type, ResponseType::Text);
        let ResponseContent::Text { message } = &reply.content else { panic!("text reply") };
        assert!(message.contains("2 x tacos"), "{}: {message}", t.label);

        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.o1' AND status = 'created'").await, 1, "{}", t.label);
        assert_eq!(count(&t.db, "sales_notifications", "message_id = 'wamid.o1' AND status = 'sent'").await, 1);
        assert_eq!(count(&t.db, "lead_activities", "message_id = 'wamid.o1'").await, 3, "{}", t.label);
        assert_eq!(count(&t.db, "processed_messages", "message_id = 'wamid.o1' AND status = 'completed'").await, 1);
    }
}

#[tokio::test]
async fn severe_complaint_opens_a_ticket_flags_it_and_escalates() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let intent = Intent::new("COMPLAINT", 0.8).with_entity("severity", "high").with_entity("order_id", "1042");
        let incoming = Incoming::new(text("wamid.c1", "+15551234567", "my order never arrived!"), intent);
        let Outcome::Completed(done) = builtin(&store).process(incoming).await.unwrap() else { panic!("{}", t.label) };
        assert!(done.escalated);
        assert_eq!(done.response.expect("reply").priority, Priority::Urgent, "{}", t.label);
        assert_eq!(count(&t.db, "support_tickets", "message_id = 'wamid.c1' AND priority = 'urgent'").await, 1);
        assert_eq!(count(&t.db, "review_flags", "message_id = 'wamid.c1' AND status = 'flagged'").await, 1);
        assert_eq!(count(&t.db, "lead_activities", "message_id = 'wamid.c1' AND activity_type = 'escalated'").await, 1);
    }
}

#[tokio::test]
async fn a_duplicate_delivery_is_skipped_with_no_second_side_effect() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = builtin(&store);
        let message = incoming("wamid.d1", order_intent());
        let Outcome::Completed(done) = orch.process(message.clone()).await.unwrap() else { panic!("{}", t.label) };
        // The runtime confirms the reply once Kafka acknowledged it.
        store.mark_reply_published(&done.key).await.unwrap();
        // Redelivered (webhook retry, Kafka redelivery), also to another worker.
        assert_eq!(orch.process(message.clone()).await.unwrap(), Outcome::Duplicate(DuplicateOf::Done));
        assert_eq!(builtin(&store).process(message).await.unwrap(), Outcome::Duplicate(DuplicateOf::Done));
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.d1'").await, 1, "{}", t.label);
        assert_eq!(count(&t.db, "sales_notifications", "message_id = 'wamid.d1'").await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn a_failed_attempt_followed_by_a_redelivery_is_processed_again() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let log = CallLog::default();
        let executors = executors::builtin(store.connection())
            .with(Scripted::new("crm", &log).failing([ActionError::retryable("crm timeout")]));
        let orch = orchestrator(store.clone(), HandlerRegistry::new(order_then("crm")), executors);

        let first = orch.process(incoming("wamid.r1", order_intent())).await.unwrap();
        let Outcome::RetryScheduled { next_attempt, delay, ref reason, .. } = first else {
            panic!("{}: expected a retry, got {first:?}", t.label)
        };
        assert_eq!((next_attempt, delay), (2, Duration::from_secs(1)), "{}", t.label);
        assert!(reason.contains("crm timeout"), "{reason}");
        // The order of the failed attempt was compensated (cancelled, not deleted).
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.r1' AND status = 'cancelled'").await, 1);

        // The redelivery is a new attempt, not a duplicate of the failed one.
        let second = orch.process(incoming("wamid.r1", order_intent())).await.unwrap();
        assert!(matches!(second, Outcome::Completed(_)), "{}: {second:?}", t.label);
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.r1' AND status = 'created'").await, 1, "{}", t.label);
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.r1'").await, 2, "{}", t.label);
        assert_eq!(count(&t.db, "processed_messages", "message_id = 'wamid.r1' AND attempt_count = 2").await, 1);
    }
}

#[tokio::test]
async fn retries_follow_the_schedule_across_a_restart_then_dead_letter() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let log = CallLog::default();
        let worker = || {
            let executors =
                ExecutorRegistry::new().with(Scripted::new("crm", &log).always_failing(ActionError::retryable("503")));
            orchestrator(store.clone(), HandlerRegistry::new(plan(&["crm"])), executors)
        };
        let original = Envelope::new(
            EventData::MessageReceived(match text("wamid.s1", "+15551234567", "hi") {
                orchestrator::Inbound::Message(m) => m,
                _ => unreachable!(),
            }),
            "test",
        );
        let bytes = original.encode();
        let delivery = || {
            Incoming::from_envelope(&original, order_intent()).unwrap().with_payload(bytes.clone()).with_source(
                SourceInfo {
                    topic: "conversation.messages".into(),
                    partition: 3,
                    offset: 42,
                    key: Some("+15551234567".into()),
                },
            )
        };
        let mut delays = Vec::new();
        for _ in 0..3 {
            // A fresh worker each time: the attempt count lives in the database, not in memory.
            match worker().process(delivery()).await.unwrap() {
                Outcome::RetryScheduled { delay, next_attempt, .. } => delays.push((next_attempt, delay.as_secs())),
                other => panic!("{}: expected a retry, got {other:?}", t.label),
            }
        }
        assert_eq!(delays, [(2, 1), (3, 5), (4, 15)], "{}", t.label);
        let Outcome::DeadLettered(dead) = worker().process(delivery()).await.unwrap() else {
            panic!("{}: the 4th failure goes to the DLQ", t.label)
        };
        assert_eq!(dead.failure_type, FailureType::ExternalServiceError);
        assert_eq!(dead.event.attempt_count, 4, "{}", t.label);
        assert_eq!(dead.event.message_id, "wamid.s1");
        let entry = store.get(dead.dlq_id).await.unwrap().expect("row");
        assert_eq!(entry.payload, bytes, "{}: the DLQ keeps the original bytes", t.label);
        assert_eq!((entry.status, entry.attempt_count), (DlqStatus::Failed, 4));
        let source = entry.source.expect("kafka coordinates");
        assert_eq!((source.topic.as_str(), source.partition, source.offset), ("conversation.messages", 3, 42));
        assert_eq!(log.count("execute crm"), 4, "{}", t.label);
        // Redelivered after dead-lettering: skipped, not dead-lettered twice.
        assert_eq!(worker().process(delivery()).await.unwrap(), Outcome::Duplicate(DuplicateOf::DeadLettered));
        assert_eq!(count(&t.db, "dead_letter_queue", "message_id = 'wamid.s1'").await, 1, "{}", t.label);
    }
}

#[tokio::test]
async fn a_permanent_failure_skips_retries() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        // The built-in create_order refuses an order without items: permanent.
        let orch = orchestrator(
            store.clone(),
            HandlerRegistry::new(Plan(vec![ActionRequest::new("create_order", json!({}))])),
            executors::builtin(store.connection()),
        );
        let Outcome::DeadLettered(dead) = orch.process(incoming("wamid.p1", order_intent())).await.unwrap() else {
            panic!("{}", t.label)
        };
        assert_eq!((dead.failure_type, dead.event.attempt_count), (FailureType::ExternalServiceError, 1));
        assert!(dead.reason.contains("needs `items`"), "{}: {}", t.label, dead.reason);
    }
}

#[tokio::test]
async fn an_open_breaker_defers_without_spending_an_attempt() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let log = CallLog::default();
        let orch = Orchestrator::builder()
            .handlers(HandlerRegistry::new(plan(&["crm"])))
            .executors(
                ExecutorRegistry::new().with(Scripted::new("crm", &log).failing([ActionError::retryable("down")])),
            )
            .store(store.clone())
            .breaker_config(BreakerConfig { failure_threshold: 1, open_timeout: Duration::from_secs(1) })
            .config(PipelineConfig { min_defer: Duration::from_millis(10), ..fast_config() })
            .build()
            .unwrap();
        assert!(matches!(
            orch.process(incoming("wamid.b1", order_intent())).await.unwrap(),
            Outcome::RetryScheduled { .. }
        ));
        assert_eq!(orch.breakers().state("crm"), Some(orchestrator::BreakerState::Open), "{}", t.label);

        let deferred = orch.process(incoming("wamid.b2", order_intent())).await.unwrap();
        assert!(
            matches!(deferred, Outcome::Deferred { ref reason, .. } if reason.contains("circuit `crm` is open")),
            "{deferred:?}"
        );
        assert_eq!(log.count("execute crm"), 1, "{}: an open breaker calls nothing", t.label);

        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(matches!(orch.process(incoming("wamid.b2", order_intent())).await.unwrap(), Outcome::Completed(_)));
        assert_eq!(orch.breakers().state("crm"), Some(orchestrator::BreakerState::Closed), "{}", t.label);
        // The deferral gave its attempt back.
        assert_eq!(count(&t.db, "processed_messages", "message_id = 'wamid.b2' AND attempt_count = 1").await, 1);
    }
}

#[tokio::test]
async fn undecodable_bytes_are_dead_lettered_losslessly() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = builtin(&store);
        let poison = vec![0xff, 0xfe, b'{', 0x00, 0x80];
        let error = Envelope::decode(&poison).unwrap_err();
        let source =
            SourceInfo { topic: "conversation.messages".into(), partition: 0, offset: 7, key: Some("+1555".into()) };
        let Outcome::DeadLettered(dead) = orch.reject_undecodable(&poison, Some(source), &error).await.unwrap() else {
            panic!("{}", t.label)
        };
        assert_eq!(dead.failure_type, FailureType::SerializationError);
        let entry = store.get(dead.dlq_id).await.unwrap().unwrap();
        assert_eq!(entry.payload, poison, "{}: invalid UTF-8 survives the round trip", t.label);
        assert!(entry.error.contains("malformed envelope"), "{}", entry.error);
    }
}

#[tokio::test]
async fn invalid_input_is_dead_lettered_as_a_validation_error() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = builtin(&store);
        let bad_phone = Incoming::new(text("wamid.v1", "call me maybe", "hi"), order_intent());
        let too_long = Incoming::new(text("wamid.v2", "+15551234567", &"x".repeat(5000)), order_intent());
        let bad_confidence = incoming("wamid.v3", Intent::new("ORDER_REQUEST", 7.0));
        for (message, expected) in
            [(bad_phone, "not an E.164"), (too_long, "longer than 4096"), (bad_confidence, "outside 0..=1")]
        {
            let Outcome::DeadLettered(dead) = orch.process(message).await.unwrap() else { panic!("{}", t.label) };
            assert_eq!(dead.failure_type, FailureType::ValidationError, "{}", t.label);
            assert!(dead.reason.contains(expected), "{}: {}", t.label, dead.reason);
        }
        assert_eq!(count(&t.db, "orders", "1 = 1").await, 0, "{}: nothing ran", t.label);
        let orch_no_default = Orchestrator::builder()
            .handlers(handlers::builtin())
            .store(store.clone())
            .config(PipelineConfig { default_tenant: None, ..fast_config() })
            .build()
            .unwrap();
        let Outcome::DeadLettered(dead) = orch_no_default.process(incoming("wamid.v4", order_intent())).await.unwrap()
        else {
            panic!("{}", t.label)
        };
        assert!(dead.reason.contains("no tenant"), "{}", dead.reason);
    }
}

#[tokio::test]
async fn message_ids_are_unique_per_tenant() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = builtin(&store);
        let mut acme = order_intent();
        acme.tenant_id = Some("acme".into());
        let mut globex = order_intent();
        globex.tenant_id = Some("globex".into());
        assert!(matches!(orch.process(incoming("wamid.t1", acme)).await.unwrap(), Outcome::Completed(_)));
        assert!(matches!(orch.process(incoming("wamid.t1", globex)).await.unwrap(), Outcome::Completed(_)));
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.t1'").await, 2, "{}", t.label);
    }
}

#[tokio::test]
async fn a_replayed_dead_letter_is_processed_again_once() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let log = CallLog::default();
        let executors = ExecutorRegistry::new()
            .with(Scripted::new("crm", &log).failing([ActionError::permanent("bad account id")]));
        let orch = orchestrator(store.clone(), HandlerRegistry::new(plan(&["crm"])), executors);
        let Outcome::DeadLettered(dead) = orch.process(incoming("wamid.x1", order_intent())).await.unwrap() else {
            panic!("{}", t.label)
        };
        // An operator fixed the cause and replays it.
        let replayed = store.mark(dead.dlq_id, DlqStatus::Replayed).await.unwrap();
        assert_eq!((replayed.status, replayed.replay_count), (DlqStatus::Replayed, 1), "{}", t.label);
        assert!(matches!(orch.process(incoming("wamid.x1", order_intent())).await.unwrap(), Outcome::Completed(_)));
        // Replaying an entry already replayed (and not failed again) is refused.
        let again = store.mark(dead.dlq_id, DlqStatus::Replayed).await;
        assert!(matches!(again, Err(StoreError::InvalidTransition { from: "replayed", .. })), "{}: {again:?}", t.label);
        assert_eq!(log.count("execute crm"), 2, "{}", t.label);
    }
}

#[tokio::test]
async fn a_reply_not_confirmed_published_is_handed_out_again_on_redelivery() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = builtin(&store);
        let message = incoming("wamid.o9", order_intent());
        let Outcome::Completed(done) = orch.process(message.clone()).await.unwrap() else { panic!("{}", t.label) };
        let reply = done.response.clone().expect("a reply");
        // The worker died before publishing: the redelivery hands the reply out again, nothing re-runs.
        let again = orch.process(message.clone()).await.unwrap();
        let Outcome::Duplicate(DuplicateOf::ReplyPending { key, response }) = again else {
            panic!("{}: expected the pending reply, got {again:?}", t.label)
        };
        assert_eq!((key.clone(), *response), (done.key.clone(), reply), "{}", t.label);
        assert_eq!(count(&t.db, "orders", "message_id = 'wamid.o9'").await, 1, "{}", t.label);
        // Once published, a redelivery is a plain duplicate.
        store.mark_reply_published(&key).await.unwrap();
        assert_eq!(orch.process(message).await.unwrap(), Outcome::Duplicate(DuplicateOf::Done), "{}", t.label);
    }
}

/// PostgreSQL text cannot hold U+0000: a message carrying one (in its id,
/// its text or its intent's entities) is refused before any write, lands in
/// the DLQ, and the messages processed beside it are not affected.
#[tokio::test]
async fn a_nul_character_is_refused_before_any_write_and_costs_nothing_else() {
    for t in testing::databases().await {
        let store = Arc::new(SqlStore::new(t.db.clone()));
        let orch = Arc::new(builtin(&store));
        let nul_id = Incoming::new(text("wamid.nul\u{0}1", "+15551234567", "2 tacos"), order_intent());
        let nul_body = Incoming::new(text("wamid.nul2", "+15551234567", "2 tacos\u{0}"), order_intent());
        let nul_entity = incoming("wamid.nul3", order_intent().with_entity("notes", "extra\u{0}cheese"));
        let runs: Vec<_> = [nul_id, nul_body, nul_entity]
            .into_iter()
            .map(|m| (true, m))
            .chain((0..20).map(|i| (false, incoming(&format!("wamid.beside{i}"), order_intent()))))
            .map(|(bad, message)| {
                let orch = orch.clone();
                tokio::spawn(async move { (bad, orch.process(message).await) })
            })
            .collect();
        for run in runs {
            match run.await.unwrap() {
                (true, Ok(Outcome::DeadLettered(dead))) => {
                    assert_eq!(dead.failure_type, FailureType::ValidationError, "{}", t.label);
                    assert!(dead.reason.contains("NUL"), "{}: {}", t.label, dead.reason);
                }
                (false, Ok(Outcome::Completed(_))) => {}
                (bad, other) => panic!("{}: bad={bad}: {other:?}", t.label),
            }
        }
        assert_eq!(count(&t.db, "dead_letter_queue", "failure_type = 'ValidationError'").await, 3, "{}", t.label);
        assert_eq!(count(&t.db, "orders", "message_id LIKE 'wamid.beside%'").await, 20, "{}", t.label);
        assert_eq!(count(&t.db, "processed_messages", "message_id LIKE 'wamid.nul%'").await, 0, "{}", t.label);
    }
}

#[test]
fn an_owned_envelope_moves_its_message_into_the_same_incoming() {
    let message = match text("wamid.o1", "+15551234567", "hi") {
        orchestrator::Inbound::Message(m) => m,
        _ => unreachable!(),
    };
    let mut envelope = Envelope::new(EventData::MessageReceived(message), "test");
    envelope.max_attempts = Some(7);
    let copied = Incoming::from_envelope(&envelope, order_intent()).unwrap();
    let moved = Incoming::from_owned_envelope(envelope, order_intent()).unwrap();
    assert_eq!(
        (moved.event_id, moved.max_attempts, &moved.inbound, &moved.intent),
        (copied.event_id, Some(7), &copied.inbound, &copied.intent)
    );
    // Another event type is not an inbound message.
    let failed = Envelope::new(
        EventData::MessageFailed(orchestrator::event::MessageFailed {
            message_id: "wamid.o1".into(),
            phone: "+15551234567".into(),
            failure_type: FailureType::UnknownError,
            error_details: "x".into(),
            attempt_count: 1,
            failed_at: chrono::Utc::now(),
        }),
        "test",
    );
    assert!(Incoming::from_owned_envelope(failed, order_intent()).is_none());
}
