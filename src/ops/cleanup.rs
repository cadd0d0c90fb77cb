//! Cleanup: apply the retention plan of a target on every storage, and remove what
//! interrupted runs left behind. A dry run deletes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::restore::{verify_checksum, RestoreError};
use super::Context;
use crate::catalog::{self, Backup, BackupId};
use crate::config::Target;
use crate::error::{Classify, ErrorKind};
use crate::metrics;
use crate::retention::{self, Action, Candidate, Decision};
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("cleanup of {target} on {storage} failed: {source}")]
    Storage {
        target: String,
        storage: &'static str,
        #[source]
        source: StorageError,
    },
    #[error("cleanup of {target} was cancelled; what it deleted so far is gone, the rest is kept")]
    Cancelled { target: String },
    #[error("cleanup of {target}: {source}")]
    Lock {
        target: String,
        #[source]
        source: super::lock::LockError,
    },
}

impl Classify for CleanupError {
    fn kind(&self) -> ErrorKind {
        match self {
            CleanupError::Storage { source, .. } => source.kind(),
            CleanupError::Cancelled { .. } => ErrorKind::Cancelled,
            CleanupError::Lock { source, .. } => source.kind(),
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            CleanupError::Storage { source, .. } => source.hint(),
            CleanupError::Cancelled { .. } | CleanupError::Lock { .. } => None,
        }
    }
}

