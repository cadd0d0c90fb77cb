//! Restoring SQLite: unpack the archive into a temp file beside the destination, check
//! it (`PRAGMA integrity_check`, every table of the manifest), then rename it into place;
//! writers are kept out of a live database while it is replaced.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;

use crate::catalog::Manifest;
use crate::engine::archive::unpack_to_file;
use crate::engine::model::quote_ident;
use crate::engine::{Archive, EngineError};
use crate::storage::local::ScratchFile;

/// A SQLite error about the file at `path`, while doing `what`.
pub(super) fn sql_err(
    path: &Path,
    what: impl Into<String>,
) -> impl FnOnce(sqlx::Error) -> EngineError {
    let path = path.to_path_buf();
    let message = what.into();
    move |e| EngineError::Sqlite {
        path,
        message,
        source: Some(e),
    }
}

/// Keep writers out of a SQLite database while it is replaced; refuse if one is writing.
pub async fn hold_write_lock(path: &Path) -> Result<SqliteConnection, EngineError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(EngineError::Refused(format!(
            "{} is a symbolic link; dbkeep restores only over a file (point `path` or --into at the file itself)",
            path.display()
        )));
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_millis(500));
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .map_err(sql_err(path, "cannot open the database"))?;
    // The lock is held with the WAL folded into the database and emptied: a restore
    // killed between moving its file into place and removing the old WAL must not leave
    // frames that SQLite would apply to the new file. A writer may add frames between
    // the checkpoint and the lock, so a few tries; a reader on an old snapshot keeps the
    // WAL from emptying, and then the lock is held all the same, as a warning says.
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    for attempt in 1..=3 {
        // A no-op on a rollback-journal database; SQLITE_BUSY leaves the WAL as it is.
        let _ = sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await;
        if let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await {
            let _ = conn.close().await;
            return Err(EngineError::Refused(format!(
                "another process holds a write lock on {} ({e}); stop the application that writes to it, \
                 or restore with --into NEW_PATH",
                path.display()
            )));
        }
        let frames = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if frames == 0 {
            break;
        }
        if attempt == 3 {
            tracing::warn!(path = %path.display(), wal_bytes = frames, "the WAL of the live database could not be emptied (a reader holds an old snapshot); if this restore is killed right after it moves the new file into place, remove that WAL by hand before the application opens the database");
            break;
        }
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    }
    Ok(conn)
}

/// How deeply a restored file is checked before it goes into place. Its bytes are
/// already proven to be the snapshot the backup checked in full (`PRAGMA
/// integrity_check`): the sha256 of the stored archive matches the manifest, and zstd's
/// own checksum covers what it decompressed. The backup commits no archive whose
/// snapshot failed that check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// `PRAGMA integrity_check` again: a drill, whose purpose is the proof.
    Full,
    /// `PRAGMA quick_check`: every page's structure, without matching each index entry
    /// to its row again (a third of the CPU on a 1 GiB indexed table): an operator's restore
    /// or a schema diff, where the time is the outage's.
    Structure,
}

/// The name ending of a restore's temp file beside its destination.
const RESTORING: &str = "restore.sqlite";

/// Decompress into a temp file beside `dest`, check it, then rename it over `dest`.
pub async fn restore_file(
    archive: Archive<'_>,
    dest: &Path,
    replacing_live: bool,
    depth: Depth,
) -> Result<(), EngineError> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    crate::files::create_dir(&dir)
        .map_err(EngineError::io(format!("cannot create {}", dir.display())))?;
    // The folder may belong to the application's user, who can rename and link names in
    // it at any time: what dbkeep trusts is the file it opened, never a path re-read.
    let old = match std::fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(EngineError::Refused(format!(
                "{} is a symbolic link; dbkeep restores only over a file (point `path` or --into at the file itself)",
                dest.display()
            )))
        }
        Ok(m) => Some(m),
        Err(_) => None,
    };
    // What a restore killed here before left (its process is gone).
    match crate::storage::local::remove_dead_scratch(&dir, RESTORING) {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(folder = %dir.display(), files = ?gone, "removed the temp files of an interrupted restore")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot remove the temp files of an interrupted restore")
        }
    }
    let scratch = ScratchFile::reserve(&dir, RESTORING);
    let tmp = scratch.path().to_path_buf();
    // The file written is the one held: its mode and owner are set through it, and the
    // name must still lead to it when it is moved into place.
    let held = unpack_to_file(archive, &tmp).await?;
    // Made durable while it is checked; both before it goes into place.
    let syncing = {
        let f = held
            .try_clone()
            .map_err(EngineError::io(format!("holding {}", tmp.display())))?;
        tokio::task::spawn_blocking(move || f.sync_all())
    };
    still_ours(&tmp, &held)?;
    let checked = check(&tmp, &archive.backup.manifest, depth).await;
    let synced = syncing
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(EngineError::io(format!("writing {}", tmp.display())));
    // A name swapped while it was checked is the failure to report, not the check.
    still_ours(&tmp, &held)?;
    checked?;
    synced?;
    if let Some(old) = &old {
        keep_mode_and_owner(dest, old, &held);
    }
    std::fs::rename(&tmp, dest).map_err(EngineError::io(format!(
        "cannot move the restored file into {}",
        dest.display()
    )))?;
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

