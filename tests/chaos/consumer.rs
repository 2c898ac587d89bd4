//! The example consumer binary as a child process: started with the test's
//! broker and database, killed, terminated, asked for its health.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Where a consumer connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// The broker in the test process (it outlives every consumer).
    pub bootstrap_servers: String,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// Extra environment (`CLAIM_LEASE_MS`, ...).
    pub env: Vec<(String, String)>,
}

impl Target {
    pub fn new(bootstrap_servers: &str, database_url: &str) -> Self {
        Self { bootstrap_servers: bootstrap_servers.to_owned(), database_url: database_url.to_owned(), env: Vec::new() }
    }
}

/// A running consumer process.
pub struct ConsumerProcess {
    child: Child,
    /// Its HTTP server (`/health`, `/metrics`).
    pub http: SocketAddr,
    /// Its log (stderr), read back when something goes wrong.
    pub log: PathBuf,
    pub name: String,
}

impl ConsumerProcess {
    /// Starts `target/debug/examples/consumer` against `target`.
    pub fn spawn(target: &Target, name: &str) -> Self {
        let http = free_port();
        let log = std::env::temp_dir().join(format!("chaos-{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(consumer_binary());
        command
            .env("KAFKA_BOOTSTRAP_SERVERS", &target.bootstrap_servers)
            .env("DATABASE_URL", &target.database_url)
            .env("HTTP_ADDR", http.to_string())
            // Group changes settle in about a second on the mock broker (DEPENDENCY-NOTES).
            .env("KAFKA_HEARTBEAT_INTERVAL_MS", "300")
            .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
            // The mock broker answers a fetch only when its wait runs out (see EmbeddedKafka::configure).
            .env("KAFKA_FETCH_MAX_WAIT_MS", orchestrator::kafka::EMBEDDED_FETCH_WAIT_MS.to_string())
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command.spawn().expect("the consumer binary starts");
        Self { child, http, log, name: name.to_owned() }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no final commit, in-flight work cut wherever it is.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits up to `limit` for a clean exit.
    pub async fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.start_kill();
                None
            }
        }
    }

    /// `None` while it runs; its exit status once it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `GET /health`: status code and body, or `None` when it does not answer.
    pub async fn health(&self, client: &reqwest::Client) -> Option<(u16, serde_json::Value)> {
        let response =
            client.get(format!("http://{}/health", self.http)).timeout(Duration::from_secs(5)).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or_default()))
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A port nobody listens on right now.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

/// `<target>/debug/examples/consumer`, built by `cargo test`.
fn consumer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/debug/deps/chaos-<hash> -> <target>/debug/examples/consumer
    let profile = exe.parent().and_then(Path::parent).expect("the test binary lives in <target>/<profile>/deps");
    let binary = profile.join("examples").join(format!("consumer{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --example consumer` (plain `cargo test` builds it too)",
        binary.display()
    );
    binary
}

/// A plain-HTTP client (reqwest is built without a default TLS provider; ring's is installed once).
pub fn http_client() -> reqwest::Client {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().build().expect("an HTTP client")
}
