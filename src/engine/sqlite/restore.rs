//! Restoring SQLite: unpack the archive into a temp file beside the destination, check
//! it (`PRAGMA integrity_check`, every table of the manifest), then rename it into place;
//! writers are kept out of a live database while it is replaced.

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
    if let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await {
        let _ = conn.close().await;
        return Err(EngineError::Refused(format!(
            "another process holds a write lock on {} ({e}); stop the application that writes to it, \
             or restore with --into NEW_PATH",
            path.display()
        )));
    }
    Ok(conn)
}

/// Decompress into a temp file beside `dest`, check it, then rename it over `dest`.
pub async fn restore_file(
    archive: Archive<'_>,
    dest: &Path,
    replacing_live: bool,
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
    let scratch = ScratchFile::reserve(&dir, "restore.sqlite");
    let tmp = scratch.path().to_path_buf();
    unpack_to_file(archive, &tmp).await?;
    let held = open_own(&tmp)?;
    check(&tmp, &archive.backup.manifest).await?;
    still_ours(&tmp, &held)?;
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

/// The unpacked file, opened without following a link: the descriptor that mode and owner
/// are set through.
fn open_own(tmp: &Path) -> Result<std::fs::File, EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(|e| {
            EngineError::Refused(format!(
                "the restored file {} was replaced before it was checked ({e}); someone else writes to that folder: nothing was changed",
                tmp.display()
            ))
        })
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

/// `PRAGMA integrity_check`, and every table of the manifest present (with rows where it had).
async fn check(path: &Path, manifest: &Manifest) -> Result<(), EngineError> {
    // Through the C API on a blocking thread (no per-connection mutex).
    let file = path.to_path_buf();
    let problems = tokio::task::spawn_blocking(move || {
        super::raw::Conn::read_only(&file).and_then(|c| c.integrity_problems())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|e| EngineError::Sqlite {
        path: path.to_path_buf(),
        message: format!("integrity check of the restored file: {e}"),
        source: None,
    })?;
    if !problems.is_empty() {
        return Err(EngineError::Check(format!(
            "the restored file fails PRAGMA integrity_check: {}",
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
