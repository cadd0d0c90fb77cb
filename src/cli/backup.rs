//! `backup`, `backup --upload-pending`, `list` and `cleanup`.

use super::{all_done, failed, failed as failed_msg, human_bytes, print_json, usage, Failure};
use crate::catalog::{self, Backup};
use crate::config::Config;
use crate::ops::backup::{self as run_backup, Outcome};
use crate::ops::cleanup::{self as run_cleanup, CleanupReport};
use crate::ops::Context;
use crate::retention;

pub(super) async fn backup(ctx: &Context, cfg: &Config, names: &[String]) -> Result<(), Failure> {
    let mut failed = Vec::new();
    for name in names {
        let Some(target) = cfg.target(name) else {
            continue;
        };
        match run_backup::run(ctx, target, None).await {
            Ok(outcome) => print_outcome(&outcome),
            Err(e) => failed.push((name.clone(), Failure::from(e))),
        }
    }
    all_done(failed, "backup")
}

pub(super) async fn upload_pending(
    ctx: &Context,
    cfg: &Config,
    names: &[String],
) -> Result<(), Failure> {
    let mut failed = Vec::new();
    for name in names {
        let Some(target) = cfg.target(name) else {
            continue;
        };
        match run_backup::upload_pending(ctx, target).await {
            Ok(n) => println!("{name}: uploaded {n} pending archive(s)"),
            Err(e) => failed.push((name.clone(), Failure::from(e))),
        }
        let left = ctx.state.get(name).pending_uploads.len();
        if left > 0 {
            println!("{name}: {left} archive(s) still pending upload");
        }
    }
    all_done(failed, "pending uploads")
}

fn print_outcome(o: &Outcome) {
    for (file, storage) in &o.pending {
        println!("{:<12} {file}: NOT uploaded to {storage}; kept locally, pending upload (retried at the next run)", o.target);
    }
    if !o.leftovers_removed.is_empty() {
        println!(
            "{:<12} removed {} leftover temp file(s) of an interrupted run",
            o.target,
            o.leftovers_removed.len()
        );
    }
    for m in &o.manifests {
        println!(
            "{:<12} {}  {:<48} {:>10}  (raw {}, {:.1}x)  sha256 {}",
            o.target,
            o.id,
            m.file,
            human_bytes(m.stored_bytes),
            human_bytes(m.raw_bytes),
            m.raw_bytes as f64 / m.stored_bytes.max(1) as f64,
            &m.sha256[..16],
        );
    }
    println!(
        "{:<12} {}  OK: {} archive(s), {} in {:.2}s",
        o.target,
        o.id,
        o.manifests.len(),
        human_bytes(o.stored_bytes()),
        o.duration.as_secs_f64()
    );
}

pub(super) async fn list(
    ctx: &Context,
    targets: &[&crate::config::Target],
    only: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let storages = &ctx.storages;
    if let Some(s) = only {
        if storages.get(s).is_none() {
            return Err(usage(format!(
                "storage `{s}` is not configured (configured: {}); add a [storage.{s}] section",
                storages.names().join(", ")
            )));
        }
    }
    let inv = crate::ops::list::inventory(ctx, targets, only).await;
    for b in &inv.broken {
        eprintln!(
            "warning: {} on {}: {} is not a complete backup: {}",
            b.target, b.storage, b.file, b.why
        );
    }
    for (storage, error) in &inv.unavailable {
        eprintln!("warning: storage {storage} is unavailable, its copies are not listed: {error}");
    }
    if only.is_some() && !inv.unavailable.is_empty() {
        return Err(failed(format!(
            "storage {} is unavailable",
            only.unwrap_or_default()
        )));
    }
    let mut all: Vec<Backup> = inv.backups;
    // A dropped database of a server target is listed as gone, not failing.
    let gone: std::collections::HashSet<(String, String)> = targets
        .iter()
        .map(|t| &t.name)
        .flat_map(|t| {
            let of: Vec<Backup> = all.iter().filter(|b| &b.target == t).cloned().collect();
            let mut dbs = catalog::databases_of(&of);
            catalog::mark_failing(&mut dbs, &ctx.state.get(t).failed_databases);
            dbs.into_iter()
                .filter(|d| d.gone)
                .map(move |d| (t.clone(), d.name))
        })
        .collect();
    for b in &mut all {
        if let Some(db) = &b.database {
            b.database_gone = gone.contains(&(b.target.clone(), db.clone()));
        }
    }
    if json {
        return print_json(&all);
    }
    if all.is_empty() {
        println!("no complete backups");
        return Ok(());
    }
    println!(
        "{:<15}  {:<12} {:<16} {:<7} {:>10}  {:<20}  {:<11}  {:<17}  {:<6}  FILE",
        "ID", "TARGET", "SCHEMA/DB", "STORAGE", "SIZE", "CREATED", "REASON", "VERIFIED", "PINNED"
    );
    for b in &all {
        let schema = match (b.contents, &b.schema) {
            (catalog::Contents::Globals, _) => "(globals)".to_string(),
            // Control characters in a name would break the table's lines.
            (_, Some(s)) if s.chars().any(char::is_control) => s.escape_debug().to_string(),
            (_, Some(s)) => s.clone(),
            (_, None) => match &b.database {
                Some(db) if b.database_gone => format!("db {} (gone)", super::printable(db)),
                Some(db) => format!("db {}", super::printable(db)),
                None => "-".to_string(),
            },
        };
        // When a drill last proved it restores; "-" when none has.
        let verified = b
            .verified_at
            .map(|t| t.format("%Y-%m-%d %H:%MZ").to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<15}  {:<12} {:<16} {:<7} {:>10}  {:<20}  {:<11}  {:<17}  {:<6}  {}",
            b.id,
            b.target,
            schema,
            b.storage,
            human_bytes(b.bytes),
            b.created.format("%Y-%m-%d %H:%M:%SZ"),
            b.reason.as_deref().unwrap_or("-"),
            verified,
            if b.pinned.is_some() { "yes" } else { "-" },
            b.file
        );
        if let Some(why) = &b.pinned {
            println!("{:<15}  pinned: {}", "", why.escape_debug());
        }
        match (&b.suspect, &b.accepted) {
            (Some(why), None) => println!(
                "{:<15}  SUSPECT: {}; not counted by retention (`dbkeep accept {} {}` if intended)",
                "",
                why.escape_debug(),
                b.target,
                b.id
            ),
            (Some(why), Some(a)) => println!(
                "{:<15}  accepted {}: was suspect: {}",
                "",
                a.accepted_at.format("%Y-%m-%d %H:%MZ"),
                why.escape_debug()
            ),
            _ => {}
        }
    }
    Ok(())
}

