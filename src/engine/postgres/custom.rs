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
use std::io::{self, BufRead, Read};

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
    inner: R,
    int_size: usize,
}

impl<R: BufRead> Reader<R> {
    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b)?;
        Ok(b[0])
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
}

/// What one TOC entry says about the data to come.
enum Entry {
    Table {
        schema: Option<String>,
        name: String,
    },
    Other,
}

/// The header and table of contents, read from the start of the archive.
struct Head {
    int_size: usize,
    collector: Collector,
    by_id: HashMap<i64, Entry>,
}

/// One entry of the table of contents.
#[derive(Debug, Clone)]
pub struct TocEntry {
    pub id: i64,
    /// What it is: `TABLE`, `TABLE DATA`, `INDEX`, `FK CONSTRAINT`, ...
    pub desc: String,
    pub schema: Option<String>,
    /// Its name (for a constraint or a default: the table's name, a space, its own).
    pub tag: String,
    /// The SQL that creates it.
    pub defn: String,
    /// The dump ids it depends on.
    pub deps: Vec<i64>,
}

/// Read the header and TOC from `buf`; `UnexpectedEof` while `buf` does not hold all of
/// them yet. Returns them and how many bytes they took.
fn parse_head(buf: &[u8]) -> io::Result<(Head, usize)> {
    let (int_size, entries, used) = parse_toc(buf)?;
    let mut collector = Collector::new(PG_COPY_TEXT);
    let mut by_id: HashMap<i64, Entry> = HashMap::new();
    for e in entries {
        let entry = match e.desc.as_str() {
            "TABLE DATA" => Entry::Table {
                schema: e.schema,
                name: e.tag,
            },
            "SEQUENCE SET" => {
                if let Some(value) = setval_arguments(&e.defn) {
                    collector.sequences.push(SequenceValue {
                        schema: e.schema,
                        name: e.tag,
                        value,
                    });
                }
                Entry::Other
            }
            "ENCODING" => {
                collector.encoding = quoted_value(&e.defn);
                Entry::Other
            }
            _ => Entry::Other,
        };
        by_id.insert(e.id, entry);
    }
    Ok((
        Head {
            int_size,
            collector,
            by_id,
        },
        used,
    ))
}

