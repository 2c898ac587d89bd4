//! A fake WhatsApp Cloud API on a local port, for tests, the chaos suite and
//! the reply-path load benchmark: `POST /{phone_number_id}/messages`
//! answers after a set latency, enforces a throughput limit per business
//! number (error 130429, as WhatsApp does), and can fail on purpose (random
//! 5xx, scripted answers, bursts of 429, an outage). It records every send
//! it accepted, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// How the fake behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSettings {
    /// Time before each answer.
    pub latency: Duration,
    /// Share of requests answered with a 503 (error code 2, temporary), 0..1.
    pub server_error_rate: f64,
    /// Sends per second each business number may make (a bucket of one
    /// second's worth); above it the fake answers 429 with code 130429.
    pub rate_limit: Option<f64>,
    /// Seed of the random failures (repeatable runs).
    pub seed: u64,
}

impl Default for FakeSettings {
    fn default() -> Self {
        Self { latency: Duration::ZERO, server_error_rate: 0.0, rate_limit: None, seed: 42 }
    }
}

/// A send the fake accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedSend {
    /// The business number in the path.
    pub phone_number_id: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The request body.
    pub body: Value,
    /// The id the fake answered with.
    pub wamid: String,
    /// When it arrived.
    pub at: Instant,
}

impl AcceptedSend {
    /// The recipient (`to`).
    pub fn to(&self) -> &str {
        self.body["to"].as_str().unwrap_or_default()
    }

    /// The text of a text message.
    pub fn text(&self) -> &str {
        self.body["text"]["body"].as_str().unwrap_or_default()
    }
}

/// What the fake answered, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FakeCounts {
    /// Sends accepted (200).
    pub accepted: u64,
    /// Random 503s.
    pub server_errors: u64,
    /// 130429: the number went over its throughput.
    pub over_rate: u64,
    /// 429s of a throttling burst ([`FakeCloudApi::throttle_for`]).
    pub burst_throttled: u64,
    /// 503s while down ([`FakeCloudApi::set_down`]).
    pub down: u64,
    /// Scripted answers given.
    pub scripted: u64,
}

#[derive(Debug)]
struct Fake {
    settings: FakeSettings,
    accepted: Mutex<Vec<AcceptedSend>>,
    scripted: Mutex<VecDeque<(u16, Option<i64>)>>,
    down: std::sync::atomic::AtomicBool,
    throttled_until: Mutex<Option<Instant>>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    rng: Mutex<u64>,
    counts: Mutex<FakeCounts>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    next_id: AtomicU64,
}

/// A running fake; it serves until dropped.
pub struct FakeCloudApi {
    fake: Arc<Fake>,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCloudApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for FakeCloudApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCloudApi").field("url", &self.url).finish_non_exhaustive()
    }
}

