//! Scenario 6, "webhook under load and attack": 5,000 `POST /webhook` from
//! 50 concurrent clients on loopback, 10% of them exact redeliveries of
//! earlier POSTs and 5% with a bad signature. Every valid message must be
//! published to `conversation.messages` exactly once, keyed by its phone;
//! every bad signature gets 401 and publishes nothing; every other POST
//! gets 200.
//!
//! Clients have roles so that per-phone order is well defined: 40 "phone
//! owners" each send the originals and attacks of their own phones, one
//! request at a time (so a phone's posts are sequential and each is
//! acknowledged before the next is sent), and 10 "redeliverers" send the
//! duplicates, each as soon as its original's request has started, so a
//! duplicate often races its original.

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orchestrator::event::{Envelope, EventData, topics};
use orchestrator::http::{WebhookSettings, WebhookState};
use orchestrator::kafka::{EmbeddedKafka, Publisher};
use orchestrator::webhook::signature::sign;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::report::Row;

/// POSTs sent, originals + duplicates + bad signatures.
const POSTS: usize = 5_000;
/// Concurrent clients: phone owners plus redeliverers.
const CLIENTS: usize = 50;
/// Of the clients, those sending only duplicates.
const REDELIVERERS: usize = 10;
/// Senders the messages come from.
const PHONES: usize = 200;
/// Partitions of every topic.
const PARTITIONS: i32 = 8;
/// Every POST position `i` with `i % 10 == DUPLICATE_SLOT` is a duplicate (10%).
const DUPLICATE_SLOT: usize = 3;
/// Every POST position `i` with `i % 20 == BAD_SLOT` has a bad signature (5%).
const BAD_SLOT: usize = 7;
/// Every fifth original carries two messages.
const TWO_MESSAGES_EVERY: usize = 5;
const SECRET: &[u8] = b"chaos-app-secret";
/// The whole scenario; it reports a problem rather than hang past it.
const OVERALL: Duration = Duration::from_secs(120);
/// Of [`OVERALL`], kept for reading Kafka back.
const READ_BUDGET: Duration = Duration::from_secs(20);
/// One request, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a POST is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// First delivery of a notification, validly signed.
    Original,
    /// The same bytes and signature as the original POST at this index.
    Duplicate(usize),
    /// A unique notification whose signature does not verify.
    BadSignature,
}

/// One planned POST.
#[derive(Debug)]
struct Post {
    kind: Kind,
    /// Index of the phone in 0..PHONES.
    phone: usize,
    body: Vec<u8>,
    signature: Option<String>,
    /// The message ids in the body.
    wamids: Vec<String>,
}

/// How a POST was answered.
#[derive(Debug, Clone)]
struct Answer {
    status: Result<u16, String>,
    sent_at: Instant,
    latency: Duration,
}

/// One record read back from `conversation.messages`.
#[derive(Debug)]
struct Record {
    partition: i32,
    offset: i64,
    key: Option<String>,
    /// `None` when the payload is not a `MessageReceived` envelope.
    wamid: Option<String>,
}

/// Runs the scenario; see the module documentation.
pub async fn under_load_and_attack() -> Row {
    let mut row = Row::new("webhook under load and attack");
    let started = Instant::now();
    let kafka = EmbeddedKafka::start(PARTITIONS).expect("embedded Kafka");
    let url = serve_webhook(&kafka).await;
    let posts = Arc::new(plan());

    let sending = Instant::now();
    let skipped_before = orchestrator::metrics::metrics().webhook_duplicates.get();
    let answers = send_all(&url, posts.clone(), started + OVERALL - READ_BUDGET).await;
    let sent_in = sending.elapsed();
    let skipped = orchestrator::metrics::metrics().webhook_duplicates.get() - skipped_before;

    let expected = posts.iter().filter(|p| p.kind == Kind::Original).map(|p| p.wamids.len()).sum();
    let records = read_messages(&kafka, expected, started + OVERALL).await;
    account(&mut row, &posts, &answers, &records);
    check_skips(&mut row, &posts, skipped);
    note_load(&mut row, &posts, &answers, sent_in);
    row
}

/// The webhook's own dedupe did the work (not, say, the producer's
/// idempotence): each duplicate's messages were published by it or by its
/// original and skipped by the other, so `whatsapp_webhook_duplicates_total`
/// rose by exactly the redelivered messages. Scenarios run one at a time, so
/// the process-wide counter is this scenario's.
fn check_skips(row: &mut Row, posts: &[Post], skipped: u64) {
    let redelivered: usize = posts
        .iter()
        .filter_map(|p| if let Kind::Duplicate(of) = p.kind { Some(posts[of].wamids.len()) } else { None })
        .sum();
    row.check(skipped as usize == redelivered, || {
        format!("{skipped} messages skipped as already published, {redelivered} redelivered")
    });
    row.note(format!("{skipped} messages skipped as already published"));
}