/// The table of contents read from the start of an archive: at most `limit` bytes are
/// read (a TOC is far smaller than its data).
pub fn read_toc<R: Read>(mut input: R, limit: usize) -> io::Result<Vec<TocEntry>> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    // Parsed again each time what was read has doubled.
    let mut next_try = chunk.len();
    loop {
        let n = input.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        if n > 0 && buf.len() < next_try {
            continue;
        }
        next_try = buf.len() * 2;
        match parse_toc(&buf) {
            Ok((_, entries, _)) => return Ok(entries),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && n > 0 => {
                if buf.len() > limit {
                    return Err(bad(format!(
                        "no table of contents in the first {limit} bytes"
                    )));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The header and TOC entries in `buf`: the integer size, the entries, the bytes used.
fn parse_toc(buf: &[u8]) -> io::Result<(usize, Vec<TocEntry>, usize)> {
    let mut r = Reader {
        inner: buf,
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
    let count = r.int()?;
    let mut entries = Vec::new();
    for _ in 0..count {
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
        let mut deps = Vec::new();
        while let Some(d) = r.string()? {
            deps.extend(d.trim().parse::<i64>().ok());
        }
        r.byte()?; // data offset: a flag, then off_size bytes
        r.skip(off_size)?;
        entries.push(TocEntry {
            id: dump_id,
            desc,
            schema: namespace,
            tag,
            defn,
            deps,
        });
    }
    let used = buf.len() - r.inner.len();
    Ok((r.int_size, entries, used))
}

/// Where the data part of the stream is.
#[derive(Clone, Copy)]
enum Step {
    BlockType,
    DumpId {
        kind: u8,
    },
    /// The length of the next chunk of a table's rows (`blob`: of a large object).
    ChunkLen {
        blob: bool,
    },
    Chunk {
        left: usize,
        blob: bool,
    },
    BlobOid,
}

/// The data blocks, read as they arrive in pieces of any size.
struct Data {
    head: Head,
    step: Step,
    /// The bytes of an integer split between two pieces.
    pending: Vec<u8>,
    rows: RowFolder,
    table: Option<(Option<String>, String)>,
    object: Option<ObjectHasher>,
}

impl Data {
    /// The next integer, when `data` (after what is pending) holds all of it.
    fn int(&mut self, data: &mut &[u8]) -> Option<i64> {
        let n = 1 + self.head.int_size;
        let decode = |b: &[u8]| {
            let mut v: u64 = 0;
            for (i, x) in b[1..].iter().enumerate().take(8) {
                v |= u64::from(*x) << (8 * i);
            }
            let v = v as i64;
            if b[0] != 0 {
                -v
            } else {
                v
            }
        };
        if self.pending.is_empty() && data.len() >= n {
            let v = decode(&data[..n]);
            *data = &data[n..];
            return Some(v);
        }
        let take = (n - self.pending.len()).min(data.len());
        self.pending.extend_from_slice(&data[..take]);
        *data = &data[take..];
        if self.pending.len() < n {
            return None;
        }
        let v = decode(&self.pending);
        self.pending.clear();
        Some(v)
    }

    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.step {
                Step::BlockType => {
                    let kind = data[0];
                    data = &data[1..];
                    if kind != BLK_DATA && kind != BLK_BLOBS {
                        return Err(bad(format!("an unknown data block type {kind}")));
                    }
                    self.step = Step::DumpId { kind };
                }
                Step::DumpId { kind } => {
                    let Some(id) = self.int(&mut data) else {
                        continue;
                    };
                    if kind == BLK_DATA {
                        self.rows = RowFolder::default();
                        self.table = match self.head.by_id.get(&id) {
                            Some(Entry::Table { schema, name }) => {
                                Some((schema.clone(), name.clone()))
                            }
                            _ => None,
                        };
                        self.step = Step::ChunkLen { blob: false };
                    } else {
                        self.head
                            .collector
                            .large_objects
                            .get_or_insert_with(Fold::default);
                        self.step = Step::BlobOid;
                    }
                }
                Step::ChunkLen { blob } => {
                    let Some(len) = self.int(&mut data) else {
                        continue;
                    };
                    if len < 0 {
                        return Err(bad("a negative chunk length"));
                    }
                    if len > 0 {
                        self.step = Step::Chunk {
                            left: len as usize,
                            blob,
                        };
                    } else if blob {
                        if let (Some(h), Some(f)) = (
                            self.object.take(),
                            self.head.collector.large_objects.as_mut(),
                        ) {
                            f.add_hash(h.digest());
                        }
                        self.step = Step::BlobOid;
                    } else {
                        let rows = std::mem::take(&mut self.rows).finish();
                        if let Some((schema, name)) = self.table.take() {
                            self.head.collector.table(schema, name, rows);
                        }
                        self.step = Step::BlockType;
                    }
                }
                Step::Chunk { left, blob } => {
                    let take = left.min(data.len());
                    let (now, rest) = data.split_at(take);
                    if blob {
                        if let Some(h) = self.object.as_mut() {
                            h.update(now);
                        }
                    } else {
                        self.rows.feed(now);
                    }
                    data = rest;
                    self.step = match left - take {
                        0 => Step::ChunkLen { blob },
                        left => Step::Chunk { left, blob },
                    };
                }
                Step::BlobOid => {
                    let Some(oid) = self.int(&mut data) else {
                        continue;
                    };
                    if oid == 0 {
                        self.step = Step::BlockType;
                    } else {
                        self.object = Some(ObjectHasher::new(oid as u64));
                        self.step = Step::ChunkLen { blob: true };
                    }
                }
            }
        }
        Ok(())
    }
}

/// A custom-format archive read as it streams past, in pieces of any size.
pub struct ContentReader {
    phase: Phase,
}

enum Phase {
    /// The header and TOC so far; parsed again once it has doubled.
    Head {
        buf: Vec<u8>,
        next_try: usize,
    },
    Data(Box<Data>),
    Failed(String),
}

impl Default for ContentReader {
    fn default() -> Self {
        ContentReader {
            phase: Phase::Head {
                buf: Vec::new(),
                next_try: 64 * 1024,
            },
        }
    }
}

impl ContentReader {
    pub fn feed(&mut self, data: &[u8]) {
        if let Phase::Head { buf, next_try } = &mut self.phase {
            buf.extend_from_slice(data);
            if buf.len() >= *next_try {
                self.try_head();
            }
            return;
        }
        let result = match &mut self.phase {
            Phase::Data(d) => d.feed(data),
            _ => return,
        };
        if let Err(e) = result {
            self.phase = Phase::Failed(e.to_string());
        }
    }

    /// Parse the header and TOC gathered so far; on to the data when they are whole.
    fn try_head(&mut self) {
        let result = match &mut self.phase {
            Phase::Head { buf, next_try } => match parse_head(buf) {
                Ok((head, used)) => {
                    let rest = buf.split_off(used);
                    let mut d = Box::new(Data {
                        head,
                        step: Step::BlockType,
                        pending: Vec::new(),
                        rows: RowFolder::default(),
                        table: None,
                        object: None,
                    });
                    let r = d.feed(&rest);
                    self.phase = Phase::Data(d);
                    r
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    *next_try = buf.len() * 2;
                    return;
                }
                Err(e) => Err(e),
            },
            _ => return,
        };
        if let Err(e) = result {
            self.phase = Phase::Failed(e.to_string());
        }
    }

    /// The content, once the whole archive went through `feed`.
    pub fn finish(mut self) -> io::Result<Content> {
        // A short archive may never have reached the size that triggers a parse.
        self.try_head();
        match self.phase {
            Phase::Data(d) if matches!(d.step, Step::BlockType) && d.pending.is_empty() => {
                Ok(d.head.collector.finish())
            }
            Phase::Data(_) | Phase::Head { .. } => {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof))
            }
            Phase::Failed(e) => Err(bad(e)),
        }
    }
}

/// Read a whole custom-format archive from `input` and return its content.
pub fn read_content<R: Read>(mut input: R) -> io::Result<Content> {
    let mut reader = ContentReader::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return reader.finish();
        }
        reader.feed(&buf[..n]);
    }
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

