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
                    // The first delivery of m1 fails transiently.
                    if event.message_id == "m1" && calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        return ProcessingResult::Retry("crm busy".into());
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
    bus.publish(message("m2")).await.unwrap();

    let mut got = Vec::new();
    while got.len() < 2 {
        let id = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await.expect("delivered").unwrap();
        got.push(id);
    }
    assert_eq!(got, ["m1", "m2"], "in order, m1 after its retry");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "m1 was retried once");

    // publish() chose the topic by type and keyed by phone; the stray event was dead-lettered.
    let reader: StreamConsumer = config.consumer_config("reader").create().unwrap();
    reader.subscribe(&[topics::MESSAGES, "conversation.messages.dlq"]).unwrap();
    let mut on_messages = 0;
    let mut dead = None;
    while on_messages < 3 || dead.is_none() {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await.expect("readable").unwrap();
        assert_eq!(m.key(), Some(&b"+15551234567"[..]));
        if m.topic() == topics::MESSAGES {
            on_messages += 1;
            if on_messages == 1 {
                assert_eq!(m.partition(), partition);
            }
        } else {
            let error = m.headers().unwrap().iter().find(|h| h.key == headers::ERROR).unwrap().value.unwrap().to_vec();
            dead = Some(String::from_utf8(error).unwrap());
        }
    }
    assert_eq!(dead.as_deref(), Some("expected MessageReceived events on conversation.messages"));
    subscription.stop().await.unwrap();
}
