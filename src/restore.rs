//! Restores and restore drills: pick an archive, prove its checksum before touching any
//! database, restore in one transaction (or one atomic rename for SQLite), and check it.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, Backup, BackupId, Contents, Manifest};
use crate::compress;
use crate::config::{PostgresConfig, Secret, SourceConfig, Target};
use crate::job::{self, JobError};
use crate::metrics;
use crate::process::{self, ProcessError, Spec};
use crate::source::postgres::{find_tool_dir, parse_tool_major};
use crate::state::{RunStatus, StateFile};
use crate::storage::local::ScratchFile;
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The operator must decide (exit 2): no confirmation, a non-empty destination, ...
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{file} on {storage} is corrupt: its sha256 is {actual}, the manifest says {expected}; nothing was touched. Restore an older backup, or the copy on another storage")]
    Checksum {
        file: String,
        storage: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("safety backup before the restore failed, so nothing was restored: {0}")]
    SafetyBackup(JobError),
    #[error("{0}")]
    Database(String),
    #[error("{0}")]
    Other(String),
}

/// Which backup: `latest` or an id, optionally `:schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub id: Option<BackupId>,
    pub schema: Option<String>,
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
        Ok(Selector { id, schema })
    }
}

/// The archive chosen for a restore, and where it is read from.
pub struct Chosen {
    pub backup: Backup,
    pub storage: usize,
    /// Restore only this schema out of a whole-database archive (`pg_restore -n`).
    pub schema_from_full: Option<String>,
}

impl From<catalog::CatalogError> for RestoreError {
    fn from(e: catalog::CatalogError) -> Self {
        match e {
            catalog::CatalogError::Storage(se) => RestoreError::Storage(se),
        }
    }
}

/// Every complete backup of `target` with the index of the storage it is on, storages in
/// preference order (local first).
async fn list_everywhere(
    target: &Target,
    storages: &[Box<dyn Storage>],
) -> Result<Vec<(usize, Backup)>, RestoreError> {
    let now = Utc::now();
    let mut all = Vec::new();
    for (i, s) in storages.iter().enumerate() {
        let listing = catalog::list(s.as_ref(), &target.name, now).await?;
        all.extend(listing.complete.into_iter().map(|b| (i, b)));
    }
    Ok(all)
}

/// Pick the archive for `selector`: the local copy when there is one, else a remote one.
pub async fn choose(
    target: &Target,
    storages: &[Box<dyn Storage>],
    selector: &Selector,
    globals: bool,
) -> Result<Chosen, RestoreError> {
    let all = list_everywhere(target, storages).await?;
    let id = match selector.id {
        Some(id) => id,
        None => all.iter().map(|(_, b)| b.id).max().ok_or_else(|| {
            RestoreError::NotFound(format!(
                "target {} has no complete backup to restore",
                target.name
            ))
        })?,
    };
    let of_id: Vec<&(usize, Backup)> = all.iter().filter(|(_, b)| b.id == id).collect();
    if of_id.is_empty() {
        return Err(RestoreError::NotFound(format!(
            "no complete backup {id} of target {}; `dbkeep list {}` shows the ids",
            target.name, target.name
        )));
    }
    // Storages are in preference order (local first); keep the first copy of each file.
    let pick = |want: &dyn Fn(&Backup) -> bool| {
        of_id
            .iter()
            .find(|(_, b)| want(b))
            .map(|(i, b)| (*i, b.clone()))
    };
    if globals {
        let (storage, backup) = pick(&|b| b.contents == Contents::Globals).ok_or_else(|| {
            RestoreError::NotFound(format!(
                "backup {id} has no globals archive (set `globals = true` on the target)"
            ))
        })?;
        return Ok(Chosen {
            backup,
            storage,
            schema_from_full: None,
        });
    }
    if let Some(schema) = &selector.schema {
        if let Some((storage, backup)) =
            pick(&|b| b.contents == Contents::Schema && b.schema.as_deref() == Some(schema))
        {
            return Ok(Chosen {
                backup,
                storage,
                schema_from_full: None,
            });
        }
        if let Some((storage, backup)) = pick(&|b| b.contents == Contents::Database) {
            return Ok(Chosen {
                backup,
                storage,
                schema_from_full: Some(schema.clone()),
            });
        }
        return Err(RestoreError::NotFound(format!(
            "backup {id} has no archive of schema {schema:?}"
        )));
    }
    if let Some((storage, backup)) = pick(&|b| b.contents == Contents::Database) {
        return Ok(Chosen {
            backup,
            storage,
            schema_from_full: None,
        });
    }
    let schemas: Vec<String> = of_id.iter().filter_map(|(_, b)| b.schema.clone()).collect();
    Err(RestoreError::NotFound(format!(
        "backup {id} holds one archive per schema; restore one with {id}:SCHEMA (schemas: {})",
        schemas.join(", ")
    )))
}

