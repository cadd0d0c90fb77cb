//! Suspicious backups: a new run whose rows or bytes dropped sharply next to the last good
//! one (a table emptied, most rows gone: an application bug, a wipe). Such a run is marked
//! in its manifests; retention does not count it, so a series of them can never push the
//! last good backups out.

use std::collections::BTreeMap;

use crate::catalog::{Backup, Contents, Manifest};
use crate::config::SuspectRule;

/// Below these the percentage checks say nothing (ten rows becoming four is no signal).
const MIN_ROWS_FOR_PERCENT: u64 = 100;
const MIN_BYTES_FOR_PERCENT: u64 = 1 << 20;

/// An archive's place in a run: what it holds.
type Key = (Contents, Option<String>, Option<String>);

fn key(m: &Manifest) -> Key {
    (m.contents, m.schema.clone(), m.database.clone())
}

/// Rows per table of one archive: exact from its content fingerprint, else the
/// manifest's estimates (tables with none are left out).
fn rows(m: &Manifest) -> BTreeMap<String, u64> {
    let prefix = m
        .database
        .as_ref()
        .map(|d| format!("{d}: "))
        .unwrap_or_default();
    match &m.content {
        Some(c) => c
            .tables
            .iter()
            .map(|t| (format!("{prefix}{}", t.qualified()), t.rows))
            .collect(),
        None => m
            .tables
            .iter()
            .filter_map(|t| {
                let name = match &t.schema {
                    Some(s) => format!("{prefix}{s}.{}", t.name),
                    None => format!("{prefix}{}", t.name),
                };
                t.rows
                    .and_then(|r| u64::try_from(r).ok())
                    .map(|r| (name, r))
            })
            .collect(),
    }
}

/// Why the run `new` (its archives' manifests) looks wrong next to `good` (the last good
/// run's), or `None`. Only archives both runs have are compared: a database or schema
/// that is new, or no longer backed up, is not a drop of rows.
pub fn judge(rule: &SuspectRule, new: &[Manifest], good: &[Manifest]) -> Option<String> {
    let mut reasons = Vec::new();
    let (mut rows_before, mut rows_now, mut bytes_before, mut bytes_now) = (0u64, 0u64, 0u64, 0u64);
    for n in new.iter().filter(|m| m.contents != Contents::Globals) {
        let Some(g) = good.iter().find(|g| key(g) == key(n)) else {
            continue;
        };
        bytes_before += g.raw_bytes;
        bytes_now += n.raw_bytes;
        let (before, now) = (rows(g), rows(n));
        for (table, had) in &before {
            let has = now.get(table).copied();
            rows_before += had;
            rows_now += has.unwrap_or(0);
            if rule.min_rows == 0 || *had < rule.min_rows {
                continue;
            }
            match has {
                Some(0) => reasons.push(format!("table {table} is empty (it had {had} rows)")),
                None => reasons.push(format!("table {table} is gone (it had {had} rows)")),
                Some(_) => {}
            }
        }
    }
    let pct = u64::from(rule.drop_percent);
    let dropped = |before: u64, now: u64| pct > 0 && now * 100 < before * (100 - pct.min(100));
    if rows_before >= MIN_ROWS_FOR_PERCENT && dropped(rows_before, rows_now) {
        reasons.push(format!(
            "rows down from {rows_before} to {rows_now} (more than {pct} % fewer)"
        ));
    }
    if bytes_before >= MIN_BYTES_FOR_PERCENT && dropped(bytes_before, bytes_now) {
        reasons.push(format!(
            "dump size down from {bytes_before} to {bytes_now} bytes (more than {pct} % smaller)"
        ));
    }
    if reasons.is_empty() {
        return None;
    }
    let shown: Vec<String> = reasons.iter().take(5).cloned().collect();
    let more = reasons.len().saturating_sub(shown.len());
    Some(match more {
        0 => shown.join("; "),
        n => format!("{}; and {n} more", shown.join("; ")),
    })
}

/// Why a listed backup counts as suspect: marked so, and not accepted since.
pub fn open_reason(b: &Backup) -> Option<&String> {
    b.suspect.as_ref().filter(|_| b.accepted.is_none())
}
