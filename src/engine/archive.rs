//! Reading a stored archive for a restore: decompress it as it streams, hash the stored
//! bytes on the way, show progress, and hold back the end of the stream until the sha256
//! matches the manifest, so the consumer cannot finish (and commit) on changed bytes.

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Archive, EngineError};

/// A check of the decompressed bytes on their way to the consumer (the SQL guard in front
/// of psql); its error refuses the stream.
pub type Check = Box<dyn FnMut(&[u8]) -> Result<(), String> + Send>;
use crate::catalog::Backup;
use crate::{compress, crypt};

/// How much of the end of a restore stream is held back until its checksum is confirmed.
const HOLD_BACK: usize = 64 * 1024;

/// The hash of the stored bytes read so far; shared, since the reader that feeds it may
/// sit under a decryptor that does not hand it back.
type Hash = std::sync::Arc<std::sync::Mutex<Sha256>>;

/// Hashes the stored bytes, and counts them on the run's meter when it has one.
struct Progress<R> {
    inner: R,
    hasher: Hash,
    meter: Option<std::sync::Arc<crate::progress::Meter>>,
}

impl<R> Progress<R> {
    fn new(inner: R, meter: Option<std::sync::Arc<crate::progress::Meter>>) -> Self {
        Progress {
            inner,
            hasher: Default::default(),
            meter,
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut h) = self.hasher.lock() {
            h.update(&buf[..n]);
        }
        if let Some(m) = &self.meter {
            m.add(n as u64);
        }
        Ok(n)
    }
}

/// Judges the plain stream on its way to a consumer that may stop reading before its end
/// (pg_restore stops after the last data block it needs): it refuses a stream whose end,
/// as the consumer sees it, would not be the stored archive's end, where the sha256 is
/// confirmed. Holding back the last bytes only keeps a consumer from finishing when it
/// needs them.
pub trait Gate: Send {
    /// The next bytes, before any of them reach the consumer. `Ok(true)` while the gate
    /// cannot judge them yet: everything so far is then held back.
    fn inspect(&mut self, chunk: &[u8]) -> Result<bool, String>;
    /// The stream ended, before its held-back tail is released.
    fn end(&mut self) -> Result<(), String>;
}

/// Passes bytes on but keeps the last `HOLD_BACK` (and all of them while the gate says
/// so) until `release`: the consumer cannot reach the end of the stream (and commit)
/// before the caller allows it.
struct HoldBack<W: Write> {
    inner: W,
    tail: Vec<u8>,
    gate: Option<Box<dyn Gate>>,
}

impl<W: Write> HoldBack<W> {
    fn new(inner: W, gate: Option<Box<dyn Gate>>) -> Self {
        HoldBack {
            inner,
            tail: Vec::with_capacity(2 * HOLD_BACK),
            gate,
        }
    }

    fn release(mut self) -> io::Result<W> {
        if let Some(gate) = &mut self.gate {
            gate.end().map_err(refusal)?;
        }
        self.inner.write_all(&self.tail)?;
        Ok(self.inner)
    }
}

/// A gate's or guard's refusal, inside an io::Error.
fn refusal(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refusal(message))
}

