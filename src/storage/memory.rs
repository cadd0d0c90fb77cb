//! An in-memory storage for tests: behaves like the others under the storage contract
//! (nothing visible before commit, not-found errors, idempotent delete) and can be told
//! to fail its Nth write, to prove what a failing storage does to a run.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ObjectInfo, ObjectWriter, Storage, StorageError};

#[derive(Default)]
struct State {
    objects: BTreeMap<(String, String), (Vec<u8>, DateTime<Utc>)>,
    /// Write calls seen by all writers so far.
    writes: usize,
    /// The write call (1-based) that fails.
    fail_at: Option<usize>,
}

/// Clones share the same objects.
#[derive(Clone)]
pub struct MemoryStorage {
    name: &'static str,
    state: Arc<Mutex<State>>,
}

impl MemoryStorage {
    pub fn new(name: &'static str) -> Self {
        MemoryStorage {
            name,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Make the `n`th write call from now on (1-based, counted over all writers) fail.
    pub fn fail_nth_write(&self, n: usize) {
        let mut s = self.lock();
        s.fail_at = Some(s.writes + n);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn not_found(&self, target: &str, file: &str) -> StorageError {
        StorageError::NotFound {
            storage: self.name,
            path: PathBuf::from(format!("{target}/{file}")),
        }
    }
}

struct MemoryWriter {
    storage: MemoryStorage,
    key: (String, String),
    buf: Vec<u8>,
}

impl Write for MemoryWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut s = self.storage.lock();
        s.writes += 1;
        if s.fail_at == Some(s.writes) {
            return Err(io::Error::other("injected failure of the memory storage"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemoryWriter {
    fn commit(self: Box<Self>) -> Result<(), StorageError> {
        let this = *self;
        let mut s = this.storage.lock();
        if s.objects.contains_key(&this.key) {
            return Err(StorageError::Exists {
                storage: this.storage.name,
                path: PathBuf::from(format!("{}/{}", this.key.0, this.key.1)),
            });
        }
        s.objects.insert(this.key, (this.buf, Utc::now()));
        Ok(())
    }
    fn abort(self: Box<Self>) {}
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        self.name
    }

    fn location(&self, target: &str) -> String {
        format!("memory:{target}/")
    }

    async fn create(
        &self,
        target: &str,
        file: &str,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(MemoryWriter {
            storage: self.clone(),
            key: (target.to_string(), file.to_string()),
            buf: Vec::new(),
        }))
    }

    async fn put_bytes(
        &self,
        target: &str,
        file: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut w = self.create(target, file).await?;
        w.write_all(&bytes).map_err(|source| StorageError::Write {
            storage: self.name,
            file: file.to_string(),
            source,
        })?;
        w.commit()
    }

    async fn get_bytes(&self, target: &str, file: &str) -> Result<Vec<u8>, StorageError> {
        let bytes = self
            .lock()
            .objects
            .get(&(target.to_string(), file.to_string()))
            .map(|(b, _)| b.clone())
            .ok_or_else(|| self.not_found(target, file))?;
        if bytes.len() as u64 > super::MAX_SMALL_OBJECT {
            return Err(StorageError::TooLarge {
                storage: self.name,
                path: PathBuf::from(format!("{target}/{file}")),
                bytes: bytes.len() as u64,
                limit: super::MAX_SMALL_OBJECT,
            });
        }
        Ok(bytes)
    }

    async fn open(
        &self,
        target: &str,
        file: &str,
    ) -> Result<Box<dyn std::io::Read + Send>, StorageError> {
        let bytes = self
            .lock()
            .objects
            .get(&(target.to_string(), file.to_string()))
            .map(|(b, _)| b.clone())
            .ok_or_else(|| self.not_found(target, file))?;
        Ok(Box::new(io::Cursor::new(bytes)))
    }

    async fn list(&self, target: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        Ok(self
            .lock()
            .objects
            .iter()
            .filter(|((t, _), _)| t == target)
            .map(|((_, f), (b, at))| ObjectInfo {
                file: f.clone(),
                bytes: b.len() as u64,
                modified: *at,
            })
            .collect())
    }

    async fn delete(&self, target: &str, file: &str) -> Result<(), StorageError> {
        self.lock()
            .objects
            .remove(&(target.to_string(), file.to_string()));
        Ok(())
    }

    async fn remove_temp_files(&self, _target: &str) -> Result<Vec<String>, StorageError> {
        // Uncommitted writers hold their bytes themselves; nothing is left behind.
        Ok(Vec::new())
    }
}
