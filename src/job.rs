//! One backup run of one target: source -> compress -> storages -> manifests.
//! A run commits all of its archives or none: manifests are written only after every
//! archive of the run is stored, and a failure removes what the run wrote.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;

use chrono::DateTime;

use crate::catalog::{self, Backup, BackupId, Manifest, MANIFEST_VERSION};
use crate::compress::{self, Summary};
use crate::config::Target;
use crate::metrics;
use crate::retention::{self, Action, Candidate, Decision};
use crate::source::{self, Part, Prepared, SourceError};
use crate::storage::{ObjectWriter, Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("backup of {target} failed: {source}")]
    Source {
        target: String,
        #[source]
        source: SourceError,
    },
    #[error("backup of {target} failed: {source}")]
    Storage {
        target: String,
        #[source]
        source: StorageError,
    },
    #[error("backup of {target} failed: {file}: {message}")]
    Stream {
        target: String,
        file: String,
        message: String,
    },
    #[error("backup of {target} was cancelled; nothing was kept")]
    Cancelled { target: String },
}

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: String,
    pub id: BackupId,
    pub manifests: Vec<Manifest>,
    pub duration: Duration,
    pub leftovers_removed: Vec<String>,
}

impl Outcome {
    pub fn stored_bytes(&self) -> u64 {
        self.manifests.iter().map(|m| m.stored_bytes).sum()
    }
}

/// Writes every buffer to each storage's writer.
struct FanOut(Vec<Box<dyn ObjectWriter>>);

impl Write for FanOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for w in &mut self.0 {
            w.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        for w in &mut self.0 {
            w.flush()?;
        }
        Ok(())
    }
}

/// Take one backup of `target` into every storage; the outcome is logged and counted.
pub async fn backup(
    target: &Target,
    storages: &[Box<dyn Storage>],
    reason: Option<&str>,
    cancel: &CancellationToken,
) -> Result<Outcome, JobError> {
    let t0 = Instant::now();
    let result = backup_inner(target, storages, reason, cancel, t0).await;
    match &result {
        Ok(o) => {
            metrics::backup_succeeded(&o.target, &o.id.to_string(), o.stored_bytes(), o.duration)
        }
        Err(e) => metrics::backup_failed(&target.name, e, t0.elapsed()),
    }
    result
}

async fn backup_inner(
    target: &Target,
    storages: &[Box<dyn Storage>],
    reason: Option<&str>,
    cancel: &CancellationToken,
    t0: Instant,
) -> Result<Outcome, JobError> {
    let name = target.name.as_str();
    let storage_err = |source| JobError::Storage {
        target: name.to_string(),
        source,
    };

    let mut leftovers_removed = Vec::new();
    for s in storages {
        let removed = s.remove_temp_files(name).await.map_err(storage_err)?;
        for file in &removed {
            metrics::leftover_removed(name, s.name(), file, "temp file of an interrupted run");
        }
        leftovers_removed.extend(removed);
    }

    let source = source::build(target);
    let prepared = source.prepare().await.map_err(|source| JobError::Source {
        target: name.to_string(),
        source,
    })?;

    let id = next_id(target, storages).await.map_err(storage_err)?;
    metrics::backup_started(name, &id.to_string(), prepared.parts.len(), Utc::now());

    let mut done: Vec<(Manifest, Summary)> = Vec::new();
    let mut result = Ok(());
    for part in &prepared.parts {
        if cancel.is_cancelled() {
            result = Err(JobError::Cancelled {
                target: name.to_string(),
            });
            break;
        }
        match stream_part(
            target,
            storages,
            source.as_ref(),
            &prepared,
            part,
            id,
            cancel,
        )
        .await
        {
            Ok((file, summary, part_started)) => {
                let finished = Utc::now();
                let manifest = Manifest {
                    format_version: MANIFEST_VERSION,
                    target: name.to_string(),
                    id,
                    kind: target.source.kind().to_string(),
                    contents: part.contents,
                    schema: part.schema.clone(),
                    file,
                    started: part_started,
                    finished,
                    duration_seconds: (finished - part_started).num_milliseconds() as f64 / 1000.0,
                    raw_bytes: summary.raw_bytes,
                    stored_bytes: summary.stored_bytes,
                    codec: target.compression.name().to_string(),
                    sha256: summary.sha256.clone(),
                    tools: prepared.tools.clone(),
                    reason: reason.map(str::to_string),
                };
                done.push((manifest, summary));
            }
            Err(e) => {
                result = Err(if cancel.is_cancelled() {
                    JobError::Cancelled {
                        target: name.to_string(),
                    }
                } else {
                    e
                });
                break;
            }
        }
    }
    if result.is_ok() {
        result = write_manifests(name, storages, &done)
            .await
            .map_err(storage_err);
    }
    if let Err(e) = result {
        remove_run(name, storages, &done).await;
        return Err(e);
    }
    let manifests: Vec<Manifest> = done.into_iter().map(|(m, _)| m).collect();
    let outcome = Outcome {
        target: name.to_string(),
        id,
        manifests,
        duration: t0.elapsed(),
        leftovers_removed,
    };
    Ok(outcome)
}

