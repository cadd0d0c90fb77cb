//! Proof that backups restore: `verify` re-reads every stored archive against its
//! manifest's sha256; a drill restores the newest complete run into a scratch database,
//! checks its tables, drops it, and records the result.

use std::time::{Duration, Instant};

use super::restore::{list_everywhere, verify_checksum, RestoreError};
use super::Context;
use crate::catalog::{self, Backup, BackupId, Contents};
use crate::config::Target;
use crate::engine::{self, Archive, Purpose, RestoreMode};
use crate::metrics;
use crate::state::RunStatus;

/// One checked archive of `dbkeep verify`.
pub struct Checked {
    pub storage: &'static str,
    pub file: String,
    pub problem: Option<String>,
}

/// Re-read every stored archive of `target` and compare its sha256 with its manifest.
pub async fn verify_all(ctx: &Context, target: &Target) -> Result<Vec<Checked>, RestoreError> {
    let now = ctx.now();
    let mut out = Vec::new();
    for s in ctx.storages.iter() {
        // A storage that does not answer is one problem; the others are still checked.
        let listing = match catalog::list(s, &target.name, target.crypto.verify.as_ref(), now).await
        {
            Ok(l) => l,
            Err(e) => {
                out.push(Checked {
                    storage: s.name(),
                    file: "(every archive)".into(),
                    problem: Some(format!(
                        "storage unavailable, nothing on it checked: {}",
                        crate::error::chain(&e)
                    )),
                });
                continue;
            }
        };
        for (file, why) in listing.broken {
            out.push(Checked {
                storage: s.name(),
                file,
                problem: Some(why),
            });
        }
        for b in listing.complete {
            let key = crate::state::corrupt_key(s.name(), &b.file);
            let problem = match verify_checksum(s, &b).await {
                Ok(()) => {
                    ctx.state.update(&target.name, |st| {
                        st.corrupt.remove(&key);
                    });
                    None
                }
                Err(RestoreError::Checksum {
                    expected, actual, ..
                }) => {
                    let why = format!("CORRUPT: sha256 {actual}, manifest says {expected}");
                    ctx.state.update(&target.name, |st| {
                        st.corrupt.insert(key, why.clone());
                    });
                    Some(why)
                }
                Err(e) => Some(format!("unreadable: {}", crate::error::chain(&e))),
            };
            out.push(Checked {
                storage: s.name(),
                file: b.file,
                problem,
            });
        }
    }
    Ok(out)
}

/// The key of a drill the role may not do in [`crate::state::TargetState::warnings`].
pub const WARN_DRILL: &str = "drill";

/// What a drill proved.
pub struct DrillReport {
    pub id: BackupId,
    pub archives: usize,
    pub tables: usize,
    pub duration: Duration,
    /// Stored bytes restored.
    pub bytes: u64,
    /// Tables and rows whose content was proven row by row (archives with a content
    /// fingerprint); the other tables were checked for presence and rows only.
    pub tables_proven: usize,
    pub rows_proven: u64,
}