/// Reads the content of a dump stream as it passes through to the archive, on the same
/// thread (no copy of the bytes); the content is in `Slot` once the stream ended.
pub struct Tap<R> {
    inner: R,
    reader: Option<ContentReader>,
    slot: Slot,
    target: String,
}

/// Where a tapped stream's content lands once it was read to its end (`None` inside when
/// it could not be read: logged, the backup goes on without it).
pub type Slot = std::sync::Arc<std::sync::Mutex<Option<Content>>>;

/// Start reading the content of what `inner` yields.
pub fn tap<R: Read>(inner: R, target: &str) -> (Tap<R>, Slot) {
    let slot = Slot::default();
    (
        Tap {
            inner,
            reader: Some(ContentReader::default()),
            slot: slot.clone(),
            target: target.to_string(),
        },
        slot,
    )
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            if let Some(r) = self.reader.as_mut() {
                r.feed(&buf[..n]);
            }
        } else if let Some(r) = self.reader.take() {
            match r.finish() {
                Ok(c) => {
                    if let Ok(mut s) = self.slot.lock() {
                        *s = Some(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(target = %self.target, error = %e, "cannot read the rows of the dump; this backup has no content fingerprint, and its drill checks tables only");
                }
            }
        }
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
        let mut r = ContentReader::default();
        r.feed(b"PGDMP\x01\x0e\x00\x04\x08\x02");
        assert!(r.finish().is_err(), "a directory-format header");
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