/// What cleanup did (or, in a dry run, would do) on one storage.
#[derive(Debug)]
pub struct CleanupReport {
    pub target: String,
    pub storage: &'static str,
    /// Every complete backup with its decision and the files that make it up.
    pub decisions: Vec<(Decision, Vec<String>)>,
    /// Files that are not backups and were (or would be) removed, with why.
    pub leftovers: Vec<(String, &'static str)>,
    /// Manifests that are not trusted: neither counted nor deleted, with why.
    pub broken: Vec<(String, String)>,
    /// Archives that no longer match their manifest: neither counted nor deleted, with why.
    pub corrupt: Vec<(String, String)>,
    /// Backups that stay after cleanup.
    pub remaining: usize,
    /// The storage could not be cleaned now, and why.
    pub unavailable: Option<String>,
}

/// Apply the retention plan of `target` on every storage, as of `now`. Deletion order
/// per backup: manifests first, then archives, so an interruption leaves an archive
/// without manifest (removed next time), never a manifest pointing at nothing.
pub async fn run(
    ctx: &Context,
    target: &Target,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<Vec<CleanupReport>, CleanupError> {
    let name = target.name.as_str();
    // Pins change only between cleanups: what is planned is what is deleted.
    let _retention =
        super::lock::acquire_retention(ctx.state.work_dir(), name, &ctx.clock, &ctx.cancel)
            .await
            .map_err(|source| CleanupError::Lock {
                target: name.to_string(),
                source,
            })?;
    let pending = ctx.state.get(name).pending_uploads;
    let verify = target.crypto.verify.as_ref();
    // What each mirror holds, from its own listing: a primary archive that a mirror lacks
    // (and should hold, by its own retention) is still to be uploaded, whether or not the
    // state file (which may be lost) says so. A mirror that cannot be listed holds
    // nothing as far as cleanup knows.
    let mut lacking: std::collections::HashSet<String> = Default::default();
    // Pending uploads count only where that mirror's own retention would keep the backup.
    let mut wanted_by: std::collections::HashMap<&str, std::collections::HashSet<String>> =
        Default::default();
    if ctx.storages.mirrors().next().is_some() {
        let primary = ctx.storages.primary();
        let on_primary = catalog::list(primary, name, verify, now)
            .await
            .map_err(
                |catalog::CatalogError::Storage(source)| CleanupError::Storage {
                    target: name.to_string(),
                    storage: primary.name(),
                    source,
                },
            )?
            .complete;
        for m in ctx.storages.mirrors() {
            let wanted = super::wanted_on(target, m, &on_primary, now);
            if let Some(w) = &wanted {
                wanted_by.insert(m.name(), w.clone());
            }
            let has: std::collections::HashSet<String> = match catalog::list(m, name, verify, now)
                .await
            {
                Ok(l) => l.complete.into_iter().map(|b| b.file).collect(),
                Err(e) => {
                    tracing::warn!(target = name, storage = m.name(), error = %crate::error::chain(&e), "cannot list a mirror; no local backup is deleted that it may lack");
                    Default::default()
                }
            };
            lacking.extend(
                on_primary
                    .iter()
                    .filter(|b| !has.contains(&b.file))
                    .filter(|b| wanted.as_ref().is_none_or(|w| w.contains(&b.file)))
                    .map(|b| b.file.clone()),
            );
        }
    }
    let not_uploaded = |file: &String| {
        lacking.contains(file)
            || pending.iter().any(|p| {
                &p.file == file
                    && wanted_by
                        .get(p.storage.as_str())
                        .is_none_or(|w| w.contains(file))
            })
    };
    let mut reports = Vec::new();
    for s in ctx.storages.iter() {
        let is_primary = s.name() == ctx.storages.primary().name();
        let one = async {
            let err = |source| CleanupError::Storage {
                target: name.to_string(),
                storage: s.name(),
                source,
            };
            let cancelled = || {
                ctx.cancel.is_cancelled().then(|| CleanupError::Cancelled {
                    target: name.to_string(),
                })
            };
            let mut leftovers = Vec::new();
            if !dry_run {
                for file in s.remove_temp_files(name).await.map_err(err)? {
                    metrics::leftover_removed(
                        name,
                        s.name(),
                        &file,
                        "temp file of an interrupted run",
                    );
                    leftovers.push((file, "temp file of an interrupted run"));
                }
            }
            let to_err = |e| match e {
                catalog::CatalogError::Storage(source) => err(source),
            };
            let scan = catalog::scan(s, name, now).await.map_err(to_err)?;
            // Only backups whose manifest reads back and matches count, and only they can be
            // deleted: a broken manifest is reported, never counted toward min_keep, and left
            // for the operator.
            let listing = catalog::list(s, name, verify, now).await.map_err(to_err)?;
            for (file, why) in &listing.broken {
                metrics::broken_manifest(name, s.name(), file, why);
            }
            let broken = listing.broken;
            let mut decisions = Vec::new();
            let mut corrupt = Vec::new();
            let mut remaining: std::collections::BTreeSet<BackupId> = Default::default();
            // Each database of a server target is retained on its own (a dropped one keeps
            // its newest backups); any other target is one group.
            let groups = super::by_database(listing.complete);
            let several = groups.len() > 1;
            for (database, backups) in groups {
                // All archives of one run are one backup.
                let mut by_run: BTreeMap<BackupId, Vec<Backup>> = BTreeMap::new();
                for b in backups {
                    by_run.entry(b.id).or_default().push(b);
                }
                let runs: BTreeMap<BackupId, Vec<String>> = by_run
                    .iter()
                    .map(|(id, bs)| (*id, bs.iter().map(|b| b.file.clone()).collect()))
                    .collect();
                let (plan, bad) =
                    plan_on_good_copies(ctx, target, s, &by_run, &not_uploaded, is_primary, now)
                        .await
                        .map_err(|e| match e {
                            RestoreError::Storage(source) => err(source),
                            other => err(StorageError::Task {
                                storage: s.name(),
                                what: "checking the newest backup before deleting older ones",
                                message: crate::error::chain(&other),
                            }),
                        })?;
                corrupt.extend(bad);
                for mut d in plan {
                    // An Object Lock storage refuses to delete before the lock's date:
                    // the run is kept until then, and deleted by a cleanup after it.
                    if d.action == Action::Delete {
                        if let Some(until) = s
                            .lock_period()
                            .and_then(|p| chrono::Duration::from_std(p).ok())
                            .map(|p| d.id.time() + p)
                        {
                            if until > now {
                                d.action = Action::Keep;
                                d.reason = format!(
                                    "{}, but locked (S3 Object Lock) until {}; deleted by a cleanup after that",
                                    d.reason,
                                    until.format("%Y-%m-%d %H:%M:%SZ")
                                );
                            }
                        }
                    }
                    match &database {
                        Some(db) => d.reason = format!("database {db}: {}", d.reason),
                        None if several => d.reason = format!("globals: {}", d.reason),
                        None => {}
                    }
                    let archives: Vec<String> = runs.get(&d.id).cloned().unwrap_or_default();
                    if d.action == Action::Delete && !dry_run {
                        if let Some(e) = cancelled() {
                            return Err(e);
                        }
                        let mut files: Vec<String> =
                            archives.iter().map(|a| catalog::manifest_name(a)).collect();
                        files.extend(archives.iter().cloned());
                        let mut locked = None;
                        for f in &files {
                            match s.delete(name, f).await {
                                Ok(()) => {}
                                // Locked longer than planned (a copy written late to a
                                // locked mirror): kept, and tried again next time.
                                Err(e)
                                    if s.lock_period().is_some()
                                        && e.kind() == crate::error::ErrorKind::Refused =>
                                {
                                    locked = Some(crate::error::chain(&e));
                                    break;
                                }
                                Err(e) => return Err(err(e)),
                            }
                        }
                        match locked {
                            Some(why) => {
                                tracing::warn!(target = name, storage = s.name(), backup_id = %d.id, error = %why, "a backup due for deletion is still locked; it is kept until a later cleanup");
                                d.action = Action::Keep;
                                d.reason = format!("{}, but still locked: {why}", d.reason);
                            }
                            None => metrics::retention_deleted(
                                name,
                                s.name(),
                                &d.id.to_string(),
                                &d.reason,
                            ),
                        }
                    }
                    if d.action == Action::Keep {
                        remaining.insert(d.id);
                    }
                    decisions.push((d, archives));
                }
            }
            for file in scan.orphans {
                if !dry_run {
                    s.delete(name, &file).await.map_err(err)?;
                    metrics::leftover_removed(name, s.name(), &file, "archive without manifest");
                }
                leftovers.push((file, "archive without manifest (interrupted run)"));
            }
            for file in scan.probes {
                if !dry_run {
                    s.delete(name, &file).await.map_err(err)?;
                    metrics::leftover_removed(name, s.name(), &file, "probe object");
                }
                leftovers.push((file, "probe object of an interrupted `dbkeep doctor`"));
            }

            if !dry_run {
                metrics::backups_counted(
                    name,
                    s.name(),
                    remaining.len(),
                    remaining.iter().min().map(|id| id.time()),
                    broken.len(),
                );
            }
            Ok::<_, CleanupError>(CleanupReport {
                target: name.to_string(),
                storage: s.name(),
                decisions,
                leftovers,
                broken,
                corrupt,
                remaining: remaining.len(),
                unavailable: None,
            })
        }
        .await;
        match one {
            Ok(r) => reports.push(r),
            // A mirror that does not answer is reported and skipped: the others are still
            // cleaned (and nothing on the primary that it may lack is deleted, above).
            Err(CleanupError::Storage { source, .. }) if !is_primary => {
                let error = crate::error::chain(&source);
                tracing::warn!(target = name, storage = s.name(), error = %error, "cannot clean up on this storage now");
                reports.push(CleanupReport {
                    target: name.to_string(),
                    storage: s.name(),
                    decisions: Vec::new(),
                    leftovers: Vec::new(),
                    broken: Vec::new(),
                    corrupt: Vec::new(),
                    remaining: 0,
                    unavailable: Some(error),
                });
            }
            Err(e) => return Err(e),
        }
    }
    if !dry_run {
        // Forget drill records of archives that are gone from every storage.
        let kept: std::collections::HashSet<String> = reports
            .iter()
            .flat_map(|r| {
                r.decisions
                    .iter()
                    .filter(|(d, _)| d.action == Action::Keep)
                    .flat_map(|(_, files)| files.iter().cloned())
            })
            .collect();
        // Forget corruption records of archives gone from a storage that was listed.
        let listed: Vec<&str> = reports
            .iter()
            .filter(|r| r.unavailable.is_none())
            .map(|r| r.storage)
            .collect();
        let still_corrupt: std::collections::HashSet<String> = reports
            .iter()
            .flat_map(|r| {
                r.corrupt
                    .iter()
                    .map(|(f, _)| crate::state::corrupt_key(r.storage, f))
            })
            .collect();
        ctx.state.update(name, |s| {
            s.last_cleanup = Some(now);
            s.verified.retain(|file, _| kept.contains(file));
            s.corrupt.retain(|key, _| {
                still_corrupt.contains(key)
                    || !listed.iter().any(|st| key.starts_with(&format!("{st}/")))
            });
        });
    }
    Ok(reports)
}

/// The retention plan over the runs whose archives are not known to be corrupt, with the
/// corrupt ones (file, why) set aside. Before anything is deleted, the newest run the plan
/// keeps is re-read against its manifests' sha256 (unless a drill proved it): a corrupt
/// newest backup must not be what lets the last good one go. A run found corrupt is
/// recorded in the state file and the plan is made again without it.
async fn plan_on_good_copies(
    ctx: &Context,
    target: &Target,
    s: &dyn crate::storage::Storage,
    runs: &BTreeMap<BackupId, Vec<Backup>>,
    not_uploaded: &impl Fn(&String) -> bool,
    is_primary: bool,
    now: DateTime<Utc>,
) -> Result<(Vec<Decision>, Vec<(String, String)>), RestoreError> {
    let name = target.name.as_str();
    let mut checked: std::collections::HashSet<BackupId> = Default::default();
    // Each pass either ends or sets aside one more run: at most one pass per run.
    for _ in 0..=runs.len() {
        let state = ctx.state.get(name);
        let bad = |b: &Backup| {
            state
                .corrupt
                .get(&crate::state::corrupt_key(s.name(), &b.file))
                .cloned()
        };
        let corrupt: Vec<(String, String)> = runs
            .values()
            .flatten()
            .filter_map(|b| bad(b).map(|why| (b.file.clone(), why)))
            .collect();
        let candidates: Vec<Candidate> = runs
            .iter()
            .filter(|(_, bs)| bs.iter().all(|b| bad(b).is_none()))
            .map(|(id, bs)| Candidate {
                id: *id,
                pending_upload: is_primary && bs.iter().any(|b| not_uploaded(&b.file)),
                pinned: bs.iter().find_map(|b| b.pinned.clone()),
                suspect: bs
                    .iter()
                    .find_map(|b| super::suspect::open_reason(b).cloned()),
            })
            .collect();
        let plan = retention::plan(&candidates, &super::policy_on(target, s), now);
        let deletes = plan.iter().any(|d| d.action == Action::Delete);
        let newest_kept = plan
            .iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| d.id)
            .max();
        let Some(newest) = newest_kept.filter(|id| deletes && !checked.contains(id)) else {
            return Ok((plan, corrupt));
        };
        checked.insert(newest);
        let mut found = false;
        for b in &runs[&newest] {
            if state.verified.contains_key(&b.file) {
                continue;
            }
            match verify_checksum(s, b).await {
                Ok(()) => {}
                Err(e @ RestoreError::Checksum { .. }) => {
                    let why = e.to_string();
                    tracing::error!(target = name, storage = s.name(), file = %b.file, error = %why, "the newest backup no longer matches its manifest; it is not counted, and older backups are kept in its place");
                    let key = crate::state::corrupt_key(s.name(), &b.file);
                    ctx.state.update(name, |st| {
                        st.corrupt.insert(key, why);
                    });
                    found = true;
                }
                Err(e) => return Err(e),
            }
        }
        if !found {
            return Ok((plan, corrupt));
        }
    }
    Err(RestoreError::NotFound(format!(
        "no retention plan for {name} settled; nothing was deleted"
    )))
}
