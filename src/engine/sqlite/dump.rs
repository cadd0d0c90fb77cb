//! Dumping SQLite: an online, consistent snapshot with `VACUUM INTO`, checked with
//! `PRAGMA integrity_check`, then streamed from the snapshot file.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use super::SqliteEngine;
use crate::catalog::{Contents, TableInfo, ToolVersions};
use crate::engine::dump::PendingContent;
use crate::engine::{Dump, EngineError, Part, Prepared};
use crate::storage::local::ScratchFile;

pub const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

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

pub async fn prepare(eng: &SqliteEngine) -> Result<Prepared, EngineError> {
    let meta = std::fs::metadata(&eng.cfg.path).map_err(EngineError::io(format!(
        "SQLite {}: check `targets.{}.path` (dbkeep never creates the database it backs up)",
        eng.cfg.path.display(),
        eng.target
    )))?;
    if !meta.is_file() {
        return Err(eng.err(format!(
            "is not a file; `targets.{}.path` must name the database file",
            eng.target
        )));
    }
    let mut conn = eng.connect(&eng.cfg.path, false).await?;
    let (version,): (String,) = sqlx::query_as("SELECT sqlite_version()")
        .fetch_one(&mut conn)
        .await
        .map_err(eng.sql("not a usable SQLite database"))?;
    // Reading the schema proves it is a database, not some other file.
    sqlx::query("SELECT count(*) FROM sqlite_schema")
        .fetch_one(&mut conn)
        .await
        .map_err(eng.sql("not a usable SQLite database"))?;
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL%' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(eng.sql("cannot list tables"))?;
    let mut tables = Vec::new();
    for (name,) in names {
        let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
        let (rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .map_err(eng.sql(format!("cannot count rows of {name}")))?;
        tables.push(TableInfo {
            schema: None,
            name,
            rows: Some(rows),
        });
    }
    let fingerprints = match super::introspect::schema_model(&mut conn).await {
        Ok(m) => {
            let one = m.fingerprint();
            let models = std::collections::BTreeMap::from([("main".to_string(), m)]);
            Some((
                crate::engine::model::fingerprint_all(&models),
                std::collections::BTreeMap::from([("main".to_string(), one)]),
            ))
        }
        Err(err) => {
            tracing::warn!(target = %eng.target, error = %err, "cannot read the schema fingerprint; the backup goes on without it");
            None
        }
    };
    let _ = conn.close().await;
    Ok(Prepared {
        excluded: Vec::new(),
        data_excluded: Vec::new(),
        size_estimate: Some(meta.len()).filter(|n| *n > 0),
        parts: vec![Part {
            schema: None,
            database: None,
            contents: Contents::Database,
            format: "sqlite",
            magic: SQLITE_MAGIC,
            note: None,
        }],
        tools: ToolVersions {
            dbkeep: env!("CARGO_PKG_VERSION").to_string(),
            dump_tool: Some(format!("SQLite {version} (VACUUM INTO)")),
            server: None,
        },
        tool_dir: None,
        tables,
        // One archive, from one VACUUM INTO: consistent in itself.
        snapshot: None,
        databases: Default::default(),
        failed: Vec::new(),
        fingerprint: true,
        fingerprints,
        hold: None,
    })
}

pub async fn open(
    eng: &SqliteEngine,
    fingerprint: bool,
    _part: &Part,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<Dump, EngineError> {
    let snapshot = ScratchFile::reserve(dir, "snapshot.sqlite");
    // A plain copy of the whole database: created empty and private (0600) before SQLite
    // writes into it, never through a planted link.
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(snapshot.path())
            .map_err(EngineError::io(format!(
                "creating the snapshot {}",
                snapshot.path().display()
            )))?;
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut conn = eng.connect(&eng.cfg.path, false).await?;
    // The path is ours (a reserved scratch name), quoted as an SQL literal.
    let sql = format!(
        "VACUUM INTO {}",
        quote_literal(&snapshot.path().to_string_lossy())
    );
    let vacuum = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn);
    tokio::select! {
        r = vacuum => { r.map_err(eng.sql("snapshot (VACUUM INTO) failed"))?; }
        _ = cancel.cancelled() => return Err(EngineError::Cancelled),
    }
    let _ = conn.close().await;

    let mut check = eng.connect(snapshot.path(), true).await?;
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut check)
        .await
        .map_err(eng.sql("integrity check of the snapshot failed"))?;
    if rows.len() != 1 || rows[0].0 != "ok" {
        let _ = check.close().await;
        let problems: Vec<String> = rows.into_iter().take(5).map(|(r,)| r).collect();
        return Err(eng.err(format!(
            "the snapshot fails PRAGMA integrity_check ({}); the source database may be corrupt: run `sqlite3 {} 'PRAGMA integrity_check'`",
            problems.join("; "),
            eng.cfg.path.display()
        )));
    }
    let file = File::open(snapshot.path()).map_err(EngineError::io(format!(
        "reading the snapshot {}",
        snapshot.path().display()
    )))?;
    // The rows are read from the snapshot while it streams into the storages: on its own
    // connection, opened now, so the snapshot file being removed after the stream does
    // not matter.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let target = eng.target.clone();
    let _ = check.close().await;
    if !fingerprint {
        let _ = tx.send(None);
    } else {
        let reader = super::content::RowReader::open(snapshot.path());
        tokio::task::spawn_blocking(move || {
            let content = match reader.and_then(|r| r.content()) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "cannot read the rows of the snapshot; this backup has no content fingerprint, and its drill checks tables only");
                    None
                }
            };
            let _ = tx.send(content);
        });
    }
    Ok(Dump {
        content: PendingContent::Later(Box::new(move || rx.blocking_recv().ok().flatten())),
        reader: Box::new(SnapshotReader {
            file,
            _scratch: snapshot,
        }),
        done: Box::pin(async { Ok(()) }),
        stopper: None,
    })
}
