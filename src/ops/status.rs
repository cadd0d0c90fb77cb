//! A target's health: is its newest complete backup fresh, did its last run succeed, does
//! its database answer. [`assess`] is pure and shared by `/health` and `dbkeep status`;
//! the rest gathers its facts.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Context;
use crate::catalog;
use crate::config::{Config, Target};
use crate::engine;
use crate::retention::fmt_age;
use crate::scheduler::next_run;
use crate::state::{RunStatus, TargetState};
use crate::storage::Storages;

#[derive(Debug, Clone, Serialize)]
pub struct DbStatus {
    /// host:port/database (or the SQLite file): never the URL's user, password or query.
    pub location: String,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub checked: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewestBackup {
    pub id: String,
    pub created: DateTime<Utc>,
    pub age_seconds: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub status: Option<RunStatus>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetHealth {
    pub target: String,
    /// When a failed scheduled backup is tried again (the daemon's retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// In a daemon: `active` when this replica runs the target's schedules (holds its
    /// lease), `standby` when another does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The target's zone (IANA name): `next_run` is UTC; `next_run_local` is the same
    /// instant as wall-clock time there.
    pub timezone: String,
    pub next_run_local: Option<String>,
    pub kind: &'static str,
    pub healthy: bool,
    /// `green` (all well), `amber` (the backups are there but need a look: the newest is
    /// suspect, or a drill was slower than `rto`; `/health` still answers 200), `red`
    /// (problems: `/health` answers 503).
    pub level: &'static str,
    pub problems: Vec<String>,
    /// Why the level is amber.
    pub attention: Vec<String>,
    /// The last restore a drill measured and proved (time, size, rows).
    pub last_proven_restore: Option<crate::state::ProvenRestore>,
    /// The recovery objectives, when set (seconds).
    pub rpo_seconds: Option<u64>,
    pub rto_seconds: Option<u64>,
    /// What does not work and should be fixed, but leaves the backups sound (a drill
    /// the role may not do): never makes the target unhealthy.
    pub warnings: Vec<String>,
    /// Pinned backups (id, reason), which retention keeps.
    pub pinned: std::collections::BTreeMap<String, String>,
    /// Runs going on now (bytes, rate, percent, ETA), as last reported.
    pub running: Vec<crate::progress::RunProgress>,
    pub newest_backup: Option<NewestBackup>,
    pub backups: usize,
    /// Manifests not counted as backups (unreadable, not matching their archive).
    pub broken_manifests: usize,
    pub pending_uploads: usize,
    /// Archives waiting, by mirror (rate-limited copies after a run included).
    pub pending_by_storage: std::collections::BTreeMap<String, usize>,
    pub last_run: LastRun,
    pub next_run: Option<DateTime<Utc>>,
    pub last_drill: LastRun,
    /// When the target turns stale if no new backup completes.
    pub stale_after: DateTime<Utc>,
    pub database: Option<DbStatus>,
    /// A server target's databases: each one's newest backup; a dropped one is `gone`
    /// (its backups kept under retention), which is not a problem.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<catalog::DatabaseSummary>,
}

/// What is known about one target, gathered by the caller.
pub struct Facts<'a> {
    pub catalog: CatalogSummary,
    pub state: &'a TargetState,
    pub next_run: Option<DateTime<Utc>>,
    pub database: Option<DbStatus>,
}

/// When `target` turns stale: its next due time after the newest complete backup (or, with
/// none yet, after the daemon first scheduled it) plus `health_grace`.
pub fn stale_after(
    target: &Target,
    newest: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let grace =
        chrono::Duration::from_std(target.health_grace).unwrap_or(chrono::Duration::hours(1));
    let due = match newest {
        Some(created) => next_run(&target.schedule, Some(created), now),
        None => next_run(&target.schedule, None, since.unwrap_or(now)),
    };
    // A schedule that never fires again is a config error caught at load; should one get
    // here all the same, the target is due now rather than never.
    due.unwrap_or(now) + grace
}

pub fn assess(target: &Target, facts: Facts<'_>, now: DateTime<Utc>) -> TargetHealth {
    let mut problems = Vec::new();
    let newest = facts.catalog.newest.clone();
    let stale_after = stale_after(target, newest.as_ref().map(|n| n.1), facts.state.since, now);
    if now > stale_after {
        problems.push(match &newest {
            Some((id, created)) => format!(
                "stale: newest complete backup {id} is {} old; a new one was due by {}",
                fmt_age(now - *created),
                stale_after.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            None => format!(
                "stale: no complete backup yet; the first was due by {}",
                stale_after.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        });
    }
    // The recovery point objective: the newest complete backup may be at most `rpo` old.
    if let Some(rpo) = target.rpo.and_then(|d| chrono::Duration::from_std(d).ok()) {
        let since = newest
            .as_ref()
            .map(|n| n.1)
            .or(facts.state.since)
            .unwrap_or(now);
        if now - since > rpo {
            problems.push(match &newest {
                Some((id, _)) => format!(
                    "recovery point objective missed: newest complete backup {id} is {} old, rpo is {}",
                    fmt_age(now - since),
                    fmt_age(rpo)
                ),
                None => format!(
                    "recovery point objective missed: no complete backup in {}, rpo is {}",
                    fmt_age(now - since),
                    fmt_age(rpo)
                ),
            });
        }
    }
    // One problem per mirror, each with its own oldest date and newest error. An archive
    // left for a rate-limited mirror to copy after the run is not one, unless it has
    // waited longer than the health grace.
    let grace =
        chrono::Duration::from_std(target.health_grace).unwrap_or(chrono::Duration::hours(1));
    let mut by_storage: std::collections::BTreeMap<&str, Vec<&crate::state::PendingUpload>> =
        Default::default();
    for p in &facts.state.pending_uploads {
        if !p.deferred || now - p.since > grace {
            by_storage.entry(p.storage.as_str()).or_default().push(p);
        }
    }
    for (storage, list) in by_storage {
        let since = list.iter().map(|p| p.since).min().unwrap_or(now);
        problems.push(format!(
            "{} archive(s) not uploaded to {storage} (pending since {}): {}",
            list.len(),
            since.format("%Y-%m-%dT%H:%M:%SZ"),
            list.last().map(|p| p.error.as_str()).unwrap_or("")
        ));
    }
    if facts.state.last_verify_status == Some(RunStatus::Failure) {
        problems.push(format!(
            "last restore drill failed: {}",
            facts
                .state
                .last_verify_error
                .as_deref()
                .unwrap_or("unknown error")
        ));
    }
    for u in &facts.catalog.unavailable {
        problems.push(format!(
            "storage {u}; its copies are not counted (the others still are)"
        ));
    }
    if !facts.state.corrupt.is_empty() {
        problems.push(format!(
            "{} archive(s) no longer match their manifest, not counted as backups and not deleted: {}; restore from another copy, then remove them",
            facts.state.corrupt.len(),
            facts
                .state
                .corrupt
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !facts.catalog.broken.is_empty() {
        problems.push(format!(
            "{} broken manifest(s), not counted as backups and not deleted: {}; `dbkeep verify` lists them",
            facts.catalog.broken.len(),
            facts.catalog.broken.join("; ")
        ));
    }
    // A failure that a retry is due to repair is not a problem yet (the deadline still is).
    let retrying = facts
        .state
        .retry_at
        .is_some_and(|at| at + chrono::Duration::seconds(60) > now);
    if facts.state.last_status == Some(RunStatus::Failure) && !retrying {
        problems.push(format!(
            "last run failed: {}",
            facts.state.last_error.as_deref().unwrap_or("unknown error")
        ));
    }
    let mut attention = Vec::new();
    if let Some((id, why)) = &facts.catalog.suspect {
        attention.push(format!(
            "newest backup {id} is SUSPECT ({why}); retention does not count it; `dbkeep accept {} {id}` if the drop was intended",
            target.name
        ));
    }
    if let (Some(rto), Some(p)) = (target.rto, &facts.state.last_proven) {
        if p.seconds > rto.as_secs_f64() {
            attention.push(format!(
                "the last drill's restore took {:.0}s, longer than the recovery time objective (rto {})",
                p.seconds,
                humantime::format_duration(rto)
            ));
        }
    }
    let level = match (problems.is_empty(), attention.is_empty()) {
        (false, _) => "red",
        (true, false) => "amber",
        (true, true) => "green",
    };
    TargetHealth {
        level,
        attention,
        last_proven_restore: facts.state.last_proven.clone(),
        rpo_seconds: target.rpo.map(|d| d.as_secs()),
        rto_seconds: target.rto.map(|d| d.as_secs()),
        retry_at: facts.state.retry_at,
        role: None,
        timezone: target.timezone.to_string(),
        next_run_local: facts.next_run.map(|t| {
            t.with_timezone(&target.timezone)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        }),
        target: target.name.clone(),
        kind: target.source.kind(),
        healthy: problems.is_empty(),
        problems,
        // A report older than this is from a run that ended without saying so (killed).
        running: facts
            .state
            .running
            .clone()
            .filter(|r| now - r.updated < chrono::Duration::seconds(30))
            .into_iter()
            .collect(),
        warnings: facts
            .state
            .warnings
            .iter()
            .map(|(check, why)| format!("{check}: {why}"))
            .collect(),
        newest_backup: newest.map(|(id, created)| NewestBackup {
            id,
            created,
            age_seconds: (now - created).num_seconds(),
        }),
        backups: facts.catalog.backups,
        pinned: facts.catalog.pinned.clone(),
        broken_manifests: facts.catalog.broken.len(),
        pending_uploads: facts.state.pending_uploads.len(),
        pending_by_storage: facts.state.pending_by_storage(),
        last_run: LastRun {
            status: facts.state.last_status,
            started: facts.state.last_run,
            finished: facts.state.last_finished,
            error: facts.state.last_error.clone(),
        },
        next_run: facts.next_run,
        last_drill: LastRun {
            status: facts.state.last_verify_status,
            started: facts.state.last_verify,
            finished: facts.state.last_verify,
            error: facts.state.last_verify_error.clone(),
        },
        stale_after,
        database: facts.database,
        databases: {
            let mut dbs = facts.catalog.databases.clone();
            catalog::mark_failing(&mut dbs, &facts.state.failed_databases);
            dbs
        },
    }
}

/// When the target's restore drill is overdue: its next drill slot after the last drill
/// (or after the daemon first scheduled it) plus `health_grace`; `None` when drills are off.
pub fn drill_deadline(
    target: &Target,
    state: &TargetState,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let schedule = target.verify_schedule.as_ref()?;
    // A drill the role may not do is a warning of its own, not an overdue drill.
    if state.warnings.contains_key(super::verify::WARN_DRILL) {
        return None;
    }
    let grace =
        chrono::Duration::from_std(target.health_grace).unwrap_or(chrono::Duration::hours(1));
    let from = state.last_verify.or(state.since).unwrap_or(now);
    Some(next_run(schedule, Some(from), now).unwrap_or(now) + grace)
}

/// What the storages hold of one target.
#[derive(Debug, Clone, Default)]
pub struct CatalogSummary {
    /// The newest complete backup (id, time), across storages.
    pub newest: Option<(String, DateTime<Utc>)>,
    /// Complete backups (distinct runs), across storages.
    pub backups: usize,
    /// "storage: file: why" of each broken manifest.
    pub broken: Vec<String>,
    /// "name unavailable: error" of each storage that could not be listed.
    pub unavailable: Vec<String>,
    /// Pinned runs (id, reason): retention keeps them.
    pub pinned: std::collections::BTreeMap<String, String>,
    /// The newest run when it is suspect and not accepted: (id, why).
    pub suspect: Option<(String, String)>,
    /// Per storage: complete runs, the oldest's time, broken manifests.
    pub per_storage: Vec<(&'static str, usize, Option<DateTime<Utc>>, usize)>,
    /// A server target's databases (`databases`): newest backup each, and which are gone.
    pub databases: Vec<catalog::DatabaseSummary>,
}

/// List a target on every storage, reading its manifests: complete backups, broken
/// manifests, storages that do not answer.
pub async fn summarize(
    storages: &Storages,
    target: &str,
    verify: Option<&crate::crypt::VerifyingKey>,
    now: DateTime<Utc>,
) -> CatalogSummary {
    let mut out = CatalogSummary::default();
    let mut ids = std::collections::BTreeSet::new();
    let mut suspects: Vec<(catalog::BackupId, String)> = Vec::new();
    let mut all = Vec::new();
    for s in storages.iter() {
        match catalog::list(s, target, verify, now).await {
            Ok(listing) => {
                all.extend(
                    listing
                        .complete
                        .iter()
                        .filter(|b| b.database.is_some())
                        .cloned(),
                );
                let mine: std::collections::BTreeSet<_> =
                    listing.complete.iter().map(|b| b.id).collect();
                out.per_storage.push((
                    s.name(),
                    mine.len(),
                    mine.first().map(|i| i.time()),
                    listing.broken.len(),
                ));
                ids.extend(mine);
                for b in &listing.complete {
                    if let Some(why) = &b.pinned {
                        out.pinned.insert(b.id.to_string(), why.clone());
                    }
                    if let Some(why) = super::suspect::open_reason(b) {
                        suspects.push((b.id, why.clone()));
                    }
                }
                for (file, why) in listing.broken {
                    out.broken.push(format!("{}: {file}: {why}", s.name()));
                }
            }
            Err(e) => out.unavailable.push(format!(
                "{} unavailable: {}",
                s.name(),
                crate::error::chain(&e)
            )),
        }
    }
    out.newest = ids.last().map(|id| (id.to_string(), id.time()));
    out.suspect = ids.last().and_then(|newest| {
        suspects
            .iter()
            .find(|(id, _)| id == newest)
            .map(|(id, why)| (id.to_string(), why.clone()))
    });
    out.backups = ids.len();
    out.databases = catalog::databases_of(&all);
    out
}

/// Does the target's database answer?
pub async fn database(target: &Target, now: DateTime<Utc>) -> DbStatus {
    let engine = engine::build(target);
    let ping = engine.ping().await;
    DbStatus {
        location: engine.location(),
        up: ping.is_ok(),
        error: ping.err().map(|e| crate::error::chain(&e)),
        checked: now,
    }
}

/// The health of every target, gathered fresh (no daemon needed).
pub async fn report(ctx: &Context, cfg: &Config) -> Vec<TargetHealth> {
    let now = ctx.now();
    let mut all = Vec::new();
    for t in &cfg.targets {
        let st = ctx.state.get(&t.name);
        let catalog = summarize(&ctx.storages, &t.name, t.crypto.verify.as_ref(), now).await;
        let db = database(t, now).await;
        let last = st.last_run.or(catalog.newest.as_ref().map(|n| n.1));
        let next = next_run(&t.schedule, last, now).map(|n| n.max(now));
        all.push(assess(
            t,
            Facts {
                catalog,
                state: &st,
                next_run: next,
                database: Some(db),
            },
            now,
        ));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compression, Schedule, SourceConfig, SqliteConfig};
    use chrono::TimeZone;
    use std::time::Duration;

    fn target(schedule: Schedule, grace: Duration) -> Target {
        Target {
            timezone: crate::config::Tz::UTC,
            hooks: Default::default(),
            crypto: Default::default(),
            fingerprint: true,
            suspect: crate::config::SuspectRule {
                min_rows: 1000,
                drop_percent: 50,
            },
            rpo: None,
            rto: None,
            retries: 0,
            jobs: 1,
            retry_delay: Duration::from_secs(60),
            schema: None,
            name: "t".into(),
            source: SourceConfig::Sqlite(SqliteConfig {
                path: "/x.db".into(),
            }),
            schedule,
            cleanup_schedule: None,
            verify_schedule: None,
            jitter: Duration::ZERO,
            health_grace: grace,
            compression: Compression::None,
            keep_days: 1,
            min_keep: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            timeout: Duration::from_secs(60),
        }
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, h, m, 0).unwrap()
    }

    fn check(
        t: &Target,
        newest: Option<DateTime<Utc>>,
        state: TargetState,
        now: DateTime<Utc>,
    ) -> TargetHealth {
        let facts = Facts {
            catalog: CatalogSummary {
                newest: newest.map(|c| ("id".to_string(), c)),
                backups: usize::from(newest.is_some()),
                ..Default::default()
            },
            state: &state,
            next_run: None,
            database: None,
        };
        assess(t, facts, now)
    }

    #[test]
    fn stale_rule() {
        let hourly = target(
            Schedule::Every(Duration::from_secs(3600)),
            Duration::from_secs(600),
        );
        // Newest at 10:00, due 11:00, grace to 11:10.
        assert!(check(&hourly, Some(at(10, 0)), TargetState::default(), at(11, 10)).healthy);
        let late = check(&hourly, Some(at(10, 0)), TargetState::default(), at(11, 11));
        assert!(!late.healthy);
        assert!(
            late.problems[0].starts_with("stale: newest complete backup id is 1h 11m old"),
            "{:?}",
            late.problems
        );

        // A fresh daemon: not stale until its first run is due + grace.
        let nightly = target(Schedule::cron("0 2 * * *"), Duration::from_secs(3600));
        let fresh = TargetState {
            since: Some(at(12, 0)),
            ..Default::default()
        };
        assert!(check(&nightly, None, fresh.clone(), at(23, 59)).healthy);
        let next_day = Utc.with_ymd_and_hms(2026, 11, 22, 3, 1, 0).unwrap();
        let h = check(&nightly, None, fresh, next_day);
        assert!(!h.healthy);
        assert!(
            h.problems[0].contains("no complete backup yet"),
            "{:?}",
            h.problems
        );
    }

    #[test]
    fn a_failed_last_run_is_unhealthy_even_when_fresh() {
        let hourly = target(
            Schedule::Every(Duration::from_secs(3600)),
            Duration::from_secs(600),
        );
        let failed = TargetState {
            last_status: Some(RunStatus::Failure),
            last_error: Some("pg_dump failed".into()),
            ..Default::default()
        };
        let h = check(&hourly, Some(at(10, 0)), failed, at(10, 30));
        assert!(!h.healthy);
        assert_eq!(h.problems, ["last run failed: pg_dump failed"]);
    }
}
