//! One backup run of one target: engine -> compress -> storages -> manifests. A run
//! commits all of its archives or none: manifests are written only after every archive
//! of the run is stored, and a failure removes what the run wrote. A mirror that fails
//! while the primary succeeds makes the archive pending upload instead of failing the run.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::hooks::{self, HookKind};
use super::lock::{self, LockError};
use super::Context;
use crate::catalog::{self, BackupId, Contents, Manifest, MANIFEST_VERSION};
use crate::compress::{self, HashingWriter, StreamError, Summary};
use crate::config::Target;
use crate::engine::dump::Fingerprints;
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
    #[error("backup of {target} was not started: manifests must be signed (`verify_key` is set) and this host has no `signing_key_file`, so its backup would never be trusted; set `signing_key_file` (the key whose verify key is `verify_key`), or back up from the host that holds it")]
    Unsigned { target: String },
    #[error("backup of {target} was not started: {source}")]
    Hook {
        target: String,
        #[source]
        source: super::hooks::HookError,
    },
    #[error("backup of {target} was not started: {source}")]
    Locked {
        target: String,
        #[source]
        source: LockError,
    },
    #[error("backup of {target} was not started: the local storage folder {} is inside the server's data directory {}; PostgreSQL owns every file there (pg_basebackup and upgrades copy or refuse them): set storage.local.path to a folder outside it", folder.display(), data_dir.display())]
    InsideDataDir {
        target: String,
        folder: PathBuf,
        data_dir: PathBuf,
    },
    /// A server target's run where some databases failed: the others are stored.
    #[error("backup of {target}: {} database(s) failed: {}; {}", failed.len(), failed.iter().map(|(d, e)| format!("{d:?}: {e}")).collect::<Vec<_>>().join("; "), match stored.len() { 0 => "nothing was kept".to_string(), n => format!("the other {n} archive(s) of backup {id} are stored") })]
    Databases {
        target: String,
        id: BackupId,
        /// (database, error chain) of each database that failed.
        failed: Vec<(String, String)>,
        /// The archives that were stored.
        stored: Vec<String>,
    },
    #[error("backup of {target} failed: {file} does not list as a complete backup after it was written ({why}); nothing was kept")]
    NotListed {
        target: String,
        file: String,
        why: String,
    },
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
            BackupError::BadDump { .. }
            | BackupError::NotListed { .. }
            | BackupError::Databases { .. } => ErrorKind::Failed,
            BackupError::InsideDataDir { .. } => ErrorKind::Refused,
            BackupError::Unsigned { .. } => ErrorKind::Usage,
            BackupError::Cancelled { .. } => ErrorKind::Cancelled,
            BackupError::Locked { source, .. } => source.kind(),
            BackupError::Hook { source, .. } => source.kind(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            BackupError::Engine { source, .. } => source.hint(),
            BackupError::Storage { source, .. } => source.hint(),
            BackupError::Write { source, .. } => source
                .get_ref()
                .and_then(|i| i.downcast_ref::<StorageError>())
                .and_then(|s| s.hint()),
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
    /// A server target's databases that failed, with why: the run failed for them only.
    pub failed_databases: Vec<(String, String)>,
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
    run_with(ctx, target, reason, false).await
}

/// Like [`run`], but waits for another run of the target to finish instead of refusing
/// (a backup asked for over the API while a scheduled one runs).
pub async fn run_queued(
    ctx: &Context,
    target: &Target,
    reason: Option<&str>,
) -> Result<Outcome, BackupError> {
    run_with(ctx, target, reason, true).await
}

