//! Everything database-specific, one folder per kind (`postgres/`, `sqlite/`): dump,
//! restore, scratch databases, introspection and info behind the [`Engine`] trait. This
//! is the only place a database connection is opened.
//!
//! A new kind of database is a new folder implementing [`Engine`], [`Restorer`],
//! [`Scratch`] and [`Session`], plus one arm in [`build`] (and its `kind` in the config).

pub mod archive;
pub mod content;
pub mod doctor;
pub mod dump;
pub mod model;
pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqlx::migrate::{MigrateError, Migrator};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Backup, TableInfo};
use crate::config::{SourceConfig, Target};
use crate::error::{io_kind, Classify, ErrorKind};
use crate::process::ProcessError;
use crate::storage::{Storage, StorageError};

pub use dump::{glob_match, Dump, Part, Prepared};
pub use model::{Applied, DatabaseInfo, Dialect, SchemaModel};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to {what}: {message}")]
    Connect {
        what: String,
        message: String,
        kind: ErrorKind,
        /// What to check, when the error says more than its kind does.
        hint: Option<&'static str>,
        #[source]
        source: Option<sqlx::Error>,
    },
    #[error("{0}")]
    ToolMissing(String),
    #[error("schema pattern {pattern:?} matches no schema in the database (it has: {available}); fix `targets.{target}.schemas`")]
    NoSchemaMatch {
        target: String,
        pattern: String,
        available: String,
    },
    #[error("no database on the server of target {target} matches `databases` (less `exclude_databases`); it has: {available}")]
    NoDatabaseMatch { target: String, available: String },
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A statement or catalog query failed.
    #[error("{what}: {}", sql_message(source))]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("SQLite {}: {message}{}", path.display(), source.as_ref().map(|e| format!(": {}", sql_message(e))).unwrap_or_default())]
    Sqlite {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<sqlx::Error>,
    },
    /// Needs the operator's decision (exit 2): a non-empty database, a held lock, ...
    #[error("{0}")]
    Refused(String),
    /// A restored database does not hold what its manifest says.
    #[error("{0}")]
    Check(String),
    /// The archive does not hold what the restore asks for.
    #[error("{0}")]
    NotInArchive(String),
    #[error("{file} is corrupt or changed while it was restored (sha256 {actual}, the manifest says {expected}); the restore stopped before its commit. Restore an older backup, or the copy on another storage (--storage). If someone may have changed the archive on purpose, check the database and its roles: pg_restore runs an archive's definitions as it reads them, and a forged definition can commit on its own")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the restore was cancelled; nothing was changed")]
    Cancelled,
    #[error("{0}")]
    Unsupported(String),
    /// An encrypted archive that the configured keys do not open.
    #[error("{0}")]
    Decrypt(String),
}

/// What a database said, without the position in the server's C source that sqlx adds
/// ("at line 334"), which reads like a line of the operator's config; with the server's
/// detail and hint when it gives them.
pub fn sql_message(e: &sqlx::Error) -> String {
    let Some(d) = e.as_database_error() else {
        return e.to_string();
    };
    let mut text = d.message().to_string();
    if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        if let Some(detail) = pg.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = pg.hint() {
            text.push_str(&format!("; {hint}"));
        }
    }
    text
}

impl EngineError {
    pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> EngineError {
        let what = what.into();
        move |source| EngineError::Database { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let what = what.into();
        move |source| EngineError::Io { what, source }
    }
}

/// The kind of a database error, from its SQLSTATE (PostgreSQL) or result code (SQLite).
pub(crate) fn sqlx_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::Database(d) => match d.code().as_deref() {
            // PostgreSQL: privileges and passwords, missing objects, a full disk, and a
            // connection that went away.
            Some("42501") | Some("28000") | Some("28P01") => ErrorKind::Auth,
            Some("3D000") | Some("42P01") | Some("3F000") => ErrorKind::NotFound,
            Some(c) if c.starts_with("53") => ErrorKind::NoSpace,
            Some(c) if c.starts_with("08") || c == "57P01" => ErrorKind::Unreachable,
            // SQLite: SQLITE_FULL, and SQLITE_PERM, READONLY, AUTH.
            Some("13") => ErrorKind::NoSpace,
            Some("3") | Some("8") | Some("23") => ErrorKind::Auth,
            _ => ErrorKind::Failed,
        },
        sqlx::Error::Io(io) => io_kind(io),
        sqlx::Error::PoolTimedOut => ErrorKind::Unreachable,
        _ => ErrorKind::Failed,
    }
}