/// Stream the stored archive and compare its sha256 with the manifest.
pub async fn verify_checksum(storage: &dyn Storage, backup: &Backup) -> Result<(), RestoreError> {
    let reader = storage.open(&backup.target, &backup.file).await?;
    let actual = tokio::task::spawn_blocking(move || -> io::Result<String> {
        let mut reader = reader;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| RestoreError::Other(e.to_string()))?
    .map_err(|e| RestoreError::Other(format!("reading {}: {e}", backup.file)))?;
    if actual != backup.sha256 {
        return Err(RestoreError::Checksum {
            file: backup.file.clone(),
            storage: storage.name().to_string(),
            expected: backup.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// Where a restore writes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// The target's own database: confirmation and a safety backup first.
    OwnPostgres,
    /// Another database on a PostgreSQL server (created if missing).
    OtherPostgres {
        url: String,
    },
    OwnSqlite,
    NewSqlite {
        path: PathBuf,
    },
}

impl Destination {
    pub fn parse(target: &Target, into: Option<&str>) -> Result<Self, RestoreError> {
        Ok(match (&target.source, into) {
            (SourceConfig::Postgres(_), None) => Destination::OwnPostgres,
            (SourceConfig::Postgres(_), Some(u)) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Destination::OtherPostgres { url: u.to_string() }
            }
            (SourceConfig::Postgres(_), Some(u)) => {
                return Err(RestoreError::Refused(format!(
                    "--into {u:?}: a postgres target restores into a URL such as postgres://user@host/newdb"
                )))
            }
            (SourceConfig::Sqlite(_), None) => Destination::OwnSqlite,
            (SourceConfig::Sqlite(_), Some(p)) => Destination::NewSqlite { path: PathBuf::from(p) },
        })
    }

    pub fn is_own(&self) -> bool {
        matches!(self, Destination::OwnPostgres | Destination::OwnSqlite)
    }
}

/// What the operator confirms.
pub fn describe(target: &Target, chosen: &Chosen, dest: &Destination) -> String {
    let b = &chosen.backup;
    let age = crate::retention::fmt_age(Utc::now() - b.id.time());
    let what = match (&chosen.schema_from_full, &b.schema, b.contents) {
        (_, _, Contents::Globals) => "roles and tablespaces (globals)".to_string(),
        (Some(s), _, _) | (None, Some(s), _) => format!("schema {s}"),
        _ => "the whole database".to_string(),
    };
    let into = match (dest, &target.source) {
        (Destination::OwnPostgres, SourceConfig::Postgres(pg)) => {
            format!("target {}'s own database {}", target.name, pg.url)
        }
        (Destination::OwnSqlite, SourceConfig::Sqlite(sq)) => {
            format!("target {}'s own file {}", target.name, sq.path.display())
        }
        (Destination::OtherPostgres { url }, _) => strip_password(url),
        (Destination::NewSqlite { path }, _) => path.display().to_string(),
        _ => "?".into(),
    };
    format!(
        "restore {what} of target {} from backup {} ({age} old, {}, {} on {})\ninto {into}",
        target.name,
        b.id,
        human(b.bytes),
        b.file,
        b.storage
    )
}

fn human(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / 1048576.0)
}

fn strip_password(url: &str) -> String {
    url::Url::parse(url)
        .map(|mut u| {
            let _ = u.set_password(None);
            u.to_string()
        })
        .unwrap_or_else(|_| "<url>".into())
}

/// What the restore command decided.
pub struct Options {
    pub yes: bool,
    pub safety_backup: bool,
}

/// Run a restore whose archive was chosen, checked and confirmed.
pub async fn execute(
    target: &Target,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    chosen: &Chosen,
    dest: &Destination,
    opts: &Options,
    cancel: &CancellationToken,
) -> Result<(), RestoreError> {
    let storage = storages[chosen.storage].as_ref();
    match (&target.source, dest) {
        (
            SourceConfig::Postgres(pg),
            Destination::OwnPostgres | Destination::OtherPostgres { .. },
        ) => {
            let url = match dest {
                Destination::OtherPostgres { url } => url.clone(),
                _ => pg.url.clone(),
            };
            let (url, password) = split_password(&url, pg.password.as_ref())?;
            if let Destination::OtherPostgres { .. } = dest {
                prepare_database(&url, password.as_ref(), opts.yes).await?;
            }
            if dest.is_own() && opts.safety_backup {
                safety_backup(target, storages, state, cancel).await?;
            }
            let mode = match (
                chosen.backup.contents,
                &chosen.schema_from_full,
                &chosen.backup.schema,
            ) {
                (Contents::Globals, _, _) => Mode::Globals,
                (_, Some(s), _) => Mode::Schema {
                    name: s.clone(),
                    from_full: true,
                },
                (Contents::Schema, None, Some(s)) if dest.is_own() => Mode::Schema {
                    name: s.clone(),
                    from_full: false,
                },
                _ => Mode::Whole {
                    clean: dest.is_own(),
                },
            };
            let tools = restore_tools(
                pg,
                &url,
                password.as_ref(),
                &chosen.backup.manifest,
                &target.name,
            )
            .await?;
            pg_restore(
                &tools,
                &url,
                password.as_ref(),
                storage,
                &chosen.backup,
                &mode,
                pg.restore_owner,
                target.timeout,
                cancel,
            )
            .await
        }
        (SourceConfig::Sqlite(sq), Destination::OwnSqlite) => {
            // Writers are kept out from here to the rename; readers (the safety backup's
            // snapshot among them) still pass.
            let lock = hold_write_lock(&sq.path).await?;
            if opts.safety_backup {
                safety_backup(target, storages, state, cancel).await?;
            }
            sqlite_restore(storage, &chosen.backup, &sq.path, true).await?;
            drop(lock);
            Ok(())
        }
        (SourceConfig::Sqlite(_), Destination::NewSqlite { path }) => {
            if path.exists() && !opts.yes {
                return Err(RestoreError::Refused(format!(
                    "{} exists: pick a new path, or add --yes to replace it",
                    path.display()
                )));
            }
            sqlite_restore(storage, &chosen.backup, path, false).await
        }
        _ => Err(RestoreError::Other(
            "destination does not fit the target's kind".into(),
        )),
    }
}

async fn safety_backup(
    target: &Target,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    cancel: &CancellationToken,
) -> Result<(), RestoreError> {
    let outcome = job::backup(target, storages, state, Some("pre-restore"), cancel)
        .await
        .map_err(RestoreError::SafetyBackup)?;
    tracing::info!(target = %target.name, backup_id = %outcome.id, "safety backup (pre-restore) taken");
    Ok(())
}

/// The URL without password, and the password to pass by environment.
pub(crate) fn split_password(
    url: &str,
    configured: Option<&Secret>,
) -> Result<(String, Option<Secret>), RestoreError> {
    let mut u = url::Url::parse(url)
        .map_err(|e| RestoreError::Refused(format!("{url:?} is not a URL: {e}")))?;
    let from_url = u.password().map(|p| Secret::new(p.to_string()));
    let _ = u.set_password(None);
    Ok((
        u.to_string(),
        from_url
            .or_else(|| configured.cloned())
            .or_else(|| std::env::var("PGPASSWORD").ok().map(Secret::new)),
    ))
}

pub(crate) async fn connect(
    url: &str,
    password: Option<&Secret>,
) -> Result<PgConnection, RestoreError> {
    let mut opts = PgConnectOptions::from_str(url)
        .map_err(|e| RestoreError::Database(format!("bad url: {e}")))?;
    if let Some(p) = password {
        opts = opts.password(p.expose());
    }
    let opts = opts.application_name("dbkeep");
    tokio::time::timeout(Duration::from_secs(15), PgConnection::connect_with(&opts))
        .await
        .map_err(|_| {
            RestoreError::Database(format!("{}: no answer within 15 s", strip_password(url)))
        })?
        .map_err(|e| {
            RestoreError::Database(format!("cannot connect to {}: {e}", strip_password(url)))
        })
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The same server's maintenance database, for CREATE/DROP DATABASE.
fn maintenance_url(url: &str) -> Result<(String, String), RestoreError> {
    let mut u = url::Url::parse(url).map_err(|e| RestoreError::Refused(format!("bad url: {e}")))?;
    let db = u.path().trim_start_matches('/').to_string();
    if db.is_empty() {
        return Err(RestoreError::Refused(format!(
            "{url:?} names no database: add /dbname"
        )));
    }
    u.set_path("/postgres");
    Ok((u.to_string(), db))
}

/// Create the `--into` database when missing; refuse a non-empty one without --yes.
async fn prepare_database(
    url: &str,
    password: Option<&Secret>,
    yes: bool,
) -> Result<(), RestoreError> {
    let (admin_url, db) = maintenance_url(url)?;
    let mut admin = connect(&admin_url, password).await?;
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&db)
        .fetch_optional(&mut admin)
        .await
        .map_err(|e| RestoreError::Database(e.to_string()))?;
    if exists.is_none() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_ident(&db)
        )))
        .execute(&mut admin)
        .await
        .map_err(|e| RestoreError::Database(format!("cannot create database {db}: {e}")))?;
        tracing::info!(database = %db, "created database");
        return Ok(());
    }
    let _ = admin.close().await;
    let mut conn = connect(url, password).await?;
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| RestoreError::Database(e.to_string()))?;
    if tables > 0 && !yes {
        return Err(RestoreError::Refused(format!(
            "database {db} exists and is not empty ({tables} relations): pick a new name, or add --yes to restore over it"
        )));
    }
    Ok(())
}

