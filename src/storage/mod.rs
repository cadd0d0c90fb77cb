//! The `Storage` trait: write a stream atomically, list, read, delete, clean leftovers.

pub mod local;
pub mod s3;

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::Config;

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
    #[error("{storage} storage: background task failed: {message}")]
    Task {
        storage: &'static str,
        message: String,
    },
    #[error("{storage} storage ({place}): {action}: {message}")]
    Remote {
        storage: &'static str,
        place: String,
        action: String,
        message: String,
    },
}

/// One stored object as the storage lists it.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub file: String,
    pub bytes: u64,
    pub modified: DateTime<Utc>,
}

/// An object being written. Blocking `Write`: it is fed from the compression thread.
/// Nothing is visible under the final name until `commit`; `abort` (or drop) removes it.
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
    /// Off the database host (S3): its failure makes a backup pending upload, not failed,
    /// when a local copy exists.
    fn is_remote(&self) -> bool {
        false
    }
    /// The object key of a file, for stores addressed by key (S3).
    fn object_key(&self, _target: &str, _file: &str) -> Option<String> {
        None
    }
    /// Where a target's objects live, for messages.
    fn location(&self, target: &str) -> String;
    /// Start writing `file` in `target`'s folder.
    async fn create(&self, target: &str, file: &str)
        -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Write a small object (a manifest) atomically.
    async fn put_bytes(&self, target: &str, file: &str, bytes: Vec<u8>)
        -> Result<(), StorageError>;
    /// Read a small object (a manifest) whole.
    async fn get_bytes(&self, target: &str, file: &str) -> Result<Vec<u8>, StorageError>;
    /// A blocking reader over a stored object (read it from a blocking thread).
    async fn open(
        &self,
        target: &str,
        file: &str,
    ) -> Result<Box<dyn std::io::Read + Send>, StorageError>;
    /// Every finished object in `target`'s folder (no temp files).
    async fn list(&self, target: &str) -> Result<Vec<ObjectInfo>, StorageError>;
    async fn delete(&self, target: &str, file: &str) -> Result<(), StorageError>;
    /// Remove temp files that no running writer owns; returns their names.
    async fn remove_temp_files(&self, target: &str) -> Result<Vec<String>, StorageError>;
    /// A folder where a source may put a short-lived scratch file (a SQLite snapshot).
    fn scratch_dir(&self, target: &str) -> Option<PathBuf>;
}

/// The storages a config enables: local first (it is the one a backup must reach).
pub async fn build(cfg: &Config) -> Vec<Box<dyn Storage>> {
    let mut out: Vec<Box<dyn Storage>> = Vec::new();
    if let Some(l) = &cfg.storage.local {
        out.push(Box::new(local::LocalStorage::new(l.path.clone())));
    }
    if let Some(s) = &cfg.storage.s3 {
        out.push(Box::new(
            s3::S3Storage::new(s.clone(), cfg.daemon.work_dir.clone()).await,
        ));
    }
    out
}

/// A folder for short-lived files of `target` (snapshots, scratch restores): beside the
/// local backups when there are any (same filesystem), else `work_dir`.
pub fn scratch_dir(
    storages: &[Box<dyn Storage>],
    target: &str,
    work_dir: &std::path::Path,
) -> PathBuf {
    storages
        .iter()
        .find_map(|s| s.scratch_dir(target))
        .unwrap_or_else(|| work_dir.to_path_buf())
}