impl Classify for EngineError {
    fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Connect { kind, .. } => *kind,
            EngineError::ToolMissing(_) | EngineError::Check(_) => ErrorKind::Failed,
            // Found at run time against the live database: the run failed (exit 1).
            EngineError::NoSchemaMatch { .. } | EngineError::NoDatabaseMatch { .. } => {
                ErrorKind::Failed
            }
            EngineError::NotInArchive(_) => ErrorKind::NotFound,
            EngineError::Cancelled => ErrorKind::Cancelled,
            EngineError::Process(e) => e.kind(),
            EngineError::Database { source, .. } => sqlx_kind(source),
            EngineError::Sqlite { source, .. } => {
                source.as_ref().map(sqlx_kind).unwrap_or(ErrorKind::Failed)
            }
            EngineError::Refused(_) | EngineError::Unsupported(_) => ErrorKind::Refused,
            EngineError::Checksum { .. } => ErrorKind::Checksum,
            EngineError::Decrypt(_) => ErrorKind::Auth,
            EngineError::Io { source, .. } => io_kind(source),
            EngineError::Storage(e) => e.kind(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            EngineError::Storage(e) => e.hint(),
            EngineError::Process(e) if e.hint().is_some() => e.hint(),
            EngineError::Connect { hint: Some(h), .. } => Some((*h).to_string()),
            EngineError::Decrypt(_) => Some(
                "the private key is the age identity file made with `dbkeep key new`; `age-keygen -y FILE` prints the recipient it is for".into(),
            ),
            _ => match self.kind() {
                ErrorKind::Auth => {
                    Some("check the role's password and privileges (see README, privileges)".into())
                }
                ErrorKind::Unreachable => {
                    Some("is the server running and reachable from this host?".into())
                }
                ErrorKind::NoSpace => Some(
                    "free space on the filesystem named above: a SQLite backup needs room for a snapshot of the database beside its archives, a restore for the whole unpacked database (`dbkeep list` shows its raw size); or restore --into a path on another filesystem".into(),
                ),
                _ => None,
            },
        }
    }
}

/// A stored archive to restore: where it is and its manifest.
#[derive(Clone, Copy)]
pub struct Archive<'a> {
    pub storage: &'a dyn Storage,
    pub backup: &'a Backup,
    /// Where the restore's progress is counted.
    pub meter: Option<&'a std::sync::Arc<crate::progress::Meter>>,
    /// The private keys, when the archive is encrypted.
    pub keys: Option<&'a std::sync::Arc<crate::crypt::Identities>>,
    /// What proving its sha256 left: only the version proven is read, from its private
    /// copy when there is one.
    pub proof: Option<&'a archive::Proof>,
}

impl Archive<'_> {
    /// A reader over the stored object: its private copy, or the proven version of it,
    /// when there is one.
    pub async fn open(
        &self,
    ) -> Result<Box<dyn std::io::Read + Send>, crate::storage::StorageError> {
        if let Some(spool) = self.proof.and_then(|p| p.spool.as_ref()) {
            return spool
                .reader()
                .map_err(|source| crate::storage::StorageError::Io {
                    storage: self.storage.name(),
                    action: "read the private copy of",
                    path: self.backup.file.clone().into(),
                    source,
                });
        }
        let opened = self
            .storage
            .open_version(
                &self.backup.target,
                &self.backup.file,
                self.proof.and_then(|p| p.pin.as_deref()),
            )
            .await?;
        Ok(opened.reader)
    }
}

/// What part of an archive goes where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreMode {
    /// The whole archive; `clean` drops the archived objects first.
    Whole { clean: bool },
    /// Replace one schema: dropped and restored in the same transaction; `from_full` when
    /// it is taken out of a whole-database archive.
    Schema { name: String, from_full: bool },
    /// Roles and tablespaces (`pg_dumpall --globals-only`).
    Globals,
    /// The definitions only, no rows, into an empty database.
    Definitions,
}