/// Restore the newest complete backup into a scratch database, check it, drop the scratch
/// database (also on failure), record the result in the manifests, state and metrics.
pub async fn drill(ctx: &Context, target: &Target) -> Result<DrillReport, RestoreError> {
    let t0 = Instant::now();
    let now = ctx.now();
    // A drill the role may not do is a warning to act on, not a failed drill: nothing is
    // tried on the server, and no drill deadline runs while the warning stands (the last
    // drill that did run stays what `last_drill` shows).
    match engine::build(target).scratch_denied(Purpose::Drill).await {
        Ok(Some(why)) => {
            metrics::drill_impossible(&target.name, &why);
            ctx.state.update(&target.name, |s| {
                s.warnings.insert(WARN_DRILL.into(), why.clone());
            });
            return Err(RestoreError::NotPermitted(why));
        }
        Ok(None) => {
            ctx.state.update(&target.name, |s| {
                s.warnings.remove(WARN_DRILL);
            });
        }
        // Whether the drill can work is for the drill to find out.
        Err(_) => {}
    }
    let result = drill_inner(ctx, target, t0).await;
    match &result {
        Ok(r) => {
            metrics::drill_succeeded(&target.name, &r.id.to_string(), r.duration);
            metrics::drill_proved(
                &target.name,
                r.duration.as_secs_f64(),
                r.bytes,
                r.rows_proven,
            );
            if let Some(rto) = target.rto.filter(|rto| r.duration > *rto) {
                tracing::warn!(target = %target.name, seconds = r.duration.as_secs_f64(), rto = %humantime::format_duration(rto), "the drill's restore took longer than the recovery time objective (rto)");
            }
            ctx.state.update(&target.name, |s| {
                s.last_verify = Some(now);
                s.last_verify_status = Some(RunStatus::Success);
                s.last_verify_error = None;
                s.last_proven = Some(crate::state::ProvenRestore {
                    at: now,
                    backup_id: r.id.to_string(),
                    seconds: r.duration.as_secs_f64(),
                    bytes: r.bytes,
                    tables: r.tables,
                    rows_proven: r.rows_proven,
                    tables_proven: r.tables_proven,
                });
            });
        }
        Err(e) => {
            let msg = crate::error::chain(e);
            metrics::drill_failed(&target.name, &msg, t0.elapsed());
            ctx.notify.send(
                crate::config::Event::DrillFailed,
                crate::notify::Message::new(crate::config::Event::DrillFailed, &target.name, now)
                    .with_error(msg.clone()),
            );
            ctx.state.update(&target.name, |s| {
                s.last_verify = Some(now);
                s.last_verify_status = Some(RunStatus::Failure);
                s.last_verify_error = Some(msg);
            });
        }
    }
    result
}

