//! The KafkaEventBus API on the embedded broker.

mod common;

use common::kafka_config;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use orchestrator::event::{
    Envelope, EventData, MessageContent, MessageReceived, MessageType, Priority, ResponseContent, ResponseReady,
    ResponseType, topics,
};
use orchestrator::kafka::{
    EmbeddedKafka, KafkaConfig, KafkaEventBus, ProcessingResult, Publisher, SubscriptionConfig, headers,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use tokio::sync::mpsc;

fn message(id: &str) -> MessageReceived {
    MessageReceived {
        message_id: id.into(),
        from_phone: "+15551234567".into(),
        message_type: MessageType::Text,
        content: MessageContent::Text { body: "hola".into() },
        received_at: Utc::now(),
        metadata: HashMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_with_retry_and_dead_letter() {
    let kafka = EmbeddedKafka::start(2).unwrap();
    let config = kafka_config(&kafka, "orchestrator");
    assert!(KafkaEventBus::new(KafkaConfig::default()).is_err(), "no bootstrap servers: a clear error");
    let bus = KafkaEventBus::new(config.clone()).unwrap();

    let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
    let calls = Arc::new(AtomicU32::new(0));
    let subscription = {
        let calls = calls.clone();
        bus.subscribe::<MessageReceived, _>(
            SubscriptionConfig {
                consumer_group: "crm-sync".into(),
                retry_delay: Duration::from_millis(50),
                ..Default::default()
            },
            move |event: MessageReceived| {
                let (calls, seen_tx) = (calls.clone(), seen_tx.clone());
                async move {
                    // The first delivery of m1 fails transiently; m3 never works.
                    if event.message_id == "m1" && calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        return ProcessingResult::Retry("crm busy".into());
                    }
                    if event.message_id == "m3" {
                        return ProcessingResult::Retry("crm rejects m3".into());
                    }
                    let _ = seen_tx.send(event.message_id);
                    ProcessingResult::Success
                }
            },
        )
        .unwrap()
    };

    let (partition, _) = bus.publish(message("m1")).await.unwrap();
    // A reply on the messages topic is the wrong type for this subscriber.
    let stray = Envelope::new(
        EventData::ResponseReady(ResponseReady {
            original_message_id: "m0".into(),
            to_phone: "+15551234567".into(),
            response_type: ResponseType::Text,
            content: ResponseContent::text("hi"),
            generated_at: Utc::now(),
            priority: Priority::Normal,
            metadata: Default::default(),
        }),
        "test",
    );
    Publisher::new(&config).unwrap().send(topics::MESSAGES, Some("+15551234567"), &stray.encode(), &[]).await.unwrap();
    bus.publish(message("m3")).await.unwrap();
    bus.publish(message("m2")).await.unwrap();

    let mut got = Vec::new();
    while got.len() < 2 {
        let id = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await.expect("delivered").unwrap();
        got.push(id);
    }
    assert_eq!(got, ["m1", "m2"], "in order, m1 after its retry, m2 after m3 gave up");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "m1 was retried once");

    // publish() chose the topic by type and keyed by phone; the stray event was dead-lettered.
    let reader: StreamConsumer = config.consumer_config("reader").create().unwrap();
    reader.subscribe(&[topics::MESSAGES, "conversation.messages.dlq"]).unwrap();
    let mut on_messages = 0;
    let mut dead = Vec::new();
    while on_messages < 4 || dead.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await.expect("readable").unwrap();
        assert_eq!(m.key(), Some(&b"+15551234567"[..]));
        if m.topic() == topics::MESSAGES {
            on_messages += 1;
            if on_messages == 1 {
                assert_eq!(m.partition(), partition);
            }
        } else {
            let header = |name: &str| {
                let value = m.headers().unwrap().iter().find(|h| h.key == name).and_then(|h| h.value);
                String::from_utf8(value.expect(name).to_vec()).unwrap()
            };
            assert_eq!(header(headers::SOURCE_TOPIC), topics::MESSAGES);
            assert_eq!(header(headers::CONSUMER_GROUP), "crm-sync");
            dead.push((header(headers::ERROR), header(headers::ATTEMPTS)));
        }
    }
    assert_eq!(
        dead,
        [
            ("expected MessageReceived events on conversation.messages".to_owned(), "1".to_owned()),
            ("gave up after 3 retries: crm rejects m3".to_owned(), "4".to_owned()),
        ],
        "the stray event at once, m3 after its retries, in order"
    );
    subscription.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_runs_different_phones_concurrently_and_one_phone_in_order() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    let bus = KafkaEventBus::new(kafka_config(&kafka, "orchestrator")).unwrap();
    let slow_phone_waits = Arc::new(tokio::sync::Notify::new());
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
    let subscription = {
        let slow_phone_waits = slow_phone_waits.clone();
        bus.subscribe::<MessageReceived, _>(
            SubscriptionConfig { consumer_group: "inbox".into(), max_in_flight: 4, ..Default::default() },
            move |event: MessageReceived| {
                let (slow_phone_waits, seen_tx) = (slow_phone_waits.clone(), seen_tx.clone());
                async move {
                    // The first phone's first event waits for the other phone's: with
                    // one event at a time this would never finish.
                    if event.message_id == "a1" {
                        slow_phone_waits.notified().await;
                    }
                    if event.message_id == "b1" {
                        slow_phone_waits.notify_one();
                    }
                    let _ = seen_tx.send(event.message_id);
                    ProcessingResult::Success
                }
            },
        )
        .unwrap()
    };
    let from = |id: &str, phone: &str| MessageReceived { from_phone: phone.into(), ..message(id) };
    bus.publish(from("a1", "+15550000001")).await.unwrap();
    bus.publish(from("a2", "+15550000001")).await.unwrap();
    bus.publish(from("b1", "+15550000002")).await.unwrap();

    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(tokio::time::timeout(Duration::from_secs(30), seen.recv()).await.expect("not stuck").unwrap());
    }
    assert_eq!(got, ["b1", "a1", "a2"], "b1 overtook the waiting phone, whose events kept their order");
    subscription.stop().await.unwrap();
}
