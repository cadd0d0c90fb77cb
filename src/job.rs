//! One backup run of one target: source -> compress -> storages -> manifests, and the
//! cleanup that follows. A run commits all of its archives or none: manifests are written
//! only after every archive of the run is stored, and a failure removes what the run
//! wrote. A remote storage that fails while a local copy succeeds makes the archive
//! pending upload instead of failing the run.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, BackupId, Manifest, MANIFEST_VERSION};
use crate::compress::{self, HashingWriter, Summary};
use crate::config::Target;
use crate::metrics;
use crate::retention::{self, Action, Candidate, Decision};
use crate::source::{self, Part, Prepared, SourceError};
use crate::state::{PendingUpload, StateFile};
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
    /// (archive, storage) pairs that are stored locally but still to be uploaded.
    pub pending: Vec<(String, &'static str)>,
}

impl Outcome {
    pub fn stored_bytes(&self) -> u64 {
        self.manifests.iter().map(|m| m.stored_bytes).sum()
    }
}

/// One storage's writer for the archive being streamed.
struct Sink {
    storage: &'static str,
    /// A failure of a required sink fails the backup; of another, it makes it pending.
    required: bool,
    writer: Option<Box<dyn ObjectWriter>>,
    error: Option<String>,
}

/// Writes every buffer to each storage's writer; drops an optional one that fails.
struct FanOut(Vec<Sink>);

impl Write for FanOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for sink in &mut self.0 {
            let Some(w) = sink.writer.as_mut() else {
                continue;
            };
            if let Err(e) = w.write_all(buf) {
                if sink.required {
                    return Err(e);
                }
                sink.error = Some(e.to_string());
                if let Some(w) = sink.writer.take() {
                    w.abort();
                }
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        for sink in &mut self.0 {
            if let Some(w) = sink.writer.as_mut() {
                if let Err(e) = w.flush() {
                    if sink.required {
                        return Err(e);
                    }
                    sink.error = Some(e.to_string());
                    sink.writer.take();
                }
            }
        }
        Ok(())
    }
}

impl FanOut {
    /// Commit every writer still going. A required failure is the result; the optional
    /// storages that failed (while writing or committing) are returned with their error.
    fn commit(self) -> Result<Vec<(&'static str, String)>, StorageError> {
        let mut failed = Vec::new();
        let mut sinks = self.0.into_iter();
        for sink in sinks.by_ref() {
            match (sink.writer, sink.error) {
                (Some(w), _) => match w.commit() {
                    Ok(()) => {}
                    Err(e) if sink.required => {
                        // Abort whatever is left, then report.
                        return Err(e);
                    }
                    Err(e) => failed.push((sink.storage, e.to_string())),
                },
                (None, Some(err)) => failed.push((sink.storage, err)),
                (None, None) => {}
            }
        }
        Ok(failed)
    }
}

/// Take one backup of `target` into every storage; the outcome is logged and counted.
pub async fn backup(
    target: &Target,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    reason: Option<&str>,
    cancel: &CancellationToken,
) -> Result<Outcome, JobError> {
    let t0 = Instant::now();
    let result = backup_inner(target, storages, state, reason, cancel, t0).await;
    match &result {
        Ok(o) => {
            metrics::backup_succeeded(&o.target, &o.id.to_string(), o.stored_bytes(), o.duration)
        }
        Err(e) => metrics::backup_failed(&target.name, e, t0.elapsed()),
    }
    result
}