async fn drill_inner(
    ctx: &Context,
    target: &Target,
    t0: Instant,
) -> Result<DrillReport, RestoreError> {
    let newest = newest_run(ctx, target).await?;
    let id = newest[0].1.id;
    // A drill of an encrypted backup proves the key still decrypts it.
    let keys = super::keys_for(ctx, target, newest.iter().map(|(_, b)| b))?;
    // Each archive proven, and the proven version of it pinned for the restore.
    let mut proven = Vec::new();
    for (storage, b) in &newest {
        let storage = ctx
            .storages
            .get(storage)
            .ok_or_else(|| RestoreError::NotFound(format!("storage {storage} is gone")))?;
        let spool = super::restore::spool_for(ctx, target, storage, b);
        match super::restore::prove_copy(storage, b, spool).await {
            Ok(proof) => proven.push((storage, b, proof)),
            Err(e) => {
                if let RestoreError::Checksum { .. } = e {
                    let key = crate::state::corrupt_key(storage.name(), &b.file);
                    ctx.state.update(&target.name, |st| {
                        st.corrupt.insert(key, e.to_string());
                    });
                }
                return Err(e);
            }
        }
    }
    let archives: Vec<Archive<'_>> = proven
        .iter()
        .map(|(storage, backup, proof)| Archive {
            storage: *storage,
            backup,
            meter: None,
            keys: keys.as_ref(),
            proof: Some(proof),
        })
        .collect();
    let tables: usize = newest.iter().map(|(_, b)| b.manifest.tables.len()).sum();
    let engine = engine::build(target);
    let dir = super::scratch_dir(ctx, target);
    let total: u64 = archives.iter().map(|a| a.backup.bytes).sum();
    let meter = super::meter(ctx, &target.name, "drill", Some(total), false);
    // Each database of a server target goes into a scratch database of its own, as it
    // would be restored; any other run is one group.
    let mut groups: Vec<(Option<&str>, Vec<&Archive>)> = Vec::new();
    for a in &archives {
        let db = a.backup.database.as_deref();
        match groups.iter_mut().find(|(d, _)| *d == db) {
            Some((_, list)) => list.push(a),
            None => groups.push((db, vec![a])),
        }
    }
    let (mut tables_proven, mut rows_proven) = (0usize, 0u64);
    for (database, group) in groups {
        let scratch = engine.scratch(Purpose::Drill, &dir).await?;
        let restored = async {
            for a in &group {
                let a = Archive {
                    meter: Some(&meter),
                    ..**a
                };
                scratch
                    .restore(a, &RestoreMode::Whole { clean: false }, &ctx.cancel)
                    .await?;
            }
            let mut session = scratch.connect().await?;
            let all: Vec<_> = group
                .iter()
                .flat_map(|a| a.backup.manifest.tables.iter().cloned())
                .collect();
            let checked = session.verify_tables(&all).await;
            session.close().await;
            checked?;
            // Every row: the restored database's rows, counted and hashed the way the
            // backup's were while it streamed, must be the backup's.
            let fingerprints: Vec<_> = group
                .iter()
                .filter_map(|a| a.backup.manifest.content.as_ref())
                .collect();
            if fingerprints.len() < group.len() {
                return Ok(None);
            }
            let Some(want) = crate::engine::content::merge(fingerprints) else {
                return Ok(None);
            };
            let got = scratch
                .content(&group[0].backup.manifest, &ctx.cancel)
                .await?;
            let differences = want.differences(&got);
            if !differences.is_empty() {
                return Err(crate::engine::EngineError::Check(format!(
                    "the restored rows are not the backup's: {}",
                    differences.join("; ")
                )));
            }
            Ok(Some((want.tables.len(), want.rows())))
        }
        .await;
        let dropped = scratch.discard().await;
        let named = |e: crate::engine::EngineError| match (database, &e) {
            (_, crate::engine::EngineError::Cancelled) | (None, _) => e,
            (Some(db), _) => crate::engine::EngineError::Check(format!(
                "database {db}: {}",
                crate::error::chain(&e)
            )),
        };
        if let Some((t, r)) = restored.map_err(named)? {
            tables_proven += t;
            rows_proven += r;
        }
        dropped?;
    }
    // Record the proof in the state file: manifests are never rewritten.
    let verified = ctx.now();
    ctx.state.update(&target.name, |s| {
        for (_, b) in &newest {
            s.verified.insert(b.file.clone(), verified);
        }
    });
    Ok(DrillReport {
        id,
        archives: newest.len(),
        tables,
        duration: t0.elapsed(),
        bytes: total,
        tables_proven,
        rows_proven,
    })
}

/// The database and schema archives of the newest complete run (one copy of each).
async fn newest_run(
    ctx: &Context,
    target: &Target,
) -> Result<Vec<(&'static str, Backup)>, RestoreError> {
    let all = list_everywhere(ctx, target).await?;
    let id = all
        .iter()
        .filter(|(_, b)| b.contents != Contents::Globals)
        .map(|(_, b)| b.id)
        .max()
        .ok_or_else(|| {
            RestoreError::NotFound(format!(
                "target {} has no complete backup to drill",
                target.name
            ))
        })?;
    let mut out: Vec<(&'static str, Backup)> = Vec::new();
    for (s, b) in all {
        if b.id == id
            && b.contents != Contents::Globals
            && !out.iter().any(|(_, o)| o.file == b.file)
        {
            out.push((s, b));
        }
    }
    Ok(out)
}

/// Fill in `verified_at` from the drills recorded in the state file.
pub fn annotate(ctx: &Context, backups: &mut [Backup]) {
    let mut states = std::collections::HashMap::new();
    for b in backups.iter_mut() {
        let st = states
            .entry(b.target.clone())
            .or_insert_with(|| ctx.state.get(&b.target));
        if let Some(at) = st.verified.get(&b.file) {
            b.verified_at = Some(b.verified_at.map_or(*at, |m| m.max(*at)));
        }
    }
}
