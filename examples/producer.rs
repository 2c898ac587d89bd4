//! Sends one WhatsApp text message as a `MessageReceived` event, keyed by
//! phone, to the cluster in `KAFKA_BOOTSTRAP_SERVERS` (the consumer prints
//! its embedded broker's address).
//!
//! ```sh
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT cargo run --example producer -- "+15551234567" "I want 2 tacos"
//! ```

use chrono::Utc;
use orchestrator::event::{Envelope, EventData, MessageContent, MessageReceived, MessageType};
use orchestrator::kafka::Publisher;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (phone, text) = match args.as_slice() {
        [phone, words @ ..] if !words.is_empty() => (phone.clone(), words.join(" ")),
        _ => return Err("usage: producer <phone> <text...>".into()),
    };
    let config = orchestrator::settings::Settings::from_env()?.kafka.config()?;
    if config.bootstrap_servers.is_none() {
        return Err("set KAFKA_BOOTSTRAP_SERVERS to the address the consumer printed".into());
    }
    let envelope = Envelope::new(
        EventData::MessageReceived(MessageReceived {
            message_id: format!("wamid.cli-{}", uuid::Uuid::new_v4().simple()),
            from_phone: phone,
            message_type: MessageType::Text,
            content: MessageContent::Text { body: text },
            received_at: Utc::now(),
            metadata: Default::default(),
        }),
        "producer_example",
    );
    let (partition, offset) = Publisher::new(&config)?.publish(&envelope).await?;
    println!("sent {} to conversation.messages [{partition}] @ {offset}", envelope.event_id);
    Ok(())
}