/// Serves the webhook routes (signatures checked) on a free loopback port;
/// returns the base URL.
async fn serve_webhook(kafka: &EmbeddedKafka) -> String {
    let publisher = Publisher::new(&common::kafka_config(kafka, "chaos-webhook")).expect("publisher");
    let settings =
        WebhookSettings { app_secret: Some(String::from_utf8_lossy(SECRET).into_owned()), ..Default::default() };
    // Only messages are sent, so the delivery-status store is never written:
    // the in-memory one fits.
    let state = WebhookState::new(settings, publisher, Arc::new(orchestrator::MemoryStore::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("loopback port");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    tokio::spawn(orchestrator::http::serve(
        listener,
        orchestrator::http::webhook::routes(state),
        std::future::pending(),
    ));
    url
}

/// The 5,000 POSTs, deterministic: 10% duplicates, 5% bad signatures, the
/// rest originals over [`PHONES`] phones, every fifth with two messages.
fn plan() -> Vec<Post> {
    let mut posts: Vec<Post> = Vec::with_capacity(POSTS);
    let mut originals = 0;
    // Originals since the last duplicate: each duplicate copies one of them,
    // so no original is duplicated twice and the copy follows it closely.
    let mut undoubled: Vec<usize> = Vec::new();
    for i in 0..POSTS {
        let post = if i % 20 == BAD_SLOT {
            bad_signature(i)
        } else if i % 10 == DUPLICATE_SLOT && !undoubled.is_empty() {
            // A fixed pseudo-random pick among the recent originals.
            let of = undoubled[(i * 7919) % undoubled.len()];
            undoubled.clear();
            let original = &posts[of];
            let (phone, body, signature) = (original.phone, original.body.clone(), original.signature.clone());
            Post { kind: Kind::Duplicate(of), phone, body, signature, wamids: Vec::new() }
        } else {
            originals += 1;
            undoubled.push(i);
            let messages = if originals % TWO_MESSAGES_EVERY == 0 { 2 } else { 1 };
            original(i, originals % PHONES, messages)
        };
        posts.push(post);
    }
    posts
}

/// A validly signed notification from `phone` with `messages` text messages.
fn original(i: usize, phone: usize, messages: usize) -> Post {
    let wamids: Vec<String> = (0..messages).map(|k| format!("wamid.chaos-{i}-{k}")).collect();
    let body = notification(phone, &wamids, i);
    let signature = Some(sign(SECRET, &body));
    Post { kind: Kind::Original, phone, body, signature, wamids }
}

/// A notification with its own message id whose signature fails in one of
/// four ways: another secret, a body changed after signing, no header, a
/// malformed header.
fn bad_signature(i: usize) -> Post {
    let phone = i % PHONES;
    let wamids = vec![format!("wamid.chaos-bad-{i}")];
    let body = notification(phone, &wamids, i);
    let signature = match (i / 20) % 4 {
        0 => Some(sign(b"not-the-app-secret", &body)),
        1 => {
            let mut forged = body.clone();
            forged.extend_from_slice(b" ");
            Some(sign(SECRET, &forged))
        }
        2 => None,
        _ => Some("sha256=not-hex".to_owned()),
    };
    Post { kind: Kind::BadSignature, phone, body, signature, wamids }
}

/// The sender's number as WhatsApp writes it (no `+`).
fn wa_number(phone: usize) -> String {
    format!("1555{phone:07}")
}

/// A Cloud API text notification (the shape of `fixtures/webhook/text.json`).
fn notification(phone: usize, wamids: &[String], i: usize) -> Vec<u8> {
    let from = wa_number(phone);
    let messages: Vec<serde_json::Value> = wamids
        .iter()
        .map(|id| {
            serde_json::json!({
                "from": from, "id": id, "timestamp": (1_750_000_000 + i).to_string(),
                "type": "text", "text": {"body": format!("chaos message {id}")}
            })
        })
        .collect();
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": format!("Chaos {phone}")}, "wa_id": from}],
            "messages": messages
        }}]}]
    });
    serde_json::to_vec(&body).expect("JSON")
}