async fn run_with(
    ctx: &Context,
    target: &Target,
    reason: Option<&str>,
    wait: bool,
) -> Result<Outcome, BackupError> {
    let name = target.name.as_str();
    if target.crypto.verify.is_some() && target.crypto.signing.is_none() {
        return Err(BackupError::Unsigned {
            target: name.to_string(),
        });
    }
    // Before anything is written (the lock and the state file are files too): nothing of
    // dbkeep's goes inside the server's own data folder.
    if let Some(data_dir) = engine::build(target).data_directory().await {
        let mut folders: Vec<PathBuf> =
            ctx.storages.iter().filter_map(|s| s.folder(name)).collect();
        folders.push(ctx.state.work_dir().to_path_buf());
        for folder in folders {
            if inside(&folder, &data_dir) {
                return Err(BackupError::InsideDataDir {
                    target: name.to_string(),
                    folder,
                    data_dir,
                });
            }
        }
    }
    // One run of a target at a time, across processes. A run refused here did not happen:
    // it is neither recorded nor counted as failed.
    let locked = match wait {
        false => lock::acquire(ctx.state.work_dir(), name, ctx.now()),
        true => lock::acquire_waiting(ctx.state.work_dir(), name, &ctx.clock, &ctx.cancel).await,
    };
    let _lock = locked.map_err(|source| {
        if matches!(source, LockError::Busy { .. }) {
            metrics::run_skipped(name, "locked");
        }
        BackupError::Locked {
            target: name.to_string(),
            source,
        }
    })?;
    // The same across hosts: replicas that share the database share its advisory lock.
    let engine_for_lock = engine::build(target);
    let _server_lock = match engine_for_lock.try_hold(engine::HoldKind::Run).await {
        Ok(Some(h)) => Some(h),
        Ok(None) => {
            metrics::run_skipped(name, "locked");
            return Err(BackupError::Locked {
                target: name.to_string(),
                source: LockError::Busy {
                    target: name.to_string(),
                    holder: "a dbkeep on another host, by the database's advisory lock".into(),
                },
            });
        }
        // The database does not answer: the run fails at its first step, with that error.
        Err(e) => {
            tracing::debug!(target = name, error = %e, "no server run lock");
            None
        }
    };
    let started = ctx.now();
    let was_failing = ctx.state.get(name).last_status == Some(crate::state::RunStatus::Failure);
    if reason.is_none() {
        ctx.state.update(name, |s| s.last_run = Some(started));
        ctx.notify.run_started(name);
    }
    let t0 = Instant::now();
    let mut info = hooks::RunInfo {
        reason: reason.map(str::to_string),
        ..Default::default()
    };
    // A failing `before` hook stops the run before any dump starts (unless configured to
    // go on); `after` sees the final status, `on_failure` runs when it failed.
    let before = hooks::run(ctx, target, HookKind::Before, &info).await;
    let result = match before {
        Err(source) if target.hooks.abort_on_before_failure || ctx.cancel.is_cancelled() => {
            Err(BackupError::Hook {
                target: name.to_string(),
                source,
            })
        }
        _ => backup_inner(ctx, target, reason, t0).await,
    };
    // Some databases of a server target failed: the run failed (for them), and what the
    // others stored stays.
    let result = match result {
        Ok(o) if !o.failed_databases.is_empty() => Err(BackupError::Databases {
            target: o.target.clone(),
            id: o.id,
            failed: o.failed_databases.clone(),
            stored: o.manifests.iter().map(|m| m.file.clone()).collect(),
        }),
        other => other,
    };
    let failed_databases: Vec<(String, String)> = match &result {
        Err(BackupError::Databases { failed, .. }) => failed.clone(),
        _ => Vec::new(),
    };
    // Only a plain run says which databases fail: a safety copy of one database would
    // forget the others'.
    if reason.is_none() {
        ctx.state.update(name, |s| {
            s.failed_databases = failed_databases.iter().cloned().collect()
        });
    }
    let archives = match &result {
        Ok(o) if hooks::command(target, HookKind::After).is_some() => {
            archives_file(ctx, name, &o.manifests)
        }
        _ => None,
    };
    info.backup_id = result.as_ref().ok().map(|o| o.id.to_string());
    info.status = Some(if result.is_ok() { "success" } else { "failure" });
    info.error = result.as_ref().err().map(|e| crate::error::chain(e));
    info.archives = archives.clone();
    if result.is_err() {
        let _ = hooks::run(ctx, target, HookKind::OnFailure, &info).await;
    }
    let _ = hooks::run(ctx, target, HookKind::After, &info).await;
    if let Some(f) = archives {
        let _ = std::fs::remove_file(f);
    }
    match &result {
        Ok(o) => {
            metrics::backup_succeeded(&o.target, &o.id.to_string(), o.stored_bytes(), o.duration)
        }
        Err(e) => metrics::backup_failed(name, &crate::error::chain(e), t0.elapsed()),
    }
    if reason.is_none() {
        let error = result.as_ref().err().map(|e| crate::error::chain(e));
        let finished = ctx.now();
        let retry_at = match (&result, ctx.retry_after) {
            (Err(e), Some(wait)) if worth_retrying(e) => {
                Some(finished + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
            }
            _ => None,
        };
        ctx.state.update(name, |s| {
            s.record_run(started, finished, error);
            s.retry_at = retry_at;
        });
        notify_outcome(ctx, name, &result, was_failing, retry_at.is_some());
    }
    result
}

/// Whether a failed backup may succeed when tried again: not when it was stopped, refused
/// (another run holds the target) or misconfigured.
pub fn worth_retrying(e: &BackupError) -> bool {
    !matches!(
        crate::error::Classify::kind(e),
        crate::error::ErrorKind::Cancelled
            | crate::error::ErrorKind::Refused
            | crate::error::ErrorKind::Usage
    )
}

/// Tell the notifiers how a run went: succeeded or failed, an upload left pending, and
/// recovered when it succeeds after failures.
fn notify_outcome(
    ctx: &Context,
    name: &str,
    result: &Result<Outcome, BackupError>,
    was_failing: bool,
    retry_due: bool,
) {
    use crate::config::Event;
    use crate::notify::Message;
    let now = ctx.now();
    match result {
        Ok(o) => {
            let with = |e: Event| {
                Message::new(e, name, now).with_backup(
                    o.id.to_string(),
                    o.stored_bytes(),
                    o.duration.as_secs_f64(),
                )
            };
            ctx.notify.send(Event::Succeeded, with(Event::Succeeded));
            if !o.pending.is_empty() {
                let files: Vec<String> = o
                    .pending
                    .iter()
                    .map(|(f, s)| format!("{f} (to {s})"))
                    .collect();
                ctx.notify.send(
                    Event::UploadPending,
                    with(Event::UploadPending).with_error(format!(
                        "not uploaded yet: {}; the next run retries",
                        files.join(", ")
                    )),
                );
            }
            if was_failing {
                ctx.notify.send(Event::Recovered, with(Event::Recovered));
            }
        }
        // A failure a retry follows is not news yet.
        Err(_) if retry_due => {}
        Err(e) => ctx.notify.send(
            Event::Failed,
            Message::new(Event::Failed, name, now).with_error(crate::error::chain(e)),
        ),
    }
}

/// The run's manifests as a JSON file for the `after` hook (`DBKEEP_ARCHIVES`), in the
/// work folder, private like every file dbkeep writes; removed once the hooks ran.
fn archives_file(ctx: &Context, target: &str, manifests: &[Manifest]) -> Option<PathBuf> {
    let path = ctx.state.work_dir().join(format!(
        ".dbkeep-hook-{target}-{:016x}.json",
        rand::random::<u64>()
    ));
    let bytes = serde_json::to_vec_pretty(manifests).ok()?;
    match crate::files::write_atomic(&path, &bytes) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(target, error = %e, "cannot write the archive list for the after hook");
            None
        }
    }
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
        let removed = match s.remove_temp_files(name).await {
            Ok(r) => r,
            Err(e) if s.name() == storages.primary().name() => return Err(storage_err(e)),
            // A mirror that is down gets the archive later (pending upload); its
            // leftovers are removed then.
            Err(e) => {
                tracing::warn!(target = name, storage = s.name(), error = %crate::error::chain(&e), "cannot clean leftovers on a mirror; going on without it");
                Vec::new()
            }
        };
        for file in &removed {
            metrics::leftover_removed(name, s.name(), file, "temp file of an interrupted run");
        }
        leftovers_removed.extend(removed);
    }
    // A run interrupted while it committed (its marker left) is removed first.
    roll_back_interrupted(target, storages, true).await;
    // Archives a mirror missed earlier go up first; a failure here is logged and
    // recorded, and does not stop today's backup.
    // Rate-limited mirrors catch up after the dump, not before it.
    if let Err(e) = catch_up(ctx, target, false).await {
        tracing::warn!(target = name, error = %e, "pending uploads still failing");
    }

    let engine = engine::build(target);
    // A stop is not held up by a source that waits for a lock (a SQLite writer's, up to
    // the busy timeout): what prepare started is dropped with it.
    let prepared = tokio::select! {
        r = engine.prepare() => r,
        _ = ctx.cancel.cancelled() => return Err(BackupError::Cancelled {
            target: name.to_string(),
        }),
    };
    let mut prepared = prepared.map_err(|source| BackupError::Engine {
        target: name.to_string(),
        source,
    })?;
    prepared.fingerprint = target.fingerprint;

    if let Some(found) = &prepared.fingerprints {
        log_schema_change(ctx, target, storages, found).await;
    }
    // A run for another operation (the safety copy of one database) says nothing about
    // which databases the server has.
    let gone = match reason {
        None => log_discovery(ctx, target, storages, &prepared).await,
        Some(_) => Vec::new(),
    };
    let id = next_id(ctx, target, storages).await.map_err(storage_err)?;
    metrics::backup_started(name, &id.to_string(), prepared.parts.len(), ctx.now());
    // The run's commit marker, from now until its last manifest: the archives it stores
    // meanwhile are neither backups nor leftovers (cleanup leaves them, however long the
    // run takes), and a run that dies leaves it for the next run to remove what it wrote.
    let mut written = Written::default();
    let marker = catalog::commit_name(id);
    for s in storages.iter().filter(|s| !storages.deferred(*s)) {
        match s
            .put_bytes(name, &marker, catalog::COMMIT_BODY.to_vec())
            .await
        {
            Ok(()) => written.markers.push(s.name()),
            Err(e) if s.name() == storages.primary().name() => return Err(storage_err(e)),
            Err(e) => {
                tracing::warn!(target = name, storage = s.name(), error = %crate::error::chain(&e), "cannot write the run's commit marker on a mirror; it gets one when the run commits")
            }
        }
    }

    // A SQLite snapshot goes beside the local backups, else into the work folder; or,
    // encrypted, into the private folder.
    let scratch = super::scratch_dir(ctx, target);
    // The database's size is what the dump heads for, roughly (indexes are not dumped,
    // so a PostgreSQL dump is often smaller): an estimate, said to be one.
    let meter = super::meter(ctx, name, "backup", prepared.size_estimate, true);
    let run = RunContext {
        ctx,
        target,
        engine: engine.as_ref(),
        prepared: &prepared,
        id,
        scratch: &scratch,
        meter: &meter,
    };
    let mut done: Vec<Stored> = Vec::new();
    let mut result = Ok(());
    // Up to `jobs` archives stream at once, each its own pg_dump and compressor, all from
    // the run's one snapshot; results are taken in order. After a failure no new archive
    // starts, and those already going are awaited, so every committed one is known and
    // removed with the run (none is left without its manifest).
    let mut late: Vec<String> = Vec::new();
    // Databases that could not be prepared (their snapshot) fail on their own too.
    let mut failed_databases: Vec<(String, String)> = prepared.failed.clone();
    let mut going = futures_util::stream::FuturesOrdered::new();
    let mut next = prepared.parts.iter();
    let run = &run;
    let mut launch = |going: &mut futures_util::stream::FuturesOrdered<_>| match next.next() {
        Some(part) => {
            going.push_back(async move { (part, stream_part(run, part).await) });
            true
        }
        None => false,
    };
    for _ in 0..target.jobs.max(1) {
        if !launch(&mut going) {
            break;
        }
    }
    while let Some((part, streamed)) = futures_util::StreamExt::next(&mut going).await {
        if result.is_ok() && !ctx.cancel.is_cancelled() {
            launch(&mut going);
        }
        if result.is_err() {
            // Finished after the run failed: only to be removed with it.
            if let Ok(s) = streamed {
                late.push(s.file);
            }
            continue;
        }
        if ctx.cancel.is_cancelled() && streamed.is_ok() {
            result = Err(BackupError::Cancelled {
                target: name.to_string(),
            });
        }
        match streamed {
            Ok(streamed) => {
                let view = prepared.view(part);
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
                    database: part.database.clone(),
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
                    tables: streamed.tables.unwrap_or_else(|| prepared.tables_of(part)),
                    verified_at: None,
                    object_key,
                    reason: reason.map(str::to_string),
                    trigger: Some(ctx.trigger.to_string()),
                    excluded_tables: match &target.source {
                        crate::config::SourceConfig::Postgres(pg) => pg.exclude_tables.clone(),
                        _ => Vec::new(),
                    },
                    excluded_table_data: match &target.source {
                        crate::config::SourceConfig::Postgres(pg) => pg.exclude_table_data.clone(),
                        _ => Vec::new(),
                    },
                    run_archives: None,
                    encrypted_to: target.crypto.recipients.clone(),
                    signature: None,
                    content: streamed.content,
                    suspect: None,
                    snapshot: view.snapshot.clone(),
                    schema_fingerprint: view.fingerprints.as_ref().and_then(|(whole, each)| {
                        match part.contents {
                            Contents::Database => Some(whole.clone()),
                            Contents::Schema => {
                                part.schema.as_ref().and_then(|s| each.get(s).cloned())
                            }
                            Contents::Globals => None,
                        }
                    }),
                    note: part.note.clone(),
                };
                done.push(Stored {
                    manifest,
                    failed: streamed.failed,
                });
            }
            // One database of a server target failing is that database's failure: the
            // others go on.
            Err(e) if part.database.is_some() && !ctx.cancel.is_cancelled() => {
                let db = part.database.clone().unwrap_or_default();
                tracing::error!(target = name, database = %db, error = %crate::error::chain(&e), "this database's backup failed; the others go on");
                failed_databases.push((db, crate::error::chain(&e)));
            }
            Err(e) => {
                result = Err(if ctx.cancel.is_cancelled() {
                    BackupError::Cancelled {
                        target: name.to_string(),
                    }
                } else {
                    e
                });
            }
        }
    }
    // Every database failed: there is no backup of the server to keep (its globals alone
    // are not one).
    if result.is_ok()
        && !failed_databases.is_empty()
        && !done.iter().any(|d| d.manifest.database.is_some())
    {
        result = Err(BackupError::Databases {
            target: name.to_string(),
            id,
            failed: failed_databases.clone(),
            stored: Vec::new(),
        });
    }
    if result.is_ok() {
        mark_suspect(ctx, target, storages, &mut done).await;
    }
    let count = u32::try_from(done.len()).unwrap_or(u32::MAX);
    for d in &mut done {
        d.manifest.run_archives = Some(count);
        if let Some(key) = &target.crypto.signing {
            catalog::sign(&mut d.manifest, key);
        }
    }
    if result.is_ok() {
        result = write_manifests(name, storages, id, &mut done, &mut written)
            .await
            .map_err(storage_err);
    }
    if result.is_ok() {
        result = check_listed(ctx, target, storages, &done).await;
    }
    if let Err(e) = result {
        remove_run(name, storages, id, &done, &written).await;
        for file in &late {
            for s in storages.iter() {
                if let Err(err) = s.delete(name, file).await {
                    tracing::error!(target = name, storage = s.name(), file = %file, error = %err, "could not remove an archive of the failed run; the next cleanup removes it");
                }
            }
        }
        return Err(e);
    }
    tracing::info!(
        target = name,
        backup_id = %id,
        archives = done.len(),
        "backup stored: every manifest written"
    );
    for d in &done {
        if let Some(db) = &d.manifest.database {
            metrics::database_seen(
                name,
                db,
                Some((d.manifest.finished, d.manifest.stored_bytes)),
                false,
            );
        }
    }
    for db in &gone {
        metrics::database_seen(name, db, None, true);
    }
    let mut pending = Vec::new();
    // Rate-limited mirrors were left out of the stream: they catch up from the primary's
    // archive now, at their own pace, the dump already finished.
    let slow: Vec<&'static str> = storages
        .mirrors()
        .filter(|m| storages.deferred(*m))
        .map(|m| m.name())
        .collect();
    for d in &done {
        for storage in &slow {
            let record = PendingUpload {
                file: d.manifest.file.clone(),
                storage: storage.to_string(),
                since: ctx.now(),
                error: "rate-limited: copied from the primary after the run".into(),
                deferred: true,
            };
            ctx.state.update(name, |s| s.pending_uploads.push(record));
        }
        for f in &d.failed {
            let error = crate::error::chain(&f.error);
            metrics::upload_pending(name, f.storage, &d.manifest.file, &error);
            pending.push((d.manifest.file.clone(), f.storage));
            let record = PendingUpload {
                file: d.manifest.file.clone(),
                storage: f.storage.to_string(),
                since: ctx.now(),
                error,
                deferred: false,
            };
            ctx.state.update(name, |s| s.pending_uploads.push(record));
        }
    }
    count_pending(ctx, name);
    let duration = t0.elapsed();
    if !slow.is_empty() && !done.is_empty() {
        match catch_up(ctx, target, true).await {
            Ok(n) => tracing::info!(
                target = name,
                uploaded = n,
                "rate-limited mirrors caught up"
            ),
            Err(e) => {
                tracing::warn!(target = name, error = %crate::error::chain(&e), "a mirror did not catch up; the next run retries");
                for p in ctx.state.get(name).pending_uploads {
                    if slow.contains(&p.storage.as_str())
                        && done.iter().any(|d| d.manifest.file == p.file)
                        && !p.deferred
                    {
                        let storage = slow.iter().find(|s| **s == p.storage).copied();
                        pending.extend(storage.map(|s| (p.file.clone(), s)));
                    }
                }
            }
        }
    }
    Ok(Outcome {
        target: name.to_string(),
        id,
        manifests: done.into_iter().map(|d| d.manifest).collect(),
        duration,
        leftovers_removed,
        pending,
        failed_databases,
    })
}