/// A table by its schema (none in SQLite) and name, exactly as the catalog spells them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl std::fmt::Display for TableName {
    /// As an operator would type it in SQL: `schema.name`, quoted where needed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.schema {
            write!(f, "{}.", model::sql_ident(s))?;
        }
        f.write_str(&model::sql_ident(&self.name))
    }
}

/// One table of an archive restored beside the live data under another name
/// (`restore --table`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub from: TableName,
    pub to: TableName,
}

/// What a table restore put into the live database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRestored {
    pub copy: TableCopy,
    /// The rows the copy holds.
    pub rows: i64,
}

/// Where a restore writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The target's own database: a confirmation and a safety backup come first.
    Own,
    /// Another database (a URL) or file (a path), as the engine understands it, with the
    /// password given for it (never the target's own, unless it is the same role there).
    Other {
        to: String,
        password: Option<crate::config::Secret>,
    },
}

impl Destination {
    pub fn is_own(&self) -> bool {
        matches!(self, Destination::Own)
    }
}

/// What a scratch database is for; PostgreSQL builds drills and diffs on the target's
/// `drill_url` server when one is set, and the declared schema on the target's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Drill,
    Diff,
    Declared,
}

impl Purpose {
    pub fn word(self) -> &'static str {
        match self {
            Purpose::Drill => "drill",
            Purpose::Diff => "diff",
            Purpose::Declared => "schema",
        }
    }
}

/// Which migrations a migrator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrateStep {
    /// Apply pending migrations up to this version (all when `None`).
    Up(Option<i64>),
    /// Revert applied migrations newer than this version.
    Down(i64),
}

/// What a server-side lock is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// The replica lease: whoever holds it runs the target's schedules.
    Lease,
    /// One backup run at a time, across hosts.
    Run,
}

/// A lock held on the database server for as long as this value lives.
#[async_trait]
pub trait Hold: Send {
    /// Resolves when the lock is lost (its connection dropped or was terminated).
    async fn lost(&mut self);
}

/// The hold of an engine without server-side locks: never lost (the daemon's lock file
/// is the only lock then).
pub struct NoHold;

#[async_trait]
impl Hold for NoHold {
    async fn lost(&mut self) {
        std::future::pending::<()>().await
    }
}

/// One kind of database, configured for one target.
#[async_trait]
pub trait Engine: Send + Sync {
    /// `postgres` or `sqlite`.
    fn kind(&self) -> &'static str;
    /// Where the database is, for messages: host, port and database, or the file. Never
    /// credentials.
    fn location(&self) -> String;
    /// A cheap check that the database answers.
    async fn ping(&self) -> Result<(), EngineError>;
    /// Try to take a lock on the database server that every replica sees (PostgreSQL: a
    /// session advisory lock on a connection of its own); `None` when another holds it.
    async fn try_hold(&self, _kind: HoldKind) -> Result<Option<Box<dyn Hold>>, EngineError> {
        Ok(Some(Box::new(NoHold)))
    }
    /// The server's own data folder when this host can see it (PostgreSQL on this host,
    /// read by a role allowed to): nothing of dbkeep's may be written inside it.
    async fn data_directory(&self) -> Option<PathBuf> {
        None
    }
    /// Connect, check tools and versions, resolve the archives to make. Touches no storage.
    async fn prepare(&self) -> Result<Prepared, EngineError>;
    /// Start dumping one part. `scratch` is a folder for a short-lived snapshot file.
    async fn open(
        &self,
        prepared: &Prepared,
        part: &Part,
        scratch: &Path,
        cancel: &CancellationToken,
    ) -> Result<Dump, EngineError>;
    /// Server version, size and tables, for the admin API. Failures are in the result.
    async fn info(&self) -> DatabaseInfo;

