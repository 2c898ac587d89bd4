//! `consumer topics create` against a broker that implements CreateTopics.
//! librdkafka's mock cluster does not, so this test serves the three
//! requests the admin client makes (ApiVersions, Metadata v1 to find the
//! controller, CreateTopics v4) and records what it was asked to create,
//! with the retention of `conversation.processed`.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kafka_wire::{Reader, Request, api_versions_answer, parse_request, put_string, read_frame, write_frame};
use orchestrator::kafka::KafkaConfig;
use orchestrator::kafka::topics::{PROCESSED_RETENTION, TopicCreation, all_topics, create_topics};

/// A topic create request: name, partitions, replication factor.
type Asked = Arc<Mutex<Vec<(String, i32, i16)>>>;

/// Topics the broker already has: CreateTopics answers TOPIC_ALREADY_EXISTS (36) for them.
const EXISTING: &str = "conversation.messages";
/// A topic the broker refuses (POLICY_VIOLATION, 44).
const REFUSED: &str = "conversation.failures";

/// Serves every connection on `listener` (the admin client opens a bootstrap
/// connection and one to the broker Metadata names).
fn serve(listener: TcpListener, asked: Asked) {
    let port = listener.local_addr().unwrap().port();
    for stream in listener.incoming() {
        let asked = asked.clone();
        std::thread::spawn(move || connection(stream.unwrap(), port, asked));
    }
}

fn connection(mut stream: TcpStream, port: u16, asked: Asked) {
    while let Some(frame) = read_frame(&mut stream) {
        let Request { key, version, correlation, body } = parse_request(&frame);
        let answer = match key {
            // ApiVersions: Metadata v1 only, CreateTopics v0-4.
            18 => api_versions_answer(version, &[(18, 0, 3), (3, 1, 1), (19, 0, 4)]),
            3 => {
                // Metadata v1: this one broker, also the controller; no topics.
                let mut answer = 1i32.to_be_bytes().to_vec();
                answer.extend(1i32.to_be_bytes());
                put_string(&mut answer, "127.0.0.1");
                answer.extend(i32::from(port).to_be_bytes());
                answer.extend((-1i16).to_be_bytes());
                answer.extend(1i32.to_be_bytes());
                answer.extend(0i32.to_be_bytes());
                answer
            }
            19 => {
                assert_eq!(version, 4, "KIP-464 defaults (-1) need CreateTopics v4");
                let mut reader = Reader(body);
                let count = reader.i32();
                let mut answer = 0i32.to_be_bytes().to_vec(); // throttle_time_ms
                answer.extend(count.to_be_bytes());
                for _ in 0..count {
                    let name = reader.string();
                    let partitions = reader.i32();
                    let replication = reader.i16();
                    assert_eq!(reader.i32(), 0, "no replica assignment");
                    let configs: Vec<(String, String)> =
                        (0..reader.i32()).map(|_| (reader.string(), reader.string())).collect();
                    // Only the live inbox's events are kept for a bounded time; the rest take the cluster's defaults.
                    let expected = if name == "conversation.processed" {
                        vec![("retention.ms".to_owned(), PROCESSED_RETENTION.as_millis().to_string())]
                    } else {
                        Vec::new()
                    };
                    assert_eq!(configs, expected, "config entries of {name}");
                    asked.lock().unwrap().push((name.clone(), partitions, replication));
                    let error: i16 = match name.as_str() {
                        EXISTING => 36,
                        REFUSED => 44,
                        _ => 0,
                    };
                    put_string(&mut answer, &name);
                    answer.extend(error.to_be_bytes());
                    answer.extend((-1i16).to_be_bytes()); // error_message: null
                }
                answer
            }
            other => panic!("unexpected request {other} v{version}"),
        };
        write_frame(&mut stream, &correlation, &answer);
    }
}

fn broker() -> (String, Asked) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let asked = Asked::default();
    let served = asked.clone();
    std::thread::spawn(move || serve(listener, served));
    (address, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_of_the_design_is_created_with_the_flags_and_existing_ones_are_kept() {
    let (address, asked) = broker();
    let config = KafkaConfig::default().with_bootstrap_servers(address);
    let all = all_topics();
    let created = create_topics(&config, &all, 6, -1, Duration::from_secs(20)).await.unwrap();

    let names: Vec<&str> = created.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, all.iter().map(String::as_str).collect::<Vec<_>>(), "every topic, in order");
    for (name, outcome) in &created {
        let expected = match name.as_str() {
            EXISTING => TopicCreation::Existed,
            REFUSED => TopicCreation::Failed("PolicyViolation (Broker: Policy violation)".to_owned()),
            _ => TopicCreation::Created,
        };
        assert_eq!(outcome, &expected, "{name}");
    }
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), all.len());
    assert!(asked.iter().all(|(_, partitions, replication)| (*partitions, *replication) == (6, -1)), "{asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topics_create_command_passes_its_flags_and_reports_each_topic() {
    let (address, asked) = broker();
    let mut command = Command::new(common::consumer_binary());
    command.env("KAFKA_BOOTSTRAP_SERVERS", &address).args([
        "topics",
        "create",
        "--partitions",
        "24",
        "--replication-factor",
        "3",
    ]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "one topic was refused: the command fails\n{stdout}{stderr}");
    assert!(stdout.contains("created  conversation.responses.dlq"), "{stdout}");
    assert!(stdout.contains(&format!("exists   {EXISTING}")), "{stdout}");
    assert!(stdout.contains(&format!("FAILED   {REFUSED}: PolicyViolation (Broker: Policy violation)")), "{stdout}");
    assert!(stderr.contains("1 topic(s) not created"), "{stderr}");
    assert!(asked.lock().unwrap().iter().all(|(_, p, r)| (*p, *r) == (24, 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_create_topics_makes_the_missing_topics_at_start_and_stops_on_a_refusal() {
    let (address, asked) = broker();
    let dir = std::env::temp_dir().join(format!("create-topics-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(common::consumer_binary());
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", &address)
        .env("KAFKA_CREATE_TOPICS", "true")
        .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", dir.join("o.db").display()))
        .env("HTTP_ADDR", "127.0.0.1:0");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("creating Kafka topic {REFUSED} failed")), "{stderr}");
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), all_topics().len(), "the missing ones: all, on this empty broker");
    assert!(
        asked.iter().all(|(_, p, r)| (*p, *r) == (12, -1)),
        "KAFKA_TOPIC_PARTITIONS and _REPLICATION_FACTOR defaults"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