/// A server target's run: log the databases found on the server that no backup holds
/// yet, and those the last run backed up that are gone (dropped, or excluded since);
/// each is logged by the first run that sees the change. Returns the gone ones.
async fn log_discovery(
    ctx: &Context,
    target: &Target,
    storages: &Storages,
    prepared: &engine::Prepared,
) -> Vec<String> {
    if prepared.databases.is_empty() {
        return Vec::new();
    }
    let name = target.name.as_str();
    let verify = target.crypto.verify.as_ref();
    let known = match catalog::list(storages.primary(), name, verify, ctx.now()).await {
        Ok(l) => catalog::databases_of(&l.complete),
        Err(_) => return Vec::new(),
    };
    let found: Vec<&String> = prepared.databases.keys().collect();
    for db in &found {
        if !known.iter().any(|k| &&k.name == db && !k.gone) {
            tracing::info!(target = name, database = %db, "database found on the server: backed up from this run on");
        }
    }
    let mut gone = Vec::new();
    for k in &known {
        if found.contains(&&k.name) {
            continue;
        }
        if !k.gone {
            tracing::warn!(target = name, database = %k.name, newest_backup = %k.newest.map(|i| i.to_string()).unwrap_or_default(), "database no longer on the server (dropped, or excluded): its backups are kept under retention");
        }
        gone.push(k.name.clone());
    }
    gone
}

