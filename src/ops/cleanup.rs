//! Cleanup: apply the retention plan of a target on every storage, and remove what
//! interrupted runs left behind. A dry run deletes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::Context;
use crate::catalog::{self, BackupId};
use crate::config::Target;
use crate::error::{Classify, ErrorKind};
use crate::metrics;
use crate::retention::{self, Action, Candidate, Decision};
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
#[error("cleanup of {target} on {storage} failed: {source}")]
pub struct CleanupError {
    pub target: String,
    pub storage: &'static str,
    #[source]
    pub source: StorageError,
}

impl Classify for CleanupError {
    fn kind(&self) -> ErrorKind {
        self.source.kind()
    }
    fn hint(&self) -> Option<String> {
        self.source.hint()
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
    /// Backups that stay after cleanup.
    pub remaining: usize,
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
    let pending: Vec<String> = ctx
        .state
        .get(name)
        .pending_uploads
        .into_iter()
        .map(|p| p.file)
        .collect();
    let mut reports = Vec::new();
    for s in ctx.storages.iter() {
        let is_primary = s.name() == ctx.storages.primary().name();
        let err = |source| CleanupError {
            target: name.to_string(),
            storage: s.name(),
            source,
        };
        let mut leftovers = Vec::new();
        if !dry_run {
            for file in s.remove_temp_files(name).await.map_err(err)? {
                metrics::leftover_removed(name, s.name(), &file, "temp file of an interrupted run");
                leftovers.push((file, "temp file of an interrupted run"));
            }
        }
        let scan = catalog::scan(s, name, now).await.map_err(|e| match e {
            catalog::CatalogError::Storage(source) => err(source),
        })?;
        // All archives of one run are one backup.
        let mut runs: BTreeMap<BackupId, Vec<String>> = BTreeMap::new();
        for (id, file, _) in scan.complete {
            runs.entry(id).or_default().push(file);
        }
        let candidates: Vec<Candidate> = runs
            .iter()
            .map(|(id, archives)| Candidate {
                id: *id,
                pending_upload: is_primary && archives.iter().any(|f| pending.contains(f)),
            })
            .collect();
        let plan = retention::plan(&candidates, &target.policy(), now);
        let mut decisions = Vec::new();
        let mut remaining: Vec<BackupId> = Vec::new();
        for d in plan {
            let archives: Vec<String> = runs.get(&d.id).cloned().unwrap_or_default();
            if d.action == Action::Delete && !dry_run {
                let mut files: Vec<String> =
                    archives.iter().map(|a| catalog::manifest_name(a)).collect();
                files.extend(archives.iter().cloned());
                for f in &files {
                    s.delete(name, f).await.map_err(err)?;
                }
                metrics::retention_deleted(name, s.name(), &d.id.to_string(), &d.reason);
            }
            if d.action == Action::Keep {
                remaining.push(d.id);
            }
            decisions.push((d, archives));
        }
        for file in scan.orphans {
            if !dry_run {
                s.delete(name, &file).await.map_err(err)?;
                metrics::leftover_removed(name, s.name(), &file, "archive without manifest");
            }
            leftovers.push((file, "archive without manifest (interrupted run)"));
        }
        for file in scan.dangling_manifests {
            if !dry_run {
                s.delete(name, &file).await.map_err(err)?;
                metrics::leftover_removed(name, s.name(), &file, "manifest without archive");
            }
            leftovers.push((file, "manifest without archive"));
        }
        if !dry_run {
            metrics::backups_counted(
                name,
                s.name(),
                remaining.len(),
                remaining.iter().min().map(|id| id.time()),
            );
        }
        reports.push(CleanupReport {
            target: name.to_string(),
            storage: s.name(),
            decisions,
            leftovers,
            remaining: remaining.len(),
        });
    }
    if !dry_run {
        ctx.state.update(name, |s| s.last_cleanup = Some(now));
    }
    Ok(reports)
}