pub(super) async fn cleanup(
    ctx: &Context,
    cfg: &Config,
    names: &[String],
    dry_run: bool,
) -> Result<(), Failure> {
    let now = ctx.now();
    let mut failed = Vec::new();
    for name in names {
        let Some(target) = cfg.target(name) else {
            continue;
        };
        match run_cleanup::run(ctx, target, dry_run, now).await {
            Ok(reports) => {
                for r in &reports {
                    print_cleanup(r, dry_run, now);
                }
                let down: Vec<String> = reports
                    .iter()
                    .filter_map(|r| {
                        r.unavailable
                            .as_ref()
                            .map(|e| format!("{}: {e}", r.storage))
                    })
                    .collect();
                if !down.is_empty() {
                    failed.push((
                        name.clone(),
                        failed_msg(format!(
                            "cleanup of {name} skipped a storage that does not answer ({}); the others were cleaned",
                            down.join("; ")
                        )),
                    ));
                }
            }
            Err(e) => failed.push((name.clone(), Failure::from(e))),
        }
    }
    all_done(failed, "cleanup")
}

fn print_cleanup(r: &CleanupReport, dry_run: bool, now: chrono::DateTime<chrono::Utc>) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    if let Some(e) = &r.unavailable {
        println!("{} on {}: not cleaned now: {e}", r.target, r.storage);
        return;
    }
    let deleting = r
        .decisions
        .iter()
        .filter(|(d, _)| d.action == retention::Action::Delete)
        .count();
    println!(
        "{} on {}: {} backup(s), {verb} {deleting}, keeping {}{}",
        r.target,
        r.storage,
        r.decisions.len(),
        r.decisions.len() - deleting,
        if dry_run {
            " (dry run: nothing deleted)"
        } else {
            ""
        }
    );
    println!("  {:<15}  {:>8}  {:<6}  REASON", "ID", "AGE", "ACTION");
    for (d, _files) in &r.decisions {
        let action = match d.action {
            retention::Action::Keep => "keep",
            retention::Action::Delete => "delete",
        };
        println!(
            "  {:<15}  {:>8}  {:<6}  {}",
            d.id,
            retention::fmt_age(now - d.id.time()),
            action,
            crate::error::one_line(&d.reason)
        );
    }
    for (file, why) in &r.leftovers {
        println!("  {verb} leftover {file}: {why}");
    }
    for (file, why) in &r.broken {
        println!("  broken manifest {file} ({why}): not counted, not deleted");
    }
    for (file, why) in &r.corrupt {
        println!("  corrupt archive {file} ({why}): not counted, not deleted");
    }
}

fn parse_id(id: &str) -> Result<crate::catalog::BackupId, Failure> {
    id.parse().map_err(|_| {
        usage(format!(
            "{id:?} is not a backup id: write it as `list` shows it (YYYYMMDD_HHMMSS)"
        ))
    })
}

/// `accept`: clear a suspect mark.
pub(super) async fn accept(
    ctx: &Context,
    cfg: &Config,
    name: &str,
    id: &str,
) -> Result<(), Failure> {
    let target = super::target(cfg, name)?;
    let id = parse_id(id)?;
    let (on, reason) = crate::ops::pin::accept(ctx, target, id).await?;
    println!(
        "{name}: backup {id} accepted on {} (it was suspect: {reason}); retention counts it again",
        on.join(", ")
    );
    Ok(())
}

/// `pin` (or `unpin` when `on` is false).
pub(super) async fn pin(
    ctx: &Context,
    cfg: &Config,
    name: &str,
    id: &str,
    reason: Option<&str>,
    on: bool,
) -> Result<(), Failure> {
    let target = super::target(cfg, name)?;
    let id = parse_id(id)?;
    if on {
        let on = crate::ops::pin::pin(ctx, target, id, reason).await?;
        println!(
            "{name}: backup {id} pinned on {}; retention keeps it until `dbkeep unpin {name} {id}`",
            on.join(", ")
        );
    } else {
        let on = crate::ops::pin::unpin(ctx, target, id).await?;
        println!(
            "{name}: backup {id} unpinned on {}; retention decides about it again",
            on.join(", ")
        );
    }
    Ok(())
}
