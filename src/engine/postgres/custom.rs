//! Reading `pg_dump`'s custom archive format (`-Fc -Z0`) as it streams past, to take each
//! table's content fingerprint from the COPY data with no query of the server.
//!
//! The layout (pg_backup_archiver.c, pg_backup_custom.c): a header (`PGDMP`, version,
//! integer and offset sizes, format, compression, creation time, names), the table of
//! contents (one entry per object: dump id, description such as `TABLE DATA`, schema,
//! name, definition), then the data blocks in dump order. A block is a type byte and the
//! dump id of its entry; table data follows as length-prefixed chunks ending with a zero
//! length, large objects as (oid, chunks) pairs ending with oid 0. Integers are a sign
//! byte and `int_size` little-endian bytes; strings an integer length (-1: none) and
//! the bytes. Only uncompressed archives (`-Z0`) carry readable data.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc;

use super::super::content::{Collector, Fold, ObjectHasher, RowFolder, PG_COPY_TEXT};
use crate::catalog::{Content, SequenceValue};

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// Format byte of a custom archive.
const ARCH_CUSTOM: u8 = 1;

type Version = (u8, u8, u8);

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

struct Reader<R> {
    inner: BufReader<R>,
    int_size: usize,
}

impl<R: Read> Reader<R> {
    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// The next byte, or `None` at a clean end of the stream.
    fn byte_or_end(&mut self) -> io::Result<Option<u8>> {
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        let b = buf[0];
        self.inner.consume(1);
        Ok(Some(b))
    }

    fn int(&mut self) -> io::Result<i64> {
        let sign = self.byte()?;
        let mut v: u64 = 0;
        for i in 0..self.int_size {
            let b = u64::from(self.byte()?);
            if i < 8 {
                v |= b << (8 * i);
            }
        }
        let v = i64::try_from(v).map_err(|_| bad("an integer out of range"))?;
        Ok(if sign != 0 { -v } else { v })
    }

    fn string(&mut self) -> io::Result<Option<String>> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| bad("a string length out of range"))?;
        if len > 1 << 30 {
            return Err(bad("a string longer than 1 GiB"));
        }
        let mut buf = vec![0u8; len];
        self.inner.read_exact(&mut buf)?;
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    fn skip(&mut self, n: usize) -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = left.min(buf.len());
            self.inner.consume(take);
            left -= take;
        }
        Ok(())
    }

    /// Pass the length-prefixed chunks of one data item to `each`, up to the zero length.
    fn chunks(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            let len = self.int()?;
            if len == 0 {
                return Ok(());
            }
            let mut left = usize::try_from(len).map_err(|_| bad("a negative chunk length"))?;
            while left > 0 {
                let buf = self.inner.fill_buf()?;
                if buf.is_empty() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let take = left.min(buf.len());
                each(&buf[..take]);
                self.inner.consume(take);
                left -= take;
            }
        }
    }
}

/// What one TOC entry says about the data to come.
enum Entry {
    Table {
        schema: Option<String>,
        name: String,
    },
    Other,
}

/// Read a whole custom-format archive from `input` and return its content.
pub fn read_content<R: Read>(input: R) -> io::Result<Content> {
    let mut r = Reader {
        inner: BufReader::with_capacity(256 * 1024, input),
        int_size: 4,
    };
    let mut magic = [0u8; 5];
    r.inner.read_exact(&mut magic)?;
    if &magic != b"PGDMP" {
        return Err(bad("not a custom-format archive"));
    }
    let version: Version = (r.byte()?, r.byte()?, r.byte()?);
    if !((1, 12, 0)..(1, 17, 0)).contains(&version) {
        return Err(bad(format!(
            "archive version {}.{}.{} is not one dbkeep reads",
            version.0, version.1, version.2
        )));
    }
    r.int_size = usize::from(r.byte()?);
    if !(4..=8).contains(&r.int_size) {
        return Err(bad("an unusual integer size"));
    }
    let off_size = usize::from(r.byte()?);
    if r.byte()? != ARCH_CUSTOM {
        return Err(bad("not a custom-format archive"));
    }
    // Compression: an algorithm byte from 1.15, a level before; data must be plain.
    let compressed = if version >= (1, 15, 0) {
        r.byte()? != 0
    } else {
        r.int()? != 0
    };
    if compressed {
        return Err(bad(
            "the archive's data is compressed (dbkeep dumps with -Z0)",
        ));
    }
    for _ in 0..7 {
        r.int()?; // creation time
    }
    r.string()?; // database name
    r.string()?; // server version
    r.string()?; // pg_dump version
    let entries = r.int()?;
    let mut collector = Collector::new(PG_COPY_TEXT);
    let mut by_id: HashMap<i64, Entry> = HashMap::new();
    for _ in 0..entries {
        let dump_id = r.int()?;
        r.int()?; // had dumper
        r.string()?; // table oid
        r.string()?; // oid
        let tag = r.string()?.unwrap_or_default();
        let desc = r.string()?.unwrap_or_default();
        r.int()?; // section
        let defn = r.string()?.unwrap_or_default();
        r.string()?; // drop statement
        r.string()?; // copy statement
        let namespace = r.string()?.filter(|s| !s.is_empty());
        r.string()?; // tablespace
        r.string()?; // table access method
        if version >= (1, 16, 0) {
            r.int()?; // relkind
        }
        r.string()?; // owner
        r.string()?; // with oids
        while r.string()?.is_some() {} // dependencies
        r.byte()?; // data offset: a flag, then off_size bytes
        r.skip(off_size)?;
        let entry = match desc.as_str() {
            "TABLE DATA" => Entry::Table {
                schema: namespace,
                name: tag,
            },
            "SEQUENCE SET" => {
                if let Some(value) = setval_arguments(&defn) {
                    collector.sequences.push(SequenceValue {
                        schema: namespace,
                        name: tag,
                        value,
                    });
                }
                Entry::Other
            }
            "ENCODING" => {
                collector.encoding = quoted_value(&defn);
                Entry::Other
            }
            _ => Entry::Other,
        };
        by_id.insert(dump_id, entry);
    }
    while let Some(kind) = r.byte_or_end()? {
        let dump_id = r.int()?;
        match kind {
            BLK_DATA => {
                let mut rows = RowFolder::default();
                r.chunks(|c| rows.feed(c))?;
                if let Some(Entry::Table { schema, name }) = by_id.get(&dump_id) {
                    collector.table(schema.clone(), name.clone(), rows.finish());
                }
            }
            BLK_BLOBS => {
                let objects = collector.large_objects.get_or_insert_with(Fold::default);
                loop {
                    let oid = r.int()?;
                    if oid == 0 {
                        break;
                    }
                    let mut h = ObjectHasher::new(oid as u64);
                    r.chunks(|c| h.update(c))?;
                    objects.add_hash(h.digest());
                }
            }
            other => return Err(bad(format!("an unknown data block type {other}"))),
        }
    }
    Ok(collector.finish())
}