/// pg_restore and psql that can read this archive and talk to this server.
pub(crate) async fn restore_tools(
    pg: &PostgresConfig,
    url: &str,
    password: Option<&Secret>,
    manifest: &Manifest,
    target: &str,
) -> Result<PathBuf, RestoreError> {
    let mut conn = connect(url, password).await?;
    let (num,): (String,) = sqlx::query_as("SELECT current_setting('server_version_num')")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| RestoreError::Database(e.to_string()))?;
    let _ = conn.close().await;
    let server_major = num.parse::<u32>().map(|n| n / 10000).unwrap_or(0);
    let dump_major = manifest
        .tools
        .dump_tool
        .as_deref()
        .and_then(parse_tool_major)
        .unwrap_or(0);
    let (dir, _) = find_tool_dir(
        "pg_restore",
        server_major.max(dump_major),
        pg.pg_bin_dir.as_deref(),
        target,
    )
    .await
    .map_err(|e| RestoreError::Other(e.to_string()))?;
    Ok(dir)
}

/// What part of an archive goes where.
pub enum Mode {
    /// The whole archive; `clean` drops the archived objects first.
    Whole { clean: bool },
    /// Replace one schema: dropped (CASCADE) and restored in the same transaction.
    Schema { name: String, from_full: bool },
    /// Roles and tablespaces, with psql; errors for roles that exist are expected.
    Globals,
    /// The definitions only, no rows (`pg_restore --schema-only`), into an empty database.
    Definitions,
}