/// Sends every POST from [`CLIENTS`] concurrent clients and returns each
/// POST's answer (`None` when it was not answered before `deadline`).
async fn send_all(url: &str, posts: Arc<Vec<Post>>, deadline: Instant) -> Vec<Option<Answer>> {
    let client = common::http_client();
    let answers: Arc<Mutex<Vec<Option<Answer>>>> = Arc::new(Mutex::new(vec![None; posts.len()]));
    // Signalled when an original's request starts; its duplicate waits for it.
    let started: Arc<Vec<Notify>> = Arc::new(posts.iter().map(|_| Notify::new()).collect());
    let owners = CLIENTS - REDELIVERERS;
    let mut queues: Vec<Vec<usize>> = vec![Vec::new(); CLIENTS];
    let mut duplicates = 0;
    for (i, post) in posts.iter().enumerate() {
        let client = match post.kind {
            Kind::Duplicate(_) => {
                duplicates += 1;
                owners + duplicates % REDELIVERERS
            }
            // All posts of one phone go through one owner, in order.
            Kind::Original | Kind::BadSignature => post.phone % owners,
        };
        queues[client].push(i);
    }

    let mut tasks = tokio::task::JoinSet::new();
    for queue in queues {
        let (client, url, posts, answers, started) =
            (client.clone(), url.to_owned(), posts.clone(), answers.clone(), started.clone());
        tasks.spawn(async move {
            for i in queue {
                let post = &posts[i];
                match post.kind {
                    Kind::Duplicate(of) => started[of].notified().await,
                    // One waiter per original (one duplicate each): `notify_one` keeps
                    // the permit for a duplicate that starts waiting later.
                    Kind::Original => started[i].notify_one(),
                    Kind::BadSignature => {}
                }
                let answer = send(&client, &url, post).await;
                answers.lock().expect("answers")[i] = Some(answer);
            }
        });
    }
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline.into(), all_done).await.is_err() {
        tasks.abort_all();
    }
    answers.lock().expect("answers").clone()
}

/// One POST, timed.
async fn send(client: &reqwest::Client, url: &str, post: &Post) -> Answer {
    let mut request =
        client.post(format!("{url}/webhook")).header("content-type", "application/json").body(post.body.clone());
    if let Some(signature) = &post.signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let sent_at = Instant::now();
    let status = match tokio::time::timeout(REQUEST_TIMEOUT, request.send()).await {
        Ok(Ok(response)) => Ok(response.status().as_u16()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    };
    Answer { status, sent_at, latency: sent_at.elapsed() }
}

/// Reads `conversation.messages` from the beginning of every partition
/// until `expected` records arrived and nothing more came for a second, or
/// nothing came for 3 s, or `deadline`.
async fn read_messages(kafka: &EmbeddedKafka, expected: usize, deadline: Instant) -> Vec<Record> {
    let group = format!("chaos-webhook-reader-{}", uuid::Uuid::new_v4());
    let reader: StreamConsumer = common::kafka_config(kafka, &group)
        .consumer_config(&group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    // Assigned, not subscribed: no group join to wait for.
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition_offset(topics::MESSAGES, partition, Offset::Beginning).expect("partition");
    }
    reader.assign(&partitions).expect("assign");

    let mut records = Vec::new();
    let mut last = Instant::now();
    loop {
        let idle = last.elapsed();
        let grace = if records.len() >= expected { Duration::from_secs(1) } else { Duration::from_secs(3) };
        if idle >= grace || Instant::now() >= deadline {
            break;
        }
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), reader.recv()).await {
            records.push(record(&message));
            last = Instant::now();
        }
    }
    records
}

fn record(message: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let wamid = message.payload().and_then(|p| Envelope::decode(p).ok()).and_then(|e| match e.data {
        EventData::MessageReceived(m) => Some(m.message_id),
        _ => None,
    });
    Record {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        wamid,
    }
}

/// Fills the row's counts and checks the guarantees.
fn account(row: &mut Row, posts: &[Post], answers: &[Option<Answer>], records: &[Record]) {
    // Valid message id -> (index of its original POST, phone).
    let mut valid: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut forged: HashSet<&str> = HashSet::new();
    for (i, post) in posts.iter().enumerate() {
        for wamid in &post.wamids {
            match post.kind {
                Kind::Original => {
                    valid.insert(wamid, (i, post.phone));
                }
                Kind::BadSignature => {
                    forged.insert(wamid);
                }
                Kind::Duplicate(_) => {}
            }
        }
    }
    check_answers(row, posts, answers);

    let mut published: HashMap<&str, usize> = HashMap::new();
    let (mut unknown, mut wrong_keys) = (0, 0);
    for record in records {
        let Some(wamid) = record.wamid.as_deref() else {
            unknown += 1;
            continue;
        };
        *published.entry(wamid).or_default() += 1;
        match valid.get(wamid) {
            Some((_, phone)) if record.key.as_deref() == Some(format!("+{}", wa_number(*phone)).as_str()) => {}
            Some(_) => wrong_keys += 1,
            None if !forged.contains(wamid) => unknown += 1,
            None => {}
        }
    }

    row.messages = valid.len();
    let times = |id: &&str| published.get(*id).copied().unwrap_or(0);
    row.completed = valid.keys().filter(|id| times(id) == 1).count();
    row.duplicated_effects = valid.keys().filter(|id| times(id) > 1).count();
    row.lost = valid.keys().filter(|id| times(id) == 0).count();
    row.dead_lettered = 0;
    row.order_violations = order_violations(records, &valid);

    let leaked = forged.iter().filter(|id| times(id) > 0).count();
    let (duplicated, lost, out_of_order) = (row.duplicated_effects, row.lost, row.order_violations);
    row.check(leaked == 0, || format!("{leaked} messages with a bad signature were published"));
    row.check(duplicated == 0, || format!("{duplicated} messages published more than once"));
    row.check(lost == 0, || format!("{lost} valid messages never published"));
    row.check(unknown == 0, || format!("{unknown} records on {} that no POST sent", topics::MESSAGES));
    row.check(wrong_keys == 0, || format!("{wrong_keys} records not keyed by their sender's phone"));
    row.check(out_of_order == 0, || format!("{out_of_order} messages published before an earlier one of their phone"));
}