/// Mark the run suspect (in every manifest, before they are signed and written) when its
/// rows or bytes dropped sharply next to the last good run: the newest complete run on
/// the primary that is not suspect itself, or was accepted. Comparing with the last good
/// run, not merely the previous one, keeps a series of empty dumps suspect.
async fn mark_suspect(ctx: &Context, target: &Target, storages: &Storages, done: &mut [Stored]) {
    let listing = match catalog::list(
        storages.primary(),
        &target.name,
        target.crypto.verify.as_ref(),
        ctx.now(),
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(target = %target.name, error = %crate::error::chain(&e), "cannot list the previous backups; this run is not compared with them");
            return;
        }
    };
    let Some(good) = listing
        .complete
        .iter()
        .find(|b| super::suspect::open_reason(b).is_none())
        .map(|b| b.id)
    else {
        return;
    };
    let good: Vec<Manifest> = listing
        .complete
        .into_iter()
        .filter(|b| b.id == good)
        .map(|b| b.manifest)
        .collect();
    let new: Vec<Manifest> = done.iter().map(|d| d.manifest.clone()).collect();
    let Some(why) = super::suspect::judge(&target.suspect, &new, &good) else {
        return;
    };
    let id = new.first().map(|m| m.id.to_string()).unwrap_or_default();
    tracing::warn!(target = %target.name, backup_id = %id, last_good = %good[0].id, reason = %why, "backup is SUSPECT: retention does not count it; `dbkeep accept {} {id}` if the drop was intended", target.name);
    metrics::backup_suspect(&target.name);
    ctx.notify.send(
        crate::config::Event::Suspect,
        crate::notify::Message::new(crate::config::Event::Suspect, &target.name, ctx.now())
            .with_error(format!("backup {id}: {why}")),
    );
    for d in done.iter_mut() {
        d.manifest.suspect = Some(why.clone());
    }
}

/// Log when the schema (as the run's snapshot saw it) differs from what the newest
/// complete backup recorded.
async fn log_schema_change(
    ctx: &Context,
    target: &Target,
    storages: &Storages,
    found: &Fingerprints,
) {
    let Ok(Some(newest)) = catalog::newest(
        storages.primary(),
        &target.name,
        target.crypto.verify.as_ref(),
        ctx.now(),
    )
    .await
    else {
        return;
    };
    let m = &newest.manifest;
    let Some(before) = &m.schema_fingerprint else {
        return;
    };
    let now = match (m.contents, &m.schema) {
        (Contents::Schema, Some(s)) => found.1.get(s),
        (Contents::Globals, _) => None,
        _ => Some(&found.0),
    };
    if let Some(now) = now.filter(|n| *n != before) {
        metrics::schema_changed(&target.name, &newest.id.to_string(), before, now);
    }
}

