//! One row per scenario, and the table printed at the end of the suite.

use std::fmt::Write as _;

/// What a scenario found. A scenario passes when `problems` is empty.
#[derive(Debug, Default, Clone)]
pub struct Row {
    /// The scenario's name.
    pub scenario: String,
    /// Messages (or webhook notifications) it sent in.
    pub messages: usize,
    /// Finished: completed by the pipeline (or, for the webhook, published).
    pub completed: usize,
    /// Parked in the dead-letter queue with a reason.
    pub dead_lettered: usize,
    /// Neither completed nor dead-lettered.
    pub lost: usize,
    /// Messages whose side effects (or publications) happened more than once.
    pub duplicated_effects: usize,
    /// Later messages of a phone finished before earlier ones.
    pub order_violations: usize,
    /// What else the scenario did or saw (kills, outage length, ...).
    pub notes: String,
    /// Every broken guarantee, in words; empty when the scenario passed.
    pub problems: Vec<String>,
}

impl Row {
    /// A row for `scenario` with nothing counted yet.
    pub fn new(scenario: &str) -> Self {
        Self { scenario: scenario.to_owned(), ..Self::default() }
    }

    /// Records a broken guarantee unless `ok`.
    pub fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }

    /// Adds to the notes.
    pub fn note(&mut self, note: impl AsRef<str>) {
        if !self.notes.is_empty() {
            self.notes.push_str("; ");
        }
        self.notes.push_str(note.as_ref());
    }
}

/// The summary table (GitHub-flavoured Markdown, so it pastes into notes).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | messages | completed | dead-lettered | lost | duplicated effects | order violations | result | notes |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---|");
    for row in rows {
        let result = if row.problems.is_empty() { "pass".to_owned() } else { format!("FAIL ({})", row.problems.len()) };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.messages,
            row.completed,
            row.dead_lettered,
            row.lost,
            row.duplicated_effects,
            row.order_violations,
            result,
            row.notes
        );
    }
    for row in rows.iter().filter(|r| !r.problems.is_empty()) {
        let _ = writeln!(out, "\n{} broke:", row.scenario);
        for problem in &row.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    out
}