/// Every bad signature answered 401, every other POST 200.
fn check_answers(row: &mut Row, posts: &[Post], answers: &[Option<Answer>]) {
    let unanswered = answers.iter().filter(|a| a.is_none()).count();
    row.check(unanswered == 0, || {
        format!("{unanswered} POSTs not answered within {OVERALL:?} (or {REQUEST_TIMEOUT:?} each)")
    });
    let mut wrong: HashMap<(&str, String), usize> = HashMap::new();
    for (post, answer) in posts.iter().zip(answers) {
        let Some(answer) = answer else { continue };
        let (kind, want) = match post.kind {
            Kind::BadSignature => ("bad signature", 401),
            Kind::Original => ("original", 200),
            Kind::Duplicate(_) => ("duplicate", 200),
        };
        match &answer.status {
            Ok(status) if *status == want => {}
            Ok(status) => *wrong.entry((kind, status.to_string())).or_default() += 1,
            Err(error) => *wrong.entry((kind, error.clone())).or_default() += 1,
        }
    }
    for ((kind, got), n) in wrong {
        row.problems.push(format!("{n} {kind} POSTs answered {got}"));
    }
}

/// Messages of a phone published after a message of a later POST of the
/// same phone. Sound because a phone's POSTs are sent one at a time by its
/// owner and each is answered 200 only once Kafka acknowledged its messages
/// (a duplicate that wins the race is sent only after its original started,
/// so after the previous POST was acknowledged); one key is one partition,
/// so offsets order a phone's records. The two messages of one notification
/// are published concurrently and are not ordered against each other.
fn order_violations(records: &[Record], valid: &HashMap<&str, (usize, usize)>) -> usize {
    let mut by_position: Vec<&Record> = records.iter().collect();
    by_position.sort_by_key(|r| (r.partition, r.offset));
    // Highest POST index seen so far per phone; only first publications count.
    let mut latest: HashMap<usize, usize> = HashMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut violations = 0;
    for record in by_position {
        let Some(wamid) = record.wamid.as_deref() else { continue };
        let Some(&(post, phone)) = valid.get(wamid) else { continue };
        if !seen.insert(wamid) {
            continue;
        }
        let latest = latest.entry(phone).or_insert(post);
        if post < *latest {
            violations += 1;
        }
        *latest = (*latest).max(post);
    }
    violations
}

/// Informational: request mix, throughput and latency.
fn note_load(row: &mut Row, posts: &[Post], answers: &[Option<Answer>], sent_in: Duration) {
    let count = |kind: fn(&Kind) -> bool| posts.iter().filter(|p| kind(&p.kind)).count();
    let duplicates = count(|k| matches!(k, Kind::Duplicate(_)));
    let bad = count(|k| *k == Kind::BadSignature);
    let mut latencies: Vec<Duration> = answers.iter().flatten().map(|a| a.latency).collect();
    latencies.sort();
    let percentile = |p: usize| latencies.get(latencies.len() * p / 100).copied().unwrap_or_default();
    // A duplicate raced its original when it was sent before the original was answered.
    let raced = posts
        .iter()
        .zip(answers)
        .filter_map(|(post, answer)| match (post.kind, answer) {
            (Kind::Duplicate(of), Some(duplicate)) => answers[of].as_ref().map(|original| (original, duplicate)),
            _ => None,
        })
        .filter(|(original, duplicate)| duplicate.sent_at < original.sent_at + original.latency)
        .count();
    row.note(format!(
        "{} POSTs from {CLIENTS} clients ({duplicates} duplicates, {raced} of them concurrent with their original; \
         {bad} bad signatures)",
        posts.len()
    ));
    row.note(format!("{:.0} req/s", answers.iter().flatten().count() as f64 / sent_in.as_secs_f64()));
    row.note(format!("p50 {} ms, p99 {} ms", percentile(50).as_millis(), percentile(99).as_millis()));
}
