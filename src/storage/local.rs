//! Local folder storage: `<root>/<target>/<file>`, written as temp file, fsync, rename,
//! fsync of the folder.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ObjectInfo, ObjectWriter, Storage, StorageError};

const NAME: &str = "local";
/// Temp files are `.dbkeep-tmp.<pid>.<random>.<final name>`: hidden, never listed,
/// and the pid tells a later run whether their writer can still be alive.
const TEMP_PREFIX: &str = ".dbkeep-tmp.";
const WRITE_BUFFER: usize = 1024 * 1024;

/// Temp files this process is writing right now (never removed as leftovers).
static ACTIVE: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: PathBuf) -> Self {
        LocalStorage { root }
    }

    fn dir(&self, target: &str) -> PathBuf {
        self.root.join(target)
    }

    fn ensure_dir(&self, target: &str) -> Result<PathBuf, StorageError> {
        let dir = self.dir(target);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(|source| io_err("create folder", &dir, source))?;
        real_folder(&dir)?;
        Ok(dir)
    }
}

/// A target's folder must be a folder of its own: a symlink planted in its place could
/// send archives (and the reads of restore and download) anywhere on the host.
fn real_folder(dir: &Path) -> Result<(), StorageError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(StorageError::NotRegular {
            storage: NAME,
            path: dir.to_path_buf(),
            what: "a symbolic link (a target's folder must be a real folder)",
        }),
        Ok(m) if !m.is_dir() => Err(StorageError::NotRegular {
            storage: NAME,
            path: dir.to_path_buf(),
            what: "not a folder",
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound {
            storage: NAME,
            path: dir.to_path_buf(),
        }),
        Err(source) => Err(io_err("inspect", dir, source)),
    }
}

/// Open a stored file for reading, with its length: only a regular file with one link,
/// in a real folder. A symlink, a hard link to a file elsewhere (which a write to the
/// storage folder is enough to plant), a FIFO or a device is refused, never read, so
/// neither restore nor a download can be pointed outside the storage.
fn open_stored(path: &Path, action: &'static str) -> Result<(File, u64), StorageError> {
    if let Some(dir) = path.parent() {
        real_folder(dir)?;
    }
    let refused = |what| StorageError::NotRegular {
        storage: NAME,
        path: path.to_path_buf(),
        what,
    };
    // O_NONBLOCK: opening a planted FIFO must not wait for a writer.
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::NotFound {
                storage: NAME,
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(refused("a symbolic link")),
        Err(source) => return Err(io_err(action, path, source)),
    };
    let meta = f
        .metadata()
        .map_err(|source| io_err(action, path, source))?;
    if !meta.is_file() {
        return Err(refused("not a regular file"));
    }
    if std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
        return Err(refused("a hard link (a file with more than one name)"));
    }
    Ok((f, meta.len()))
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        storage: NAME,
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn temp_path(dir: &Path, file: &str) -> PathBuf {
    let nonce: u64 = rand::random();
    dir.join(format!(
        "{TEMP_PREFIX}{}.{nonce:016x}.{file}",
        std::process::id()
    ))
}

fn create_temp(dir: &Path, file: &str) -> Result<(File, PathBuf), StorageError> {
    let tmp = temp_path(dir, file);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)
        .map_err(|source| io_err("create", &tmp, source))?;
    if let Ok(mut active) = ACTIVE.lock() {
        active.insert(tmp.clone());
    }
    Ok((f, tmp))
}

fn forget_temp(tmp: &Path) {
    if let Ok(mut active) = ACTIVE.lock() {
        active.remove(tmp);
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_err("fsync folder", dir, source))
}

/// Rename `from` to `to` unless `to` exists (the check and the rename are one step).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: renameat2 with two NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Filesystems without RENAME_NOREPLACE: a hard link fails the same way on an
        // existing name; then the temp name goes.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// fsync the temp file, rename it to its final name (never over an existing one), fsync
/// the folder.
fn publish(file: File, tmp: &Path, dest: &Path) -> Result<(), StorageError> {
    file.sync_all()
        .map_err(|source| io_err("fsync", tmp, source))?;
    drop(file);
    rename_noreplace(tmp, dest).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            StorageError::Exists {
                storage: NAME,
                path: dest.to_path_buf(),
            }
        } else {
            io_err("rename into place", dest, source)
        }
    })?;
    forget_temp(tmp);
    sync_dir(dest.parent().unwrap_or(Path::new(".")))
}

struct LocalWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    /// Bytes handed to the kernel, and how far writeback has been started.
    written: u64,
    synced: u64,
}

