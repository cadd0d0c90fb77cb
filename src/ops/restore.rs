//! Restores: pick an archive, prove its checksum before touching any database, take a
//! safety backup of a live database, then let the engine restore in one transaction (or
//! one atomic rename for SQLite).

use std::io;
use std::str::FromStr;

use super::backup::{self, BackupError};
use super::Context;
use crate::catalog::{self, Backup, BackupId, Contents};
use crate::config::Target;
use crate::engine::{self, Archive, Destination, EngineError, RestoreMode, RestoreOptions};
use crate::error::{io_kind, Classify, ErrorKind};
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The operator must decide (exit 2): no confirmation, a non-empty destination, ...
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{file} on {storage} is corrupt: its sha256 is {actual}, the manifest says {expected}; nothing was touched. Restore an older backup, or the copy on another storage")]
    Checksum {
        file: String,
        storage: String,
        expected: String,
        actual: String,
    },
    #[error("reading {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("safety backup before the restore failed, so nothing was restored: {0}")]
    SafetyBackup(#[source] Box<BackupError>),
    /// The role's rights do not allow it (found without trying; nothing was done).
    #[error("{0}")]
    NotPermitted(String),
    /// Some archives of a run went in, another could not (a restore into another database).
    #[error("{0}")]
    Partial(String),
}

impl Classify for RestoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            RestoreError::Refused(_) => ErrorKind::Refused,
            RestoreError::NotFound(_) => ErrorKind::NotFound,
            RestoreError::Unavailable(_) => ErrorKind::Unreachable,
            RestoreError::Checksum { .. } => ErrorKind::Checksum,
            RestoreError::Read { source, .. } => io_kind(source),
            RestoreError::Storage(e) => e.kind(),
            RestoreError::Engine(e) => e.kind(),
            RestoreError::SafetyBackup(e) => e.kind(),
            RestoreError::NotPermitted(_) => ErrorKind::Auth,
            RestoreError::Partial(_) => ErrorKind::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            RestoreError::Storage(e) => e.hint(),
            RestoreError::Engine(e) => e.hint(),
            RestoreError::SafetyBackup(e) => e.hint(),
            _ => None,
        }
    }
}

impl From<catalog::CatalogError> for RestoreError {
    fn from(e: catalog::CatalogError) -> Self {
        match e {
            catalog::CatalogError::Storage(se) => RestoreError::Storage(se),
        }
    }
}

/// Which backup: `latest` or an id, optionally `:schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub id: Option<BackupId>,
    pub schema: Option<String>,
    /// Only from this storage (`--storage`); else the first that has it, falling back to
    /// the next when it fails.
    pub from: Option<String>,
    /// The database of a server target's run (`--database`).
    pub database: Option<String>,
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, schema) = match s.split_once(':') {
            Some((i, sc)) if !sc.is_empty() => (i, Some(sc.to_string())),
            Some(_) => {
                return Err(format!(
                    "{s:?}: write ID:SCHEMA, e.g. 20261121_143022:tenant_42"
                ))
            }
            None => (s, None),
        };
        let id = match id {
            "latest" | "" => None,
            other => Some(other.parse()?),
        };
        Ok(Selector {
            id,
            schema,
            from: None,
            database: None,
        })
    }
}

/// The archive chosen for a restore, and the storage it is read from.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub backup: Backup,
    pub storage: &'static str,
    /// Restore only this schema out of a whole-database archive (`pg_restore -n`).
    pub schema_from_full: Option<String>,
    /// The same archive on the other storages that have it, in preference order: where
    /// [`Chosen::prove`] turns when the chosen copy cannot be read or is corrupt.
    pub fallbacks: Vec<(&'static str, Backup)>,
    /// The private keys, when the archive is encrypted.
    pub keys: Option<std::sync::Arc<crate::crypt::Identities>>,
    /// Set once the chosen copy's sha256 was proven (by [`Chosen::prove`]): the version
    /// proven, which the restore reads or nothing, and its private copy if one was kept.
    /// A turn to another copy clears it.
    pub proof: Option<std::sync::Arc<engine::archive::Proof>>,
}

