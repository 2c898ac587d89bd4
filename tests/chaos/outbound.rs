//! The reply path under attack: replies on `conversation.responses` sent by
//! the consumer binary to a fake Cloud API that answers in 100 ms with 5%
//! 5xx, bursts of 429 and a 60 s outage, while the consumer is SIGKILLed
//! twice. Every reply must reach WhatsApp (or be dead-lettered with its
//! reason), duplicates at most one per kill, each recipient's in order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::Utc;
use orchestrator::event::{Envelope, EventData, Priority, ResponseContent, ResponseReady};
use orchestrator::testing::fake_cloud_api::{FakeCloudApi, FakeSettings};
use sea_orm::{ConnectionTrait, Statement};

use crate::consumer::ConsumerProcess;
use crate::report::Row;
use crate::scenarios::{Stage, messages, stop};

/// The text of reply `n` to `phone`; the ledger reads it back from the fake.
fn text(phone: &str, n: usize) -> String {
    format!("reply {n} to {phone}")
}

fn reply(phone: &str, n: usize) -> Envelope {
    let content = ResponseContent::text(text(phone, n));
    Envelope::new(
        EventData::ResponseReady(ResponseReady {
            original_message_id: format!("wamid.chaos-{phone}-{n}"),
            to_phone: phone.to_owned(),
            response_type: content.response_type(),
            content,
            generated_at: Utc::now(),
            priority: Priority::Normal,
            metadata: BTreeMap::new(),
        }),
        "chaos",
    )
}

/// Dead-lettered replies, by their `message_id` (`reply:<original>#0`).
async fn dead_lettered(db: &sea_orm::DatabaseConnection) -> HashMap<String, String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT message_id, error FROM dead_letter_queue WHERE message_id LIKE 'reply:%'",
        ))
        .await
        .unwrap_or_default();
    rows.iter().filter_map(|row| Some((row.try_get("", "message_id").ok()?, row.try_get("", "error").ok()?))).collect()
}

pub async fn replies_through_outage_and_kills() -> Row {
    let mut row = Row::new("outbound (5% 5xx, 429 bursts, 60 s outage, 2 SIGKILLs)");
    let phones: Vec<String> = (0..100).map(|p| format!("+1555700{p:04}")).collect();
    let per_phone = (messages(1_000) / phones.len()).max(1);
    let total = phones.len() * per_phone;
    row.messages = total;
    let fake = FakeCloudApi::start(FakeSettings {
        latency: Duration::from_millis(100),
        server_error_rate: 0.05,
        rate_limit: None,
        seed: 7,
    })
    .await
    .expect("fake Cloud API");
    let mut stage = Stage::new().await;
    stage.target.env.extend([
        ("WHATSAPP_TOKEN".to_owned(), "chaos-token".to_owned()),
        ("WHATSAPP_PHONE_NUMBER_ID".to_owned(), "100200300".to_owned()),
        ("WHATSAPP_API_URL".to_owned(), fake.url().to_owned()),
        ("WHATSAPP_MAX_SEND_RATE".to_owned(), "1000".to_owned()),
    ]);

    // Replies arrive over about 80 s, so the outage and the kills meet a stream of them.
    let publisher = stage.publisher.clone();
    let produce_phones = phones.clone();
    let producing = tokio::spawn(async move {
        let pause = Duration::from_secs(80) / total as u32;
        for n in 0..per_phone {
            for phone in &produce_phones {
                publisher.publish(&reply(phone, n)).await.expect("produce a reply");
                tokio::time::sleep(pause).await;
            }
        }
    });
    let mut consumer = ConsumerProcess::spawn(&stage.target, "outbound-0");
    let accepted = |fake: &FakeCloudApi| fake.accepted().len();

    // Timeline: a 429 burst at 8 s, a kill at 12 s, the outage from 18 s to
    // 78 s with a kill in it at 40 s, another 429 burst at 85 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    fake.throttle_for(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut kills = vec![accepted(&fake)];
    consumer.kill().await;
    consumer = ConsumerProcess::spawn(&stage.target, "outbound-1");
    tokio::time::sleep(Duration::from_secs(6)).await;
    fake.set_down(true);
    tokio::time::sleep(Duration::from_secs(22)).await;
    kills.push(accepted(&fake));
    consumer.kill().await;
    consumer = ConsumerProcess::spawn(&stage.target, "outbound-2");
    tokio::time::sleep(Duration::from_secs(38)).await;
    fake.set_down(false);
    tokio::time::sleep(Duration::from_secs(7)).await;
    fake.throttle_for(Duration::from_secs(2));
    producing.await.expect("producer task");

    // Wait until every reply is accounted for: at WhatsApp or in the dead-letter queue.
    let deadline = std::time::Instant::now() + crate::scenarios::run_limit();
    let dead = loop {
        let sent: std::collections::HashSet<String> = fake.accepted().iter().map(|a| a.text().to_owned()).collect();
        let dead = dead_lettered(&stage.db.db).await;
        if sent.len() + dead.len() >= total || std::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if let Some(status) = consumer.exited() {
        row.problems.push(format!("consumer exited on its own ({status}): {}", consumer.log_tail(20)));
    }
    stop(consumer, &mut row).await;

    // The ledger.
    let sends = fake.accepted();
    let mut times: HashMap<String, usize> = HashMap::new();
    for send in &sends {
        *times.entry(send.text().to_owned()).or_default() += 1;
    }
    for phone in &phones {
        let mut last_first_send = None;
        for n in 0..per_phone {
            let id = format!("reply:wamid.chaos-{phone}-{n}#0");
            match (times.get(&text(phone, n)), dead.get(&id)) {
                (Some(&count), _) => {
                    row.completed += 1;
                    row.duplicated_effects += count - 1;
                    let first = sends.iter().position(|s| s.text() == text(phone, n));
                    if last_first_send.is_some() && first < last_first_send {
                        row.order_violations += 1;
                    }
                    last_first_send = first;
                }
                (None, Some(_)) => row.dead_lettered += 1,
                (None, None) => row.lost += 1,
            }
        }
    }
    let counts = fake.counts();
    row.note(format!(
        "fake answered {} 5xx, {} burst 429s, {} while down; kills after {kills:?} sends",
        counts.server_errors, counts.burst_throttled, counts.down
    ));
    for reason in dead.values().take(3) {
        row.note(format!("dead-lettered: {reason}"));
    }
    let (lost, duplicates, overtaken) = (row.lost, row.duplicated_effects, row.order_violations);
    row.check(lost == 0, || format!("{lost} replies neither sent nor dead-lettered"));
    row.check(duplicates <= kills.len(), || format!("{duplicates} duplicate sends for {} kills", kills.len()));
    row.check(overtaken == 0, || format!("{overtaken} replies overtook an earlier one"));
    row.check(counts.down > 0 && counts.burst_throttled > 0, || "the outage or the 429 bursts were not met".into());
    row.note(stage.db.label);
    stage.db.remove().await;
    row
}
