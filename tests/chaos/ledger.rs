//! The workload every Kafka scenario sends, and the ledger that accounts
//! for each of its messages afterwards from the database alone.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orchestrator::event::{Envelope, EventData, MessageContent, MessageReceived, MessageType};
use orchestrator::kafka::Publisher;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::report::Row;

/// What a message asks for, and so which side effects its saga leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ORDER_REQUEST: `create_order`, `notify_sales` (two steps).
    Order,
    /// A severe COMPLAINT: `create_support_ticket`, `flag_for_review`, `notify_sales` (three steps).
    SevereComplaint,
}

impl Kind {
    /// The effect tables one completed message of this kind leaves a row in, once each.
    pub fn effects(self) -> &'static [&'static str] {
        match self {
            Kind::Order => &["orders", "sales_notifications"],
            Kind::SevereComplaint => &["support_tickets", "review_flags", "sales_notifications"],
        }
    }
}

/// Every effect table, with the status of a row in effect.
const EFFECT_TABLES: [(&str, &str); 4] =
    [("orders", "created"), ("sales_notifications", "sent"), ("support_tickets", "open"), ("review_flags", "flagged")];

/// `phones` phones sending `per_phone` messages each, interleaved: message
/// `i` is phone `i % phones`'s message number `i / phones`.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub phones: usize,
    pub per_phone: usize,
}

impl Workload {
    pub fn total(&self) -> usize {
        self.phones * self.per_phone
    }

    /// The message id of phone `p`'s message number `seq`.
    pub fn message_id(p: usize, seq: usize) -> String {
        format!("wamid.chaos.{p}.{seq}")
    }

    /// The phone number of phone `p`.
    pub fn phone(p: usize) -> String {
        format!("+1555{p:07}")
    }

    /// Seven in ten messages are orders, the rest severe complaints.
    pub fn kind(i: usize) -> Kind {
        if (i * 7 + i / 13) % 10 < 7 { Kind::Order } else { Kind::SevereComplaint }
    }

    /// Message `i` as an envelope.
    pub fn envelope(&self, i: usize) -> Envelope {
        let (p, seq) = (i % self.phones, i / self.phones);
        let body = match Self::kind(i) {
            Kind::Order => format!("I want to order 2 tacos and 1 soda (#{seq})"),
            Kind::SevereComplaint => format!("This is the worst service, terrible! My order arrived broken (#{seq})"),
        };
        Envelope::new(
            EventData::MessageReceived(MessageReceived {
                message_id: Self::message_id(p, seq),
                from_phone: Self::phone(p),
                message_type: MessageType::Text,
                content: MessageContent::Text { body },
                received_at: Utc::now(),
                metadata: HashMap::new(),
            }),
            "chaos",
        )
    }

    /// Produces messages `range`, waiting for each batch's acknowledgements.
    pub async fn produce(&self, publisher: &Publisher, range: std::ops::Range<usize>) {
        let indexes: Vec<usize> = range.collect();
        for batch in indexes.chunks(500) {
            let sends = batch.iter().map(|&i| {
                let envelope = self.envelope(i);
                async move { publisher.publish(&envelope).await }
            });
            for result in futures_util::future::join_all(sends).await {
                result.expect("the test's producer could publish");
            }
        }
    }
}

/// Messages finished (completed or dead-lettered) so far.
pub async fn finished(db: &DatabaseConnection) -> usize {
    scalar(db, "SELECT COUNT(*) AS n FROM processed_messages WHERE status IN ('completed', 'dead_lettered')").await
        as usize
}

/// Waits until `target` messages are finished or `limit` passes; returns whether they were.
pub async fn wait_finished(db: &DatabaseConnection, target: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), finished(db)).await {
            Ok(n) if n >= target => return true,
            _ if Instant::now() >= deadline => return false,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .expect("a row");
    row.try_get::<i64>("", "n").expect("a count")
}