/// One stored archive of the run, before its manifest is written.
struct Stored {
    manifest: Manifest,
    /// Remote storages that did not get the archive.
    failed: Vec<(&'static str, String)>,
}

async fn backup_inner(
    target: &Target,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
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
    // Archives a remote storage missed earlier go up first; a failure here is logged and
    // recorded, and does not stop today's backup.
    if let Err(e) = upload_pending(target, storages, state).await {
        tracing::warn!(target = name, error = %e, "pending uploads still failing");
    }

    let source = source::build(target);
    let prepared = source.prepare().await.map_err(|source| JobError::Source {
        target: name.to_string(),
        source,
    })?;

    let fingerprints = fingerprints(target, storages).await;
    let id = next_id(target, storages).await.map_err(storage_err)?;
    metrics::backup_started(name, &id.to_string(), prepared.parts.len(), Utc::now());

    // A SQLite snapshot goes beside the local backups, else into the work folder.
    let scratch = crate::storage::scratch_dir(storages, name, state.work_dir());
    let ctx = RunContext {
        target,
        storages,
        source: source.as_ref(),
        prepared: &prepared,
        id,
        scratch: &scratch,
        cancel,
    };
    let mut done: Vec<Stored> = Vec::new();
    let mut result = Ok(());
    for part in &prepared.parts {
        if cancel.is_cancelled() {
            result = Err(JobError::Cancelled {
                target: name.to_string(),
            });
            break;
        }
        match stream_part(&ctx, part).await {
            Ok((file, summary, part_started, failed)) => {
                let finished = Utc::now();
                let object_key = storages.iter().find_map(|s| s.object_key(name, &file));
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
                    tables: prepared.tables_of(part),
                    verified_at: None,
                    object_key,
                    reason: reason.map(str::to_string),
                    schema_fingerprint: fingerprints.as_ref().and_then(|(whole, each)| match part
                        .contents
                    {
                        catalog::Contents::Database => Some(whole.clone()),
                        catalog::Contents::Schema => {
                            part.schema.as_ref().and_then(|s| each.get(s).cloned())
                        }
                        catalog::Contents::Globals => None,
                    }),
                };
                done.push(Stored { manifest, failed });
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
    let mut pending = Vec::new();
    for d in &done {
        for (storage, error) in &d.failed {
            metrics::upload_pending(name, storage, &d.manifest.file, error);
            pending.push((d.manifest.file.clone(), *storage));
            let record = PendingUpload {
                file: d.manifest.file.clone(),
                storage: storage.to_string(),
                since: Utc::now(),
                error: error.clone(),
            };
            state.update(name, |s| s.pending_uploads.push(record));
        }
    }
    metrics::uploads_pending(name, state.get(name).pending_uploads.len());
    Ok(Outcome {
        target: name.to_string(),
        id,
        manifests: done.into_iter().map(|d| d.manifest).collect(),
        duration: t0.elapsed(),
        leftovers_removed,
        pending,
    })
}

/// The id for a new run: now, or one second after the newest id already stored,
/// so ids of a target strictly increase even for runs within the same second.
/// The live schema's fingerprints (whole database, per schema), logged when they differ
/// from the newest backup's. A failure to read them is logged and does not stop the backup.
async fn fingerprints(
    target: &Target,
    storages: &[Box<dyn Storage>],
) -> Option<(String, BTreeMap<String, String>)> {
    let found = match crate::schema::live_fingerprints(target).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "cannot read the schema fingerprint; the backup goes on without it");
            return None;
        }
    };
    let previous = async {
        let storage = storages.first()?;
        let scan = catalog::scan(storage.as_ref(), &target.name, Utc::now())
            .await
            .ok()?;
        let (id, file, _) = scan
            .complete
            .iter()
            .find(|(_, f, _)| !f.contains(".globals."))?;
        let bytes = storage
            .get_bytes(&target.name, &catalog::manifest_name(file))
            .await
            .ok()?;
        let m: Manifest = serde_json::from_slice(&bytes).ok()?;
        Some((*id, m.contents, m.schema, m.schema_fingerprint?))
    }
    .await;
    if let Some((id, contents, schema, before)) = previous {
        let now = match (contents, schema) {
            (catalog::Contents::Schema, Some(s)) => found.1.get(&s).cloned(),
            _ => Some(found.0.clone()),
        };
        if let Some(now) = now.filter(|n| *n != before) {
            metrics::schema_changed(&target.name, &id.to_string(), &before, &now);
        }
    }
    Some(found)
}

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