/// Counts bytes, hashes them, and reports progress on a terminal.
struct Progress<R> {
    inner: R,
    hasher: Sha256,
    done: u64,
    total: u64,
    started: Instant,
    last: Instant,
    tty: bool,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.done += n as u64;
        let interval = if self.tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(15)
        };
        if self.last.elapsed() >= interval || (n == 0 && self.tty) {
            self.last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let pct = 100.0 * self.done as f64 / self.total.max(1) as f64;
            let rate = self.done as f64 / secs / 1048576.0;
            if self.tty {
                eprint!(
                    "\rrestoring: {} / {} ({pct:.0}%), {rate:.1} MiB/s   ",
                    human(self.done),
                    human(self.total)
                );
                if n == 0 {
                    eprintln!();
                }
            } else {
                tracing::info!(
                    bytes = self.done,
                    total = self.total,
                    "restore progress {pct:.0}%, {rate:.1} MiB/s"
                );
            }
        }
        Ok(n)
    }
}

/// Stream the archive into the database: decompress -> pg_restore -f - -> dbkeep -> psql.
/// psql runs one explicit transaction, and dbkeep sends its COMMIT only after pg_restore
/// exited 0 and the archive's sha256 matched again; any failure (pg_restore, psql, the
/// server, a changed archive, cancellation) ends psql without COMMIT, so nothing is kept.
#[allow(clippy::too_many_arguments)]
pub async fn pg_restore(
    tools: &Path,
    url: &str,
    password: Option<&Secret>,
    storage: &dyn Storage,
    backup: &Backup,
    mode: &Mode,
    keep_owner: bool,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), RestoreError> {
    use tokio::io::AsyncWriteExt;
    if let Mode::Whole { .. } | Mode::Definitions = mode {
        // pg_restore parses the archive itself: a truncated or corrupt stream is an error,
        // and --single-transaction rolls everything back. `feed` withholds the end of the
        // stream until the sha256 matched, so pg_restore cannot commit before that.
        let mut spec = Spec::new(tools.join("pg_restore"))
            .env("PGAPPNAME", "dbkeep-restore")
            .secret_env("PGPASSWORD", password)
            .arg("--single-transaction")
            .arg("--exit-on-error")
            .arg(format!("--dbname={url}"));
        if !keep_owner {
            spec = spec.arg("--no-owner");
        }
        match mode {
            Mode::Whole { clean: true } => spec = spec.arg("--clean").arg("--if-exists"),
            Mode::Definitions => spec = spec.arg("--schema-only"),
            _ => {}
        }
        let (run, stdin) = process::spawn_stdin(spec)?;
        let stop = run.stopper();
        let reader = storage.open(&backup.target, &backup.file).await?;
        let feeding = async {
            let r = feed(reader, backup, stdin).await;
            if r.is_err() {
                stop.terminate();
            }
            r
        };
        let (fed, restored) = tokio::join!(feeding, run.wait(cancel, timeout));
        // A changed archive is the cause when both fail (pg_restore was stopped for it).
        fed.map_err(RestoreError::Other)?;
        return restored.map_err(RestoreError::from);
    }
    let mut psql = Spec::new(tools.join("psql"))
        .env("PGAPPNAME", "dbkeep-restore")
        .secret_env("PGPASSWORD", password)
        .arg("-X")
        .arg("-q")
        .arg(format!("--dbname={url}"));
    if !matches!(mode, Mode::Globals) {
        psql = psql.arg("--set=ON_ERROR_STOP=1");
    }
    let (psql_run, mut psql_in) = process::spawn_stdin(psql.arg("--file=-"))?;
    let psql_stop = psql_run.stopper();
    let reader = storage.open(&backup.target, &backup.file).await?;

    if let Mode::Globals = mode {
        // Roles that exist already are reported on psql's stderr and skipped.
        let fed = feed(reader, backup, psql_in).await;
        if fed.is_err() {
            psql_stop.terminate();
        }
        let waited = psql_run.wait(cancel, timeout).await;
        fed.map_err(RestoreError::Other)?;
        return waited.map_err(RestoreError::from);
    }

    let mut first = Spec::new(tools.join("pg_restore")).arg("--file=-");
    if !keep_owner {
        first = first.arg("--no-owner");
    }
    let mut prelude = String::from("BEGIN;\n");
    match mode {
        Mode::Whole { clean: true } => first = first.arg("--clean").arg("--if-exists"),
        Mode::Schema { name, from_full } => {
            prelude.push_str(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE;\n",
                quote_ident(name)
            ));
            if *from_full {
                first = first.arg(format!("--schema={name}"));
                prelude.push_str(&format!("CREATE SCHEMA {};\n", quote_ident(name)));
            }
        }
        _ => {}
    }
    let (pgr_run, pgr_in, mut pgr_out) = process::spawn_filter(first)?;
    let pgr_stop = pgr_run.stopper();

    let feeding = async {
        let r = feed(reader, backup, pgr_in).await;
        if r.is_err() {
            pgr_stop.terminate();
        }
        r
    };
    let relaying = async {
        let r: io::Result<()> = async {
            psql_in.write_all(prelude.as_bytes()).await?;
            tokio::io::copy(&mut pgr_out, &mut psql_in).await?;
            Ok(())
        }
        .await;
        if r.is_err() {
            // psql stopped reading (it failed): pg_restore must not block on a full pipe.
            pgr_stop.terminate();
        }
        r
    };
    let (fed, relayed, restored) = tokio::join!(feeding, relaying, pgr_run.wait(cancel, timeout));
    let ok = fed.is_ok() && relayed.is_ok() && restored.is_ok() && !cancel.is_cancelled();
    if ok {
        let committed: io::Result<()> = async {
            psql_in.write_all(b"COMMIT;\n").await?;
            psql_in.shutdown().await
        }
        .await;
        drop(psql_in);
        let done = psql_run.wait(cancel, timeout).await;
        committed.map_err(|e| RestoreError::Other(format!("psql stopped before COMMIT: {e}")))?;
        return done.map_err(RestoreError::from);
    }
    // No COMMIT: psql ends and the server rolls the transaction back.
    psql_stop.terminate();
    drop(psql_in);
    let psql_result = psql_run.wait(cancel, timeout).await;
    // The most downstream failure explains the others (SIGPIPE, broken pipe).
    if let Err(e) = psql_result {
        if !matches!(e, ProcessError::Failed { ref status, .. } if status.contains("signal 15")) {
            return Err(e.into());
        }
    }
    restored?;
    fed.map_err(RestoreError::Other)?;
    relayed.map_err(|e| RestoreError::Other(format!("relaying pg_restore output to psql: {e}")))?;
    Err(RestoreError::Other(
        "restore cancelled; nothing was changed".into(),
    ))
}