/// Start writeback every this many bytes, so the fsync at commit has little left to do.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(w) = self.out.as_mut() else {
            return Err(io::Error::other("writer already closed"));
        };
        let n = w.write(buf).map_err(|source| {
            // Keep the path (and the os error, for its kind) with the error.
            io::Error::new(source.kind(), io_err("write", &self.tmp, source))
        })?;
        self.written += n as u64;
        let flushed = self.written - w.buffer().len() as u64;
        if flushed - self.synced >= WRITEBACK_EVERY {
            use std::os::fd::AsRawFd;
            // SAFETY: sync_file_range on our own open file; it only starts writeback (the
            // fsync at commit still makes the file durable).
            unsafe {
                libc::sync_file_range(
                    w.get_ref().as_raw_fd(),
                    self.synced as libc::off64_t,
                    (flushed - self.synced) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.synced = flushed;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        let out = self.out.take().ok_or_else(|| StorageError::Task {
            storage: NAME,
            what: "commit",
            message: "the writer was already closed".into(),
        })?;
        let file = out
            .into_inner()
            .map_err(|e| io_err("write", &self.tmp, e.into_error()))?;
        let result = publish(file, &self.tmp, &self.dest);
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
            forget_temp(&self.tmp);
        }
        result
    }

    fn abort(self: Box<Self>) {
        // Drop does the work.
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
            forget_temp(&self.tmp);
        }
    }
}

/// Is the process that wrote this temp file possibly still writing it?
fn temp_owner_alive(path: &Path, name: &str) -> bool {
    let pid: Option<u32> = name
        .strip_prefix(TEMP_PREFIX)
        .and_then(|rest| rest.split('.').next())
        .and_then(|p| p.parse().ok());
    match pid {
        None => false,
        Some(pid) if pid == std::process::id() => {
            ACTIVE.lock().map(|a| a.contains(path)).unwrap_or(true)
        }
        // SAFETY: kill with signal 0 only checks whether the pid exists.
        Some(pid) => unsafe { libc::kill(pid as libc::pid_t, 0) == 0 },
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Task {
            storage: NAME,
            what: "a blocking file operation",
            message: e.to_string(),
        })?
}

#[async_trait]
impl Storage for LocalStorage {
    fn name(&self) -> &'static str {
        NAME
    }

    fn location(&self, target: &str) -> String {
        self.dir(target).display().to_string()
    }

    async fn create(
        &self,
        target: &str,
        file: &str,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let dir = self.ensure_dir(target)?;
        let dest = dir.join(file);
        let (f, tmp) = create_temp(&dir, file)?;
        Ok(Box::new(LocalWriter {
            out: Some(BufWriter::with_capacity(WRITE_BUFFER, f)),
            tmp,
            dest,
            written: 0,
            synced: 0,
        }))
    }

    async fn put_bytes(
        &self,
        target: &str,
        file: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError> {
        let dir = self.ensure_dir(target)?;
        let file = file.to_string();
        blocking(move || {
            let dest = dir.join(&file);
            let (mut f, tmp) = create_temp(&dir, &file)?;
            let written = f
                .write_all(&bytes)
                .map_err(|source| io_err("write", &tmp, source));
            let result = written.and_then(|()| publish(f, &tmp, &dest));
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
                forget_temp(&tmp);
            }
            result
        })
        .await
    }

    async fn get_bytes(&self, target: &str, file: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.dir(target).join(file);
        blocking(move || {
            let (f, len) = open_stored(&path, "read")?;
            if len > super::MAX_SMALL_OBJECT {
                return Err(StorageError::TooLarge {
                    storage: NAME,
                    path,
                    bytes: len,
                    limit: super::MAX_SMALL_OBJECT,
                });
            }
            let mut out = Vec::with_capacity(len as usize);
            let mut limited = io::Read::take(f, super::MAX_SMALL_OBJECT);
            io::Read::read_to_end(&mut limited, &mut out)
                .map_err(|source| io_err("read", &path, source))?;
            Ok(out)
        })
        .await
    }

    async fn open(
        &self,
        target: &str,
        file: &str,
    ) -> Result<Box<dyn std::io::Read + Send>, StorageError> {
        Ok(self.open_version(target, file, None).await?.reader)
    }

    /// The version is the open file's device, inode, size, and modification and change
    /// times: a file renamed over the archive is another inode, and a write in place
    /// moves the times. (A write through the open file, by one who may write the
    /// archive itself, while it is read is caught by the stream's own sha256 and the
    /// restore's gate, not here.)
    async fn open_version(
        &self,
        target: &str,
        file: &str,
        pin: Option<&str>,
    ) -> Result<super::Opened, StorageError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.dir(target).join(file);
        let (f, _) = open_stored(&path, "open")?;
        let m = f
            .metadata()
            .map_err(|source| io_err("open", &path, source))?;
        let version = format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
        if let Some(pin) = pin.filter(|p| *p != version) {
            return Err(StorageError::Changed {
                storage: NAME,
                file: file.to_string(),
                detail: format!(
                    "device:inode:size:mtime:ctime {version}, proven as {pin}: another file, or one written since"
                ),
            });
        }
        Ok(super::Opened {
            reader: Box::new(std::io::BufReader::with_capacity(WRITE_BUFFER, f)),
            version: Some(version),
        })
    }

    async fn list(&self, target: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let dir = self.dir(target);
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(source) => return Err(io_err("list", &dir, source)),
            };
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| io_err("list", &dir, source))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.')
                    && !name.starts_with(super::PIN_PREFIX)
                    && !name.starts_with(super::ACCEPT_PREFIX)
                    && !name.starts_with(super::PROBE_PREFIX)
                    && !name.starts_with(super::COMMIT_PREFIX)
                {
                    continue;
                }
                // symlink_metadata: a symlink planted in the folder is not a backup. (A pin
                // that is not a plain file is listed all the same: it still pins.)
                let meta = match entry.path().symlink_metadata() {
                    Ok(m) if m.is_file() || name.starts_with(super::PIN_PREFIX) => m,
                    _ => continue,
                };
                let modified = meta
                    .modified()
                    .map(DateTime::<Utc>::from)
                    .unwrap_or_else(|_| Utc::now());
                out.push(ObjectInfo {
                    file: name,
                    bytes: meta.len(),
                    modified,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn delete(&self, target: &str, file: &str) -> Result<(), StorageError> {
        let path = self.dir(target).join(file);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io_err("delete", &path, source)),
        }
    }

    async fn remove_temp_files(&self, target: &str) -> Result<Vec<String>, StorageError> {
        let dir = self.dir(target);
        blocking(move || remove_dead_temps(&dir)).await
    }

    fn scratch_dir(&self, target: &str) -> Option<PathBuf> {
        self.ensure_dir(target).ok()
    }

    fn folder(&self, target: &str) -> Option<PathBuf> {
        Some(self.dir(target))
    }
}