    /// Where `restore --into VALUE` writes (the target's own database without it).
    fn destination(
        &self,
        into: Option<&str>,
        password: Option<crate::config::Secret>,
    ) -> Result<Destination, EngineError>;
    /// Whether `dest`, given as another place, is the target's own database after all (the
    /// same server and database, or the same file): such a restore is one over the live
    /// database, with its confirmation and safety backup. `database` as in [`describe`].
    async fn is_own_place(&self, _dest: &Destination, _database: Option<&str>) -> bool {
        false
    }
    /// The destination in words, for the confirmation prompt (no credentials); `database`
    /// is the database of a server target's archive, which its own destination is.
    fn describe(&self, dest: &Destination, database: Option<&str>) -> String;
    /// Whether this kind can restore that way at all (SQLite has no schemas or roles).
    fn supports(&self, mode: &RestoreMode) -> Result<(), EngineError>;
    /// Check everything that can be checked before anything changes (the archive holds
    /// what is asked, nothing outside it would be dropped, who will own the objects), get
    /// the destination ready (create a missing database, refuse a non-empty one without
    /// `yes`, keep writers out of a SQLite file), and return what restores into it.
    async fn begin_restore(
        &self,
        dest: &Destination,
        archive: Archive<'_>,
        mode: &RestoreMode,
        opts: &RestoreOptions,
    ) -> Result<Box<dyn Restorer>, EngineError>;

    /// Restore the tables `copies` name out of `archive` into the live database (of
    /// `archive`'s database, for a server target) under their new names, definition and
    /// rows, in one transaction; nothing that exists there is changed, and a new name
    /// that is taken is refused before anything is written. The copy has no foreign keys
    /// and no triggers (they would tie it to, or act on, the live data). `dir` holds
    /// scratch files. Returns what went in, and notes for the operator.
    async fn restore_tables(
        &self,
        archive: Archive<'_>,
        copies: &[TableCopy],
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<(Vec<TableRestored>, Vec<String>), EngineError>;

    /// A connection to the live database, for schema work.
    async fn connect(&self) -> Result<Box<dyn Session>, EngineError>;
    /// A new, empty scratch database (dropped by [`Scratch::discard`]); `dir` holds
    /// scratch files of kinds that are files.
    async fn scratch(&self, purpose: Purpose, dir: &Path) -> Result<Box<dyn Scratch>, EngineError>;
    /// Why a scratch database for `purpose` cannot be made with the role's rights (the
    /// fix included), found without trying; `None` when it can, or when only trying tells.
    async fn scratch_denied(&self, _purpose: Purpose) -> Result<Option<String>, EngineError> {
        Ok(None)
    }
    /// Check, without changing anything, each feature in `wants` against the role's
    /// rights and the tools at hand.
    async fn doctor(&self, wants: doctor::Wants) -> Vec<doctor::Check>;
}

/// What the operator allowed a restore to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Replace a non-empty destination that is not the target's own database.
    pub yes: bool,
    /// Let replacing a schema drop objects outside it that depend on it.
    pub drop_dependents: bool,
    /// A database (or file) the restore creates is removed again when it fails: set by a
    /// restore of one archive, not by one of several into the same new database.
    pub discard_created: bool,
}

/// Restores into a destination that [`Engine::begin_restore`] checked and got ready;
/// dropping it releases what it holds.
#[async_trait]
pub trait Restorer: Send {
    /// What the operator should know about how the restore will go (roles not kept).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    async fn restore(
        self: Box<Self>,
        archive: Archive<'_>,
        mode: &RestoreMode,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError>;
}