/// The id for a new run: now, or one second after the newest id already stored,
/// so ids of a target strictly increase even for runs within the same second.
async fn next_id(target: &Target, storages: &[Box<dyn Storage>]) -> Result<BackupId, StorageError> {
    let mut id = BackupId::from_time(Utc::now());
    for s in storages {
        for o in s.list(&target.name).await? {
            if let Some(existing) = catalog::id_of_file(&target.name, &o.file) {
                if existing >= id {
                    id = existing.succ();
                }
            }
        }
    }
    Ok(id)
}

/// Dump one part into every storage. Returns the committed file name and its summary.
async fn stream_part(
    target: &Target,
    storages: &[Box<dyn Storage>],
    source: &dyn source::Source,
    prepared: &Prepared,
    part: &Part,
    id: BackupId,
    cancel: &CancellationToken,
) -> Result<(String, Summary, chrono::DateTime<Utc>), JobError> {
    let name = target.name.as_str();
    let file = catalog::archive_name(name, id, part.qualifier(), part.format, target.compression);
    let stream_err = |message: String| JobError::Stream {
        target: name.to_string(),
        file: file.clone(),
        message,
    };
    let mut writers = Vec::with_capacity(storages.len());
    for s in storages {
        writers.push(
            s.create(name, &file)
                .await
                .map_err(|source| JobError::Storage {
                    target: name.to_string(),
                    source,
                })?,
        );
    }
    let scratch = storages.iter().find_map(|s| s.scratch_dir(name));
    let started = Utc::now();
    let dump = source
        .open(prepared, part, scratch.as_deref(), cancel)
        .await
        .map_err(|source| JobError::Source {
            target: name.to_string(),
            source,
        })?;
    let codec = target.compression;
    let reader = dump.reader;
    let stopper = dump.stopper;
    let compressing = async move {
        let joined =
            tokio::task::spawn_blocking(move || compress::compress(reader, codec, FanOut(writers)))
                .await;
        let r = match joined {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(format!("compression thread failed: {e}"))),
        };
        if r.is_err() {
            // The reader stopped early: the producer must not block on a full pipe.
            if let Some(s) = stopper {
                s.terminate();
            }
        }
        r
    };
    let (compressed, produced) = tokio::join!(compressing, dump.done);
    // The producer's verdict comes first: a failed pg_dump explains a short stream.
    produced.map_err(|source| JobError::Source {
        target: name.to_string(),
        source,
    })?;
    let (fanout, summary) =
        compressed.map_err(|e| stream_err(format!("writing the archive: {e}")))?;
    if summary.raw_bytes == 0 {
        return Err(stream_err(
            "the dump produced no bytes; nothing was kept".into(),
        ));
    }
    if !summary.head.starts_with(part.magic) {
        return Err(stream_err(format!(
            "the dump does not start like a {} archive; nothing was kept",
            part.format
        )));
    }
    let FanOut(writers) = fanout;
    tokio::task::spawn_blocking(move || {
        let mut first_err = None;
        let mut pending = writers.into_iter();
        for w in pending.by_ref() {
            if let Err(e) = w.commit() {
                first_err = Some(e);
                break;
            }
        }
        pending.for_each(|w| w.abort());
        first_err.map_or(Ok(()), Err)
    })
    .await
    .map_err(|e| stream_err(format!("commit thread failed: {e}")))?
    .map_err(|source| JobError::Storage {
        target: name.to_string(),
        source,
    })?;
    tracing::info!(
        target = name,
        backup_id = %id,
        file = %file,
        raw_bytes = summary.raw_bytes,
        bytes = summary.stored_bytes,
        "archive stored"
    );
    Ok((file, summary, started))
}

