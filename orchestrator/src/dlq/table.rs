//! Entries and failure groups as text tables for a terminal (the `dlq` commands).

use crate::store::{DeadLetter, FailureGroup};

/// Entries as a text table for a terminal.
pub fn table(entries: &[DeadLetter]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "CREATED".to_owned(),
        "STATUS".to_owned(),
        "FAILURE".to_owned(),
        "TRIES".to_owned(),
        "REPLAYS".to_owned(),
        "MESSAGE".to_owned(),
        "ERROR".to_owned(),
    ]];
    for e in entries {
        rows.push([
            e.id.to_string(),
            e.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            e.status.as_str().to_owned(),
            e.failure_type.as_str().to_owned(),
            e.attempt_count.to_string(),
            e.replay_count.to_string(),
            e.message_id.clone().unwrap_or_else(|| "-".to_owned()),
            truncate(&e.error, 60),
        ]);
    }
    render(&rows)
}

/// Failure groups as a text table.
pub fn groups_table(groups: &[FailureGroup]) -> String {
    let mut rows = vec![[
        "COUNT".to_owned(),
        "FINGERPRINT".to_owned(),
        "FAILURE".to_owned(),
        "LAST".to_owned(),
        "CAUSE".to_owned(),
    ]];
    for g in groups {
        rows.push([
            g.count.to_string(),
            g.fingerprint.clone(),
            g.failure_type.as_str().to_owned(),
            g.last_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            truncate(&g.pattern, 70),
        ]);
    }
    render(&rows)
}

fn truncate(text: &str, max: usize) -> String {
    let flat = text.replace(['\n', '\r'], " ");
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}

fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
