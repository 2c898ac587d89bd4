//! The consumer binary as an operator runs it: a SIGTERM ends it within its
//! grace period even with the broker gone, its log file carries no colour
//! codes, and on a cluster without the design's topics it refuses to start
//! naming them (`consumer topics check` lists them too), as a publish to a
//! missing topic stops it instead of retrying forever. With a JWT key it
//! serves the send API, and sends what it accepts, now or when scheduled.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::event::topics;
use orchestrator::kafka::{EmbeddedKafka, KafkaConfig, Publisher};
use rdkafka::mocking::MockCluster;

/// A consumer command against `servers`, with its own SQLite file and a free HTTP port.
fn consumer(dir: &Path, servers: &str) -> (Command, String) {
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut command = Command::new(common::consumer_binary());
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", servers)
        .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", dir.join("orchestrator.db").display()))
        .env("HTTP_ADDR", &http)
        .env("KAFKA_HEARTBEAT_INTERVAL_MS", "300")
        .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("KAFKA_FETCH_MAX_WAIT_MS", "10")
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null());
    (command, http)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_consumer_within_its_grace_period_with_the_broker_gone() {
    let kafka = EmbeddedKafka::start(2).unwrap();
    let dir = temp_dir("shutdown");
    let log = dir.join("consumer.log");
    let (mut command, http) = consumer(&dir, kafka.bootstrap_servers());
    let grace = Duration::from_secs(4);
    command.env("SHUTDOWN_GRACE_MS", grace.as_millis().to_string()).stdout(Stdio::null());
    command.stderr(std::fs::File::create(&log).unwrap());
    let mut child = tokio::process::Command::from(command).kill_on_drop(true).spawn().unwrap();

    // Up and consuming: /health answers and the consumer joined its group.
    common::wait_until_consuming(&http, &log, &mut child, 1).await;

    // The broker goes away, then the operator stops the consumer.
    drop(kafka);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = tokio::time::timeout(grace + Duration::from_secs(5), child.wait()).await;
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(exited.is_ok(), "still running {:?} after SIGTERM with a {grace:?} grace:\n{log_text}", asked.elapsed());
    assert!(log_text.contains("shutdown requested"), "{log_text}");
    assert!(!log_text.contains('\u{1b}'), "colour escape codes in a log file:\n{log_text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_the_topics_is_refused_naming_them_and_the_command() {
    // A cluster that has only some of the design's topics.
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(topics::MESSAGES, 2, 1).unwrap();
    cluster.create_topic(topics::RESPONSES, 2, 1).unwrap();
    let servers = cluster.bootstrap_servers();
    let dir = temp_dir("topics");

    let (mut command, _) = consumer(&dir, &servers);
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started without its topics:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "refusal took {:?}", started.elapsed());
    assert!(stderr.contains("Kafka topics missing"), "{stderr}");
    assert!(stderr.contains("conversation.responses.dlq") && stderr.contains("whatsapp.webhook.unhandled"), "{stderr}");
    assert!(!stderr.contains("conversation.messages,"), "an existing topic is not named: {stderr}");
    assert!(stderr.contains("consumer topics create"), "{stderr}");

    let (mut check, _) = consumer(&dir, &servers);
    check.args(["topics", "check"]);
    let output = tokio::task::spawn_blocking(move || check.output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("conversation.interactions.retry"), "{stderr}");

    // With every topic present the check passes.
    for topic in orchestrator::kafka::all_topics()
        .iter()
        .filter(|t| ![topics::MESSAGES, topics::RESPONSES].contains(&t.as_str()))
    {
        cluster.create_topic(topic, 2, 1).unwrap();
    }
    let (mut check, _) = consumer(&dir, &servers);
    check.args(["topics", "check"]);
    let output = tokio::task::spawn_blocking(move || check.output().unwrap()).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("topics exist"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_missing_topic_is_a_clear_error_not_an_endless_retry() {
    let cluster = MockCluster::new(1).unwrap();
    let config = KafkaConfig::from_vars([
        ("KAFKA_BOOTSTRAP_SERVERS".to_owned(), cluster.bootstrap_servers()),
        // As on a cluster with auto-creation off; and do not wait 30 s for the topic to appear.
        ("KAFKA_PROPERTY_ALLOW_AUTO_CREATE_TOPICS".to_owned(), "false".to_owned()),
        ("KAFKA_PROPERTY_TOPIC_METADATA_PROPAGATION_MAX_MS".to_owned(), "500".to_owned()),
    ])
    .unwrap();
    let publisher = Publisher::new(&config).unwrap();
    let error = publisher.send("conversation.nowhere", Some("+1555"), b"{}", &[]).await.unwrap_err();
    assert!(error.is_missing_topic(), "{error}");
    let missing = tokio::time::timeout(Duration::from_secs(5), orchestrator::kafka::topics::missing_at_runtime())
        .await
        .expect("reported to whoever runs the process");
    assert_eq!(missing.0, ["conversation.nowhere"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_jwt_secret_the_consumer_serves_the_send_api_and_sends_now_and_when_scheduled() {
    let kafka = EmbeddedKafka::start(2).unwrap();
    let dir = temp_dir("send-api");
    let log = dir.join("consumer.log");
    let (mut command, http) = consumer(&dir, kafka.bootstrap_servers());
    command.env("JWT_SECRET", "process-test-secret").env("SCHEDULER_INTERVAL_MS", "200").stdout(Stdio::null());
    command.stderr(std::fs::File::create(&log).unwrap());
    let mut child = tokio::process::Command::from(command).kill_on_drop(true).spawn().unwrap();
    common::wait_until_healthy(&http, &log, &mut child).await;
    let client = common::http_client();
    let token = orchestrator::http::auth::mint_hs256(
        b"process-test-secret",
        "org_id",
        Some("acme"),
        "",
        Duration::from_secs(600),
    )
    .unwrap();
    let due = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let mut ids = Vec::new();
    for body in [
        serde_json::json!({ "recipient_phone": "+15551234567", "content": { "text": "now" } }),
        serde_json::json!({ "recipient_phone": "+15557654321", "content": { "text": "later" }, "scheduled_at": due }),
    ] {
        let response = client
            .post(format!("http://{http}/api/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let answer: serde_json::Value = response.json().await.unwrap();
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    // The dry-run sender "sends" both: the first at once, the second when due.
    for id in &ids {
        let started = Instant::now();
        loop {
            let shown: serde_json::Value = client
                .get(format!("http://{http}/api/v1/messages/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if shown["status"] == "sent" {
                break;
            }
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(started.elapsed() < Duration::from_secs(30), "{id} not sent: {shown}\n{log_text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let unauthorised = client.get(format!("http://{http}/api/v1/messages")).send().await.unwrap();
    assert_eq!(unauthorised.status().as_u16(), 401);
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let _ = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
    std::fs::remove_dir_all(dir).unwrap();
}