/// The name still leads to the file dbkeep wrote and checked (not a link or another file
/// put there meanwhile), or nothing is moved into place.
fn still_ours(tmp: &Path, held: &std::fs::File) -> Result<(), EngineError> {
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::symlink_metadata(tmp).ok();
    let mine = held.metadata().ok();
    match (now, mine) {
        (Some(n), Some(m))
            if !n.file_type().is_symlink() && n.dev() == m.dev() && n.ino() == m.ino() =>
        {
            Ok(())
        }
        _ => Err(EngineError::Refused(format!(
            "the restored file {} was replaced while it was checked; someone else writes to that folder: nothing was changed",
            tmp.display()
        ))),
    }
}

/// The restored file takes the mode and owner of the file it replaces (an application's
/// database stays readable by that application, and no more), set through the descriptor
/// dbkeep holds, so no name swapped meanwhile can redirect them.
fn keep_mode_and_owner(dest: &Path, old: &std::fs::Metadata, new: &std::fs::File) {
    use std::os::unix::fs::MetadataExt;
    let kept = new
        .set_permissions(old.permissions())
        .and_then(|()| std::os::unix::fs::fchown(new, Some(old.uid()), Some(old.gid())));
    if let Err(e) = kept {
        tracing::warn!(path = %dest.display(), error = %e, "the restored file cannot take the old file's owner and mode");
    }
}

/// `PRAGMA integrity_check` or `quick_check` (`depth`), and every table of the manifest
/// present (with rows where it had).
async fn check(path: &Path, manifest: &Manifest, depth: Depth) -> Result<(), EngineError> {
    // Through the C API on a blocking thread (no per-connection mutex).
    let file = path.to_path_buf();
    let failed = |message: String| EngineError::Sqlite {
        path: path.to_path_buf(),
        message,
        source: None,
    };
    let problems = tokio::task::spawn_blocking(move || {
        let conn = super::raw::Conn::read_only(&file)?;
        // SQLite stops at a page it cannot parse ("database disk image is malformed").
        Ok(match depth {
            Depth::Full => conn.integrity_problems(),
            Depth::Structure => conn.structure_problems(),
        }
        .unwrap_or_else(|e| vec![e]))
    })
    .await
    .map_err(|e| failed(format!("the integrity check thread failed: {e}")))?
    .map_err(|e: String| failed(format!("the restored file does not open: {e}")))?;
    if !problems.is_empty() {
        let pragma = match depth {
            Depth::Full => "integrity_check",
            Depth::Structure => "quick_check",
        };
        return Err(EngineError::Check(format!(
            "the restored file fails PRAGMA {pragma}, though its archive matches its manifest: the manifest was written with it (someone who can write the storage forged both), or this host's memory or disk corrupts data. Nothing was changed; restore an older backup or another storage's copy (--storage): {}",
            problems.join("; ")
        )));
    }
    let opts = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .map_err(sql_err(path, "the restored file does not open"))?;
    let checked = verify_tables(&mut conn, &manifest.tables).await;
    let _ = conn.close().await;
    checked
}

/// Every table present, with rows where the backup had some.
pub async fn verify_tables(
    conn: &mut SqliteConnection,
    tables: &[crate::catalog::TableInfo],
) -> Result<(), EngineError> {
    for t in tables {
        let sql = format!("SELECT count(*) FROM {}", quote_ident(&t.name));
        let got: Result<(i64,), _> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await;
        match got {
            Err(e) => {
                return Err(EngineError::Check(format!(
                    "table {} is missing after restore: {e}",
                    t.name
                )))
            }
            Ok((0,)) if t.rows.unwrap_or(0) > 0 => {
                return Err(EngineError::Check(format!(
                    "table {} is empty after restore; it had {} rows",
                    t.name,
                    t.rows.unwrap_or(0)
                )))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libsqlite3_sys as ffi;

    fn wal_len(db: &Path) -> u64 {
        std::fs::metadata(format!("{}-wal", db.display()))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// While a restore holds the live database's write lock, its WAL is empty: frames an
    /// application left there are in the database file, and none could be applied to the
    /// restored file if the restore died between moving it in and removing the WAL.
    #[tokio::test]
    async fn the_wal_is_folded_in_and_empty_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        let app = super::super::raw::Conn::open(
            &db,
            ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE,
            Duration::from_millis(500),
        )
        .unwrap();
        app.exec("PRAGMA journal_mode = WAL").unwrap();
        app.exec("PRAGMA wal_autocheckpoint = 0").unwrap();
        app.exec("CREATE TABLE t (a)").unwrap();
        app.exec(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
             INSERT INTO t SELECT hex(randomblob(100)) FROM n",
        )
        .unwrap();
        assert!(wal_len(&db) > 0, "the application's frames are in the WAL");
        let held = hold_write_lock(&db).await.unwrap();
        assert_eq!(wal_len(&db), 0, "the WAL while the lock is held");
        held.close().await.unwrap();
        // The rows are in the database file itself, and the application goes on.
        let reader = super::super::raw::Conn::read_only(&db).unwrap();
        let mut n = reader.prepare("SELECT count(*) FROM t").unwrap();
        assert!(n.step().unwrap());
        assert_eq!(n.text(0), "2000");
        drop(n);
        app.exec("INSERT INTO t VALUES ('after')").unwrap();
    }
}