/// `42, true` from `SELECT pg_catalog.setval('public.t_id_seq', 42, true);`.
fn setval_arguments(defn: &str) -> Option<String> {
    let inner = defn.trim().strip_suffix(");")?;
    let mut parts = inner.rsplitn(3, ", ");
    let called = parts.next()?;
    let value = parts.next()?;
    Some(format!("{value}, {called}"))
}

/// `UTF8` from `SET client_encoding = 'UTF8';`.
fn quoted_value(defn: &str) -> Option<String> {
    let start = defn.find('\'')? + 1;
    let end = start + defn[start..].find('\'')?;
    Some(defn[start..end].to_string())
}

/// A copy of a dump stream handed to a thread that reads its content, so the archive's
/// reader does not wait for the hashing.
pub struct Tap<R> {
    inner: R,
    to: Option<mpsc::SyncSender<Vec<u8>>>,
    done: Option<mpsc::SyncSender<Vec<u8>>>,
}

/// The content of a tapped stream, once it was read to its end (`None` when it was not,
/// or could not be read: logged, the backup goes on without it).
pub type Pending = std::thread::JoinHandle<Option<Content>>;

/// Start reading the content of what `inner` yields.
pub fn tap<R: Read>(inner: R, target: &str) -> (Tap<R>, Pending) {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(32);
    let target = target.to_string();
    let handle = std::thread::spawn(move || {
        let mut reader = Channel {
            rx,
            buf: Vec::new(),
            at: 0,
            ended: false,
        };
        let read = read_content(&mut reader);
        // Read what is left, so the tap never blocks on a reader that stopped.
        let _ = io::copy(&mut reader, &mut io::sink());
        match (read, reader.ended) {
            (Ok(c), true) => Some(c),
            (Ok(_), false) => None,
            (Err(e), ended) => {
                if ended {
                    tracing::warn!(target = %target, error = %e, "cannot read the rows of the dump; this backup has no content fingerprint, and its drill checks tables only");
                }
                None
            }
        }
    });
    (
        Tap {
            inner,
            to: Some(tx.clone()),
            done: Some(tx),
        },
        handle,
    )
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            // The end of the stream: an empty message says it came (a dropped tap,
            // without it, is a stream that ended early).
            self.to = None;
            if let Some(done) = self.done.take() {
                let _ = done.send(Vec::new());
            }
        } else if let Some(to) = &self.to {
            if to.send(buf[..n].to_vec()).is_err() {
                self.to = None;
            }
        }
        Ok(n)
    }
}

/// The receiving end as a reader; an empty message is the end of the stream.
struct Channel {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for Channel {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(b) if b.is_empty() => self.ended = true,
                Ok(b) => {
                    self.buf = b;
                    self.at = 0;
                }
                Err(_) => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setval_and_encoding_are_read_from_their_statements() {
        assert_eq!(
            setval_arguments("SELECT pg_catalog.setval('public.\"we, ird\"', 42, true);\n")
                .as_deref(),
            Some("42, true")
        );
        assert_eq!(
            quoted_value("SET client_encoding = 'LATIN1';\n").as_deref(),
            Some("LATIN1")
        );
    }

    #[test]
    fn anything_else_is_refused_without_a_panic() {
        for junk in [
            &b""[..],
            b"PGDMP",
            b"PGDMP\x01\x0e\x00\x04\x08\x01",
            b"SQLite format 3\0",
        ] {
            assert!(read_content(junk).is_err());
        }
    }
}
