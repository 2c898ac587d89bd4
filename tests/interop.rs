//! The integration guide's clients against the example consumer: a Python
//! service (confluent-kafka + pydantic models written to the guide's field
//! list) and a Node.js service (kafkajs as is, no codec plugins) read and
//! validate the webhook's `MessageReceived` and our `ResponseReady`; replies
//! they publish are delivered by the response sender; a webhook request an
//! edge function publishes (kafkajs) is answered.
//!
//! Needs the clients `.ci/run` installs (`target/interop-venv`,
//! `interop/node/node_modules`); without them the test says so and passes,
//! unless `ORCHESTRATOR_REQUIRE_INTEROP=1` (set by CI) makes it fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::kafka::EmbeddedKafka;
use orchestrator::testing::fake_cloud_api::{FakeCloudApi, FakeSettings};
use orchestrator::webhook::signature::sign;

const APP_SECRET: &str = "interop-secret";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter with the pinned clients, and node with kafkajs; `None` when not installed.
fn clients() -> Option<(PathBuf, PathBuf)> {
    let python = root().join("target/interop-venv/bin/python");
    let kafkajs = root().join("interop/node/node_modules/kafkajs");
    let node = which("node");
    let found = python.is_file() && kafkajs.is_dir() && node.is_some();
    if !found {
        let hint = "run .ci/run, or: python3 -m venv target/interop-venv && target/interop-venv/bin/pip install -r \
                    interop/python/requirements.txt && (cd interop/node && npm ci)";
        assert!(std::env::var("ORCHESTRATOR_REQUIRE_INTEROP").is_err(), "interop clients missing: {hint}");
        eprintln!("SKIPPED: interop clients not installed ({hint})");
        return None;
    }
    Some((python, node?))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

/// Runs a client to completion; its stdout (one JSON line) and whether it succeeded.
async fn run(mut command: Command) -> (bool, String) {
    command.stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn python(binary: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command.arg(root().join("interop/python/guide_client.py")).args(args);
    command
}

fn node(binary: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command.arg(root().join("interop/node/guide_client.js")).args(args);
    command
}

/// Waits until the fake Cloud API accepted a send of `text` to `to` (digits, no `+`).
async fn delivered(api: &FakeCloudApi, to: &str, text: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !api.accepted().iter().any(|send| send.to() == to && send.text().contains(text)) {
        assert!(
            Instant::now() < deadline,
            "no reply {text:?} to {to}; sent: {:?}\n{}",
            api.accepted().iter().map(|s| (s.to().to_owned(), s.text().to_owned())).collect::<Vec<_>>(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_python_and_node_clients_read_our_events_and_their_replies_are_delivered() {
    let Some((python_bin, node_bin)) = clients() else { return };
    let kafka = EmbeddedKafka::start(2).unwrap();
    let servers = kafka.bootstrap_servers().to_owned();
    let api = FakeCloudApi::start(FakeSettings::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("interop-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("consumer.log");
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();

    // The example consumer, as deployed: its defaults (gzip), a real Cloud API URL, an app secret.
    let mut consumer = tokio::process::Command::new(common::consumer_binary())
        .env("KAFKA_BOOTSTRAP_SERVERS", &servers)
        .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", dir.join("orchestrator.db").display()))
        .env("HTTP_ADDR", &http)
        .env("KAFKA_HEARTBEAT_INTERVAL_MS", "300")
        .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("KAFKA_FETCH_MAX_WAIT_MS", "10")
        .env("WHATSAPP_TOKEN", "interop-token")
        .env("WHATSAPP_PHONE_NUMBER_ID", "123456")
        .env("WHATSAPP_API_URL", api.url())
        .env("WHATSAPP_APP_SECRET", APP_SECRET)
        .env_remove("KAFKA_COMPRESSION_TYPE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // A message through the webhook: the consumer publishes MessageReceived, then ResponseReady, and sends the reply.
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000000","phone_number_id":"123456"},"messages":[{"from":"15551230001","id":"wamid.interop1","timestamp":"1700000000","type":"text","text":{"body":"Hi, I want to order 2 pizzas"}}]}}]}]}"#;
    let client = common::http_client();
    let started = Instant::now();
    loop {
        let posted = client
            .post(format!("http://{http}/webhook"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sign(APP_SECRET.as_bytes(), body))
            .body(body.to_vec())
            .send()
            .await;
        if posted.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{}", std::fs::read_to_string(&log).unwrap_or_default());
        assert!(consumer.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    delivered(&api, "15551230001", "", &log).await;

    let topics = "conversation.messages,conversation.responses";
    let wanted = "MessageReceived,ResponseReady";
    // Python: validates what we publish, and its reply (naive timestamps) is delivered.
    let (ok, out) =
        run(python(&python_bin, &["consume", "--bootstrap", &servers, "--topics", topics, "--want", wanted])).await;
    assert!(ok, "python consumer: {out}");
    let reply =
        ["reply", "--bootstrap", &servers, "--to", "+15551230002", "--original", "py-1", "--text", "from python"];
    let (ok, out) = run(python(&python_bin, &reply)).await;
    assert!(ok, "python producer: {out}");
    delivered(&api, "15551230002", "from python", &log).await;

    // Node: reads our (gzip) batches with kafkajs as is, and its reply is delivered.
    let (ok, out) = run(node(&node_bin, &["consume", &servers, topics, wanted])).await;
    assert!(ok, "node consumer: {out}");
    let (ok, out) = run(node(&node_bin, &["reply", &servers, "+15551230003", "node-1", "from node"])).await;
    assert!(ok, "node producer: {out}");
    delivered(&api, "15551230003", "from node", &log).await;

    // An edge function's request (kafkajs) on whatsapp.webhook.inbound is answered like a POST.
    let edge = ["edge", &servers, APP_SECRET, "+15551230004", "wamid.edge1", "Hi, I want to order 3 tacos"];
    let (ok, out) = run(node(&node_bin, &edge)).await;
    assert!(ok, "edge producer: {out}");
    delivered(&api, "15551230004", "", &log).await;

    let _ = consumer.start_kill();
    let _ = consumer.wait().await;
    std::fs::remove_dir_all(dir).unwrap();
}
