//! One backup run of one target: engine -> compress -> storages -> manifests. A run
//! commits all of its archives or none: manifests are written only after every archive
//! of the run is stored, and a failure removes what the run wrote. A mirror that fails
//! while the primary succeeds makes the archive pending upload instead of failing the run.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Context;
use crate::catalog::{self, BackupId, Contents, Manifest, MANIFEST_VERSION};
use crate::compress::{self, HashingWriter, Summary};
use crate::config::Target;
use crate::engine::{self, Engine, EngineError, Part, Prepared};
use crate::error::{Classify, ErrorKind};
use crate::metrics;
use crate::state::PendingUpload;
use crate::storage::fanout::{FanOut, MirrorFailure};
use crate::storage::{Storage, StorageError, Storages};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup of {target} failed: {source}")]
    Engine {
        target: String,
        #[source]
        source: EngineError,
    },
    #[error("backup of {target} failed: {source}")]
    Storage {
        target: String,
        #[source]
        source: StorageError,
    },
    #[error("backup of {target} failed: {file}: writing the archive: {source}")]
    Write {
        target: String,
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("backup of {target} failed: {file}: {problem}; nothing was kept")]
    BadDump {
        target: String,
        file: String,
        problem: String,
    },
    #[error("backup of {target} was cancelled; nothing was kept")]
    Cancelled { target: String },
}

impl Classify for BackupError {
    fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Engine { source, .. } => source.kind(),
            BackupError::Storage { source, .. } => source.kind(),
            // A storage's own error travels inside the io::Error of a failed write.
            BackupError::Write { source, .. } => source
                .get_ref()
                .and_then(|i| i.downcast_ref::<StorageError>())
                .map(|s| s.kind())
                .unwrap_or_else(|| crate::error::io_kind(source)),
            BackupError::BadDump { .. } => ErrorKind::Failed,
            BackupError::Cancelled { .. } => ErrorKind::Cancelled,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            BackupError::Engine { source, .. } => source.hint(),
            BackupError::Storage { source, .. } => source.hint(),
            _ => None,
        }
    }
}

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: String,
    pub id: BackupId,
    pub manifests: Vec<Manifest>,
    pub duration: Duration,
    pub leftovers_removed: Vec<String>,
    /// (archive, storage) pairs that are stored on the primary but still to be uploaded.
    pub pending: Vec<(String, &'static str)>,
}

impl Outcome {
    pub fn stored_bytes(&self) -> u64 {
        self.manifests.iter().map(|m| m.stored_bytes).sum()
    }
}

/// Take one backup of `target` into every storage; the outcome is logged and counted.
/// A backup taken for another operation (`reason`, e.g. `pre-restore`) is that
/// operation's step; only plain runs (`reason` = None) are recorded as the target's run.
pub async fn run(
    ctx: &Context,
    target: &Target,
    reason: Option<&str>,
) -> Result<Outcome, BackupError> {
    let name = target.name.as_str();
    let started = ctx.now();
    if reason.is_none() {
        ctx.state.update(name, |s| s.last_run = Some(started));
    }
    let t0 = Instant::now();
    let result = backup_inner(ctx, target, reason, t0).await;
    match &result {
        Ok(o) => {
            metrics::backup_succeeded(&o.target, &o.id.to_string(), o.stored_bytes(), o.duration)
        }
        Err(e) => metrics::backup_failed(name, &crate::error::chain(e), t0.elapsed()),
    }
    if reason.is_none() {
        let error = result.as_ref().err().map(|e| crate::error::chain(e));
        let finished = ctx.now();
        ctx.state
            .update(name, |s| s.record_run(started, finished, error));
    }
    result
}

/// One stored archive of the run, before its manifest is written.
struct Stored {
    manifest: Manifest,
    /// Mirrors that did not get the archive.
    failed: Vec<MirrorFailure>,
}