async fn write_manifests(
    target: &str,
    storages: &[Box<dyn Storage>],
    done: &[(Manifest, Summary)],
) -> Result<(), StorageError> {
    for (manifest, _) in done {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| StorageError::Task {
            storage: "manifest",
            message: e.to_string(),
        })?;
        for s in storages {
            s.put_bytes(
                target,
                &catalog::manifest_name(&manifest.file),
                bytes.clone(),
            )
            .await?;
        }
    }
    Ok(())
}

/// Remove everything a failed run stored: manifests first, then archives.
async fn remove_run(target: &str, storages: &[Box<dyn Storage>], done: &[(Manifest, Summary)]) {
    for (manifest, _) in done {
        for s in storages {
            for file in [
                catalog::manifest_name(&manifest.file),
                manifest.file.clone(),
            ] {
                if let Err(e) = s.delete(target, &file).await {
                    tracing::error!(target, storage = s.name(), file = %file, error = %e, "could not remove an archive of the failed run; the next cleanup removes it");
                }
            }
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
    /// Backups that stay after cleanup.
    pub remaining: usize,
}

/// Apply the retention plan of `target` on every storage. A dry run deletes nothing.
/// Deletion order per backup: manifests first, then archives, so an interruption leaves an
/// archive without manifest (removed next time), never a manifest pointing at nothing.
pub async fn cleanup(
    target: &Target,
    storages: &[Box<dyn Storage>],
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<Vec<CleanupReport>, JobError> {
    let name = target.name.as_str();
    let storage_err = |source| JobError::Storage {
        target: name.to_string(),
        source,
    };
    let mut reports = Vec::new();
    for s in storages {
        let mut leftovers = Vec::new();
        if !dry_run {
            for file in s.remove_temp_files(name).await.map_err(storage_err)? {
                metrics::leftover_removed(name, s.name(), &file, "temp file of an interrupted run");
                leftovers.push((file, "temp file of an interrupted run"));
            }
        }
        let listing = catalog::list(s.as_ref(), name, now)
            .await
            .map_err(|e| match e {
                catalog::CatalogError::Storage(source) => storage_err(source),
            })?;
        let mut runs: BTreeMap<BackupId, Vec<Backup>> = BTreeMap::new();
        for b in listing.complete {
            runs.entry(b.id).or_default().push(b);
        }
        let candidates: Vec<Candidate> = runs
            .keys()
            .map(|id| Candidate {
                id: *id,
                pending_upload: false,
            })
            .collect();
        let plan = retention::plan(&candidates, &target.policy(), now);
        let mut decisions = Vec::new();
        let mut remaining: Vec<BackupId> = Vec::new();
        for d in plan {
            let archives: Vec<String> = runs
                .get(&d.id)
                .map(|v| v.iter().map(|b| b.file.clone()).collect())
                .unwrap_or_default();
            if d.action == Action::Delete && !dry_run {
                let mut files: Vec<String> =
                    archives.iter().map(|a| catalog::manifest_name(a)).collect();
                files.extend(archives.iter().cloned());
                for f in &files {
                    s.delete(name, f).await.map_err(storage_err)?;
                }
                metrics::retention_deleted(name, s.name(), &d.id.to_string(), &d.reason);
            }
            if d.action == Action::Keep {
                remaining.push(d.id);
            }
            decisions.push((d, archives));
        }
        for file in listing.orphans {
            if !dry_run {
                s.delete(name, &file).await.map_err(storage_err)?;
                metrics::leftover_removed(name, s.name(), &file, "archive without manifest");
            }
            leftovers.push((file, "archive without manifest (interrupted run)"));
        }
        for (file, why) in listing.broken {
            if why == catalog::ARCHIVE_MISSING {
                if !dry_run {
                    s.delete(name, &file).await.map_err(storage_err)?;
                    metrics::leftover_removed(name, s.name(), &file, "manifest without archive");
                }
                leftovers.push((file, "manifest without archive"));
            } else {
                tracing::warn!(target = name, storage = s.name(), file = %file, problem = %why, "kept for inspection: not a complete backup");
            }
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
    Ok(reports)
}
