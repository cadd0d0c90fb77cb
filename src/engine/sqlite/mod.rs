//! SQLite: online snapshots with the backup API, restores by atomic rename, scratch
//! databases as files, introspection from pragmas.

pub mod content;
pub mod demo;
pub mod dump;
pub mod introspect;
pub mod raw;
pub mod restore;
pub mod session;
pub mod tables;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use self::session::SqliteSession;
use crate::config::SqliteConfig;
use crate::engine::model::{DatabaseInfo, TableEntry};
use crate::engine::{
    Archive, Destination, Dump, Engine, EngineError, Part, Prepared, Purpose, RestoreMode,
    RestoreOptions, Restorer, Scratch, Session,
};
use crate::storage::local::ScratchFile;

/// How long the snapshot waits for a writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SqliteEngine {
    target: String,
    cfg: SqliteConfig,
}

impl SqliteEngine {
    pub fn new(target: &str, cfg: SqliteConfig) -> Self {
        SqliteEngine {
            target: target.to_string(),
            cfg,
        }
    }

    fn err(&self, message: impl Into<String>) -> EngineError {
        EngineError::Sqlite {
            path: self.cfg.path.clone(),
            message: message.into(),
            source: None,
        }
    }

    /// Maps a sqlx error on the target's file to one that says what was being done.
    fn sql(&self, what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> EngineError {
        let path = self.cfg.path.clone();
        let message = what.into();
        move |e| EngineError::Sqlite {
            path,
            message,
            source: Some(e),
        }
    }

    async fn connect(&self, path: &Path, read_only: bool) -> Result<SqliteConnection, EngineError> {
        // No journal_mode or other pragma that would change the user's database.
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .read_only(read_only)
            .busy_timeout(BUSY_TIMEOUT);

        SqliteConnection::connect_with(&opts)
            .await
            .map_err(|e| EngineError::Sqlite {
                path: path.to_path_buf(),
                message: "cannot open the database".into(),
                source: Some(e),
            })
    }

    async fn session(&self, path: &Path, create: bool) -> Result<Box<dyn Session>, EngineError> {
        let memory = path == Path::new(":memory:");
        if !create && !path.is_file() {
            return Err(EngineError::Sqlite {
                path: path.to_path_buf(),
                message: "does not exist; dbkeep never creates the database it manages".into(),
                source: None,
            });
        }
        let opts = if memory {
            SqliteConnectOptions::new().in_memory(true)
        } else {
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(create)
        }
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
        let conn =
            SqliteConnection::connect_with(&opts)
                .await
                .map_err(|e| EngineError::Sqlite {
                    path: path.to_path_buf(),
                    message: "cannot open the database".into(),
                    source: Some(e),
                })?;
        Ok(Box::new(SqliteSession {
            conn,
            path: path.to_path_buf(),
        }))
    }

    async fn read_info(&self, out: &mut DatabaseInfo) -> Result<(), EngineError> {
        let path = &self.cfg.path;
        let meta = std::fs::metadata(path).map_err(EngineError::io(path.display().to_string()))?;
        let mut c = self.connect(path, true).await?;
        let (version,): (String,) = sqlx::query_as("SELECT sqlite_version()")
            .fetch_one(&mut c)
            .await
            .map_err(self.sql("reading the version"))?;
        let names: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(&mut c)
        .await
        .map_err(self.sql("listing tables"))?;
        let _ = c.close().await;
        out.server_version = Some(format!("SQLite {version}"));
        out.size_bytes = Some(meta.len() as i64);
        out.tables = names
            .into_iter()
            .map(|(name,)| TableEntry {
                schema: None,
                name,
                rows: None,
            })
            .collect();
        Ok(())
    }
}

#[async_trait]
impl Engine for SqliteEngine {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.cfg.path.display().to_string()
    }

    async fn ping(&self) -> Result<(), EngineError> {
        if !self.cfg.path.is_file() {
            return Err(self.err("the database file does not exist"));
        }
        let mut conn = self.connect(&self.cfg.path, true).await?;
        let r = sqlx::query("SELECT count(*) FROM sqlite_schema")
            .fetch_one(&mut conn)
            .await
            .map_err(self.sql("not a usable SQLite database"));
        let _ = conn.close().await;
        r.map(|_| ())
    }

