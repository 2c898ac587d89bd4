//! The chaos suite: attacks a running system (crashes, rebalances, a
//! database outage, broker faults, poison input, a webhook flood, a
//! failing WhatsApp on the reply path) and then
//! checks a ledger: every message accounted for exactly once, as completed
//! (its side effects present once) or dead-lettered (with its reason), and
//! each phone's messages finished in produced order.
//!
//! Runs with its own harness so it can print one summary table at the end:
//! `cargo test --test chaos` (all), `cargo test --test chaos -- crash` (the
//! scenarios whose name contains `crash`). PostgreSQL from
//! `TEST_DATABASE_URL` when set, SQLite otherwise.

mod consumer;
mod database;
mod faults;
mod ledger;
mod outbound;
mod poison;
mod proxy;
mod report;
mod scenarios;
mod webhook;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Instant;

use report::Row;

type Scenario = fn() -> Pin<Box<dyn Future<Output = Row>>>;

/// Every scenario, in the order they run.
fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        ("crash", || Box::pin(scenarios::crash())),
        ("rebalance", || Box::pin(scenarios::rebalance())),
        ("database outage", || Box::pin(faults::database_outage())),
        ("broker faults", || Box::pin(faults::broker_faults())),
        ("poison", || Box::pin(poison::bad_input_stream())),
        ("webhook under load and attack", || Box::pin(webhook::under_load_and_attack())),
        ("outbound", || Box::pin(outbound::replies_through_outage_and_kills())),
    ]
}

fn main() -> std::process::ExitCode {
    // `cargo test` passes flags meant for libtest (`--nocapture`, `--test-threads=2`): ignore them.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut rows = Vec::new();
    tokio::runtime::Runtime::new().unwrap().block_on(database::drop_leftovers());
    for (name, scenario) in scenarios() {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("chaos: {name} ...");
        let started = Instant::now();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut row = match std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(scenario()))) {
            Ok(row) => row,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                let mut row = Row::new(name);
                row.problems.push(format!("panicked: {message}"));
                row
            }
        };
        // Child processes and background tasks of a scenario end with its runtime.
        runtime.shutdown_timeout(std::time::Duration::from_secs(10));
        row.note(format!("{:.0} s", started.elapsed().as_secs_f64()));
        println!("chaos: {name}: {}", if row.problems.is_empty() { "pass" } else { "FAIL" });
        rows.push(row);
    }
    println!("\n{}", report::table(&rows));
    if rows.iter().all(|r| r.problems.is_empty()) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
