//! The Kafka scenarios: the example consumer as child processes against the
//! mock broker in this process and a fresh database, attacked while it
//! works; each ends with the ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::kafka::{EmbeddedKafka, KafkaConfig, Publisher};

use crate::consumer::{ConsumerProcess, Target};
use crate::database::ScenarioDb;
use crate::ledger::{self, Workload};
use crate::report::Row;

/// The broker, the database and a producer: what outlives the consumers.
pub struct Stage {
    pub kafka: EmbeddedKafka,
    pub db: ScenarioDb,
    pub publisher: Arc<Publisher>,
    pub target: Target,
}

impl Stage {
    pub async fn new() -> Self {
        let kafka = EmbeddedKafka::start(8).expect("mock broker");
        let db = ScenarioDb::create().await;
        let publisher = Publisher::new(&KafkaConfig::default().with_bootstrap_servers(kafka.bootstrap_servers()))
            .expect("producer");
        let mut target = Target::new(kafka.bootstrap_servers(), &db.url);
        // A crashed consumer's claims are taken over after 5 s instead of 30 s.
        target.env.push(("CLAIM_LEASE_MS".into(), "5000".into()));
        Self { kafka, db, publisher: Arc::new(publisher), target }
    }

    /// Produces `range` of `workload` in a background task.
    pub fn produce(&self, workload: Workload, range: std::ops::Range<usize>) -> tokio::task::JoinHandle<()> {
        let publisher = self.publisher.clone();
        tokio::spawn(async move { workload.produce(&publisher, range).await })
    }

    /// Waits for `target` finished messages; on timeout records the problem
    /// and prints what is stuck. Returns whether they finished.
    pub async fn wait(&self, target: usize, limit: Duration, row: &mut Row) -> bool {
        if ledger::wait_finished(&self.db.db, target, limit).await {
            return true;
        }
        let finished = ledger::finished(&self.db.db).await;
        row.problems.push(format!("only {finished} of {target} messages finished within {limit:?}"));
        ledger::dump_unfinished(&self.db.db).await;
        false
    }

    /// Checks the ledger and drops the database.
    pub async fn finish(self, workload: &Workload, row: &mut Row) {
        ledger::check(&self.db.db, workload, row).await;
        row.note(self.db.label);
        self.db.remove().await;
    }
}

/// How long a whole run may take before a scenario gives up.
pub fn run_limit() -> Duration {
    Duration::from_secs(std::env::var("CHAOS_WAIT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600))
}

/// Messages of a scenario: `CHAOS_MESSAGES` when set, else `default`.
pub fn messages(default: usize) -> usize {
    std::env::var("CHAOS_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator for kill moments; its seed is printed.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64 | 1
        });
        println!("chaos: seed {seed} (CHAOS_SEED={seed} repeats the kill moments)");
        Self(seed)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Item 1: one consumer, SIGKILLed at random moments while it works and
/// restarted each time.
pub async fn crash() -> Row {
    let mut row = Row::new("crash (SIGKILL)");
    let workload = Workload { phones: 200, per_phone: messages(20_000) / 200 };
    let total = workload.total();
    let kills = std::env::var("CHAOS_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(5usize);
    let stage = Stage::new().await;
    let mut jitter = Jitter::new();
    let started = Instant::now();
    let producing = stage.produce(workload, 0..total);
    let mut consumer = ConsumerProcess::spawn(&stage.target, "crash-0");
    let mut killed_at = Vec::new();
    for k in 1..=kills {
        // Spread the kills over the run, each at a random moment within its stretch.
        let stretch = total / (kills + 1);
        let mark = (k - 1) * stretch + jitter.below(stretch as u64) as usize;
        if !stage.wait(mark.max(1), run_limit(), &mut row).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(jitter.below(400))).await;
        if let Some(status) = consumer.exited() {
            row.problems.push(format!("consumer exited on its own ({status}): {}", consumer.log_tail(20)));
        }
        killed_at.push(ledger::finished(&stage.db.db).await);
        consumer.kill().await;
        consumer = ConsumerProcess::spawn(&stage.target, &format!("crash-{k}"));
    }
    producing.await.expect("producer task");
    let finished = stage.wait(total, run_limit(), &mut row).await;
    let elapsed = started.elapsed();
    stop(consumer, &mut row).await;
    row.note(format!("{} SIGKILLs at {killed_at:?} finished", killed_at.len()));
    row.check(killed_at.len() == kills, || format!("only {} of {kills} kills happened", killed_at.len()));
    if finished {
        row.note(format!("{:.0} msg/s with the kills", total as f64 / elapsed.as_secs_f64()));
    }
    stage.finish(&workload, &mut row).await;
    row
}

/// Item 2: three consumers in one group; a fourth joins and one leaves mid-run.
pub async fn rebalance() -> Row {
    let mut row = Row::new("rebalance (3 consumers, one added, one stopped)");
    let workload = Workload { phones: 200, per_phone: messages(10_000) / 200 };
    let total = workload.total();
    let stage = Stage::new().await;
    let first = ConsumerProcess::spawn(&stage.target, "rebalance-1");
    let second = ConsumerProcess::spawn(&stage.target, "rebalance-2");
    let third = ConsumerProcess::spawn(&stage.target, "rebalance-3");
    stage.produce(workload, 0..total / 3).await.expect("producer task");
    stage.wait(total / 6, run_limit(), &mut row).await;

    let fourth = ConsumerProcess::spawn(&stage.target, "rebalance-4");
    stage.produce(workload, total / 3..2 * total / 3).await.expect("producer task");
    stage.wait(total / 2, run_limit(), &mut row).await;
    stop(first, &mut row).await;
    stage.produce(workload, 2 * total / 3..total).await.expect("producer task");

    stage.wait(total, run_limit(), &mut row).await;
    for consumer in [second, third, fourth] {
        stop(consumer, &mut row).await;
    }
    row.note("2 joins after the start, 1 leave");
    stage.finish(&workload, &mut row).await;
    row
}

/// SIGTERM and a clean exit within the grace period.
pub async fn stop(mut consumer: ConsumerProcess, row: &mut Row) {
    if let Some(status) = consumer.exited() {
        row.problems.push(format!("{} had exited on its own ({status}): {}", consumer.name, consumer.log_tail(20)));
        return;
    }
    match consumer.terminate(Duration::from_secs(60)).await {
        Some(status) if status.success() => {}
        Some(status) => {
            row.problems.push(format!("{} exited with {status} on SIGTERM: {}", consumer.name, consumer.log_tail(20)))
        }
        None => row.problems.push(format!("{} did not stop within 60 s of SIGTERM", consumer.name)),
    }
}