async fn backup_inner(
    ctx: &Context,
    target: &Target,
    reason: Option<&str>,
    t0: Instant,
) -> Result<Outcome, BackupError> {
    let name = target.name.as_str();
    let storages = ctx.storages.as_ref();
    let storage_err = |source| BackupError::Storage {
        target: name.to_string(),
        source,
    };

    let mut leftovers_removed = Vec::new();
    for s in storages.iter() {
        let removed = s.remove_temp_files(name).await.map_err(storage_err)?;
        for file in &removed {
            metrics::leftover_removed(name, s.name(), file, "temp file of an interrupted run");
        }
        leftovers_removed.extend(removed);
    }
    // Archives a mirror missed earlier go up first; a failure here is logged and
    // recorded, and does not stop today's backup.
    if let Err(e) = upload_pending(ctx, target).await {
        tracing::warn!(target = name, error = %e, "pending uploads still failing");
    }

    let engine = engine::build(target);
    let prepared = engine
        .prepare()
        .await
        .map_err(|source| BackupError::Engine {
            target: name.to_string(),
            source,
        })?;

    let fingerprints = fingerprints(engine.as_ref(), target, storages).await;
    let id = next_id(ctx, target, storages).await.map_err(storage_err)?;
    metrics::backup_started(name, &id.to_string(), prepared.parts.len(), ctx.now());

    // A SQLite snapshot goes beside the local backups, else into the work folder.
    let scratch = storages.scratch_dir(name, ctx.state.work_dir());
    let run = RunContext {
        ctx,
        target,
        engine: engine.as_ref(),
        prepared: &prepared,
        id,
        scratch: &scratch,
    };
    let mut done: Vec<Stored> = Vec::new();
    let mut result = Ok(());
    for part in &prepared.parts {
        if ctx.cancel.is_cancelled() {
            result = Err(BackupError::Cancelled {
                target: name.to_string(),
            });
            break;
        }
        match stream_part(&run, part).await {
            Ok(streamed) => {
                let finished = ctx.now();
                let file = streamed.file;
                let object_key = storages.iter().find_map(|s| s.object_key(name, &file));
                let summary = streamed.summary;
                let manifest = Manifest {
                    format_version: MANIFEST_VERSION,
                    target: name.to_string(),
                    id,
                    kind: engine.kind().to_string(),
                    contents: part.contents,
                    schema: part.schema.clone(),
                    file,
                    started: streamed.started,
                    finished,
                    duration_seconds: (finished - streamed.started).num_milliseconds() as f64
                        / 1000.0,
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
                        Contents::Database => Some(whole.clone()),
                        Contents::Schema => part.schema.as_ref().and_then(|s| each.get(s).cloned()),
                        Contents::Globals => None,
                    }),
                };
                done.push(Stored {
                    manifest,
                    failed: streamed.failed,
                });
            }
            Err(e) => {
                result = Err(if ctx.cancel.is_cancelled() {
                    BackupError::Cancelled {
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
        for f in &d.failed {
            let error = crate::error::chain(&f.error);
            metrics::upload_pending(name, f.storage, &d.manifest.file, &error);
            pending.push((d.manifest.file.clone(), f.storage));
            let record = PendingUpload {
                file: d.manifest.file.clone(),
                storage: f.storage.to_string(),
                since: ctx.now(),
                error,
            };
            ctx.state.update(name, |s| s.pending_uploads.push(record));
        }
    }
    metrics::uploads_pending(name, ctx.state.get(name).pending_uploads.len());
    Ok(Outcome {
        target: name.to_string(),
        id,
        manifests: done.into_iter().map(|d| d.manifest).collect(),
        duration: t0.elapsed(),
        leftovers_removed,
        pending,
    })
}

/// The live schema's fingerprints (whole database, per schema), logged when they differ
/// from the newest backup's. A failure to read them is logged and does not stop the backup.
async fn fingerprints(
    engine: &dyn Engine,
    target: &Target,
    storages: &Storages,
) -> Option<(String, BTreeMap<String, String>)> {
    let found = match engine::fingerprints(engine).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "cannot read the schema fingerprint; the backup goes on without it");
            return None;
        }
    };
    let previous = async {
        let storage = storages.primary();
        let scan = catalog::scan(storage, &target.name, Utc::now())
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
            (Contents::Schema, Some(s)) => found.1.get(&s).cloned(),
            _ => Some(found.0.clone()),
        };
        if let Some(now) = now.filter(|n| *n != before) {
            metrics::schema_changed(&target.name, &id.to_string(), &before, &now);
        }
    }
    Some(found)
}