async fn rows(db: &DatabaseConnection, sql: &str) -> Vec<sea_orm::QueryResult> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Accounts for every message of `workload` and fills `row`: each message
/// completed with its effects exactly once or dead-lettered with none left
/// in effect, nothing half done, and each phone's completions in produced
/// order.
pub async fn check(db: &DatabaseConnection, workload: &Workload, row: &mut Row) {
    let total = workload.total();
    row.messages += total;

    let mut status: HashMap<String, (String, Option<DateTime<Utc>>)> = HashMap::new();
    for r in rows(db, "SELECT message_id, status, completed_at FROM processed_messages").await {
        let id: String = r.try_get("", "message_id").unwrap();
        let state: String = r.try_get("", "status").unwrap();
        let at: Option<DateTime<Utc>> = r.try_get("", "completed_at").unwrap();
        status.insert(id, (state, at));
    }
    let dead: HashSet<String> = rows(db, "SELECT message_id FROM dead_letter_queue WHERE message_id IS NOT NULL")
        .await
        .iter()
        .map(|r| r.try_get::<String>("", "message_id").unwrap())
        .collect();
    // (table, message id) -> rows in effect, and rows in any status.
    let mut in_effect: HashMap<(&str, String), usize> = HashMap::new();
    let mut any: HashMap<(&str, String), usize> = HashMap::new();
    for (table, done) in EFFECT_TABLES {
        for r in rows(db, &format!("SELECT message_id, status FROM {table}")).await {
            let id: String = r.try_get("", "message_id").unwrap();
            let state: String = r.try_get("", "status").unwrap();
            *any.entry((table, id.clone())).or_default() += 1;
            if state == done {
                *in_effect.entry((table, id)).or_default() += 1;
            }
        }
    }

    let (mut lost, mut half_done, mut duplicated, mut compensated) = (Vec::new(), Vec::new(), 0, 0);
    let mut per_phone: HashMap<usize, Vec<(usize, DateTime<Utc>)>> = HashMap::new();
    for i in 0..total {
        let (p, seq) = (i % workload.phones, i / workload.phones);
        let id = Workload::message_id(p, seq);
        let kind = Workload::kind(i);
        let effects = |table: &'static str| in_effect.get(&(table, id.clone())).copied().unwrap_or(0);
        // A run that failed is compensated (its rows undone) before the next
        // attempt redoes the work under new keys: only rows in effect count.
        if EFFECT_TABLES.iter().any(|(table, _)| effects(table) > 1) {
            duplicated += 1;
        }
        if EFFECT_TABLES.iter().any(|(table, _)| any.get(&(*table, id.clone())).copied().unwrap_or(0) > effects(table))
        {
            compensated += 1;
        }
        match status.get(&id) {
            Some((state, Some(at))) if state == "completed" => {
                row.completed += 1;
                if kind.effects().iter().any(|t| effects(t) != 1) {
                    half_done.push(id.clone());
                }
                per_phone.entry(p).or_default().push((seq, *at));
            }
            Some((state, _)) if state == "dead_lettered" && dead.contains(&id) => {
                row.dead_lettered += 1;
                // A dead-lettered saga was compensated: nothing of it may stay in effect.
                if kind.effects().iter().any(|t| effects(t) != 0) {
                    half_done.push(id.clone());
                }
            }
            _ => lost.push(id.clone()),
        }
    }
    let mut violations = 0;
    for completions in per_phone.values_mut() {
        completions.sort();
        violations += completions.windows(2).filter(|w| w[0].1 >= w[1].1).count();
    }
    if compensated > 0 {
        row.note(format!("{compensated} sagas compensated and run again"));
    }
    row.lost += lost.len();
    row.duplicated_effects += duplicated;
    row.order_violations += violations;
    row.check(lost.is_empty(), || format!("{} messages lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]));
    row.check(duplicated == 0, || format!("{duplicated} messages with a side effect twice"));
    row.check(half_done.is_empty(), || {
        format!("{} sagas half done, e.g. {:?}", half_done.len(), &half_done[..half_done.len().min(5)])
    });
    row.check(violations == 0, || format!("{violations} per-phone order violations"));
}

/// What is unfinished, printed when a scenario times out, to tell a stuck message from a lost one.
pub async fn dump_unfinished(db: &DatabaseConnection) {
    for sql in [
        "SELECT key, holder_message_id FROM key_blocks",
        "SELECT key, message_id, topic FROM parked_messages",
        "SELECT message_id, status, attempt_count, run_count, lease_expires_at FROM processed_messages \
         WHERE status NOT IN ('completed', 'dead_lettered')",
        "SELECT message_id, failure_type, error FROM dead_letter_queue",
    ] {
        let found = rows(db, sql).await;
        eprintln!("{sql}: {} rows", found.len());
        for r in found.iter().take(10) {
            eprintln!("  {r:?}");
        }
    }
}