/// How far ahead of the clock an existing id may be and still count as a run of the
/// same moment (runs within one second get the next seconds); anything further ahead is
/// not a backup of ours to follow.
const ID_LOOKAHEAD_SECS: i64 = 600;

/// The id for a new run: the clock's second, or the second after a complete backup of
/// the same moment on the primary. Files that are not complete backups (no manifest, a
/// broken one, a junk name far in the future) never influence it.
async fn next_id(
    ctx: &Context,
    target: &Target,
    storages: &Storages,
) -> Result<BackupId, StorageError> {
    let now = ctx.now();
    let mut id = BackupId::from_time(now);
    let limit = BackupId::from_time(now + chrono::Duration::seconds(ID_LOOKAHEAD_SECS));
    // Every name on the primary takes its id: complete backups, and also a lone archive
    // or a manifest whose backup is broken or someone else's (a run must not collide with
    // files it would then have to leave alone).
    let taken: std::collections::BTreeSet<BackupId> = storages
        .primary()
        .list(&target.name)
        .await?
        .iter()
        .filter_map(|o| {
            let archive = o.file.strip_suffix(".manifest.json").unwrap_or(&o.file);
            catalog::id_of_file(&target.name, archive)
        })
        .filter(|t| *t >= id && *t <= limit)
        .collect();
    for t in taken {
        if t == id {
            id = t.succ();
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
    meter: &'a std::sync::Arc<crate::progress::Meter>,
}

/// One archive of a run, stored on the primary.
struct Streamed {
    file: String,
    summary: Summary,
    started: DateTime<Utc>,
    /// Mirrors that did not get it.
    failed: Vec<MirrorFailure>,
    /// Its rows, counted and hashed on the way (see [`catalog::Content`]).
    content: Option<catalog::Content>,
    /// Its tables as the engine read them in the snapshot, if it did.
    tables: Option<Vec<catalog::TableInfo>>,
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
        meter,
    } = *run;
    let name = target.name.as_str();
    let mut file =
        catalog::archive_name(name, id, part.qualifier(), part.format, target.compression);
    let recipients = target.crypto.age_recipients();
    if !recipients.is_empty() {
        file.push_str(catalog::ENCRYPTED_SUFFIX);
    }
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
    let reader = crate::progress::Counted {
        inner: dump.reader,
        meter: meter.clone(),
    };
    let stopper = dump.stopper;
    let tables = dump.tables;
    let stop = ctx.cancel.clone();
    let pending = dump.content;
    let compressing = async move {
        let joined = tokio::task::spawn_blocking(move || {
            let r = compress::compress(reader, codec, &recipients, out, &stop);
            // The content was read beside the stream; it is whole once the stream was.
            let content = match &r {
                Ok(_) => pending.wait(),
                Err(_) => None,
            };
            r.map(|done| (done, content))
        })
        .await;
        let r = match joined {
            Ok(r) => r,
            Err(e) => Err(StreamError::Write(io::Error::other(format!(
                "compression thread failed: {e}"
            )))),
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
    let write_err = |source| BackupError::Write {
        target: name.to_string(),
        file: file.clone(),
        source,
    };
    let ((fanout, summary), content) = match compressed {
        // A storage that failed (a full disk) made us stop the producer, which then died
        // of it: the storage's error is the one to report.
        Err(StreamError::Write(e)) => return Err(write_err(e)),
        // A short or broken stream: a failed producer explains it.
        Err(StreamError::Read(e)) => {
            produced.map_err(engine_err)?;
            return Err(write_err(e));
        }
        Ok(done) => {
            produced.map_err(engine_err)?;
            done
        }
    };
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
        schema = %part.schema.as_deref().unwrap_or("-"),
        database = %part.database.as_deref().unwrap_or("-"),
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
        content,
        tables,
    })
}

/// The manifests a run wrote, and the archive names another writer holds a manifest of.
#[derive(Default)]
struct Written {
    /// Storages holding this run's commit marker.
    markers: Vec<&'static str>,
    manifests: Vec<(&'static str, String)>,
    /// (storage, archive) pairs.
    contested: Vec<(&'static str, String)>,
}

/// Write each archive's manifest to every storage that has the archive.
async fn write_manifests(
    target: &str,
    storages: &Storages,
    id: BackupId,
    done: &mut [Stored],
    written: &mut Written,
) -> Result<(), StorageError> {
    // A mirror that fails now is that mirror's failure, as during the dump: its copies
    // become pending uploads, and the run (and the primary's backup) goes on.
    let primary = storages.primary().name();
    let lose_mirror = |done: &mut [Stored], storage: &'static str, e: &StorageError| {
        tracing::warn!(target, storage, error = %crate::error::chain(e), "a mirror failed while the run committed; its copies are uploaded later");
        for d in done.iter_mut() {
            if !d.failed.iter().any(|f| f.storage == storage) {
                d.failed.push(MirrorFailure {
                    storage,
                    error: StorageError::Task {
                        storage,
                        what: "writing the run's manifests",
                        message: crate::error::chain(e),
                    },
                });
            }
        }
    };
    // Every storage that gets a manifest holds the run's commit marker (written when the
    // run started; here on a mirror that missed it then), and it goes after the last
    // manifest: a run interrupted in between never lists as a backup with only some of
    // its archives, and the next run removes what it left.
    let marker = catalog::commit_name(id);
    for s in storages.iter() {
        let gets_one = done
            .iter()
            .any(|d| !d.failed.iter().any(|f| f.storage == s.name()));
        if storages.deferred(s) || !gets_one || written.markers.contains(&s.name()) {
            continue;
        }
        match s
            .put_bytes(target, &marker, catalog::COMMIT_BODY.to_vec())
            .await
        {
            Ok(()) => written.markers.push(s.name()),
            Err(e) if s.name() == primary => return Err(e),
            Err(e) => lose_mirror(done, s.name(), &e),
        }
    }
    for i in 0..done.len() {
        let bytes =
            serde_json::to_vec_pretty(&done[i].manifest).map_err(|e| StorageError::Task {
                storage: "manifest",
                what: "serializing the manifest",
                message: e.to_string(),
            })?;
        for s in storages.iter() {
            let d = &done[i];
            // A rate-limited mirror gets its manifest after its archive, when it catches up.
            if storages.deferred(s) || d.failed.iter().any(|f| f.storage == s.name()) {
                continue;
            }
            let manifest = catalog::manifest_name(&d.manifest.file);
            match s.put_bytes(target, &manifest, bytes.clone()).await {
                Ok(()) => written.manifests.push((s.name(), manifest)),
                Err(e @ StorageError::Exists { .. }) => {
                    // Someone else's manifest sits at this name: that backup is theirs,
                    // and nothing at this name may be removed by this run.
                    written.contested.push((s.name(), d.manifest.file.clone()));
                    return Err(e);
                }
                Err(e) if s.name() == primary => return Err(e),
                Err(e) => lose_mirror(done, s.name(), &e),
            }
        }
    }
    let marked = written.markers.clone();
    for s in storages.iter().filter(|s| marked.contains(&s.name())) {
        match s.delete(target, &marker).await {
            Ok(()) => written.markers.retain(|m| *m != s.name()),
            Err(e) if s.name() == storages.primary().name() => return Err(e),
            // The run stays unlisted there: the next run removes it from that mirror, and
            // it is uploaded again from the primary.
            Err(e) => {
                tracing::warn!(target, storage = s.name(), error = %crate::error::chain(&e), "cannot remove the commit marker on a mirror; the next run sends the backup there again")
            }
        }
    }
    Ok(())
}

/// Whether run `id` on `s` is whole: every archive of it has a manifest that checks out,
/// and they number what the run committed (`run_archives`).
async fn whole_run(
    target: &str,
    s: &dyn Storage,
    objects: &[crate::storage::ObjectInfo],
    id: BackupId,
) -> bool {
    let archives: Vec<&crate::storage::ObjectInfo> = objects
        .iter()
        .filter(|o| catalog::id_of_file(target, &o.file) == Some(id))
        .filter(|o| !o.file.ends_with(catalog::MANIFEST_SUFFIX))
        .collect();
    let mut want = None;
    for a in &archives {
        let Ok(raw) = s.get_bytes(target, &catalog::manifest_name(&a.file)).await else {
            return false;
        };
        // Whether the run finished, not whom it is trusted by: a run whose manifests this
        // host's key does not verify (a rotated key, a planted marker) is left whole, and
        // listed as broken, never deleted here.
        match catalog::check_manifest(target, &a.file, a.bytes, &raw, None) {
            Ok(m) if m.run_archives.is_some() => want = m.run_archives,
            _ => return false,
        }
    }
    !archives.is_empty() && want == u32::try_from(archives.len()).ok()
}

/// Remove what a run that did not finish left (its commit marker is still there):
/// manifests first, then archives, then the marker. Called with the run lock held, so no
/// run of the target is writing.
/// With `full` false (`--upload-pending`, which another host's run does not exclude) only
/// the stale markers of mirrors are removed, never a run's files.
async fn roll_back_interrupted(target: &Target, storages: &Storages, full: bool) {
    let target = target.name.as_str();
    // What the primary committed: a mirror's marker for such a run is stale (the mirror
    // was down when the run committed); its copies there are the catch-up's to finish.
    let primary = storages.primary();
    let committed: Vec<BackupId> = match primary.list(target).await {
        Ok(objects) => {
            let open: Vec<BackupId> = objects
                .iter()
                .filter_map(|o| catalog::commit_id(&o.file))
                .collect();
            objects
                .iter()
                .filter(|o| o.file.ends_with(catalog::MANIFEST_SUFFIX))
                .filter_map(|o| catalog::id_of_file(target, &o.file))
                .filter(|id| !open.contains(id))
                .collect()
        }
        Err(_) => Vec::new(),
    };
    for s in storages.iter() {
        let Ok(objects) = s.list(target).await else {
            continue;
        };
        let is_mirror = s.name() != primary.name();
        for marker in objects
            .iter()
            .filter(|o| catalog::commit_id(&o.file).is_some())
        {
            let Some(id) = catalog::commit_id(&marker.file) else {
                continue;
            };
            // A pinned run was listed whole when it was pinned; a run whose manifests all
            // check out and number what it committed was killed after its last manifest.
            // Either is kept, and only the marker goes.
            let pinned = objects.iter().any(|o| catalog::pin_id(&o.file) == Some(id));
            let stale = is_mirror && committed.contains(&id);
            if !full && !stale {
                continue;
            }
            if pinned || stale || whole_run(target, s, &objects, id).await {
                tracing::info!(target, storage = s.name(), backup_id = %id, pinned, committed_on_primary = stale, "a commit marker was left on a run that is whole (or pinned, or committed on the primary); the marker is removed, the run kept");
                if let Err(e) = s.delete(target, &marker.file).await {
                    tracing::error!(target, storage = s.name(), error = %e, "cannot remove a commit marker");
                }
                continue;
            }
            let mut files: Vec<&str> = objects
                .iter()
                .map(|o| o.file.as_str())
                .filter(|f| catalog::id_of_file(target, f) == Some(id))
                .collect();
            // Manifests first: an interruption now leaves archives without one (leftovers
            // cleanup removes), never a manifest without its archive.
            files.sort_by_key(|f| !f.ends_with(catalog::MANIFEST_SUFFIX));
            tracing::warn!(target, storage = s.name(), backup_id = %id, files = files.len(), "removing what an interrupted run left (its commit marker is still there)");
            let mut all_gone = true;
            for f in files {
                if let Err(e) = s.delete(target, f).await {
                    all_gone = false;
                    tracing::error!(target, storage = s.name(), file = %f, error = %e, "cannot remove a file of an interrupted run; the next run tries again");
                }
            }
            if all_gone {
                if let Err(e) = s.delete(target, &marker.file).await {
                    tracing::error!(target, storage = s.name(), error = %e, "cannot remove the commit marker of an interrupted run");
                }
            }
        }
    }
}

/// A committed backup must list as complete on the primary (its manifest reads back and
/// matches), or the run failed.
async fn check_listed(
    ctx: &Context,
    target: &Target,
    storages: &Storages,
    done: &[Stored],
) -> Result<(), BackupError> {
    let verify = target.crypto.verify.as_ref();
    let target = target.name.as_str();
    let listing = catalog::list(storages.primary(), target, verify, ctx.now())
        .await
        .map_err(
            |catalog::CatalogError::Storage(source)| BackupError::Storage {
                target: target.to_string(),
                source,
            },
        )?;
    for d in done {
        if !listing.complete.iter().any(|b| b.file == d.manifest.file) {
            let why = listing
                .broken
                .iter()
                .find(|(f, _)| *f == catalog::manifest_name(&d.manifest.file))
                .map(|(_, w)| w.clone())
                .unwrap_or_else(|| "it is not in the listing".into());
            return Err(BackupError::NotListed {
                target: target.to_string(),
                file: d.manifest.file.clone(),
                why,
            });
        }
    }
    Ok(())
}

/// Remove what a failed run stored, and only that: the manifests it wrote, then the
/// archives it wrote. On a storage where another writer's manifest was found at the name,
/// the name is left whole (its archive may be theirs), for the operator and
/// `dbkeep verify` to look at.
async fn remove_run(
    target: &str,
    storages: &Storages,
    id: BackupId,
    done: &[Stored],
    written: &Written,
) {
    for d in done {
        let manifest = catalog::manifest_name(&d.manifest.file);
        for s in storages.iter() {
            if written
                .contested
                .iter()
                .any(|(st, f)| *st == s.name() && *f == d.manifest.file)
            {
                tracing::warn!(target, storage = s.name(), file = %d.manifest.file, "another writer holds a manifest of this archive name; nothing of it is removed there (run `dbkeep verify`, and check that no other dbkeep writes to this storage)");
                continue;
            }
            let mut files = Vec::new();
            if written
                .manifests
                .iter()
                .any(|(st, m)| *st == s.name() && *m == manifest)
            {
                files.push(manifest.clone());
            }
            if !d.failed.iter().any(|f| f.storage == s.name()) {
                files.push(d.manifest.file.clone());
            }
            for file in files {
                if let Err(e) = s.delete(target, &file).await {
                    tracing::error!(target, storage = s.name(), file = %file, error = %e, "could not remove an archive of the failed run; the next cleanup removes it");
                }
            }
        }
    }
    // The marker goes last: until then the run's leftovers stay unlisted.
    let marker = catalog::commit_name(id);
    for s in storages
        .iter()
        .filter(|s| written.markers.contains(&s.name()))
    {
        if let Err(e) = s.delete(target, &marker).await {
            tracing::error!(target, storage = s.name(), error = %e, "could not remove the commit marker of the failed run; the next run removes the run");
        }
    }
}

/// The state file is a record, not the truth: a complete backup on the primary whose
/// manifest a mirror lacks (and its own retention would keep) is pending there, whether
/// or not the state file (which may have been lost) says so. One listing per mirror, no
/// manifest reads.
async fn rediscover_pending(
    ctx: &Context,
    target: &Target,
    mirror: &dyn Storage,
    on_primary: &[catalog::Backup],
    wanted: Option<&std::collections::HashSet<String>>,
) -> Result<(), StorageError> {
    let name = target.name.as_str();
    let now = ctx.now();
    let there: std::collections::HashSet<String> = mirror
        .list(name)
        .await?
        .into_iter()
        .map(|o| o.file)
        .collect();
    let known = ctx.state.get(name).pending_uploads;
    // A backup the mirror's own retention would not keep is not sent there.
    let missing: Vec<PendingUpload> = on_primary
        .iter()
        // Missing unless both the archive and its manifest are there.
        .filter(|b| !there.contains(&catalog::manifest_name(&b.file)) || !there.contains(&b.file))
        .filter(|b| wanted.is_none_or(|w| w.contains(&b.file)))
        .filter(|b| {
            !known
                .iter()
                .any(|p| p.file == b.file && p.storage == mirror.name())
        })
        .map(|b| PendingUpload {
            file: b.file.clone(),
            storage: mirror.name().to_string(),
            since: now,
            error: "missing from this storage (found by comparing listings)".into(),
            deferred: false,
        })
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            target = name,
            storage = mirror.name(),
            count = missing.len(),
            "complete local backups are missing from a mirror; uploading them"
        );
        ctx.state
            .update(name, |s| s.pending_uploads.extend(missing.iter().cloned()));
    }
    Ok(())
}

