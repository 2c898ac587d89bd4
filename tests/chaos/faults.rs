//! Items 3 and 4: the database unreachable mid-run (through a TCP proxy the
//! test cuts), and the mock broker's own fault injection.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::consumer::{ConsumerProcess, http_client};
use crate::ledger::Workload;
use crate::proxy::Proxy;
use crate::report::Row;
use crate::scenarios::{Stage, messages, run_limit, stop};

/// Polls `/health` until it answers `code`; returns the body and how long it took.
async fn await_health(
    consumer: &ConsumerProcess,
    client: &reqwest::Client,
    code: u16,
    limit: Duration,
) -> Option<(serde_json::Value, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some((status, body)) = consumer.health(client).await
            && status == code
        {
            return Some((body, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Breakers the health body reports as not closed.
fn open_breakers(body: &serde_json::Value) -> Vec<String> {
    body["circuit_breakers"]
        .as_object()
        .map(|m| m.iter().filter(|(_, s)| s.as_str() != Some("closed")).map(|(n, _)| n.clone()).collect())
        .unwrap_or_default()
}

/// Item 3: the database goes away for a while and comes back.
pub async fn database_outage() -> Row {
    let mut row = Row::new("database outage (proxy cut)");
    let stage = Stage::new().await;
    let Some(server) = stage.db.server() else {
        row.note("skipped: needs PostgreSQL (TEST_DATABASE_URL)");
        stage.db.remove().await;
        return row;
    };
    let outage =
        Duration::from_secs(std::env::var("CHAOS_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15));
    let workload = Workload { phones: 200, per_phone: messages(6_000) / 200 };
    let total = workload.total();
    let proxy = Proxy::start(server).await;
    let mut target = stage.target.clone();
    target.database_url = stage.db.url_via_port(proxy.port).expect("a PostgreSQL URL");
    let client = http_client();
    let mut consumer = ConsumerProcess::spawn(&target, "outage");

    stage.produce(workload, 0..total / 3).await.expect("producer task");
    stage.wait(total / 6, run_limit(), &mut row).await;
    row.check(await_health(&consumer, &client, 200, Duration::from_secs(30)).await.is_some(), || {
        "health was not 200 before the outage".into()
    });

    proxy.cut();
    let cut = Instant::now();
    let producing = stage.produce(workload, total / 3..2 * total / 3);
    match await_health(&consumer, &client, 503, Duration::from_secs(30)).await {
        Some((body, after)) => row.note(format!(
            "503 after {:.1} s ({})",
            after.as_secs_f64(),
            body["reason"].as_str().unwrap_or("no reason")
        )),
        None => row.problems.push("health never answered 503 during the outage".into()),
    }
    let mut opened = BTreeSet::new();
    while cut.elapsed() < outage {
        if let Some((_, body)) = consumer.health(&client).await {
            opened.extend(open_breakers(&body));
        }
        if let Some(status) = consumer.exited() {
            row.problems.push(format!("consumer exited during the outage ({status}): {}", consumer.log_tail(20)));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    proxy.restore();
    match await_health(&consumer, &client, 200, Duration::from_secs(60)).await {
        Some((_, after)) => row.note(format!("200 again {:.1} s after restore", after.as_secs_f64())),
        None => row.problems.push("health did not return to 200 within 60 s of the restore".into()),
    }
    producing.await.expect("producer task");
    stage.produce(workload, 2 * total / 3..total).await.expect("producer task");
    stage.wait(total, run_limit(), &mut row).await;

    // Breakers that opened close again once calls succeed (half-open probe after their open time).
    let mut still_open = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        still_open = consumer.health(&client).await.map(|(_, b)| open_breakers(&b)).unwrap_or_default();
        if still_open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    row.note(format!("{:.0} s outage, breakers opened: {opened:?}", outage.as_secs_f64()));
    row.check(opened.contains(orchestrator::store::DATABASE_BREAKER), || {
        format!("the database's circuit breaker did not open while it was unreachable (opened: {opened:?})")
    });
    row.check(still_open.is_empty(), || format!("breakers still open after the outage: {still_open:?}"));
    stop(consumer, &mut row).await;
    drop(proxy);
    stage.finish(&workload, &mut row).await;
    row
}

/// Item 4: the broker goes down and comes back; produce and commit requests fail for a while.
pub async fn broker_faults() -> Row {
    let mut row = Row::new("broker faults (down/up, produce and commit errors)");
    let stage = Stage::new().await;
    let workload = Workload { phones: 200, per_phone: messages(6_000) / 200 };
    let total = workload.total();
    let mut consumer = ConsumerProcess::spawn(&stage.target, "broker-faults");
    let producing = stage.produce(workload, 0..total);
    let cluster = stage.kafka.cluster();

    stage.wait(total / 5, run_limit(), &mut row).await;
    cluster.broker_down(1).expect("broker down");
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.broker_up(1).expect("broker up");

    stage.wait(2 * total / 5, run_limit(), &mut row).await;
    // Retriable errors: the clients retry them; nothing may be skipped or duplicated meanwhile.
    let produce_errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
    ]
    .repeat(10);
    cluster.request_errors(RDKafkaApiKey::Produce, &produce_errors);

    stage.wait(3 * total / 5, run_limit(), &mut row).await;
    let commit_errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    ]
    .repeat(5);
    cluster.request_errors(RDKafkaApiKey::OffsetCommit, &commit_errors);
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ]
        .repeat(5),
    );

    producing.await.expect("producer task");
    stage.wait(total, run_limit(), &mut row).await;
    if let Some(status) = consumer.exited() {
        row.problems.push(format!("consumer exited ({status}): {}", consumer.log_tail(20)));
    }
    stop(consumer, &mut row).await;
    row.note(format!(
        "broker down 5 s; {} produce, {} commit, 10 fetch errors injected",
        produce_errors.len(),
        commit_errors.len()
    ));
    stage.finish(&workload, &mut row).await;
    row
}