/// How much of the end of a restore stream is held back until its checksum is confirmed.
const HOLD_BACK: usize = 64 * 1024;

/// Passes bytes on but keeps the last `HOLD_BACK` until `release`: the consumer cannot
/// reach the end of the stream (and commit) before the caller allows it.
struct HoldBack<W: Write> {
    inner: W,
    tail: Vec<u8>,
}

impl<W: Write> HoldBack<W> {
    fn new(inner: W) -> Self {
        HoldBack {
            inner,
            tail: Vec::with_capacity(2 * HOLD_BACK),
        }
    }

    fn release(mut self) -> io::Result<W> {
        self.inner.write_all(&self.tail)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for HoldBack<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tail.extend_from_slice(buf);
        if self.tail.len() > 2 * HOLD_BACK {
            let pass = self.tail.len() - HOLD_BACK;
            self.inner.write_all(&self.tail[..pass])?;
            self.tail.drain(..pass);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decompress the stored archive into `sink`, hashing the stored bytes on the way; a hash
/// that differs from the manifest's is an error before the sink sees its end.
async fn feed(
    reader: Box<dyn Read + Send>,
    backup: &Backup,
    sink: tokio::process::ChildStdin,
) -> Result<(), String> {
    let codec = backup.manifest.codec.clone();
    let expected = backup.sha256.clone();
    let file = backup.file.clone();
    let total = backup.bytes;
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let progress = Progress {
            inner: reader,
            hasher: Sha256::new(),
            done: 0,
            total,
            started: Instant::now(),
            last: Instant::now(),
            tty: io::stderr().is_terminal(),
        };
        let mut out = HoldBack::new(SyncIoBridge::new(sink));
        let mut decoder = compress::decoder_for(&codec, progress).map_err(|e| e.to_string())?;
        // pg_restore with --schema stops reading once it has what it wants (exit 0): a
        // closed pipe is not an error here; its exit status says whether it succeeded.
        let closed_early = match io::copy(&mut decoder, &mut out) {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => true,
            Err(e) => return Err(format!("streaming {file} into the restore: {e}")),
        };
        // Read the rest so the hash covers the whole stored object.
        let mut progress = compress::into_inner(decoder);
        io::copy(&mut progress, &mut io::sink()).map_err(|e| e.to_string())?;
        let actual = hex::encode(progress.hasher.clone().finalize());
        if actual != expected {
            return Err(format!(
                "{file} changed while it was restored (sha256 {actual}, expected {expected})"
            ));
        }
        if !closed_early {
            // The consumer may also stop at the held-back tail; its exit status decides.
            match out.release() {
                Ok(mut inner) => {
                    inner.flush().map_err(|e| e.to_string())?;
                    inner.shutdown().map_err(|e| e.to_string())?;
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(format!("streaming {file} into the restore: {e}")),
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Keep writers out of a SQLite database while it is replaced; refuse if one is writing.
async fn hold_write_lock(path: &Path) -> Result<SqliteConnection, RestoreError> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_millis(500));
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .map_err(|e| RestoreError::Database(format!("cannot open {}: {e}", path.display())))?;
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await.map_err(|e| {
        RestoreError::Refused(format!(
            "another process holds a write lock on {} ({e}); stop the application that writes to it, \
             or restore with --into NEW_PATH",
            path.display()
        ))
    })?;
    Ok(conn)
}

/// Decompress into a temp file beside `dest`, check it, then rename it over `dest`.
pub(crate) async fn sqlite_restore(
    storage: &dyn Storage,
    backup: &Backup,
    dest: &Path,
    replacing_live: bool,
) -> Result<(), RestoreError> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir)
        .map_err(|e| RestoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
    let scratch = ScratchFile::reserve(&dir, "restore.sqlite");
    let tmp = scratch.path().to_path_buf();
    let reader = storage.open(&backup.target, &backup.file).await?;
    let codec = backup.manifest.codec.clone();
    let expected = backup.sha256.clone();
    let tmp2 = tmp.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let progress = Progress {
            inner: reader,
            hasher: Sha256::new(),
            done: 0,
            total: 0,
            started: Instant::now(),
            last: Instant::now(),
            tty: false,
        };
        let mut decoder = compress::decoder_for(&codec, progress).map_err(|e| e.to_string())?;
        let mut f = std::fs::File::create(&tmp2).map_err(|e| e.to_string())?;
        io::copy(&mut decoder, &mut f).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        let mut progress = compress::into_inner(decoder);
        io::copy(&mut progress, &mut io::sink()).map_err(|e| e.to_string())?;
        let actual = hex::encode(progress.hasher.clone().finalize());
        if actual != expected {
            return Err(format!(
                "archive changed while it was restored (sha256 {actual}, expected {expected})"
            ));
        }
        Ok(())
    })
    .await
    .map_err(|e| RestoreError::Other(e.to_string()))?
    .map_err(RestoreError::Other)?;
    check_sqlite(&tmp, &backup.manifest).await?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        RestoreError::Other(format!(
            "cannot move the restored file into {}: {e}",
            dest.display()
        ))
    })?;
    if replacing_live {
        // The old database's WAL and shared-memory files must not be applied to the new one.
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", dest.display()));
            let _ = std::fs::remove_file(side);
        }
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    drop(scratch);
    Ok(())
}

