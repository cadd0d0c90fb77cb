//! SQLite: an online, consistent snapshot with `VACUUM INTO`, checked with
//! `PRAGMA integrity_check`, then streamed from the snapshot file.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use super::{Dump, Part, Prepared, Source, SourceError};
use crate::catalog::{Contents, TableInfo, ToolVersions};
use crate::config::SqliteConfig;
use crate::storage::local::ScratchFile;

const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";
/// How long the snapshot waits for a writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SqliteSource {
    target: String,
    cfg: SqliteConfig,
}

impl SqliteSource {
    pub fn new(target: &str, cfg: SqliteConfig) -> Self {
        SqliteSource {
            target: target.to_string(),
            cfg,
        }
    }

    fn err(&self, message: impl Into<String>) -> SourceError {
        SourceError::Sqlite {
            path: self.cfg.path.clone(),
            message: message.into(),
        }
    }

    async fn connect(&self, path: &Path, read_only: bool) -> Result<SqliteConnection, SourceError> {
        // No journal_mode or other pragma that would change the user's database.
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .read_only(read_only)
            .busy_timeout(BUSY_TIMEOUT);
        SqliteConnection::connect_with(&opts)
            .await
            .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))
    }
}

/// The snapshot file, removed when the reader is dropped.
struct SnapshotReader {
    file: File,
    _scratch: ScratchFile,
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[async_trait]
impl Source for SqliteSource {
    async fn ping(&self) -> Result<(), SourceError> {
        if !self.cfg.path.is_file() {
            return Err(self.err("the database file does not exist"));
        }
        let mut conn = self.connect(&self.cfg.path, true).await?;
        sqlx::query("SELECT count(*) FROM sqlite_schema")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| self.err(format!("not a usable SQLite database: {e}")))?;
        let _ = conn.close().await;
        Ok(())
    }

    async fn prepare(&self) -> Result<Prepared, SourceError> {
        let meta = std::fs::metadata(&self.cfg.path).map_err(|e| {
            self.err(format!(
                "{e}; check `targets.{}.path` (dbkeep never creates the database it backs up)",
                self.target
            ))
        })?;
        if !meta.is_file() {
            return Err(self.err(format!(
                "is not a file; `targets.{}.path` must name the database file",
                self.target
            )));
        }
        let mut conn = self.connect(&self.cfg.path, false).await?;
        let (version,): (String,) = sqlx::query_as("SELECT sqlite_version()")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| self.err(format!("not a usable SQLite database: {e}")))?;
        // Reading the schema proves it is a database, not some other file.
        sqlx::query("SELECT count(*) FROM sqlite_schema")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| self.err(format!("not a usable SQLite database: {e}")))?;
        let names: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(|e| self.err(format!("cannot list tables: {e}")))?;
        let mut tables = Vec::new();
        for (name,) in names {
            let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
            let (rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .map_err(|e| self.err(format!("cannot count rows of {name}: {e}")))?;
            tables.push(TableInfo {
                schema: None,
                name,
                rows: Some(rows),
            });
        }
        let _ = conn.close().await;
        Ok(Prepared {
            parts: vec![Part {
                schema: None,
                contents: Contents::Database,
                format: "sqlite",
                magic: SQLITE_MAGIC,
            }],
            tools: ToolVersions {
                dbkeep: env!("CARGO_PKG_VERSION").to_string(),
                dump_tool: Some(format!("SQLite {version} (VACUUM INTO)")),
                server: None,
            },
            tool_dir: None,
            tables,
        })
    }

    async fn open(
        &self,
        _prepared: &Prepared,
        _part: &Part,
        scratch: Option<&Path>,
        cancel: &CancellationToken,
    ) -> Result<Dump, SourceError> {
        let dir: PathBuf = scratch
            .map(Path::to_path_buf)
            .ok_or_else(|| self.err("no folder for the snapshot: configure [storage.local]"))?;
        let snapshot = ScratchFile::reserve(&dir, "snapshot.sqlite");
        let mut conn = self.connect(&self.cfg.path, false).await?;
        // The path is ours (a reserved scratch name), quoted as an SQL literal.
        let sql = format!(
            "VACUUM INTO {}",
            quote_literal(&snapshot.path().to_string_lossy())
        );
        let vacuum = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn);
        tokio::select! {
            r = vacuum => { r.map_err(|e| self.err(format!("snapshot (VACUUM INTO) failed: {e}")))?; }
            _ = cancel.cancelled() => return Err(self.err("snapshot cancelled")),
        }
        let _ = conn.close().await;

        let mut check = self.connect(snapshot.path(), true).await?;
        let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
            .fetch_all(&mut check)
            .await
            .map_err(|e| self.err(format!("integrity check of the snapshot failed: {e}")))?;
        let _ = check.close().await;
        if rows.len() != 1 || rows[0].0 != "ok" {
            let problems: Vec<String> = rows.into_iter().take(5).map(|(r,)| r).collect();
            return Err(self.err(format!(
                "the snapshot fails PRAGMA integrity_check ({}); the source database may be corrupt: run `sqlite3 {} 'PRAGMA integrity_check'`",
                problems.join("; "),
                self.cfg.path.display()
            )));
        }
        let file = File::open(snapshot.path())
            .map_err(|e| self.err(format!("cannot read snapshot: {e}")))?;
        Ok(Dump {
            reader: Box::new(SnapshotReader {
                file,
                _scratch: snapshot,
            }),
            done: Box::pin(async { Ok(()) }),
            stopper: None,
        })
    }
}
