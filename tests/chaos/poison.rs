//! Item 5: a stream with 1% bad input between good messages of the same
//! phones; every bad one ends in the dead-letter queue with the right
//! failure type, every good one completes, and the consumer never restarts.

use std::collections::BTreeMap;

use orchestrator::event::topics;
use sea_orm::{ConnectionTrait, Statement};

use crate::consumer::ConsumerProcess;
use crate::ledger::{self, Workload};
use crate::report::Row;
use crate::scenarios::{Stage, messages, run_limit, stop};

/// The kinds of bad input, each with the failure type its DLQ row must carry.
const BAD: [(&str, &str); 6] = [
    ("malformed JSON", "SerializationError"),
    ("unknown event type", "SerializationError"),
    ("missing fields", "SerializationError"),
    ("oversized payload", "SerializationError"),
    ("invalid UTF-8", "SerializationError"),
    ("100 KB text body", "ValidationError"),
];

/// Bad input number `n` of kind `kind`, built from a valid envelope of `workload` message `i`.
fn bad_input(kind: usize, workload: &Workload, i: usize, n: usize) -> Vec<u8> {
    let mut envelope = serde_json::to_value(workload.envelope(i)).expect("envelope JSON");
    envelope["data"]["message_id"] = format!("wamid.bad.{n}").into();
    match kind {
        0 => format!("{{\"event_id\": \"{n}\", oops").into_bytes(),
        1 => {
            envelope["event_type"] = "OrderShipped".into();
            envelope.to_string().into_bytes()
        }
        2 => {
            envelope["data"].as_object_mut().expect("data object").remove("from_phone");
            envelope.to_string().into_bytes()
        }
        3 => {
            envelope["data"]["content"]["Text"]["body"] =
                "x".repeat(orchestrator::event::MAX_PAYLOAD_BYTES + 1024).into();
            envelope.to_string().into_bytes()
        }
        4 => {
            envelope["data"]["content"]["Text"]["body"] = "INVALID_UTF8_HERE".into();
            let text = envelope.to_string();
            let at = text.find("INVALID_UTF8_HERE").expect("marker");
            let mut bytes = text.into_bytes();
            bytes[at] = 0xff;
            bytes[at + 1] = 0xfe;
            bytes
        }
        _ => {
            envelope["data"]["content"]["Text"]["body"] = "y".repeat(100 * 1024).into();
            envelope.to_string().into_bytes()
        }
    }
}

pub async fn bad_input_stream() -> Row {
    let mut row = Row::new("poison (1% bad input)");
    let stage = Stage::new().await;
    let workload = Workload { phones: 200, per_phone: messages(5_000) / 200 };
    let total = workload.total();
    let mut consumer = ConsumerProcess::spawn(&stage.target, "poison");
    let pid = consumer.pid();

    // One bad input after every 99 good ones, keyed by the phone of the next
    // good message: a bad message must not hold up its phone's later ones.
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bad = 0;
    for chunk_start in (0..total).step_by(99) {
        let end = (chunk_start + 99).min(total);
        stage.produce(workload, chunk_start..end).await.expect("producer task");
        if end < total {
            let kind = bad % BAD.len();
            let phone = Workload::phone(end % workload.phones);
            let bytes = bad_input(kind, &workload, end, bad);
            stage.publisher.send(topics::MESSAGES, Some(&phone), &bytes, &[]).await.expect("bad input produced");
            *expected.entry(BAD[kind].1).or_default() += 1;
            bad += 1;
        }
    }

    stage.wait(total, run_limit(), &mut row).await;
    // Undecodable input has no dedupe record: wait for the DLQ rows instead.
    let deadline = std::time::Instant::now() + run_limit();
    let mut found = dead_letters(&stage).await;
    while found.values().sum::<usize>() < bad && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        found = dead_letters(&stage).await;
    }
    if let Some(status) = consumer.exited() {
        row.problems.push(format!("consumer exited ({status}): {}", consumer.log_tail(20)));
    }
    row.check(consumer.pid() == pid, || "the consumer restarted".into());
    stop(consumer, &mut row).await;

    ledger::check(&stage.db.db, &workload, &mut row).await;
    let good_dead = row.dead_lettered;
    row.check(good_dead == 0, || format!("{good_dead} good messages dead-lettered"));
    let found_total: usize = found.values().sum();
    row.messages += bad;
    row.dead_lettered = found_total;
    row.lost += bad.saturating_sub(found_total);
    if found != expected {
        let errors = sample_errors(&stage).await;
        row.problems.push(format!("dead letters by failure type {found:?}, expected {expected:?}: {errors:?}"));
    }
    row.note(format!("{bad} bad inputs: {}", BAD.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")));
    row.note(stage.db.label);
    stage.db.remove().await;
    row
}

/// Dead-letter rows by failure type.
async fn dead_letters(stage: &Stage) -> BTreeMap<&'static str, usize> {
    let db = &stage.db.db;
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT failure_type, COUNT(*) AS n FROM dead_letter_queue GROUP BY failure_type",
        ))
        .await
        .expect("dead letters");
    let mut found = BTreeMap::new();
    for r in rows {
        let failure: String = r.try_get("", "failure_type").unwrap();
        let n: i64 = r.try_get("", "n").unwrap();
        let name = BAD.iter().map(|(_, f)| *f).find(|f| *f == failure).unwrap_or("other");
        found.insert(name, n as usize);
    }
    found
}

/// One error text per failure type, to tell why a count is off.
async fn sample_errors(stage: &Stage) -> Vec<(String, String)> {
    let db = &stage.db.db;
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT failure_type, MIN(error) AS error FROM dead_letter_queue GROUP BY failure_type, substr(error, 1, 30)",
        ))
        .await
        .expect("dead letters");
    rows.iter().map(|r| (r.try_get("", "failure_type").unwrap(), r.try_get("", "error").unwrap())).collect()
}