impl Chosen {
    /// Prove the archive's sha256 before anything is touched, reading the chosen copy;
    /// when it cannot be read (its storage is down) or does not match, the next storage's
    /// copy is tried, and becomes the chosen one. The error is the last copy's.
    /// A remote copy is kept in a private file while it is proven, when there is room
    /// ([`spool_for`]): the restore reads it from there, not from the storage again.
    pub async fn prove(&mut self, ctx: &Context, target: &Target) -> Result<(), RestoreError> {
        loop {
            let result = match self.archive(ctx) {
                Ok(a) => {
                    let spool = spool_for(ctx, target, a.storage, a.backup);
                    prove_copy(a.storage, a.backup, spool).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(proof) => {
                    self.proof = Some(std::sync::Arc::new(proof));
                    return Ok(());
                }
                Err(e) if !self.use_next(&e) => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Prove the chosen copy, unless it was, when a restore of `target` must prove it
    /// before reading it ([`proven_first`]): the first copy and any copy turned to later.
    pub async fn prove_for(&mut self, ctx: &Context, target: &Target) -> Result<(), RestoreError> {
        if proven_first(target) && self.proof.is_none() {
            self.prove(ctx, target).await?;
        }
        Ok(())
    }

    /// After `err` from a restore that read this copy as it streamed: turn to the next
    /// storage's copy when this one was at fault (it could not be read, or did not match
    /// its manifest); false otherwise, or when there is none.
    pub fn next_after(&mut self, err: &EngineError) -> bool {
        matches!(err, EngineError::Checksum { .. } | EngineError::Storage(_)) && self.use_next(err)
    }

    /// Turn to the next storage's copy after `err` on this one; false when there is none.
    pub fn use_next(&mut self, err: &(dyn std::error::Error + 'static)) -> bool {
        if self.fallbacks.is_empty() {
            return false;
        }
        let (storage, backup) = self.fallbacks.remove(0);
        tracing::warn!(
            target = %self.backup.target,
            file = %self.backup.file,
            failed = self.storage,
            next = storage,
            error = %crate::error::chain(err),
            "cannot restore from this storage; using the copy on the next one"
        );
        self.storage = storage;
        self.backup = backup;
        self.proof = None;
        true
    }

    pub fn archive<'a>(&'a self, ctx: &'a Context) -> Result<Archive<'a>, RestoreError> {
        let storage = ctx.storages.get(self.storage).ok_or_else(|| {
            RestoreError::NotFound(format!("storage {} is no longer configured", self.storage))
        })?;
        Ok(Archive {
            storage,
            backup: &self.backup,
            meter: None,
            keys: self.keys.as_ref(),
            proof: self.proof.as_deref(),
        })
    }
}

/// Every complete backup of `target` with the storage it is on, storages in preference
/// order (primary first).
/// A storage that does not answer is skipped (and logged); it fails the call only when
/// no storage answered.
pub async fn list_everywhere(
    ctx: &Context,
    target: &Target,
) -> Result<Vec<(&'static str, Backup)>, RestoreError> {
    let inv = super::list::inventory(ctx, &[target], None).await;
    if inv.unavailable.len() == ctx.storages.names().len() {
        let (storage, error) = &inv.unavailable[0];
        return Err(RestoreError::Unavailable(format!(
            "no storage answered ({storage}: {error})"
        )));
    }
    let mut all = Vec::new();
    for s in ctx.storages.iter() {
        all.extend(
            inv.backups
                .iter()
                .filter(|b| b.storage == s.name())
                .map(|b| (s.name(), b.clone())),
        );
    }
    Ok(all)
}

/// The reason of a safety copy taken before a restore.
pub const PRE_RESTORE: &str = "pre-restore";

/// The backup `selector` names (its id resolved) and every good copy of its archives,
/// storages in preference order.
async fn resolve(
    ctx: &Context,
    target: &Target,
    selector: &Selector,
) -> Result<(BackupId, Vec<(&'static str, Backup)>), RestoreError> {
    // Copies known to no longer match their manifest (found by verify, a drill or
    // cleanup) are never chosen: another storage's copy, or an older backup, is.
    let corrupt = ctx.state.get(&target.name).corrupt;
    if let Some(from) = &selector.from {
        if ctx.storages.get(from).is_none() {
            return Err(RestoreError::NotFound(format!(
                "no storage named {from:?}: the configured ones are {}",
                ctx.storages.names().join(", ")
            )));
        }
    }
    let (all, bad): (Vec<_>, Vec<_>) = list_everywhere(ctx, target)
        .await?
        .into_iter()
        .filter(|(s, _)| selector.from.as_deref().is_none_or(|f| f == *s))
        .partition(|(s, b)| !corrupt.contains_key(&crate::state::corrupt_key(s, &b.file)));
    // A server target's database: its own archives only, and `latest` is the newest run
    // that holds it (a dropped database's last backup included).
    let (all, bad) = match &selector.database {
        None => (all, bad),
        Some(db) => {
            let of_db = |v: Vec<(&'static str, Backup)>| -> Vec<(&'static str, Backup)> {
                v.into_iter()
                    .filter(|(_, b)| b.database.as_deref() == Some(db.as_str()))
                    .collect()
            };
            let mut known: Vec<String> =
                all.iter().filter_map(|(_, b)| b.database.clone()).collect();
            known.sort();
            known.dedup();
            let (all, bad) = (of_db(all), of_db(bad));
            if all.is_empty() && bad.is_empty() {
                return Err(RestoreError::NotFound(match known.is_empty() {
                    true => format!(
                        "target {} keeps no per-database backups (`databases` is not set), so there is no database {db:?} to pick; leave out --database",
                        target.name
                    ),
                    false => format!(
                        "target {} has no backup of database {db:?}; it has backups of: {}",
                        target.name,
                        known.join(", ")
                    ),
                }));
            }
            (all, bad)
        }
    };
    if let (Some(id), false) = (selector.id, bad.is_empty()) {
        if bad.iter().any(|(_, b)| b.id == id) && !all.iter().any(|(_, b)| b.id == id) {
            return Err(RestoreError::NotFound(format!(
                "every copy of backup {id} of target {} no longer matches its manifest (see `dbkeep status`); pick another id from `dbkeep list {}`",
                target.name, target.name
            )));
        }
    }
    // `latest` is the newest backup that is not a safety copy of a restore: restoring
    // "latest" again must not bring back the state the last restore replaced. Nor one
    // marked suspect (a table emptied, rows gone) and not accepted, while a good one is
    // there: that is the state an operator restores away from.
    let id = match selector.id {
        Some(id) => id,
        None => {
            let candidates: Vec<&Backup> = all
                .iter()
                .map(|(_, b)| b)
                .filter(|b| b.reason.as_deref() != Some(PRE_RESTORE))
                .collect();
            let newest = candidates.iter().map(|b| b.id).max().ok_or_else(|| {
                RestoreError::NotFound(format!(
                    "target {} has no complete backup to restore (safety copies of restores do not count as latest; name one by its id)",
                    target.name
                ))
            })?;
            let good = candidates
                .iter()
                .filter(|b| super::suspect::open_reason(b).is_none())
                .map(|b| b.id)
                .max();
            match good {
                Some(good) if good != newest => {
                    let why = candidates
                        .iter()
                        .filter(|b| b.id > good)
                        .find_map(|b| super::suspect::open_reason(b))
                        .cloned()
                        .unwrap_or_default();
                    tracing::warn!(
                        target = %target.name,
                        skipped = %newest,
                        chosen = %good,
                        "latest is the newest backup not marked suspect ({why}); name the newer one by its id to restore it, or `dbkeep accept` it"
                    );
                    good
                }
                _ => newest,
            }
        }
    };
    let of_id: Vec<(&'static str, Backup)> = all.into_iter().filter(|(_, b)| b.id == id).collect();
    if let (true, Some(db)) = (of_id.is_empty(), &selector.database) {
        return Err(RestoreError::NotFound(format!(
            "backup {id} of target {} holds no archive of database {db:?}; `dbkeep list {}` shows which backups do (or leave out the id for the newest that does)",
            target.name, target.name
        )));
    }
    if of_id.is_empty() {
        return Err(RestoreError::NotFound(match &selector.from {
            Some(from) => format!(
                "storage {from} holds no complete backup {id} of target {}; `dbkeep list {} --storage {from}` shows what it has, or leave out --storage to use any copy",
                target.name, target.name
            ),
            None => format!(
                "no complete backup {id} of target {}; `dbkeep list {}` shows the ids",
                target.name, target.name
            ),
        }));
    }
    Ok((id, of_id))
}

/// The copies of `backup`'s file on the storages other than `storage`, in preference
/// order: where a restore turns when that copy fails.
fn fallbacks_of(
    of_id: &[(&'static str, Backup)],
    storage: &str,
    backup: &Backup,
) -> Vec<(&'static str, Backup)> {
    of_id
        .iter()
        .filter(|(s, b)| *s != storage && b.file == backup.file)
        .cloned()
        .collect()
}

/// Pick the archive for `selector`: the local copy when there is one, else a remote one;
/// with the keys that decrypt it.
pub async fn choose(
    ctx: &Context,
    target: &Target,
    selector: &Selector,
    globals: bool,
) -> Result<Chosen, RestoreError> {
    let mut chosen = choose_copy(ctx, target, selector, globals).await?;
    chosen.keys = super::keys_for(ctx, target, std::iter::once(&chosen.backup))?;
    Ok(chosen)
}

async fn choose_copy(
    ctx: &Context,
    target: &Target,
    selector: &Selector,
    globals: bool,
) -> Result<Chosen, RestoreError> {
    let (id, of_id) = resolve(ctx, target, selector).await?;
    // Storages are in preference order (local first); keep the first copy of each file.
    let pick = |want: &dyn Fn(&Backup) -> bool| {
        of_id
            .iter()
            .find(|(_, b)| want(b))
            .map(|(i, b)| (*i, b.clone()))
    };
    let fallbacks = |storage: &str, backup: &Backup| fallbacks_of(&of_id, storage, backup);
    if globals {
        let (storage, backup) = pick(&|b| b.contents == Contents::Globals).ok_or_else(|| {
            RestoreError::NotFound(format!(
                "backup {id} has no globals archive (set `globals = true` on the target)"
            ))
        })?;
        return Ok(Chosen {
            fallbacks: fallbacks(storage, &backup),
            keys: None,
            backup,
            storage,
            schema_from_full: None,
            proof: None,
        });
    }
    if let Some(schema) = &selector.schema {
        if let Some((storage, backup)) =
            pick(&|b| b.contents == Contents::Schema && b.schema.as_deref() == Some(schema))
        {
            return Ok(Chosen {
                fallbacks: fallbacks(storage, &backup),
                keys: None,
                backup,
                storage,
                schema_from_full: None,
                proof: None,
            });
        }
        if let Some((storage, backup)) = pick(&|b| {
            b.contents == Contents::Database
                && b.database.as_deref() == selector.database.as_deref()
        }) {
            return Ok(Chosen {
                fallbacks: fallbacks(storage, &backup),
                keys: None,
                backup,
                storage,
                schema_from_full: Some(schema.clone()),
                proof: None,
            });
        }
        return Err(RestoreError::NotFound(format!(
            "backup {id} has no archive of schema {schema:?}"
        )));
    }
    if let Some((storage, backup)) = pick(&|b| {
        b.contents == Contents::Database && b.database.as_deref() == selector.database.as_deref()
    }) {
        return Ok(Chosen {
            fallbacks: fallbacks(storage, &backup),
            keys: None,
            backup,
            storage,
            schema_from_full: None,
            proof: None,
        });
    }
    // Each database once, however many storages hold its archive.
    let databases: std::collections::BTreeSet<&str> = of_id
        .iter()
        .filter_map(|(_, b)| b.database.as_deref())
        .collect();
    if !databases.is_empty() {
        return Err(RestoreError::NotFound(format!(
            "backup {id} of target {} holds one archive per database; restore one with --database NAME (databases: {})",
            target.name,
            databases.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let schemas: Vec<String> = of_id.iter().filter_map(|(_, b)| b.schema.clone()).collect();
    Err(RestoreError::NotFound(format!(
        "backup {id} holds one archive per schema; restore one with {id}:SCHEMA (schemas: {})",
        schemas.join(", ")
    )))
}

/// Whether a restore of `target` must prove the archive's sha256 before any byte of it is
/// read by the restore, whatever the destination. PostgreSQL's are: pg_restore runs the
/// statements of the archive's table of contents as it reads them (a changed archive can
/// hold `COMMIT`, a role change, `COPY … TO PROGRAM`), on the destination's server, long
/// before the end of the stream where a streamed check would see the mismatch; dropping
/// the database afterwards cannot undo what reached the server. A SQLite restore writes a
/// file that is renamed into place only once the sha256 matched, so it is proven as it
/// streams.
pub fn proven_first(target: &Target) -> bool {
    matches!(target.source, crate::config::SourceConfig::Postgres(_))
}

/// Read the stored archive whole and compare its sha256 with the manifest.
pub async fn verify_checksum(storage: &dyn Storage, backup: &Backup) -> Result<(), RestoreError> {
    prove_copy(storage, backup, None).await.map(drop)
}

/// Where the proven bytes of `backup` on `storage` are kept for the restore: a remote
/// storage's archive, when the target's scratch folder (which must exist) has room for
/// it, for what it unpacks to (a SQLite restore, drill or diff writes that beside it),
/// and 256 MiB more. A local archive is read where it is (pinned), and so is one without
/// room: the restore then reads the storage again, as an info line says.
pub fn spool_for(
    ctx: &Context,
    target: &Target,
    storage: &dyn Storage,
    backup: &Backup,
) -> Option<engine::archive::Spool> {
    if storage.folder(&backup.target).is_some() {
        return None;
    }
    let dir = super::scratch_dir(ctx, target);
    let needed = backup
        .manifest
        .stored_bytes
        .saturating_add(backup.manifest.raw_bytes)
        .saturating_add(256 << 20);
    let why = if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        Some("the scratch folder is not a folder".to_string())
    } else {
        match crate::storage::free_space(&dir) {
            None => Some("the free space of the scratch folder cannot be read".into()),
            Some(free) if free < needed => Some(format!(
                "{} free, {} needed (the archive, what it unpacks to, and 256 MiB)",
                crate::storage::human_size(free),
                crate::storage::human_size(needed)
            )),
            Some(_) => None,
        }
    };
    if let Some(why) = why {
        tracing::info!(target = %target.name, folder = %dir.display(), "no private copy of the archive while it is proven ({why}); the restore downloads it again");
        return None;
    }
    match engine::archive::Spool::create(&dir) {
        Ok(spool) => Some(spool),
        Err(e) => {
            tracing::warn!(target = %target.name, folder = %dir.display(), error = %e, "cannot make a private copy of the archive while it is proven; the restore downloads it again");
            None
        }
    }
}

/// Prove `backup`'s stored sha256, keeping the bytes in `spool` if given: the version
/// proven, and the spool when it holds every byte.
pub async fn prove_copy(
    storage: &dyn Storage,
    backup: &Backup,
    spool: Option<engine::archive::Spool>,
) -> Result<engine::archive::Proof, RestoreError> {
    let (actual, version, spool) =
        match engine::archive::stored_sha256(storage, backup, None, spool).await {
            Ok(actual) => actual,
            Err(EngineError::Storage(e)) => return Err(RestoreError::Storage(e)),
            Err(EngineError::Io { source, .. }) => {
                return Err(RestoreError::Read {
                    file: backup.file.clone(),
                    source,
                })
            }
            Err(e) => return Err(e.into()),
        };
    if actual != backup.sha256 {
        return Err(RestoreError::Checksum {
            file: backup.file.clone(),
            storage: storage.name().to_string(),
            expected: backup.sha256.clone(),
            actual,
        });
    }
    Ok(engine::archive::Proof {
        pin: version,
        spool,
    })
}

/// A restore decided but not started: what, from where, into where, and how.
pub struct Plan {
    pub chosen: Chosen,
    pub dest: Destination,
    pub mode: RestoreMode,
    /// What the operator confirms.
    pub description: String,
}

/// Choose the archive and the destination, and describe them.
pub async fn plan(
    ctx: &Context,
    target: &Target,
    selector: &Selector,
    into: Option<&str>,
    into_password: Option<crate::config::Secret>,
    globals: bool,
) -> Result<Plan, RestoreError> {
    let engine = engine::build(target);
    let mut dest = engine.destination(into, into_password)?;
    let chosen = choose(ctx, target, selector, globals).await?;
    // `--into` the live database itself is a restore over it: asked for, with its safety
    // backup, like one without `--into`.
    if engine
        .is_own_place(&dest, chosen.backup.database.as_deref())
        .await
    {
        tracing::info!(target = %target.name, "--into names the target's own database: restoring over it, with its checks and safety backup");
        dest = Destination::Own;
    }
    let mode = mode_of(&chosen, &dest);
    // A way of restoring the kind cannot do is refused before anything is asked or read.
    engine.supports(&mode)?;
    let b = &chosen.backup;
    let age = crate::retention::fmt_age(ctx.now() - b.id.time());
    let what = match (&chosen.schema_from_full, &b.schema, b.contents) {
        (_, _, Contents::Globals) => "roles and tablespaces (globals)".to_string(),
        (Some(s), _, _) | (None, Some(s), _) => format!("schema {s}"),
        _ => match &b.database {
            Some(db) => format!("database {db}"),
            None => "the whole database".to_string(),
        },
    };
    let why = match b.reason.as_deref() {
        Some("scheduled") => "scheduled".to_string(),
        Some("manual") => "taken by hand".to_string(),
        Some(r) => format!("taken {r}"),
        None => "scheduled or manual".to_string(),
    };
    let description = format!(
        "restore {what} of target {} from backup {} ({age} old, {why}, {}, {} on {})\ninto {}",
        target.name,
        b.id,
        crate::storage::human_size(b.bytes),
        b.file,
        b.storage,
        engine.describe(&dest, chosen.backup.database.as_deref())
    );
    Ok(Plan {
        chosen,
        dest,
        mode,
        description,
    })
}

/// A restore of every archive of a run that holds one archive per schema, into another
/// database (`restore TARGET ID --into URL`).
pub struct RunPlan {
    pub archives: Vec<Chosen>,
    pub dest: Destination,
    /// What the operator sees before it starts.
    pub description: String,
}

/// Plan the restore of a whole per-schema run into `into`; `None` when the backup is one
/// database archive (or a schema is asked for), which [`plan`] handles.
pub async fn plan_run(
    ctx: &Context,
    target: &Target,
    selector: &Selector,
    into: &str,
    into_password: Option<crate::config::Secret>,
) -> Result<Option<RunPlan>, RestoreError> {
    if selector.schema.is_some() {
        return Ok(None);
    }
    let engine = engine::build(target);
    let dest = engine.destination(Some(into), into_password)?;
    let (id, of_id) = resolve(ctx, target, selector).await?;
    if of_id
        .iter()
        .any(|(_, b)| b.contents == Contents::Database || b.database.is_some())
    {
        return Ok(None);
    }
    let keys = super::keys_for(ctx, target, of_id.iter().map(|(_, b)| b))?;
    let mut archives: Vec<Chosen> = Vec::new();
    for (storage, b) in &of_id {
        if b.contents != Contents::Schema || archives.iter().any(|c| c.backup.file == b.file) {
            continue;
        }
        archives.push(Chosen {
            keys: keys.clone(),
            fallbacks: fallbacks_of(&of_id, storage, b),
            backup: b.clone(),
            storage,
            schema_from_full: None,
            proof: None,
        });
    }
    if archives.is_empty() {
        return Ok(None);
    }
    engine.supports(&RestoreMode::Whole { clean: false })?;
    let bytes: u64 = archives.iter().map(|c| c.backup.bytes).sum();
    let schemas: Vec<&str> = archives
        .iter()
        .filter_map(|c| c.backup.schema.as_deref())
        .collect();
    let description = format!(
        "restore backup {id} of target {} ({} schema archives: {}; {}), up to {} at once\ninto {}",
        target.name,
        archives.len(),
        schemas.join(", "),
        crate::storage::human_size(bytes),
        target.jobs,
        engine.describe(&dest, None)
    );
    Ok(Some(RunPlan {
        archives,
        dest,
        description,
    }))
}

/// Run a [`RunPlan`]: every archive's sha256 is proven first (falling back to another
/// storage's copy), then the destination is made ready (created, or refused when not
/// empty without `yes`), then the archives are restored up to the target's `jobs` at
/// once, each in one transaction. An archive whose objects need another schema's (a
/// foreign key across schemas) fails as a whole while that schema is missing and is
/// tried again once the others are in: at most one round per archive.
pub async fn execute_run(
    ctx: &Context,
    target: &Target,
    plan: &mut RunPlan,
    yes: bool,
) -> Result<Vec<String>, RestoreError> {
    use futures_util::StreamExt;
    for c in plan.archives.iter_mut() {
        c.prove(ctx, target).await?;
    }
    let engine = engine::build(target);
    let mode = RestoreMode::Whole { clean: false };
    let total: u64 = plan.archives.iter().map(|c| c.backup.bytes).sum();
    let meter = super::meter(ctx, &target.name, "restore", Some(total), false);
    let archives: Vec<Archive<'_>> = plan
        .archives
        .iter()
        .map(|c| c.archive(ctx))
        .collect::<Result<_, _>>()?;
    // The first archive's checks get the destination ready, with the operator's `yes`;
    // after that the destination is this restore's own.
    let first = engine
        .begin_restore(
            &plan.dest,
            archives[0],
            &mode,
            &RestoreOptions {
                yes,
                drop_dependents: false,
                discard_created: false,
            },
        )
        .await?;
    let notes = first.notes();
    let mut first = Some(first);
    let one = |i: usize, restorer: Option<Box<dyn crate::engine::Restorer>>| {
        let (engine, dest, mode, meter) = (&engine, &plan.dest, &mode, &meter);
        let archive = Archive {
            meter: Some(meter),
            ..archives[i]
        };
        async move {
            let restorer = match restorer {
                Some(r) => r,
                None => {
                    let opts = RestoreOptions {
                        yes: true,
                        drop_dependents: false,
                        discard_created: false,
                    };
                    engine.begin_restore(dest, archive, mode, &opts).await?
                }
            };
            restorer.restore(archive, mode, &ctx.cancel).await
        }
    };
    let mut left: Vec<usize> = (0..archives.len()).collect();
    let mut done: Vec<usize> = Vec::new();
    for _round in 0..archives.len() {
        let tried = left.len();
        let results: Vec<(usize, Result<(), EngineError>)> =
            futures_util::stream::iter(std::mem::take(&mut left))
                .map(|i| {
                    let restorer = if i == 0 { first.take() } else { None };
                    let run = one(i, restorer);
                    async move { (i, run.await) }
                })
                .buffer_unordered(target.jobs.max(1))
                .collect()
                .await;
        let mut failed = Vec::new();
        for (i, r) in results {
            match r {
                Ok(()) => done.push(i),
                Err(e) => failed.push((i, e)),
            }
        }
        if ctx.cancel.is_cancelled() {
            return Err(EngineError::Cancelled.into());
        }
        if failed.is_empty() {
            return Ok(notes);
        }
        // A round in which nothing went in: trying again cannot help.
        if failed.len() == tried {
            let name = |i: usize| plan.archives[i].backup.schema.clone().unwrap_or_default();
            let restored: Vec<String> = done.iter().map(|i| name(*i)).collect();
            let (i, e) = failed.swap_remove(0);
            let state = match restored.is_empty() {
                true => format!("nothing of this restore is in {}", engine.describe(&plan.dest, None)),
                false => format!(
                    "{} now holds the schemas restored above besides what it held before: remove them (or, if this restore created it, the database) before trying again",
                    engine.describe(&plan.dest, None)
                ),
            };
            return Err(RestoreError::Partial(format!(
                "schema {} could not be restored: {}; restored: {}; {state}",
                name(i),
                crate::error::chain(&e),
                if restored.is_empty() {
                    "none".to_string()
                } else {
                    restored.join(", ")
                },
            )));
        }
        tracing::info!(target = %target.name, retry = failed.len(), "archives that need another schema's objects are tried again");
        left = failed.into_iter().map(|(i, _)| i).collect();
    }
    Ok(notes)
}

/// What the operator decided.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub yes: bool,
    pub safety_backup: bool,
    /// Let replacing a schema drop objects outside it that depend on it.
    pub drop_dependents: bool,
}

/// What a restore did besides restoring.
#[derive(Debug, Default)]
pub struct Done {
    /// The safety copy of the live database taken first, if any.
    pub safety_backup: Option<BackupId>,
    /// What the operator should know (e.g. roles not kept as owners).
    pub notes: Vec<String>,
}

/// Which part of the chosen archive goes where.
fn mode_of(chosen: &Chosen, dest: &Destination) -> RestoreMode {
    match (
        chosen.backup.contents,
        &chosen.schema_from_full,
        &chosen.backup.schema,
    ) {
        (Contents::Globals, _, _) => RestoreMode::Globals,
        (_, Some(s), _) => RestoreMode::Schema {
            name: s.clone(),
            from_full: true,
        },
        (Contents::Schema, None, Some(s)) if dest.is_own() => RestoreMode::Schema {
            name: s.clone(),
            from_full: false,
        },
        _ => RestoreMode::Whole {
            clean: dest.is_own(),
        },
    }
}

/// Run a restore whose archive was chosen and confirmed. Every check comes first (the
/// engine's: the archive holds what is asked, nothing else would be dropped, the
/// destination is ready), then the safety backup of a live database, then the restore: a
/// restore refused by a check takes no safety copy. Over the live database the caller
/// proved the archive first. A PostgreSQL archive is proven here before it is read, if
/// the caller did not ([`proven_first`]); a SQLite file elsewhere is proven as it
/// streams. A copy at fault gives way to the next storage's, proven the same way.
pub async fn execute(
    ctx: &Context,
    target: &Target,
    plan: &mut Plan,
    opts: &Options,
) -> Result<Done, RestoreError> {
    loop {
        // The first copy and any copy turned to are proven before they are read.
        plan.chosen.prove_for(ctx, target).await?;
        match execute_once(ctx, target, plan, opts).await {
            Err(RestoreError::Engine(ref e))
                if !plan.dest.is_own() && plan.chosen.next_after(e) => {}
            done => return done,
        }
    }
}

async fn execute_once(
    ctx: &Context,
    target: &Target,
    plan: &Plan,
    opts: &Options,
) -> Result<Done, RestoreError> {
    let engine = engine::build(target);
    let archive = plan.chosen.archive(ctx)?;
    let engine_opts = RestoreOptions {
        yes: opts.yes,
        drop_dependents: opts.drop_dependents,
        discard_created: true,
    };
    let restorer = engine
        .begin_restore(&plan.dest, archive, &plan.mode, &engine_opts)
        .await?;
    let mut done = Done {
        safety_backup: None,
        notes: restorer.notes(),
    };
    for note in &done.notes {
        tracing::warn!(target = %target.name, "{note}");
    }
    if plan.dest.is_own() && opts.safety_backup {
        // A server target's database: the safety copy is of that database alone.
        let one;
        let safety_target = match (&plan.chosen.backup.database, &target.source) {
            (Some(db), crate::config::SourceConfig::Postgres(pg)) => {
                let mut pg = pg.clone();
                pg.only_database = Some(db.clone());
                one = Target {
                    source: crate::config::SourceConfig::Postgres(pg),
                    ..target.clone()
                };
                &one
            }
            _ => target,
        };
        let outcome = backup::run_queued(ctx, safety_target, Some(PRE_RESTORE))
            .await
            .map_err(|e| RestoreError::SafetyBackup(Box::new(e)))?;
        tracing::info!(target = %target.name, backup_id = %outcome.id, "safety backup (pre-restore) taken");
        done.safety_backup = Some(outcome.id);
    }
    let meter = super::meter(
        ctx,
        &target.name,
        "restore",
        Some(archive.backup.bytes),
        false,
    );
    let archive = Archive {
        meter: Some(&meter),
        ..archive
    };
    restorer.restore(archive, &plan.mode, &ctx.cancel).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            "latest".parse::<Selector>().unwrap(),
            Selector {
                id: None,
                schema: None,
                from: None,
                database: None,
            }
        );
        let s: Selector = "20261121_143022:tenant_42".parse().unwrap();
        assert_eq!(s.id.unwrap().to_string(), "20261121_143022");
        assert_eq!(s.schema.as_deref(), Some("tenant_42"));
        assert_eq!(
            "latest:shared"
                .parse::<Selector>()
                .unwrap()
                .schema
                .as_deref(),
            Some("shared")
        );
        assert!("2026-11-21".parse::<Selector>().is_err());
        assert!("20261121_143022:".parse::<Selector>().is_err());
    }
}
