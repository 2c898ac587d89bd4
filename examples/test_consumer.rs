//! Prints every event on the conversation topics, pretty, to watch the flow.
//!
//! ```sh
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT cargo run --example test_consumer
//! ```

use orchestrator::event::{Envelope, topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = orchestrator::settings::Settings::from_env()?.kafka.config()?;
    if config.bootstrap_servers.is_none() {
        return Err("set KAFKA_BOOTSTRAP_SERVERS to the address the consumer printed".into());
    }
    let group = format!("test-consumer-{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = config.consumer_config(&group).create()?;
    let watched = [
        topics::MESSAGES,
        topics::INTERACTIONS,
        topics::RESPONSES,
        topics::FAILURES,
        "conversation.messages.retry",
        "conversation.messages.dlq",
    ];
    consumer.subscribe(&watched)?;
    println!("watching {watched:?} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            received = consumer.recv() => {
                let message = received?;
                let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                let payload = message.payload().unwrap_or_default();
                let body = match Envelope::decode(payload) {
                    Ok(envelope) => serde_json::to_string_pretty(&envelope)?,
                    Err(error) => format!("<{error}> {}", String::from_utf8_lossy(payload)),
                };
                println!("--- {} [{}] @ {} key={key}\n{body}", message.topic(), message.partition(), message.offset());
            }
        }
    }
}