/// A throwaway database for drills, diffs and the declared schema.
#[async_trait]
pub trait Scratch: Send + Sync {
    async fn restore(
        &self,
        archive: Archive<'_>,
        mode: &RestoreMode,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError>;
    async fn connect(&self) -> Result<Box<dyn Session>, EngineError>;
    /// Every table's rows counted and hashed the way `backup`'s content was taken, for a
    /// drill to compare.
    async fn content(
        &self,
        backup: &crate::catalog::Manifest,
        cancel: &CancellationToken,
    ) -> Result<crate::catalog::Content, EngineError>;
    /// Drop the database (or remove the file). Call it also after a failure.
    async fn discard(self: Box<Self>) -> Result<(), EngineError>;
}

/// A connection for schema work: read models and histories, run migrations and DDL.
#[async_trait]
pub trait Session: Send {
    fn dialect(&self) -> Dialect;
    /// The schema unqualified names land in.
    async fn main_schema(&mut self) -> Result<String, EngineError>;
    /// Every schema that holds user objects, sorted.
    async fn schemas(&mut self) -> Result<Vec<String>, EngineError>;
    async fn model(&mut self, schema: &str) -> Result<SchemaModel, EngineError>;
    /// The objects of `schema` the table model leaves out, one line each, sorted: views,
    /// sequences, functions, types (enum labels included), triggers, non-default column
    /// collations (PostgreSQL); views and triggers (SQLite).
    async fn inventory(&mut self, schema: &str) -> Result<Vec<String>, EngineError>;
    /// The history table of `schema` (unqualified for `None`), quoted for SQL.
    fn history_table(&self, schema: Option<&str>) -> String;
    async fn applied(&mut self, schema: &str) -> Result<Vec<Applied>, EngineError>;
    /// Run `migrator` with `search_path` (when given) set to one schema.
    async fn migrate(
        &mut self,
        migrator: &Migrator,
        search_path: Option<&str>,
        step: MigrateStep,
    ) -> Result<(), MigrateError>;
    /// Record the up migrations of `migrator` up to `upto` as applied, without running
    /// them (adopting a schema built before its migrations), in one transaction.
    async fn baseline(&mut self, migrator: &Migrator, upto: i64) -> Result<(), MigrateError>;
    /// Run a script of statements (the declared schema's DDL).
    async fn execute_script(&mut self, sql: &str) -> Result<(), EngineError>;
    /// Run each schema's statements, with the schema as search path, in one transaction.
    async fn apply_in_transaction(
        &mut self,
        batches: &[(String, Vec<String>)],
    ) -> Result<(), EngineError>;
    /// Every table is present, and holds rows where the backup said it had some.
    async fn verify_tables(&mut self, tables: &[TableInfo]) -> Result<(), EngineError>;
    async fn close(self: Box<Self>);
}

/// The engine of a target: the one place a kind of database is chosen.
pub fn build(target: &Target) -> Box<dyn Engine> {
    match &target.source {
        SourceConfig::Postgres(pg) => Box::new(postgres::PostgresEngine::new(
            &target.name,
            (**pg).clone(),
            target.timeout,
        )),
        SourceConfig::Sqlite(sq) => Box::new(sqlite::SqliteEngine::new(&target.name, sq.clone())),
    }
}

/// Run `migrator` one step on a connection the caller holds.
pub(crate) async fn migrate_on<C: sqlx::migrate::Migrate>(
    migrator: &Migrator,
    conn: &mut C,
    step: MigrateStep,
) -> Result<(), MigrateError> {
    match step {
        MigrateStep::Up(to) => migrator.run_direct(to, conn, false).await,
        MigrateStep::Down(to) => undo_direct(migrator, conn, to).await,
    }
}

/// `Migrator::undo` on a connection the caller already holds: sqlx's own `undo` takes an
/// `Acquire`, whose future cannot be proven `Send` behind a trait object.
async fn undo_direct<C: sqlx::migrate::Migrate>(
    migrator: &Migrator,
    conn: &mut C,
    target: i64,
) -> Result<(), MigrateError> {
    let table = migrator.table_name.as_ref();
    if migrator.locking {
        conn.lock().await?;
    }
    conn.ensure_migrations_table(table).await?;
    if let Some(version) = conn.dirty_version(table).await? {
        return Err(MigrateError::Dirty(version));
    }
    let applied = conn.list_applied_migrations(table).await?;
    if !migrator.ignore_missing {
        for a in &applied {
            if !migrator.iter().any(|m| m.version == a.version) {
                return Err(MigrateError::VersionMissing(a.version));
            }
        }
    }
    for m in migrator
        .iter()
        .rev()
        .filter(|m| m.migration_type.is_down_migration())
        .filter(|m| m.version > target)
        .filter(|m| applied.iter().any(|a| a.version == m.version))
    {
        conn.revert(table, m).await?;
    }
    if migrator.locking {
        conn.unlock().await?;
    }
    Ok(())
}

/// The 1-based character position in the statement text where the server says an error
/// is (PostgreSQL reports it; SQLite does not).
pub fn statement_position(e: &sqlx::Error) -> Option<usize> {
    postgres::conn::error_position(e)
}
