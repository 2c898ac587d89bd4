//! The operator console in a real browser: headless Chromium (Debian's
//! `chromium`, driven by playwright-core from `tests/browser`) against the
//! consumer binary, its Cloud API a local fake. The script
//! (`tests/browser/console.e2e.mjs`) checks that a webhook POST shows up in
//! the live feed within a second, that a reply WhatsApp refused appears in
//! the dead-letter view and a replay from the page is sent, and that the
//! breaker panel shows the Cloud API's breaker open once WhatsApp is down.
//! It saves a screenshot (`target/console-e2e.png`).
//!
//! Needs what `.ci/run` installs (`/usr/bin/chromium`, `tests/browser/node_modules`);
//! without them the test says so and passes, unless
//! `ORCHESTRATOR_REQUIRE_BROWSER=1` (set by CI) makes it fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};
use orchestrator::kafka::EmbeddedKafka;
use orchestrator::testing::fake_cloud_api::{FakeCloudApi, FakeSettings};
use serde_json::json;

const ADMIN_TOKEN: &str = "console-e2e-admin-token";

fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    let node =
        std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join("node")).find(|p| p.is_file());
    let installed = root.join("tests/browser/node_modules/playwright-core").is_dir();
    match (node, chromium.is_file() && installed) {
        (Some(node), true) => Some((node, chromium)),
        _ => {
            let hint = "run .ci/run, or: apt-get install chromium && (cd tests/browser && npm ci)";
            assert!(std::env::var("ORCHESTRATOR_REQUIRE_BROWSER").is_err(), "browser test tools missing: {hint}");
            eprintln!("SKIPPED: browser test tools not installed ({hint})");
            None
        }
    }
}

/// The script's handle on the fake Cloud API.
fn control_routes(fake: Arc<FakeCloudApi>) -> axum::Router {
    axum::Router::new()
        .route(
            "/fake/script-permanent",
            post(|State(fake): State<Arc<FakeCloudApi>>| async move {
                // 131026: not deliverable, which retrying cannot fix: the reply goes to the DLQ at once.
                fake.script([(400, Some(131026))]);
                Json(json!({ "ok": true }))
            }),
        )
        .route(
            "/fake/down",
            post(|State(fake): State<Arc<FakeCloudApi>>| async move {
                fake.set_down(true);
                Json(json!({ "ok": true }))
            }),
        )
        .route(
            "/fake/up",
            post(|State(fake): State<Arc<FakeCloudApi>>| async move {
                fake.set_down(false);
                Json(json!({ "ok": true }))
            }),
        )
        .route(
            "/fake/accepted",
            get(|State(fake): State<Arc<FakeCloudApi>>| async move {
                let sends: Vec<_> = fake.accepted().iter().map(|s| json!({ "to": s.to(), "text": s.text() })).collect();
                Json(json!(sends))
            }),
        )
        .with_state(fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_feed_replays_a_dead_letter_and_an_open_breaker_in_chromium() {
    let Some((node, chromium)) = browser_tools() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kafka = EmbeddedKafka::start(4).unwrap();
    let fake = Arc::new(FakeCloudApi::start(FakeSettings::default()).await.unwrap());
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_url = format!("http://{}", control.local_addr().unwrap());
    tokio::spawn(axum::serve(control, control_routes(fake.clone())).into_future());

    let dir = std::env::temp_dir().join(format!("console-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("consumer.log");
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut command = Command::new(common::consumer_binary());
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers())
        .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", dir.join("orchestrator.db").display()))
        .env("HTTP_ADDR", &http)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WHATSAPP_TOKEN", "e2e-token")
        .env("WHATSAPP_PHONE_NUMBER_ID", "100200300")
        .env("WHATSAPP_API_URL", fake.url())
        // Quick retries: a reply to a WhatsApp that is down fails five times within seconds, opening the breaker.
        .env("RETRY_DELAY_MS", "100")
        .env("KAFKA_HEARTBEAT_INTERVAL_MS", "300")
        .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("KAFKA_FETCH_MAX_WAIT_MS", "10")
        .env("RUST_LOG", "info")
        .env_remove("WHATSAPP_APP_SECRET")
        .env_remove("JWT_SECRET")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = tokio::process::Command::from(command).kill_on_drop(true).spawn().unwrap();
    // The reply sender's, the webhook's and the pipeline's groups: the feed is timed from the webhook's 200.
    common::wait_until_consuming(&http, &log, &mut child, 3).await;

    let screenshot = root.join("target/console-e2e.png");
    let script = tokio::process::Command::new(node)
        .arg(root.join("tests/browser/console.e2e.mjs"))
        .env("CONSOLE_URL", format!("http://{http}"))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("CONTROL_URL", &control_url)
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", chromium)
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(150), script).await.expect("the browser script hung").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        output.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}\n--- consumer log (tail) ---\n{}",
        output.status,
        log_text.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    // What the page did, seen from outside it: the replayed reply reached WhatsApp.
    assert!(fake.accepted().iter().any(|send| send.to().ends_with("15550001111")), "the replay was not sent");
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        screenshot.display()
    );
    let pid = child.id().unwrap().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
    let _ = std::fs::remove_dir_all(dir);
}
