//! The per-target run lock: one backup run of a target at a time, across processes (a
//! manual `dbkeep backup` while the daemon runs one, two daemons with one work folder).
//! An exclusive `flock` on `<work_dir>/.dbkeep-run-<target>.lock`, released when the
//! process ends, however it ends.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::error::{io_kind, Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another run of target {target} is going ({holder}); it was not started twice. Wait for it to finish (`dbkeep status` shows it), then run again")]
    Busy { target: String, holder: String },
    #[error("cannot open the run lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for LockError {
    fn kind(&self) -> ErrorKind {
        match self {
            LockError::Busy { .. } => ErrorKind::Refused,
            LockError::Io { source, .. } => io_kind(source),
        }
    }
}

/// Held while a run goes; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Take the run lock of `target` without waiting: [`LockError::Busy`] names the holder.
pub fn acquire(work_dir: &Path, target: &str, now: DateTime<Utc>) -> Result<RunLock, LockError> {
    acquire_named(work_dir, "run", target, now)
}

/// Take the replica lease file of `target` (`.dbkeep-lease-<target>.lock`) without waiting:
/// the daemon that holds it runs the target's schedules.
pub fn acquire_lease(
    work_dir: &Path,
    target: &str,
    now: DateTime<Utc>,
) -> Result<RunLock, LockError> {
    acquire_named(work_dir, "lease", target, now)
}

fn acquire_named(
    work_dir: &Path,
    kind: &str,
    target: &str,
    now: DateTime<Utc>,
) -> Result<RunLock, LockError> {
    let path = work_dir.join(format!(".dbkeep-{kind}-{target}.lock"));
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    crate::files::create_dir(work_dir).map_err(io)?;
    // Never through a planted symlink; the file is dbkeep's own and stays in place (removing
    // a lock file would let two processes lock two different files).
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(err));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(LockError::Busy {
            target: target.to_string(),
            holder: if holder.is_empty() {
                "holder unknown".into()
            } else {
                holder.chars().take(200).collect()
            },
        });
    }
    let me = format!("pid {}, started {}", std::process::id(), now.to_rfc3339());
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(me.as_bytes()));
    Ok(RunLock { _file: file })
}

/// Take the run lock, waiting while another run holds it (logged once), until `cancel`.
pub async fn acquire_waiting(
    work_dir: &Path,
    target: &str,
    clock: &crate::scheduler::Clock,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<RunLock, LockError> {
    acquire_kind_waiting(work_dir, "run", target, clock, cancel).await
}

/// Take the retention lock of `target`, waiting for its holder: cleanup holds it while it
/// plans and deletes, `pin`/`unpin` while they change pins, so a pin never lands between
/// a cleanup's plan and its deletions.
pub async fn acquire_retention(
    work_dir: &Path,
    target: &str,
    clock: &crate::scheduler::Clock,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<RunLock, LockError> {
    acquire_kind_waiting(work_dir, "retention", target, clock, cancel).await
}

async fn acquire_kind_waiting(
    work_dir: &Path,
    kind: &str,
    target: &str,
    clock: &crate::scheduler::Clock,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<RunLock, LockError> {
    let mut told = false;
    loop {
        match acquire_named(work_dir, kind, target, clock.now()) {
            Err(LockError::Busy { holder, .. }) if !cancel.is_cancelled() => {
                if !told {
                    tracing::info!(target, holder = %holder, "waiting for another run of the target to finish");
                    told = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let first = acquire(dir.path(), "app", now).unwrap();
        let second = acquire(dir.path(), "app", now).unwrap_err();
        assert_eq!(second.kind(), ErrorKind::Refused);
        assert!(
            second
                .to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{second}"
        );
        // Another target is independent.
        let other = acquire(dir.path(), "other", now).unwrap();
        drop(first);
        acquire(dir.path(), "app", now).unwrap();
        drop(other);
    }
}