impl<W: Write> Write for HoldBack<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(gate) = &mut self.gate {
            if gate.inspect(buf).map_err(refusal)? {
                self.tail.extend_from_slice(buf);
                return Ok(buf.len());
            }
        }
        if buf.len() >= HOLD_BACK {
            // A large write passes straight on, but for its own last HOLD_BACK bytes: no
            // copy of the stream through `tail`.
            let (pass, keep) = buf.split_at(buf.len() - HOLD_BACK);
            self.inner.write_all(&self.tail)?;
            self.inner.write_all(pass)?;
            self.tail.clear();
            self.tail.extend_from_slice(keep);
            return Ok(buf.len());
        }
        self.tail.extend_from_slice(buf);
        if self.tail.len() > 2 * HOLD_BACK {
            let pass = self.tail.len() - HOLD_BACK;
            self.inner.write_all(&self.tail[..pass])?;
            self.tail.drain(..pass);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How much of the decompressed stream moves at a time: 1 MiB writes into a pipe of the
/// same size (process.rs) or a file, where std's `io::copy` moves 8 KiB.
const COPY_BUFFER: usize = 1 << 20;

/// `io::copy` with a [`COPY_BUFFER`]: fewer, larger writes into the consumer.
fn copy_wide(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// A stored archive being read: decrypted when it was encrypted, then decompressed.
type Stored<R> = compress::Decoder<crypt::Opened<Progress<R>>>;

/// Read the rest of the stored object and compare the hash of all of it with the manifest.
/// An encrypted archive is read to the end of its age stream, which authenticates its
/// last chunk (a cut archive fails here).
fn finish_hash<R: Read>(
    decoder: Stored<R>,
    hash: Hash,
    backup: &Backup,
) -> Result<(), EngineError> {
    let mut rest = compress::into_inner(decoder);
    io::copy(&mut rest, &mut io::sink())
        .map_err(EngineError::io(format!("reading {}", backup.file)))?;
    if let crypt::Opened::Plain(progress) = &mut rest {
        io::copy(progress, &mut io::sink())
            .map_err(EngineError::io(format!("reading {}", backup.file)))?;
    }
    let actual = match hash.lock() {
        Ok(h) => hex::encode(h.clone().finalize()),
        Err(_) => String::new(),
    };
    if actual != backup.sha256 {
        return Err(EngineError::Checksum {
            file: backup.file.clone(),
            expected: backup.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// A failure while the archive streamed, or the stored bytes not matching the manifest
/// when they do not: a decoder fails on a corrupt archive before its hash is known, and
/// the mismatch is the cause to report.
fn blame<R: Read>(
    err: EngineError,
    decoder: Stored<R>,
    hash: Hash,
    backup: &Backup,
) -> EngineError {
    match finish_hash(decoder, hash, backup) {
        Err(mismatch @ EngineError::Checksum { .. }) => mismatch,
        _ => err,
    }
}

/// An archive whose plain bytes could not be read (a decoder error while only its head
/// was wanted): when its stored bytes do not match the manifest, that mismatch is the
/// error to report, since it names the cause; else `err`.
pub async fn mismatch_or(archive: Archive<'_>, err: EngineError) -> EngineError {
    // Restored from its private copy: the bytes read were the proven ones.
    if archive.proof.is_some_and(|p| p.spool.is_some()) {
        return err;
    }
    let pin = archive.proof.and_then(|p| p.pin.as_deref());
    match stored_sha256(archive.storage, archive.backup, pin, None).await {
        Err(changed @ EngineError::Storage(crate::storage::StorageError::Changed { .. })) => {
            changed
        }
        Ok((actual, _, _)) if actual != archive.backup.sha256 => EngineError::Checksum {
            file: archive.backup.file.clone(),
            expected: archive.backup.sha256.clone(),
            actual,
        },
        _ => err,
    }
}

/// The sha256 of `backup`'s file as stored (encrypted and compressed), read whole.
/// With `pin`, only that version of the object is read. With `spool`, the bytes read are
/// also kept there, as long as it takes them and they are no more than the manifest
/// says: the version of the object read, and the spool when it holds all of them, come
/// back with the sha256.
pub async fn stored_sha256(
    storage: &dyn crate::storage::Storage,
    backup: &Backup,
    pin: Option<&str>,
    spool: Option<Spool>,
) -> Result<(String, Option<String>, Option<Spool>), EngineError> {
    let opened = storage
        .open_version(&backup.target, &backup.file, pin)
        .await?;
    let (mut reader, version) = (opened.reader, opened.version);
    let reading = format!("reading {}", backup.file);
    let file = backup.file.clone();
    let limit = backup.manifest.stored_bytes;
    let (sha256, spool) = tokio::task::spawn_blocking(move || -> io::Result<_> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut spool = spool;
        let mut read = 0u64;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok((hex::encode(hasher.finalize()), spool));
            }
            hasher.update(&buf[..n]);
            read += n as u64;
            if spool.is_some() && read > limit {
                // Not the archive of the manifest: its sha256 will say so; the scratch
                // folder is not filled with it meanwhile.
                tracing::warn!(file = %file, manifest_bytes = limit, "the object holds more bytes than its manifest says; no private copy is kept");
                spool = None;
            }
            if let Some(s) = &mut spool {
                if let Err(e) = s.file.write_all(&buf[..n]) {
                    tracing::warn!(file = %file, error = %e, "cannot keep a private copy of the archive while it is proven; the restore reads it from the storage again");
                    spool = None;
                }
            }
        }
    })
    .await
    .map_err(io::Error::other)
    .and_then(|r| r)
    .map_err(EngineError::io(reading))?;
    Ok((sha256, version, spool))
}

/// What proving an archive's sha256 leaves for the restore that reads it next: the
/// version of the stored object proven ([`crate::storage::Storage::open_version`]),
/// which is the only one read, and its bytes, when they were kept while they were proven.
#[derive(Debug, Default)]
pub struct Proof {
    pub pin: Option<String>,
    pub spool: Option<Spool>,
}

/// A private copy of a stored archive, taken while its sha256 was proven: an unlinked file
/// that only this process holds, removed with it however it ends. A restore reads the
/// proven bytes from it instead of the storage again: an archive on S3 is downloaded
/// once, and nothing written to the storage after the proof can reach the restore.
#[derive(Debug)]
pub struct Spool {
    file: std::fs::File,
}

impl Spool {
    /// An empty spool in `dir` (`O_TMPFILE`; where the filesystem has none, a new file
    /// removed at once), mode 0600.
    pub fn create(dir: &Path) -> io::Result<Spool> {
        use std::os::unix::fs::OpenOptionsExt;
        let unnamed = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        let file = match unnamed {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                let path = dir.join(format!(".dbkeep-spool.{:016x}", rand::random::<u64>()));
                let f = crate::files::open_private(&path)?;
                std::fs::remove_file(&path)?;
                f
            }
            Err(e) => return Err(e),
        };
        Ok(Spool { file })
    }

    /// A reader over the whole copy, from its start (each with its own position).
    pub fn reader(&self) -> io::Result<Box<dyn Read + Send>> {
        struct At {
            file: std::fs::File,
            at: u64,
        }
        impl Read for At {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                use std::os::unix::fs::FileExt;
                let n = self.file.read_at(buf, self.at)?;
                self.at += n as u64;
                Ok(n)
            }
        }
        Ok(Box::new(At {
            file: self.file.try_clone()?,
            at: 0,
        }))
    }
}

fn decoder<R: Read>(
    reader: R,
    backup: &Backup,
    keys: Option<&crypt::Identities>,
    meter: Option<std::sync::Arc<crate::progress::Meter>>,
) -> Result<(Stored<R>, Hash), EngineError> {
    let progress = Progress::new(reader, meter);
    let hash = progress.hasher.clone();
    let opened = open(progress, backup, keys)?;
    let d = compress::decoder_for(&backup.manifest.codec, opened)
        .map_err(EngineError::io(format!("decoding {}", backup.file)))?;
    Ok((d, hash))
}

/// The stored bytes decrypted, when the manifest says they are encrypted.
fn open<R: Read>(
    stored: R,
    backup: &Backup,
    keys: Option<&crypt::Identities>,
) -> Result<crypt::Opened<R>, EngineError> {
    crypt::open(stored, &backup.manifest.encrypted_to, keys)
        .map_err(|m| EngineError::Decrypt(format!("{}: {m}", backup.file)))
}

/// The archive's plain bytes, unchecked: for a reader that needs only its head (the TOC)
/// and restores nothing from it.
pub fn plain<R: Read>(
    stored: R,
    backup: &Backup,
    keys: Option<&crypt::Identities>,
) -> Result<compress::Decoder<crypt::Opened<R>>, EngineError> {
    compress::decoder_for(&backup.manifest.codec, open(stored, backup, keys)?)
        .map_err(EngineError::io(format!("decoding {}", backup.file)))
}

/// Runs the check, when there is one, on every byte before the consumer gets it.
struct Guarded<W> {
    inner: W,
    check: Option<Check>,
}

/// The guard's refusal travels inside an io::Error of this type.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl<W: Write> Write for Guarded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(check) = &mut self.check {
            check(buf).map_err(refusal)?;
        }
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A guard's refusal as such, any other error as an I/O failure of `what`.
fn refused_or(e: io::Error, what: String) -> EngineError {
    match e.get_ref().and_then(|i| i.downcast_ref::<Refusal>()) {
        Some(r) => EngineError::Refused(r.0.clone()),
        None => EngineError::io(what)(e),
    }
}