type StreamedPart = (String, Summary, DateTime<Utc>, Vec<(&'static str, String)>);

/// Dump one part into every storage. Returns the committed file name, its summary, when
/// it started, and the remote storages that did not get it.
/// What every archive of one run shares.
struct RunContext<'a> {
    target: &'a Target,
    storages: &'a [Box<dyn Storage>],
    source: &'a dyn source::Source,
    prepared: &'a Prepared,
    id: BackupId,
    scratch: &'a std::path::Path,
    cancel: &'a CancellationToken,
}

async fn stream_part(run: &RunContext<'_>, part: &Part) -> Result<StreamedPart, JobError> {
    let RunContext {
        target,
        storages,
        source,
        prepared,
        id,
        scratch,
        cancel,
    } = *run;
    let name = target.name.as_str();
    let file = catalog::archive_name(name, id, part.qualifier(), part.format, target.compression);
    let stream_err = |message: String| JobError::Stream {
        target: name.to_string(),
        file: file.clone(),
        message,
    };
    let has_local = storages.iter().any(|s| !s.is_remote());
    let mut sinks = Vec::with_capacity(storages.len());
    for s in storages {
        sinks.push(Sink {
            storage: s.name(),
            required: !s.is_remote() || !has_local,
            writer: Some(
                s.create(name, &file)
                    .await
                    .map_err(|source| JobError::Storage {
                        target: name.to_string(),
                        source,
                    })?,
            ),
            error: None,
        });
    }
    let started = Utc::now();
    let dump = source
        .open(prepared, part, Some(scratch), cancel)
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
            tokio::task::spawn_blocking(move || compress::compress(reader, codec, FanOut(sinks)))
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
    let failed = tokio::task::spawn_blocking(move || fanout.commit())
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
    Ok((file, summary, started, failed))
}

/// Write each archive's manifest to every storage that has the archive.
async fn write_manifests(
    target: &str,
    storages: &[Box<dyn Storage>],
    done: &[Stored],
) -> Result<(), StorageError> {
    for d in done {
        let bytes = serde_json::to_vec_pretty(&d.manifest).map_err(|e| StorageError::Task {
            storage: "manifest",
            message: e.to_string(),
        })?;
        for s in storages {
            if d.failed.iter().any(|(name, _)| *name == s.name()) {
                continue;
            }
            s.put_bytes(
                target,
                &catalog::manifest_name(&d.manifest.file),
                bytes.clone(),
            )
            .await?;
        }
    }
    Ok(())
}

/// Remove everything a failed run stored: manifests first, then archives.
async fn remove_run(target: &str, storages: &[Box<dyn Storage>], done: &[Stored]) {
    for d in done {
        for s in storages {
            for file in [
                catalog::manifest_name(&d.manifest.file),
                d.manifest.file.clone(),
            ] {
                if let Err(e) = s.delete(target, &file).await {
                    tracing::error!(target, storage = s.name(), file = %file, error = %e, "could not remove an archive of the failed run; the next cleanup removes it");
                }
            }
        }
    }
}

/// Upload the archives a remote storage missed, from the local copy, checking the sha256
/// against the manifest on the way. Returns how many went up; stops at the first failure
/// (the remote is likely still down) and records its error.
pub async fn upload_pending(
    target: &Target,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
) -> Result<usize, StorageError> {
    let name = target.name.as_str();
    let pending = state.get(name).pending_uploads;
    let Some(local) = storages.iter().find(|s| !s.is_remote()) else {
        return Ok(0);
    };
    // Multipart uploads abandoned by the failure that made these pending go first.
    for remote in storages.iter().filter(|s| s.is_remote()) {
        for gone in remote.remove_temp_files(name).await? {
            metrics::leftover_removed(name, remote.name(), &gone, "abandoned multipart upload");
        }
    }
    let mut uploaded = 0;
    let mut result = Ok(());
    for p in pending {
        let forget =
            |state: &StateFile| state.update(name, |s| s.pending_uploads.retain(|x| x != &p));
        let Some(remote) = storages.iter().find(|s| s.name() == p.storage) else {
            tracing::warn!(target = name, storage = %p.storage, file = %p.file, "pending upload dropped: that storage is no longer configured");
            forget(state);
            continue;
        };
        let manifest_file = catalog::manifest_name(&p.file);
        let manifest_bytes = match local.get_bytes(name, &manifest_file).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => {
                tracing::warn!(target = name, file = %p.file, "pending upload dropped: the local backup no longer exists");
                forget(state);
                continue;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        match copy_archive(
            name,
            local.as_ref(),
            remote.as_ref(),
            &p.file,
            &manifest_bytes,
        )
        .await
        {
            Ok(()) => {
                remote
                    .put_bytes(name, &manifest_file, manifest_bytes)
                    .await?;
                forget(state);
                uploaded += 1;
                tracing::info!(target = name, storage = remote.name(), file = %p.file, "pending upload done");
            }
            Err(e) => {
                let msg = e.to_string();
                state.update(name, |s| {
                    if let Some(x) = s.pending_uploads.iter_mut().find(|x| **x == p) {
                        x.error = msg.clone();
                    }
                });
                result = Err(e);
                break;
            }
        }
    }
    metrics::uploads_pending(name, state.get(name).pending_uploads.len());
    result.map(|()| uploaded)
}

/// Stream `file` from one storage to another, committing only when its sha256 matches
/// the manifest.
async fn copy_archive(
    target: &str,
    from: &dyn Storage,
    to: &dyn Storage,
    file: &str,
    manifest_bytes: &[u8],
) -> Result<(), StorageError> {
    let task = |message: String| StorageError::Task {
        storage: "copy",
        message,
    };
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| task(format!("unreadable manifest of {file}: {e}")))?;
    let mut reader = from.open(target, file).await?;
    let writer = to.create(target, file).await?;
    let expected = manifest.sha256;
    let file = file.to_string();
    tokio::task::spawn_blocking(move || {
        let mut hw = HashingWriter::new(writer);
        let copied = io::copy(&mut reader, &mut hw);
        let (writer, _, sha) = hw.finish();
        match copied {
            Err(e) => {
                writer.abort();
                Err(task(format!("copying {file}: {e}")))
            }
            Ok(_) if sha != expected => {
                writer.abort();
                Err(task(format!(
                    "the local {file} no longer matches its manifest (sha256 {sha}, expected {expected}); run `dbkeep verify`"
                )))
            }
            Ok(_) => writer.commit(),
        }
    })
    .await
    .map_err(|e| task(e.to_string()))?
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
    state: &StateFile,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<Vec<CleanupReport>, JobError> {
    let name = target.name.as_str();
    let pending: Vec<String> = state
        .get(name)
        .pending_uploads
        .into_iter()
        .map(|p| p.file)
        .collect();
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
        let scan = catalog::scan(s.as_ref(), name, now)
            .await
            .map_err(|e| match e {
                catalog::CatalogError::Storage(source) => storage_err(source),
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
                pending_upload: !s.is_remote() && archives.iter().any(|f| pending.contains(f)),
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
                    s.delete(name, f).await.map_err(storage_err)?;
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
                s.delete(name, &file).await.map_err(storage_err)?;
                metrics::leftover_removed(name, s.name(), &file, "archive without manifest");
            }
            leftovers.push((file, "archive without manifest (interrupted run)"));
        }
        for file in scan.dangling_manifests {
            if !dry_run {
                s.delete(name, &file).await.map_err(storage_err)?;
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
    Ok(reports)
}