/// Upload the archives the mirrors missed (or were left to catch up with: a rate-limited
/// mirror), from the primary's copy, checking the sha256 against the manifest on the way.
/// Each mirror on its own: one that fails (likely still down) is given up on for this
/// call, its error recorded, and the others go on. Returns how many went up, or the first
/// mirror's error when one failed.
pub async fn upload_pending(ctx: &Context, target: &Target) -> Result<usize, BackupError> {
    let name = target.name.as_str();
    // Under the run lock: a backup's own catch-up (and its uploads) is never raced.
    let _lock = lock::acquire(ctx.state.work_dir(), name, ctx.now()).map_err(|source| {
        BackupError::Locked {
            target: name.to_string(),
            source,
        }
    })?;
    roll_back_interrupted(target, &ctx.storages, false).await;
    catch_up(ctx, target, true)
        .await
        .map_err(|source| BackupError::Storage {
            target: name.to_string(),
            source,
        })
}

/// Copy what the mirrors lack from the primary (see [`upload_pending`]), the caller holding
/// the run lock; rate-limited mirrors only when `slow`.
async fn catch_up(ctx: &Context, target: &Target, slow: bool) -> Result<usize, StorageError> {
    let name = target.name.as_str();
    let storages = ctx.storages.as_ref();
    let primary = storages.primary();
    if storages.mirrors().next().is_none() && ctx.state.get(name).pending_uploads.is_empty() {
        return Ok(0);
    }
    let mut down: Vec<(&'static str, StorageError)> = Vec::new();
    let on_primary = match storages.mirrors().next() {
        None => Vec::new(),
        Some(_) => {
            catalog::list(primary, name, target.crypto.verify.as_ref(), ctx.now())
                .await
                .map_err(|catalog::CatalogError::Storage(e)| e)?
                .complete
        }
    };
    let mirrors = || {
        storages
            .mirrors()
            .filter(move |m| slow || !storages.deferred(*m))
    };
    // What each mirror should hold by its own retention (`None`: all of the primary's).
    let mut wanted_by = std::collections::HashMap::new();
    for mirror in mirrors() {
        let wanted = super::wanted_on(target, mirror, &on_primary, ctx.now());
        // Multipart uploads abandoned by the failure that made these pending go first.
        let prepared = async {
            for gone in mirror.remove_temp_files(name).await? {
                metrics::leftover_removed(name, mirror.name(), &gone, "abandoned multipart upload");
            }
            rediscover_pending(ctx, target, mirror, &on_primary, wanted.as_ref()).await
        };
        if let Err(e) = prepared.await {
            let msg = crate::error::chain(&e);
            tracing::warn!(target = name, storage = mirror.name(), error = %msg, "mirror unavailable; its pending uploads wait for the next run");
            // What waits for it is now a failure, not a copy under way.
            ctx.state.update(name, |s| {
                for p in s
                    .pending_uploads
                    .iter_mut()
                    .filter(|p| p.storage == mirror.name())
                {
                    p.error = msg.clone();
                    p.deferred = false;
                }
            });
            down.push((mirror.name(), e));
        }
        wanted_by.insert(mirror.name(), wanted);
    }
    let pending = ctx.state.get(name).pending_uploads;
    let mut uploaded = 0;
    for p in pending {
        if down.iter().any(|(s, _)| *s == p.storage) {
            continue;
        }
        let forget = || {
            ctx.state
                .update(name, |s| s.pending_uploads.retain(|x| x != &p))
        };
        let Some(mirror) = storages.mirrors().find(|s| s.name() == p.storage) else {
            tracing::warn!(target = name, storage = %p.storage, file = %p.file, "pending upload dropped: that storage is no longer configured");
            forget();
            continue;
        };
        if !slow && storages.deferred(mirror) {
            continue;
        }
        // A backup the mirror's own retention lets go is not sent there.
        if let Some(Some(wanted)) = wanted_by.get(mirror.name()) {
            if on_primary.iter().any(|b| b.file == p.file) && !wanted.contains(&p.file) {
                tracing::info!(target = name, storage = mirror.name(), file = %p.file, "pending upload dropped: this storage's own retention would not keep it");
                forget();
                continue;
            }
        }
        let manifest_file = catalog::manifest_name(&p.file);
        let manifest_bytes = match primary.get_bytes(name, &manifest_file).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => {
                tracing::warn!(target = name, file = %p.file, "pending upload dropped: the local backup no longer exists");
                forget();
                continue;
            }
            // The primary does not answer: nothing can be copied from it now.
            Err(e) => {
                count_pending(ctx, name);
                return Err(e);
            }
        };
        let t0 = Instant::now();
        let copy = copy_archive(name, primary, mirror, &p.file, &manifest_bytes, &ctx.cancel);
        let copied = match copy.await {
            // Copied by an earlier try whose manifest did not follow: the same size is
            // the same archive (its sha256 was checked on the way up).
            Err(StorageError::Exists { .. }) => {
                match already_there(name, mirror, &p.file, &manifest_bytes).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(StorageError::Exists {
                        storage: mirror.name(),
                        path: p.file.clone().into(),
                    }),
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        let copied = match copied {
            Ok(()) => match mirror
                .put_bytes(name, &manifest_file, manifest_bytes.clone())
                .await
            {
                // The manifest stayed when the archive went (deleted by hand, lost): the
                // same manifest is the one this copy needs.
                Err(StorageError::Exists { .. })
                    if mirror.get_bytes(name, &manifest_file).await.ok().as_deref()
                        == Some(&manifest_bytes[..]) =>
                {
                    Ok(())
                }
                other => other,
            },
            Err(e) => Err(e),
        };
        match copied {
            Ok(()) => {
                forget();
                uploaded += 1;
                tracing::info!(target = name, storage = mirror.name(), file = %p.file, seconds = t0.elapsed().as_secs_f64(), deferred = p.deferred, "pending upload done");
            }
            Err(e) => {
                let msg = crate::error::chain(&e);
                tracing::warn!(target = name, storage = mirror.name(), file = %p.file, error = %msg, "pending upload failed; this mirror's others wait for the next run");
                ctx.state.update(name, |s| {
                    if let Some(x) = s.pending_uploads.iter_mut().find(|x| **x == p) {
                        x.error = msg.clone();
                        x.deferred = false;
                    }
                });
                down.push((mirror.name(), e));
            }
        }
    }
    count_pending(ctx, name);
    match down.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(uploaded),
    }
}

/// Export how many archives wait for each mirror.
fn count_pending(ctx: &Context, name: &str) {
    let pending = ctx.state.get(name).pending_uploads;
    metrics::uploads_pending(
        name,
        ctx.storages.mirrors().map(|m| m.name()),
        pending.iter().map(|p| p.storage.as_str()),
    );
}

/// Whether `file` is on `storage` already with the size its manifest says.
async fn already_there(
    target: &str,
    storage: &dyn Storage,
    file: &str,
    manifest_bytes: &[u8],
) -> Result<bool, StorageError> {
    let Ok(m) = serde_json::from_slice::<Manifest>(manifest_bytes) else {
        return Ok(false);
    };
    let same_size = storage
        .list(target)
        .await?
        .iter()
        .any(|o| o.file == file && o.bytes == m.stored_bytes);
    if !same_size {
        return Ok(false);
    }
    // The same size is not proof: the bytes there must be the archive's.
    let mut reader = storage.open(target, file).await?;
    let sha = tokio::task::spawn_blocking(move || -> io::Result<String> {
        let mut hw = HashingWriter::new(io::sink());
        io::copy(&mut reader, &mut hw)?;
        Ok(hw.finish().2)
    })
    .await
    .map_err(|e| StorageError::Task {
        storage: storage.name(),
        what: "checking an earlier copy",
        message: e.to_string(),
    })?
    .map_err(|source| StorageError::Write {
        storage: storage.name(),
        file: file.to_string(),
        source,
    })?;
    Ok(sha == m.sha256)
}

/// Stream `file` from one storage to another, committing only when its sha256 matches
/// the manifest.
async fn copy_archive(
    target: &str,
    from: &dyn Storage,
    to: &dyn Storage,
    file: &str,
    manifest_bytes: &[u8],
    cancel: &tokio_util::sync::CancellationToken,
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
    let cancel = cancel.clone();
    tokio::task::spawn_blocking(move || {
        let mut hw = HashingWriter::new(writer);
        // In 64 KiB steps, so a stop request is seen within one step even when the
        // destination paces the copy (at its slowest rate, about a second).
        let copied = (|| -> io::Result<()> {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if cancel.is_cancelled() {
                    return Err(io::Error::other(
                        "stopped: the copy is resumed at the next run",
                    ));
                }
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                hw.write_all(&buf[..n])?;
            }
        })();
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

/// Whether `folder` (which may not exist yet) is `dir` or below it, links resolved.
fn inside(folder: &Path, dir: &Path) -> bool {
    // The nearest existing ancestor decides where the rest would be created.
    let mut existing = folder;
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_owned());
                existing = p;
            }
            _ => return false,
        }
    }
    let Ok(mut real) = existing.canonicalize() else {
        return false;
    };
    for n in rest.into_iter().rev() {
        real.push(n);
    }
    real.starts_with(dir)
}