/// `PRAGMA integrity_check`, and every table of the manifest present (with rows where it had).
async fn check_sqlite(path: &Path, manifest: &Manifest) -> Result<(), RestoreError> {
    let opts = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .map_err(|e| RestoreError::Database(format!("the restored file does not open: {e}")))?;
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| RestoreError::Database(e.to_string()))?;
    if rows.len() != 1 || rows[0].0 != "ok" {
        return Err(RestoreError::Database(format!(
            "the restored file fails PRAGMA integrity_check: {}",
            rows.into_iter()
                .take(3)
                .map(|r| r.0)
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    for t in &manifest.tables {
        let sql = format!("SELECT count(*) FROM {}", quote_ident(&t.name));
        let got: Result<(i64,), _> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await;
        match got {
            Err(e) => {
                return Err(RestoreError::Database(format!(
                    "table {} is missing after restore: {e}",
                    t.name
                )))
            }
            Ok((0,)) if t.rows.unwrap_or(0) > 0 => {
                return Err(RestoreError::Database(format!(
                    "table {} is empty after restore; it had {} rows",
                    t.name,
                    t.rows.unwrap_or(0)
                )))
            }
            Ok(_) => {}
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Every table of the manifests present after a drill restore, with rows where it had.
async fn check_postgres(
    url: &str,
    password: Option<&Secret>,
    manifests: &[&Manifest],
) -> Result<(), RestoreError> {
    let mut conn = connect(url, password).await?;
    for m in manifests {
        for t in &m.tables {
            let schema = t.schema.clone().unwrap_or_else(|| "public".into());
            let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&t.name));
            let present: Option<(bool,)> = sqlx::query_as(
                "SELECT true FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
            )
            .bind(&schema)
            .bind(&t.name)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| RestoreError::Database(e.to_string()))?;
            if present.is_none() {
                return Err(RestoreError::Database(format!(
                    "table {qualified} is missing after the drill restore"
                )));
            }
            if t.rows.unwrap_or(0) > 0 {
                let sql = format!("SELECT EXISTS (SELECT 1 FROM {qualified})");
                let (has,): (bool,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| RestoreError::Database(e.to_string()))?;
                if !has {
                    return Err(RestoreError::Database(format!(
                        "table {qualified} is empty after the drill restore; about {} rows were backed up",
                        t.rows.unwrap_or(0)
                    )));
                }
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// What a drill proved.
pub struct DrillReport {
    pub id: BackupId,
    pub archives: usize,
    pub tables: usize,
    pub duration: Duration,
}

/// Restore the newest complete backup into a scratch database, check it, drop the scratch
/// database (also on failure), record the result in the manifests, state and metrics.
pub async fn drill(
    target: &Target,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    cancel: &CancellationToken,
) -> Result<DrillReport, RestoreError> {
    let t0 = Instant::now();
    let result = drill_inner(target, storages, state, cancel, t0).await;
    let now = Utc::now();
    match &result {
        Ok(r) => {
            metrics::drill_succeeded(&target.name, &r.id.to_string(), r.duration);
            state.update(&target.name, |s| {
                s.last_verify = Some(now);
                s.last_verify_status = Some(RunStatus::Success);
                s.last_verify_error = None;
            });
        }
        Err(e) => {
            metrics::drill_failed(&target.name, e, t0.elapsed());
            let msg = e.to_string();
            state.update(&target.name, |s| {
                s.last_verify = Some(now);
                s.last_verify_status = Some(RunStatus::Failure);
                s.last_verify_error = Some(msg);
            });
        }
    }
    result
}

async fn drill_inner(
    target: &Target,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    cancel: &CancellationToken,
    t0: Instant,
) -> Result<DrillReport, RestoreError> {
    let newest = choose_newest_run(target, storages).await?;
    let id = newest[0].1.id;
    for (i, b) in &newest {
        verify_checksum(storages[*i].as_ref(), b).await?;
    }
    let tables: usize = newest.iter().map(|(_, b)| b.manifest.tables.len()).sum();
    match &target.source {
        SourceConfig::Postgres(pg) => {
            let (scratch_url, password) =
                scratch_database(pg, &target.name, "drill", pg.drill_url.as_deref()).await?;
            let restored = async {
                let tools = restore_tools(
                    pg,
                    &scratch_url,
                    password.as_ref(),
                    &newest[0].1.manifest,
                    &target.name,
                )
                .await?;
                for (i, b) in &newest {
                    pg_restore(
                        &tools,
                        &scratch_url,
                        password.as_ref(),
                        storages[*i].as_ref(),
                        b,
                        &Mode::Whole { clean: false },
                        pg.restore_owner,
                        target.timeout,
                        cancel,
                    )
                    .await?;
                }
                let manifests: Vec<&Manifest> = newest.iter().map(|(_, b)| &b.manifest).collect();
                check_postgres(&scratch_url, password.as_ref(), &manifests).await
            }
            .await;
            let dropped = drop_database(&scratch_url, password.as_ref()).await;
            restored?;
            dropped?;
        }
        SourceConfig::Sqlite(_) => {
            let (i, b) = &newest[0];
            let dir = crate::storage::scratch_dir(storages, &target.name, state.work_dir());
            let scratch = ScratchFile::reserve(&dir, "drill.sqlite");
            let dest = scratch.path().to_path_buf();
            let r = sqlite_restore(storages[*i].as_ref(), b, &dest, false).await;
            let _ = std::fs::remove_file(&dest);
            r?;
        }
    }
    // Record the proof in every copy of the manifests.
    let verified = Utc::now();
    for (_, b) in &newest {
        let mut m = b.manifest.clone();
        m.verified_at = Some(verified);
        let bytes =
            serde_json::to_vec_pretty(&m).map_err(|e| RestoreError::Other(e.to_string()))?;
        for s in storages {
            let name = catalog::manifest_name(&b.file);
            if s.get_bytes(&target.name, &name).await.is_ok() {
                s.put_bytes(&target.name, &name, bytes.clone()).await?;
            }
        }
    }
    Ok(DrillReport {
        id,
        archives: newest.len(),
        tables,
        duration: t0.elapsed(),
    })
}

/// The database and schema archives of the newest complete run (one copy of each).
async fn choose_newest_run(
    target: &Target,
    storages: &[Box<dyn Storage>],
) -> Result<Vec<(usize, Backup)>, RestoreError> {
    let all = list_everywhere(target, storages).await?;
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
    let mut out: Vec<(usize, Backup)> = Vec::new();
    for (i, b) in all {
        if b.id == id
            && b.contents != Contents::Globals
            && !out.iter().any(|(_, o)| o.file == b.file)
        {
            out.push((i, b));
        }
    }
    Ok(out)
}

/// A new, empty database named `dbkeep_<purpose>_<target>_<random>` on `server` (default:
/// the target's own server), for drills and schema work. Returns its URL and the password;
/// drop it with [`drop_database`].
pub(crate) async fn scratch_database(
    pg: &PostgresConfig,
    target: &str,
    purpose: &str,
    server: Option<&str>,
) -> Result<(String, Option<Secret>), RestoreError> {
    let base = server.unwrap_or(&pg.url);
    let (base, password) = split_password(base, pg.password.as_ref())?;
    let mut u = url::Url::parse(&base).map_err(|e| RestoreError::Other(e.to_string()))?;
    let scratch = format!(
        "dbkeep_{purpose}_{}_{:08x}",
        target.replace('-', "_"),
        rand::random::<u32>()
    );
    u.set_path(&format!("/{scratch}"));
    let url = u.to_string();
    prepare_database(&url, password.as_ref(), false).await?;
    Ok((url, password))
}

pub(crate) async fn drop_database(
    url: &str,
    password: Option<&Secret>,
) -> Result<(), RestoreError> {
    let (admin_url, db) = maintenance_url(url)?;
    let mut admin = connect(&admin_url, password).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(&db)
    )))
    .execute(&mut admin)
    .await
    .map_err(|e| RestoreError::Database(format!("cannot drop the scratch database {db}: {e}")))?;
    Ok(())
}

/// One checked archive of `dbkeep verify`.
pub struct Checked {
    pub storage: &'static str,
    pub file: String,
    pub problem: Option<String>,
}

/// Re-read every stored archive of `target` and compare its sha256 with its manifest.
pub async fn verify_all(
    target: &Target,
    storages: &[Box<dyn Storage>],
) -> Result<Vec<Checked>, RestoreError> {
    let now = Utc::now();
    let mut out = Vec::new();
    for s in storages {
        let listing = catalog::list(s.as_ref(), &target.name, now).await?;
        for (file, why) in listing.broken {
            out.push(Checked {
                storage: s.name(),
                file,
                problem: Some(why),
            });
        }
        for b in listing.complete {
            let problem = match verify_checksum(s.as_ref(), &b).await {
                Ok(()) => None,
                Err(RestoreError::Checksum {
                    expected, actual, ..
                }) => Some(format!(
                    "CORRUPT: sha256 {actual}, manifest says {expected}"
                )),
                Err(e) => Some(format!("unreadable: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            "latest".parse::<Selector>().unwrap(),
            Selector {
                id: None,
                schema: None
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
