//! The `Storage` trait (write a stream atomically, list, read, delete, clean leftovers),
//! its implementations (`local`, `s3`, `memory`), and [`Storages`]: the primary storage a
//! backup must reach plus the mirrors it is copied to.

pub mod fanout;
pub mod local;
pub mod memory;
pub mod s3;

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::error::{io_kind, Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{storage} storage: {action} {path}: {source}")]
    Io {
        storage: &'static str,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{storage} storage: no object {path}")]
    NotFound {
        storage: &'static str,
        path: PathBuf,
    },
    #[error("{storage} storage: {what} failed: {message}")]
    Task {
        storage: &'static str,
        what: &'static str,
        message: String,
    },
    #[error("{storage} storage ({place}): {action}: {message}")]
    Remote {
        storage: &'static str,
        place: String,
        action: String,
        /// The service's code and message, or the transport failure, with a hint.
        message: String,
        kind: ErrorKind,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{storage} storage: {file} no longer matches its manifest (sha256 {actual}, the manifest says {expected}); run `dbkeep verify`")]
    Checksum {
        storage: &'static str,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{storage} storage: {path} exists already; dbkeep never replaces a stored archive or manifest (another run of the same target may have written it: see the run lock)")]
    Exists {
        storage: &'static str,
        path: PathBuf,
    },
    #[error("{storage} storage: {path} is {bytes} bytes, more than the {limit} a manifest may have; it is not read")]
    TooLarge {
        storage: &'static str,
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
    #[error("{storage} storage: {path} is {what}, not a file dbkeep wrote; it is neither read nor served (remove it, or find out who put it there)")]
    NotRegular {
        storage: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{storage} storage: {file} changed after its sha256 was proven ({detail}); nothing was read from the changed object. Someone else writes to this storage: find out who, then restore again (the proof is taken anew)")]
    Changed {
        storage: &'static str,
        file: String,
        detail: String,
    },
    #[error("{storage} storage: writing {file}: {source}")]
    Write {
        storage: &'static str,
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for StorageError {
    fn kind(&self) -> ErrorKind {
        match self {
            StorageError::Io { source, .. } | StorageError::Write { source, .. } => io_kind(source),
            StorageError::NotFound { .. } => ErrorKind::NotFound,
            StorageError::Checksum { .. } | StorageError::Changed { .. } => ErrorKind::Checksum,
            StorageError::Exists { .. } => ErrorKind::Conflict,
            StorageError::Task { .. } | StorageError::TooLarge { .. } => ErrorKind::Failed,
            StorageError::NotRegular { .. } => ErrorKind::Refused,
            StorageError::Remote { kind, .. } => *kind,
        }
    }

    fn hint(&self) -> Option<String> {
        match self.kind() {
            ErrorKind::NoSpace => Some(match self {
                StorageError::Io { path, .. } => match free_space(path) {
                    Some(free) => format!(
                        "{} free on the filesystem of {}; free space there, or lower keep_days/min_keep",
                        human_size(free),
                        path.display()
                    ),
                    None => format!("free space on the filesystem of {}", path.display()),
                },
                _ => "free space on the storage, or lower keep_days/min_keep".into(),
            }),
            ErrorKind::Auth => Some("check the storage's permissions and credentials".into()),
            ErrorKind::Unreachable => {
                Some("check that the storage endpoint is up and reachable from this host".into())
            }
            _ => None,
        }
    }
}

/// A stored object open for reading, and which version of it that is
/// ([`Storage::open_version`]).
pub struct Opened {
    pub reader: Box<dyn std::io::Read + Send>,
    pub version: Option<String>,
}

/// The largest object [`Storage::get_bytes`] reads (manifests are a few KiB; a huge one is
/// an attack or a mistake, not something to hold in memory).
pub const MAX_SMALL_OBJECT: u64 = 4 * 1024 * 1024;

/// Bytes free for an unprivileged writer on the filesystem of `path` (or its nearest
/// existing ancestor).
pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The one size formatter, shown everywhere sizes are.
pub use crate::progress::human_size;

/// One stored object as the storage lists it.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub file: String,
    pub bytes: u64,
    pub modified: DateTime<Utc>,
}

/// An object being written. Blocking `Write`: it is fed from the compression thread.
/// Nothing is visible under the final name until `commit`, which never replaces an
/// existing object ([`StorageError::Exists`]); `abort` (or drop) removes it.
pub trait ObjectWriter: Write + Send {
    /// Make the object durable and visible under its final name.
    fn commit(self: Box<Self>) -> Result<(), StorageError>;
    /// Throw away everything written.
    fn abort(self: Box<Self>);
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// The storage's name in listings, logs and metrics (`local`, `s3`).
    fn name(&self) -> &'static str;
    /// The object key of a file, for stores addressed by key (S3).
    fn object_key(&self, _target: &str, _file: &str) -> Option<String> {
        None
    }
    /// Where a target's objects live, for messages.
    fn location(&self, target: &str) -> String;
    /// Start writing `file` in `target`'s folder.
    async fn create(&self, target: &str, file: &str)
        -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Write a small object (a manifest) atomically. Like an archive's commit, it never
    /// replaces an existing object: that is [`StorageError::Exists`].
    async fn put_bytes(&self, target: &str, file: &str, bytes: Vec<u8>)
        -> Result<(), StorageError>;
    /// Read a small object (a manifest) whole; more than [`MAX_SMALL_OBJECT`] bytes is
    /// [`StorageError::TooLarge`], and nothing is read.
    async fn get_bytes(&self, target: &str, file: &str) -> Result<Vec<u8>, StorageError>;
    /// A blocking reader over a stored object (read it from a blocking thread).
    async fn open(
        &self,
        target: &str,
        file: &str,
    ) -> Result<Box<dyn std::io::Read + Send>, StorageError>;
    /// Open an object as [`Storage::open`] does, and say which version of it is open:
    /// local storage the file's identity and times, S3 the object's ETag (and version id
    /// in a versioned bucket). With `pin`, only that version opens, and any other is
    /// [`StorageError::Changed`]: what was proven is what is read. A storage that cannot
    /// tell versions apart opens what is there and says `None`.
    async fn open_version(
        &self,
        target: &str,
        file: &str,
        _pin: Option<&str>,
    ) -> Result<Opened, StorageError> {
        Ok(Opened {
            reader: self.open(target, file).await?,
            version: None,
        })
    }
    /// Every finished object in `target`'s folder (no temp files), in no particular order.
    async fn list(&self, target: &str) -> Result<Vec<ObjectInfo>, StorageError>;
    /// Remove an object; removing one that is not there is not an error.
    async fn delete(&self, target: &str, file: &str) -> Result<(), StorageError>;
    /// Remove temp files that no running writer owns; returns their names.
    async fn remove_temp_files(&self, target: &str) -> Result<Vec<String>, StorageError>;
    /// A folder where a source may put a short-lived scratch file (a SQLite snapshot),
    /// created if needed.
    fn scratch_dir(&self, _target: &str) -> Option<PathBuf> {
        None
    }
    /// The local folder that holds `target`'s files, if any; nothing is created.
    fn folder(&self, _target: &str) -> Option<PathBuf> {
        None
    }
    /// This destination's own retention (`keep_days`, `min_keep`), replacing the target's
    /// there; `None` for each the target's applies.
    fn retention(&self) -> (Option<u32>, Option<u32>) {
        (None, None)
    }
    /// Bytes per second uploads to this storage may take, when limited.
    fn max_upload_rate(&self) -> Option<u64> {
        None
    }
    /// How long after its run an archive and its manifest stay locked against deletion
    /// (S3 Object Lock), when they are.
    fn lock_period(&self) -> Option<std::time::Duration> {
        None
    }
    /// Try each operation backups need on a probe object in `target`'s folder, removed
    /// afterwards: write, list, read, delete (S3 adds starting and aborting a multipart
    /// upload). Each step with its outcome.
    async fn probe(&self, target: &str) -> Vec<(&'static str, Result<(), StorageError>)> {
        probe_basic(self, target, &probe_name()).await
    }
}

/// A destination name from the config as the `&'static str` storages are named by; each
/// distinct name is allocated once per process, however often the config is loaded.
pub fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.get(name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// The name prefix of pin files (see `catalog::Pin`): hidden, yet listed, unlike other
/// hidden files (temp files of running writers).
pub const PIN_PREFIX: &str = ".dbkeep-pin.";

/// The name prefix of accept files (see `catalog::Accept`): listed like pins.
pub const ACCEPT_PREFIX: &str = ".dbkeep-accept.";

/// The name prefix of a run's commit marker (see `catalog::commit_name`): listed, so a
/// run interrupted while it wrote its manifests is never taken for a complete one.
pub const COMMIT_PREFIX: &str = ".dbkeep-commit.";

/// The name prefix of probe objects (`dbkeep doctor`); listed, so cleanup removes the
/// ones an interrupted doctor left.
pub const PROBE_PREFIX: &str = ".dbkeep-probe-";

/// A probe object's name: hidden, and unlike any archive or manifest.
pub fn probe_name() -> String {
    format!("{PROBE_PREFIX}{:08x}", rand::random::<u32>())
}

/// Write, list, read back and delete `name` in `target`'s folder.
pub async fn probe_basic<S: Storage + ?Sized>(
    s: &S,
    target: &str,
    name: &str,
) -> Vec<(&'static str, Result<(), StorageError>)> {
    let body = b"dbkeep doctor probe; safe to delete\n".to_vec();
    let mut out = Vec::new();
    let wrote = s.put_bytes(target, name, body.clone()).await;
    let ok = wrote.is_ok();
    out.push(("write", wrote));
    out.push(("list", s.list(target).await.map(|_| ())));
    if ok {
        let read = s
            .get_bytes(target, name)
            .await
            .and_then(|got| match got == body {
                true => Ok(()),
                false => Err(StorageError::Task {
                    storage: s.name(),
                    what: "probe",
                    message: "the probe object read back differs from what was written".into(),
                }),
            });
        out.push(("read", read));
        out.push(("delete", s.delete(target, name).await));
    }
    out
}

/// The storages of a config: the primary, which every backup must reach (local when
/// configured), and mirrors that get a copy; a mirror that fails makes the archive
/// pending upload instead of failing the backup.
pub struct Storages {
    primary: Box<dyn Storage>,
    mirrors: Vec<Box<dyn Storage>>,
}

impl Storages {
    pub fn new(primary: Box<dyn Storage>, mirrors: Vec<Box<dyn Storage>>) -> Self {
        Storages { primary, mirrors }
    }

    pub fn primary(&self) -> &dyn Storage {
        self.primary.as_ref()
    }

    pub fn mirrors(&self) -> impl Iterator<Item = &dyn Storage> {
        self.mirrors.iter().map(|m| m.as_ref())
    }

    /// Whether `s` is a mirror left out of the dump's stream (rate-limited): it copies the
    /// primary's archive after the run, and gets each manifest after its archive.
    pub fn deferred(&self, s: &dyn Storage) -> bool {
        s.name() != self.primary.name() && s.max_upload_rate().is_some()
    }

    /// The mirrors written from the dump's stream.
    pub fn streamed_mirrors(&self) -> impl Iterator<Item = &dyn Storage> {
        self.mirrors().filter(|m| !self.deferred(*m))
    }

    /// Every storage, primary first (the order restores prefer).
    pub fn iter(&self) -> impl Iterator<Item = &dyn Storage> {
        std::iter::once(self.primary.as_ref()).chain(self.mirrors())
    }

    pub fn get(&self, name: &str) -> Option<&dyn Storage> {
        self.iter().find(|s| s.name() == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.iter().map(|s| s.name()).collect()
    }

    /// A folder for short-lived files of `target` (snapshots, scratch restores): beside
    /// the local backups when there are any (same filesystem), else `work_dir`.
    pub fn scratch_dir(&self, target: &str, work_dir: &Path) -> PathBuf {
        self.iter()
            .find_map(|s| s.scratch_dir(target))
            .unwrap_or_else(|| work_dir.to_path_buf())
    }
}

/// Wait (at most `limit`) until uploads this process dropped are aborted on their store;
/// a one-shot command calls it before it exits. False when some did not finish in time.
pub async fn settle(limit: std::time::Duration) -> bool {
    s3::settle(limit).await
}

/// The storages a config enables: local is the primary when configured, else S3.
pub async fn build(cfg: &Config) -> Result<Storages, StorageError> {
    let mut all: Vec<Box<dyn Storage>> = Vec::new();
    if let Some(l) = &cfg.storage.local {
        all.push(Box::new(local::LocalStorage::new(l.path.clone())));
    }
    if let Some(s) = &cfg.storage.s3 {
        all.push(Box::new(
            s3::S3Storage::new(s.clone(), cfg.daemon.work_dir.clone()).await,
        ));
    }
    for m in &cfg.storage.mirrors {
        all.push(Box::new(
            s3::S3Storage::new(m.clone(), cfg.daemon.work_dir.clone()).await,
        ));
    }
    let mut all = all.into_iter();
    let primary = all.next().ok_or(StorageError::Task {
        storage: "config",
        what: "choosing storages",
        message: "no storage configured: add [storage.local] or [storage.s3]".into(),
    })?;
    Ok(Storages::new(primary, all.collect()))
}