    async fn prepare(&self) -> Result<Prepared, EngineError> {
        dump::prepare(self).await
    }

    async fn open(
        &self,
        prepared: &Prepared,
        part: &Part,
        scratch: &Path,
        cancel: &CancellationToken,
    ) -> Result<Dump, EngineError> {
        dump::open(self, prepared.fingerprint, part, scratch, cancel).await
    }

    async fn info(&self) -> DatabaseInfo {
        DatabaseInfo::gather(&self.target, "sqlite", self.location(), async |out| {
            self.read_info(out).await
        })
        .await
    }

    fn destination(
        &self,
        into: Option<&str>,
        _password: Option<crate::config::Secret>,
    ) -> Result<Destination, EngineError> {
        Ok(match into {
            None => Destination::Own,
            Some(p) => Destination::Other {
                to: p.to_string(),
                password: None,
            },
        })
    }

    async fn is_own_place(&self, dest: &Destination, _database: Option<&str>) -> bool {
        let Destination::Other { to, .. } = dest else {
            return false;
        };
        match (
            std::fs::canonicalize(to),
            std::fs::canonicalize(&self.cfg.path),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    fn describe(&self, dest: &Destination, _database: Option<&str>) -> String {
        match dest {
            Destination::Own => format!(
                "target {}'s own file {}",
                self.target,
                self.cfg.path.display()
            ),
            Destination::Other { to: p, .. } => p.clone(),
        }
    }

    fn supports(&self, mode: &RestoreMode) -> Result<(), EngineError> {
        only_whole(mode)
    }

    async fn begin_restore(
        &self,
        dest: &Destination,
        _archive: Archive<'_>,
        mode: &RestoreMode,
        opts: &RestoreOptions,
    ) -> Result<Box<dyn Restorer>, EngineError> {
        only_whole(mode)?;
        match dest {
            Destination::Own => {
                // Writers are kept out from here to the rename; readers (the safety
                // backup's snapshot among them) still pass.
                let lock = restore::hold_write_lock(&self.cfg.path).await?;
                Ok(Box::new(SqliteRestorer {
                    path: self.cfg.path.clone(),
                    live: Some(lock),
                }))
            }
            Destination::Other { to: p, .. } => {
                let path = PathBuf::from(p);
                if path.exists() && !opts.yes {
                    return Err(EngineError::Refused(format!(
                        "{} exists: pick a new path, or add --yes to replace it",
                        path.display()
                    )));
                }
                Ok(Box::new(SqliteRestorer { path, live: None }))
            }
        }
    }

    async fn connect(&self) -> Result<Box<dyn Session>, EngineError> {
        self.session(&self.cfg.path, false).await
    }

    async fn restore_tables(
        &self,
        archive: Archive<'_>,
        copies: &[crate::engine::TableCopy],
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<(Vec<crate::engine::TableRestored>, Vec<String>), EngineError> {
        tables::restore_tables(self, archive, copies, dir, cancel).await
    }

    async fn doctor(
        &self,
        _wants: crate::engine::doctor::Wants,
    ) -> Vec<crate::engine::doctor::Check> {
        use crate::engine::doctor::{Check, Verdict};
        let path = self.cfg.path.clone();
        let mut out = Vec::new();
        let read = async {
            let mut c = self.connect(&path, true).await?;
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM sqlite_master")
                .fetch_one(&mut c)
                .await
                .map_err(self.sql("cannot read the schema"))?;
            let _ = sqlx::Connection::close(c).await;
            Ok::<_, EngineError>(n)
        }
        .await;
        out.push(match read {
            Ok(n) => Check::new(
                "dump",
                Verdict::Ok,
                format!("{} opens read-only ({n} schema objects)", path.display()),
            ),
            Err(e) => Check::new("dump", Verdict::Cannot, crate::error::chain(&e)),
        });
        // A restore writes a new file beside the database and renames it into place.
        let folder = path.parent().unwrap_or(Path::new("."));
        out.push(if writable(folder) {
            Check::new("restore", Verdict::Ok, format!("{} is writable", folder.display()))
        } else {
            Check::new(
                "restore",
                Verdict::Limited,
                format!(
                    "{} is not writable by this user: backups work, a restore in place does not (restore --into another path, or run it as the database's owner)",
                    folder.display()
                ),
            )
        });
        out
    }

    async fn scratch(&self, purpose: Purpose, dir: &Path) -> Result<Box<dyn Scratch>, EngineError> {
        let engine = SqliteEngine::new(&self.target, self.cfg.clone());
        if purpose == Purpose::Declared {
            // Nothing is restored into it: an in-memory database is enough.
            return Ok(Box::new(SqliteScratch {
                file: None,
                engine,
                purpose,
            }));
        }
        crate::files::create_dir(dir)
            .map_err(EngineError::io(format!("cannot create {}", dir.display())))?;
        Ok(Box::new(SqliteScratch {
            file: Some(ScratchFile::reserve(
                dir,
                &format!("{}.sqlite", purpose.word()),
            )),
            engine,
            purpose,
        }))
    }
}

fn only_whole(mode: &RestoreMode) -> Result<(), EngineError> {
    match mode {
        RestoreMode::Whole { .. } | RestoreMode::Definitions => Ok(()),
        RestoreMode::Schema { name, .. } => Err(EngineError::Unsupported(format!(
            "a SQLite database has no schema {name:?} to restore on its own: restore the whole backup (without :SCHEMA)"
        ))),
        RestoreMode::Globals => Err(EngineError::Unsupported(
            "SQLite has no roles or tablespaces (globals) to restore".into(),
        )),
    }
}

struct SqliteRestorer {
    path: PathBuf,
    /// The write lock on a live database, held until the new file is in place.
    live: Option<SqliteConnection>,
}

#[async_trait]
impl Restorer for SqliteRestorer {
    async fn restore(
        self: Box<Self>,
        archive: Archive<'_>,
        mode: &RestoreMode,
        _cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        only_whole(mode)?;
        let r = restore::restore_file(
            archive,
            &self.path,
            self.live.is_some(),
            restore::Depth::Structure,
        )
        .await;
        if let Some(lock) = self.live {
            let _ = lock.close().await;
        }
        r
    }
}

/// A scratch file, or an in-memory database (for the declared schema, which is only
/// built and read over one connection).
struct SqliteScratch {
    file: Option<ScratchFile>,
    engine: SqliteEngine,
    /// A drill checks the restored file in full ([`restore::Depth`]).
    purpose: Purpose,
}

impl SqliteScratch {
    fn file(&self) -> Result<&Path, EngineError> {
        self.file.as_ref().map(|f| f.path()).ok_or_else(|| {
            EngineError::Unsupported("an in-memory scratch database takes no restore".into())
        })
    }
}

#[async_trait]
impl Scratch for SqliteScratch {
    async fn restore(
        &self,
        archive: Archive<'_>,
        mode: &RestoreMode,
        _cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        only_whole(mode)?;
        let depth = match self.purpose {
            Purpose::Drill => restore::Depth::Full,
            _ => restore::Depth::Structure,
        };
        restore::restore_file(archive, self.file()?, false, depth).await
    }

    async fn connect(&self) -> Result<Box<dyn Session>, EngineError> {
        match &self.file {
            Some(f) => self.engine.session(f.path(), true).await,
            None => self.engine.session(Path::new(":memory:"), true).await,
        }
    }

    async fn content(
        &self,
        _backup: &crate::catalog::Manifest,
        _cancel: &CancellationToken,
    ) -> Result<crate::catalog::Content, EngineError> {
        let path = self.file()?.to_path_buf();
        let read = path.clone();
        let got = tokio::task::spawn_blocking(move || {
            content::RowReader::open(&read).and_then(|r| r.content())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        got.map_err(|e| EngineError::Sqlite {
            path,
            message: format!("cannot read the rows of the restored copy: {e}"),
            source: None,
        })
    }

    async fn discard(self: Box<Self>) -> Result<(), EngineError> {
        if let Some(f) = &self.file {
            for suffix in ["-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", f.path().display()));
            }
        }
        // Dropping the scratch file removes it.
        Ok(())
    }
}

/// Whether this process may create files in `dir`.
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}
