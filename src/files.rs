//! Files dbkeep keeps for itself (the state file, records of abandoned uploads): written
//! under an unpredictable name created exclusively (never through a planted link), private
//! to dbkeep's user whatever the umask, fsynced, then renamed into place; read without
//! following links.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the folders dbkeep creates.
pub const DIR_MODE: u32 = 0o750;
/// Mode of the files dbkeep creates.
pub const FILE_MODE: u32 = 0o640;

/// Create `dir` and its missing parents with [`DIR_MODE`].
pub fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Replace `path` with `bytes` atomically: a new file under a random name beside it
/// (`O_CREAT|O_EXCL|O_NOFOLLOW`, [`FILE_MODE`]), fsynced, renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        // The mode given at creation is cut by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Create the new, empty file `path` for reading and writing, its owner's only (0600
/// whatever the umask); never over an existing file or through a link.
pub fn open_private(path: &Path) -> io::Result<fs::File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Write `bytes` to the new file `path`, readable by its owner only (0600 whatever the
/// umask), fsynced; never over an existing file or through a link. A write that fails
/// (a full disk) removes the file, so no partial one is left to be taken for whole.
pub fn create_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = open_private(path)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Read `path` whole, refusing a symlink and anything over `limit` bytes.
pub fn read_no_follow(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let len = f.metadata()?.len();
    if len > limit {
        return Err(io::Error::other(format!(
            "{} is {len} bytes, more than the {limit} expected",
            path.display()
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_at_any_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let state = dir.path().join("state.json");
        // A link at the final name is replaced, not followed.
        std::os::unix::fs::symlink(&victim, &state).unwrap();
        write_atomic(&state, b"{}").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&state).unwrap(), b"{}");
        assert!(!fs::symlink_metadata(&state)
            .unwrap()
            .file_type()
            .is_symlink());
        let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
        // Reading refuses a link.
        fs::remove_file(&state).unwrap();
        std::os::unix::fs::symlink(&victim, &state).unwrap();
        assert!(read_no_follow(&state, 1024).is_err());
    }
}