/// `<base>/<target>`, created owner-only (0700, and made so when it exists), with the
/// scratch files of dead processes removed: where an encrypted target's plaintext
/// scratch files (a SQLite snapshot, a drill's copy) go, outside every storage.
pub fn private_dir(base: &Path, target: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = base.join(target);
    for d in [base, dir.as_path()] {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = fs::symlink_metadata(d)?;
        if !meta.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a folder (a link?); remove it",
                d.display()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
        }
    }
    remove_dead_temps(&dir).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(dir)
}

/// Remove the scratch files named `*what` ([`ScratchFile::reserve`]) in `dir`, a folder
/// that is not a storage's (a SQLite database's), whose process is gone; their names.
pub fn remove_dead_scratch(dir: &Path, what: &str) -> Result<Vec<String>, StorageError> {
    remove_dead(dir, &|name| name.ends_with(what))
}

/// Remove the temp files in `dir` whose writing process is gone; their names.
fn remove_dead_temps(dir: &Path) -> Result<Vec<String>, StorageError> {
    remove_dead(dir, &|_| true)
}

fn remove_dead(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<String>, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_err("list", dir, source)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !name.starts_with(TEMP_PREFIX) || !wanted(&name) || temp_owner_alive(&path, &name) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_err("remove leftover", &path, source)),
        }
    }
    Ok(removed)
}

/// A scratch file in a storage folder that follows the temp-name rules (so a crash
/// leaves something the next run removes) and is deleted on drop.
pub struct ScratchFile {
    path: PathBuf,
}

impl ScratchFile {
    /// Reserve a name in `dir` for a file another component (SQLite) will create.
    pub fn reserve(dir: &Path, what: &str) -> Self {
        let path = temp_path(dir, what);
        if let Ok(mut active) = ACTIVE.lock() {
            active.insert(path.clone());
        }
        ScratchFile { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        forget_temp(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_publishes_and_abort_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().to_path_buf());
        let mut w = s.create("t", "a.bin").await.unwrap();
        w.write_all(b"hello").unwrap();
        assert!(
            s.list("t").await.unwrap().is_empty(),
            "temp file must not be listed"
        );
        w.commit().unwrap();
        let mut w = s.create("t", "b.bin").await.unwrap();
        w.write_all(b"partial").unwrap();
        w.abort();
        let names: Vec<_> = fs::read_dir(dir.path().join("t"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["a.bin"]);
        assert_eq!(fs::read(dir.path().join("t/a.bin")).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn leftovers_of_dead_writers_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().to_path_buf());
        let tdir = dir.path().join("t");
        fs::create_dir_all(&tdir).unwrap();
        // pid 0x7fffffff never exists
        fs::write(
            tdir.join(format!("{TEMP_PREFIX}2147483646.00.x.dump.zst")),
            b"junk",
        )
        .unwrap();
        let mut live = s.create("t", "live.bin").await.unwrap();
        live.write_all(b"x").unwrap();
        let removed = s.remove_temp_files("t").await.unwrap();
        assert_eq!(
            removed,
            vec![format!("{TEMP_PREFIX}2147483646.00.x.dump.zst")]
        );
        live.commit().unwrap();
        assert_eq!(s.list("t").await.unwrap().len(), 1);
    }
}