/// The id for a new run: now, or one second after the newest id already stored,
/// so ids of a target strictly increase even for runs within the same second.
async fn next_id(
    ctx: &Context,
    target: &Target,
    storages: &Storages,
) -> Result<BackupId, StorageError> {
    let mut id = BackupId::from_time(ctx.now());
    for s in storages.iter() {
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

/// What every archive of one run shares.
struct RunContext<'a> {
    ctx: &'a Context,
    target: &'a Target,
    engine: &'a dyn Engine,
    prepared: &'a Prepared,
    id: BackupId,
    scratch: &'a std::path::Path,
}

/// One archive of a run, stored on the primary.
struct Streamed {
    file: String,
    summary: Summary,
    started: DateTime<Utc>,
    /// Mirrors that did not get it.
    failed: Vec<MirrorFailure>,
}

/// Dump one part into every storage.
async fn stream_part(run: &RunContext<'_>, part: &Part) -> Result<Streamed, BackupError> {
    let RunContext {
        ctx,
        target,
        engine,
        prepared,
        id,
        scratch,
    } = *run;
    let name = target.name.as_str();
    let file = catalog::archive_name(name, id, part.qualifier(), part.format, target.compression);
    let bad_dump = |problem: String| BackupError::BadDump {
        target: name.to_string(),
        file: file.clone(),
        problem,
    };
    let engine_err = |source| BackupError::Engine {
        target: name.to_string(),
        source,
    };
    let out = FanOut::create(&ctx.storages, name, &file)
        .await
        .map_err(|source| BackupError::Storage {
            target: name.to_string(),
            source,
        })?;
    let started = ctx.now();
    let dump = engine
        .open(prepared, part, scratch, &ctx.cancel)
        .await
        .map_err(engine_err)?;
    let codec = target.compression;
    let reader = dump.reader;
    let stopper = dump.stopper;
    let compressing = async move {
        let joined =
            tokio::task::spawn_blocking(move || compress::compress(reader, codec, out)).await;
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
    produced.map_err(engine_err)?;
    let (fanout, summary) = compressed.map_err(|source| BackupError::Write {
        target: name.to_string(),
        file: file.clone(),
        source,
    })?;
    if summary.raw_bytes == 0 {
        return Err(bad_dump("the dump produced no bytes".into()));
    }
    if !summary.head.starts_with(part.magic) {
        return Err(bad_dump(format!(
            "the dump does not start like a {} archive",
            part.format
        )));
    }
    let failed = tokio::task::spawn_blocking(move || fanout.commit())
        .await
        .map_err(|e| BackupError::Write {
            target: name.to_string(),
            file: file.clone(),
            source: io::Error::other(format!("commit thread failed: {e}")),
        })?
        .map_err(|source| BackupError::Storage {
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
    Ok(Streamed {
        file,
        summary,
        started,
        failed,
    })
}

/// Write each archive's manifest to every storage that has the archive.
async fn write_manifests(
    target: &str,
    storages: &Storages,
    done: &[Stored],
) -> Result<(), StorageError> {
    for d in done {
        let bytes = serde_json::to_vec_pretty(&d.manifest).map_err(|e| StorageError::Task {
            storage: "manifest",
            what: "serializing the manifest",
            message: e.to_string(),
        })?;
        for s in storages.iter() {
            if d.failed.iter().any(|f| f.storage == s.name()) {
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
async fn remove_run(target: &str, storages: &Storages, done: &[Stored]) {
    for d in done {
        for s in storages.iter() {
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

/// Upload the archives a mirror missed, from the primary's copy, checking the sha256
/// against the manifest on the way. Returns how many went up; stops at the first failure
/// (the mirror is likely still down) and records its error.
pub async fn upload_pending(ctx: &Context, target: &Target) -> Result<usize, StorageError> {
    let name = target.name.as_str();
    let storages = ctx.storages.as_ref();
    let pending = ctx.state.get(name).pending_uploads;
    let primary = storages.primary();
    // Multipart uploads abandoned by the failure that made these pending go first.
    for mirror in storages.mirrors() {
        for gone in mirror.remove_temp_files(name).await? {
            metrics::leftover_removed(name, mirror.name(), &gone, "abandoned multipart upload");
        }
    }
    let mut uploaded = 0;
    let mut result = Ok(());
    for p in pending {
        let forget = || {
            ctx.state
                .update(name, |s| s.pending_uploads.retain(|x| x != &p))
        };
        let Some(mirror) = storages.mirrors().find(|s| s.name() == p.storage) else {
            tracing::warn!(target = name, storage = %p.storage, file = %p.file, "pending upload dropped: that storage is no longer configured");
            forget();
            continue;
        };
        let manifest_file = catalog::manifest_name(&p.file);
        let manifest_bytes = match primary.get_bytes(name, &manifest_file).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => {
                tracing::warn!(target = name, file = %p.file, "pending upload dropped: the local backup no longer exists");
                forget();
                continue;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        match copy_archive(name, primary, mirror, &p.file, &manifest_bytes).await {
            Ok(()) => {
                mirror
                    .put_bytes(name, &manifest_file, manifest_bytes)
                    .await?;
                forget();
                uploaded += 1;
                tracing::info!(target = name, storage = mirror.name(), file = %p.file, "pending upload done");
            }
            Err(e) => {
                let msg = crate::error::chain(&e);
                ctx.state.update(name, |s| {
                    if let Some(x) = s.pending_uploads.iter_mut().find(|x| **x == p) {
                        x.error = msg.clone();
                    }
                });
                result = Err(e);
                break;
            }
        }
    }
    metrics::uploads_pending(name, ctx.state.get(name).pending_uploads.len());
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
        what: "copying an archive between storages",
        message,
    };
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| task(format!("unreadable manifest of {file}: {e}")))?;
    let mut reader = from.open(target, file).await?;
    let writer = to.create(target, file).await?;
    let expected = manifest.sha256;
    let file = file.to_string();
    let storage = to.name();
    let from_name = from.name();
    tokio::task::spawn_blocking(move || {
        let mut hw = HashingWriter::new(writer);
        let copied = io::copy(&mut reader, &mut hw);
        let (writer, _, sha) = hw.finish();
        match copied {
            Err(source) => {
                writer.abort();
                Err(StorageError::Write {
                    storage,
                    file,
                    source,
                })
            }
            Ok(_) if sha != expected => {
                writer.abort();
                Err(StorageError::Checksum {
                    storage: from_name,
                    file,
                    expected,
                    actual: sha,
                })
            }
            Ok(_) => writer.commit(),
        }
    })
    .await
    .map_err(|e| task(e.to_string()))?
}