impl FakeCloudApi {
    /// Starts a fake on a free local port (inside a tokio runtime).
    pub async fn start(settings: FakeSettings) -> std::io::Result<Self> {
        let fake = Arc::new(Fake {
            rng: Mutex::new(settings.seed | 1),
            settings,
            accepted: Mutex::default(),
            scripted: Mutex::default(),
            down: Default::default(),
            throttled_until: Mutex::default(),
            buckets: Mutex::default(),
            counts: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/{phone_number_id}/messages", post(messages))
            .route("/{phone_number_id}", get(phone_number))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { fake, url, server })
    }

    /// The base URL (`WHATSAPP_API_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every send accepted so far, in arrival order.
    pub fn accepted(&self) -> Vec<AcceptedSend> {
        lock(&self.fake.accepted).clone()
    }

    /// Answers the next requests with these `(HTTP status, error code)`
    /// pairs, in order, before any other rule.
    pub fn script(&self, answers: impl IntoIterator<Item = (u16, Option<i64>)>) {
        lock(&self.fake.scripted).extend(answers);
    }

    /// While down, every request gets a 503 (an outage).
    pub fn set_down(&self, down: bool) {
        self.fake.down.store(down, Ordering::Release);
    }

    /// For `duration`, every request gets a 429 (error code 4, the app's call limit).
    pub fn throttle_for(&self, duration: Duration) {
        *lock(&self.fake.throttled_until) = Some(Instant::now() + duration);
    }

    /// What it answered so far.
    pub fn counts(&self) -> FakeCounts {
        *lock(&self.fake.counts)
    }

    /// The most requests it had in progress at once.
    pub fn max_concurrency(&self) -> usize {
        self.fake.max_in_flight.load(Ordering::Acquire)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn error(status: u16, code: Option<i64>, message: &str) -> (StatusCode, Json<Value>) {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut error = json!({ "message": message, "type": "OAuthException", "fbtrace_id": "fake" });
    if let Some(code) = code {
        error["code"] = json!(code);
    }
    (status, Json(json!({ "error": error })))
}

impl Fake {
    /// The answer decided on arrival (the throughput limit counts arrivals).
    fn decide(&self, phone_number_id: &str) -> Result<(), (StatusCode, Json<Value>)> {
        if let Some((status, code)) = lock(&self.scripted).pop_front() {
            lock(&self.counts).scripted += 1;
            if (200..300).contains(&status) {
                return Ok(());
            }
            return Err(error(status, code, "scripted failure"));
        }
        if self.down.load(Ordering::Acquire) {
            lock(&self.counts).down += 1;
            return Err(error(503, Some(2), "Service temporarily unavailable"));
        }
        if lock(&self.throttled_until).is_some_and(|until| Instant::now() < until) {
            lock(&self.counts).burst_throttled += 1;
            return Err(error(429, Some(4), "Application request limit reached"));
        }
        if let Some(rate) = self.settings.rate_limit {
            let now = Instant::now();
            let mut buckets = lock(&self.buckets);
            let (tokens, at) = buckets.entry(phone_number_id.to_owned()).or_insert((rate, now));
            *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
            *at = now;
            if *tokens < 1.0 {
                lock(&self.counts).over_rate += 1;
                return Err(error(429, Some(130429), "Rate limit hit: (#130429) Cloud API message throughput reached"));
            }
            *tokens -= 1.0;
        }
        if self.settings.server_error_rate > 0.0 && self.random() < self.settings.server_error_rate {
            lock(&self.counts).server_errors += 1;
            return Err(error(503, Some(2), "Temporary error"));
        }
        Ok(())
    }

    /// Uniform in `0..1` (xorshift64).
    fn random(&self) -> f64 {
        let mut state = lock(&self.rng);
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `GET /{phone_number_id}`: the number's details (the health probe).
/// 503 while down, 401 (code 190) without a bearer token.
async fn phone_number(
    State(fake): State<Arc<Fake>>,
    Path(phone_number_id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if fake.down.load(Ordering::Acquire) {
        return error(503, Some(2), "Service temporarily unavailable");
    }
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_none_or(str::is_empty) {
        return error(401, Some(190), "Invalid OAuth access token");
    }
    (StatusCode::OK, Json(json!({ "id": phone_number_id, "display_phone_number": "+1 555-000-0000" })))
}

async fn messages(
    State(fake): State<Arc<Fake>>,
    Path(phone_number_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let now = fake.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    fake.max_in_flight.fetch_max(now, Ordering::AcqRel);
    let at = Instant::now();
    let decided = fake.decide(&phone_number_id);
    tokio::time::sleep(fake.settings.latency).await;
    fake.in_flight.fetch_sub(1, Ordering::AcqRel);
    if let Err(answer) = decided {
        return answer;
    }
    let wamid = format!("wamid.fake-{}", fake.next_id.fetch_add(1, Ordering::Relaxed));
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let to = body["to"].clone();
    lock(&fake.accepted).push(AcceptedSend { phone_number_id, authorization, body, wamid: wamid.clone(), at });
    lock(&fake.counts).accepted += 1;
    let answer =
        json!({ "messaging_product": "whatsapp", "contacts": [{ "wa_id": to }], "messages": [{ "id": wamid }] });
    (StatusCode::OK, Json(answer))
}