/// Decompress the stored archive into `sink` (a child's stdin), hashing the stored bytes
/// on the way; a hash that differs from the manifest's is an error before the sink sees
/// its end. A consumer that stops reading early (pg_restore with `--schema` once it has
/// what it wants) is not an error here: its exit status decides; one that commits when
/// it stops needs a `gate` that refuses a stream it would stop early in.
pub async fn feed<W>(
    archive: Archive<'_>,
    sink: W,
    check: Option<Check>,
    gate: Option<Box<dyn Gate>>,
) -> Result<(), EngineError>
where
    W: Write + Send + 'static,
{
    let reader = archive.open().await?;
    let backup = archive.backup.clone();
    let meter = archive.meter.cloned();
    let keys = archive.keys.cloned();
    tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
        let mut out = HoldBack::new(Guarded { inner: sink, check }, gate);
        let (mut decoder, hash) = decoder(reader, &backup, keys.as_deref(), meter)?;
        let streaming = format!("streaming {} into the restore", backup.file);
        let closed_early = match copy_wide(&mut decoder, &mut out) {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => true,
            Err(e) => return Err(blame(refused_or(e, streaming), decoder, hash, &backup)),
        };
        finish_hash(decoder, hash, &backup)?;
        if !closed_early {
            // The consumer may also stop at the held-back tail; its exit status decides.
            match out.release() {
                // Dropped here: the consumer's input ends.
                Ok(mut inner) => inner.flush().map_err(EngineError::io(streaming))?,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(refused_or(e, streaming)),
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| EngineError::io("the restore stream thread")(io::Error::other(e)))?
}

/// Decompress the stored archive into the new file `dest`; the sha256 of the stored bytes
/// must match the manifest. Returns the file written, not yet made durable: the caller
/// syncs it (a restore, while it checks it) or not (a scratch copy).
pub async fn unpack_to_file(
    archive: Archive<'_>,
    dest: &Path,
) -> Result<std::fs::File, EngineError> {
    let reader = archive.open().await?;
    let backup = archive.backup.clone();
    let meter = archive.meter.cloned();
    let keys = archive.keys.cloned();
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<std::fs::File, EngineError> {
        let (mut decoder, hash) = decoder(reader, &backup, keys.as_deref(), meter)?;
        let what = format!("writing {}", dest.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(EngineError::io(what.clone()))?;
        if let Err(e) = copy_wide(&mut decoder, &mut f) {
            let err =
                EngineError::io(format!("unpacking {} into {}", backup.file, dest.display()))(e);
            return Err(blame(err, decoder, hash, &backup));
        }
        finish_hash(decoder, hash, &backup)?;
        Ok(f)
    })
    .await
    .map_err(|e| EngineError::io("the restore thread")(io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_back_keeps_the_tail_until_released() {
        let mut out = HoldBack::new(Vec::new(), None);
        let data = vec![7u8; 3 * HOLD_BACK];
        out.write_all(&data).unwrap();
        assert!(out.inner.len() <= 2 * HOLD_BACK);
        assert!(out.tail.len() >= HOLD_BACK);
        let inner = out.release().unwrap();
        assert_eq!(inner, data);
    }

    #[test]
    fn hold_back_keeps_the_tail_of_small_and_large_writes_alike() {
        // Writes of every size, in an order that takes both paths back and forth: the
        // consumer gets the bytes in order, never the last HOLD_BACK before the release.
        let data: Vec<u8> = (0..10 * HOLD_BACK).map(|i| (i % 251) as u8).collect();
        let sizes = [
            1,
            HOLD_BACK - 1,
            HOLD_BACK,
            3 * HOLD_BACK + 7,
            100,
            2 * HOLD_BACK,
        ];
        let mut out = HoldBack::new(Vec::new(), None);
        let (mut at, mut i) = (0, 0);
        while at < data.len() {
            let n = sizes[i % sizes.len()].min(data.len() - at);
            out.write_all(&data[at..at + n]).unwrap();
            at += n;
            i += 1;
            assert!(
                out.inner.len() <= at.saturating_sub(HOLD_BACK),
                "passed the held-back tail"
            );
            assert_eq!(out.inner[..], data[..out.inner.len()]);
        }
        assert_eq!(out.release().unwrap(), data);
    }

    #[test]
    fn copy_wide_moves_every_byte_in_order() {
        let data: Vec<u8> = (0..3 * COPY_BUFFER + 5).map(|i| (i % 253) as u8).collect();
        let mut to = Vec::new();
        let n = copy_wide(&mut &data[..], &mut to).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(to, data);
    }
}
