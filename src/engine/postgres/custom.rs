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
/// The offset flag of a TOC entry that has no data block.
const K_OFFSET_NO_DATA: u8 = 3;
/// The section of a TOC entry whose data a restore loads.
const SECTION_DATA: i64 = 3;

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
        // pg_restore reads a C int: a larger magnitude would mean something else there.
        let v = i32::try_from(v).map_err(|_| bad("an integer out of range"))?;
        Ok(i64::from(if sign != 0 { -v } else { v }))
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
    /// Whether the TOC announces a data block for it (its offset flag is not "no data").
    pub has_data: bool,
    /// Whether pg_restore reads that block: it was dumped by a data dumper, in the data
    /// section (pg_restore skips the block of an entry without, or of another section).
    pub restored_data: bool,
}

/// Read the header and TOC from `buf`; `UnexpectedEof` while `buf` does not hold all of
/// them yet. Returns them and how many bytes they took.
fn parse_head(buf: &[u8]) -> io::Result<(Head, usize)> {
    let Toc {
        int_size,
        entries,
        used,
        compressed,
    } = parse_toc(buf)?;
    if compressed && entries.iter().any(|e| e.has_data) {
        return Err(bad(
            "the archive's data is compressed (dbkeep dumps with -Z0)",
        ));
    }
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
            Ok(toc) => return Ok(toc.entries),
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

/// The header and table of contents at the start of an archive.
struct Toc {
    /// The size of the archive's integers (pg_dump writes 4).
    int_size: usize,
    entries: Vec<TocEntry>,
    /// The bytes the header and TOC took.
    used: usize,
    /// Whether the header says the data blocks are compressed (their layout is the same).
    compressed: bool,
}

/// The header and TOC in `buf`.
fn parse_toc(buf: &[u8]) -> io::Result<Toc> {
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
    // Compression: an algorithm byte from 1.15, a level before.
    let compressed = if version >= (1, 15, 0) {
        r.byte()? != 0
    } else {
        r.int()? != 0
    };
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
        let had_dumper = r.int()? != 0;
        r.string()?; // table oid
        r.string()?; // oid
        let tag = r.string()?.unwrap_or_default();
        let desc = r.string()?.unwrap_or_default();
        let section = r.int()?;
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
        // Data offset: a flag (3: no data), then off_size bytes.
        let has_data = r.byte()? != K_OFFSET_NO_DATA;
        r.skip(off_size)?;
        entries.push(TocEntry {
            id: dump_id,
            desc,
            schema: namespace,
            tag,
            defn,
            deps,
            has_data,
            restored_data: had_dumper && section == SECTION_DATA,
        });
    }
    let used = buf.len() - r.inner.len();
    Ok(Toc {
        int_size: r.int_size,
        entries,
        used,
        compressed,
    })
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

impl Step {
    /// Where the stream is with `left` bytes of a chunk still to come.
    fn rest_of_chunk(left: usize, blob: bool) -> Step {
        match left {
            0 => Step::ChunkLen { blob },
            left => Step::Chunk { left, blob },
        }
    }
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

/// The next integer of `int_size` bytes (and a sign byte) from `data`, once `data` after
/// what is `pending` from earlier pieces holds all of it; else the bytes are kept there.
fn take_int(pending: &mut Vec<u8>, int_size: usize, data: &mut &[u8]) -> Option<i64> {
    let n = 1 + int_size;
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
    if pending.is_empty() && data.len() >= n {
        let v = decode(&data[..n]);
        *data = &data[n..];
        return Some(v);
    }
    let take = (n - pending.len()).min(data.len());
    pending.extend_from_slice(&data[..take]);
    *data = &data[take..];
    if pending.len() < n {
        return None;
    }
    let v = decode(pending);
    pending.clear();
    Some(v)
}

impl Data {
    /// The next integer, when `data` (after what is pending) holds all of it.
    fn int(&mut self, data: &mut &[u8]) -> Option<i64> {
        take_int(&mut self.pending, self.head.int_size, data)
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
                    self.step = Step::rest_of_chunk(left - take, blob);
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

/// Follows the framing of a custom archive on its way into `pg_restore` and refuses it
/// when it does not end where `pg_restore` stops reading: after the block of the last
/// entry of its table of contents that has data. `pg_restore` never reads past that
/// block, so bytes after it (or a block it would skip) would let it COMMIT while the rest
/// of the stream, and the end where the stored archive's sha256 is confirmed, is still
/// on its way. With nothing after that block, holding back the stream's last bytes
/// until the sha256 matched (archive.rs) holds back the end of the data too.
///
/// Blocks must belong to `TABLE DATA` or large-object entries (the only ones pg_dump
/// writes data for, and ones a whole restore never skips), each once, in the order of
/// the table of contents, as pg_dump writes them; this reads only the framing (block
/// headers, chunk lengths), never the data.
pub struct Framing {
    phase: FramingPhase,
}

enum FramingPhase {
    /// The header and TOC so far; parsed again once it has doubled.
    Head {
        buf: Vec<u8>,
        next_try: usize,
    },
    Blocks(Box<Blocks>),
}

struct Blocks {
    int_size: usize,
    /// The position in `entries` the next block may start from.
    next: usize,
    /// The entries announced with data, in TOC order: dump id, what it is, its name.
    entries: Vec<(i64, String, String)>,
    step: Step,
    pending: Vec<u8>,
    /// The block of the last entry with data has ended: the stream must end too.
    ended: bool,
}

/// How much header and table of contents a stream may hold before its first data block.
const MAX_TOC: usize = 256 << 20;

impl Default for Framing {
    fn default() -> Self {
        Framing {
            phase: FramingPhase::Head {
                buf: Vec::new(),
                next_try: 64 * 1024,
            },
        }
    }
}

impl crate::engine::archive::Gate for Framing {
    /// Everything is held back until the header and TOC are read: the blocks after them
    /// are judged as they come.
    fn inspect(&mut self, data: &[u8]) -> Result<bool, String> {
        match &mut self.phase {
            FramingPhase::Head { buf, next_try } => {
                buf.extend_from_slice(data);
                if buf.len() >= *next_try {
                    self.try_head(false).map_err(what_to_do)?;
                }
                Ok(matches!(self.phase, FramingPhase::Head { .. }))
            }
            FramingPhase::Blocks(b) => b.feed(data).map(|()| false).map_err(what_to_do),
        }
    }

    /// A header and TOC still unread (a short archive) are read now.
    fn end(&mut self) -> Result<(), String> {
        if let FramingPhase::Head { .. } = self.phase {
            self.try_head(true).map_err(what_to_do)?;
        }
        Ok(())
    }
}

/// A refusal of the framing, with what it means and what to do.
fn what_to_do(problem: String) -> String {
    format!(
        "{problem}; the restore was stopped before pg_restore could commit. pg_dump does not write archives like this: this one (and its manifest, when its sha256 matched) was changed in the storage. Restore an older backup or another storage's copy (--storage), and find out who writes to the storage"
    )
}

impl Framing {
    fn try_head(&mut self, at_end: bool) -> Result<(), String> {
        let FramingPhase::Head { buf, next_try } = &mut self.phase else {
            return Ok(());
        };
        let Toc {
            int_size,
            entries: toc,
            used,
            ..
        } = match parse_toc(buf) {
            Ok(parsed) => parsed,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !at_end => {
                if buf.len() > MAX_TOC {
                    return Err(format!(
                        "the archive holds no table of contents in its first {MAX_TOC} bytes"
                    ));
                }
                *next_try = buf.len() * 2;
                return Ok(());
            }
            Err(e) => return Err(format!("the archive is not one pg_dump wrote: {e}")),
        };
        let rest = buf.split_off(used);
        if int_size != 4 {
            return Err(format!(
                "the archive's integers are {int_size} bytes; pg_dump writes 4"
            ));
        }
        if let Some(e) = toc
            .iter()
            .find(|e| e.has_data && !(holds_data(&e.desc) && e.restored_data))
        {
            return Err(format!(
                "the archive announces data for {} {}, which pg_dump never writes and a restore would skip",
                e.desc, e.tag
            ));
        }
        let entries: Vec<(i64, String, String)> = toc
            .into_iter()
            .filter(|e| e.has_data)
            .map(|e| (e.id, e.desc, e.tag))
            .collect();
        let mut blocks = Box::new(Blocks {
            int_size,
            next: 0,
            ended: entries.is_empty(),
            entries,
            step: Step::BlockType,
            pending: Vec::new(),
        });
        let fed = blocks.feed(&rest);
        self.phase = FramingPhase::Blocks(blocks);
        fed
    }
}

/// The TOC entries pg_dump writes a data block for.
fn holds_data(desc: &str) -> bool {
    matches!(desc, "TABLE DATA" | "BLOBS" | "LARGE OBJECTS")
}

impl Blocks {
    fn int(&mut self, data: &mut &[u8]) -> Option<i64> {
        take_int(&mut self.pending, self.int_size, data)
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if self.ended {
                return Err(format!(
                    "the archive goes on after the data of the last entry of its table of contents ({} more bytes at least), where pg_restore stops reading",
                    data.len()
                ));
            }
            match self.step {
                Step::BlockType => {
                    let kind = data[0];
                    data = &data[1..];
                    if kind != BLK_DATA && kind != BLK_BLOBS {
                        return Err(format!("an unknown data block type {kind}"));
                    }
                    self.step = Step::DumpId { kind };
                }
                Step::DumpId { kind } => {
                    let Some(id) = self.int(&mut data) else {
                        continue;
                    };
                    let at = self.entries[self.next..]
                        .iter()
                        .position(|(e, _, _)| *e == id)
                        .map(|i| self.next + i)
                        .ok_or_else(|| {
                            format!("a data block for dump id {id}, which the table of contents does not announce at this point (pg_dump writes each once, in its order)")
                        })?;
                    let blobs = self.entries[at].1 != "TABLE DATA";
                    if blobs != (kind == BLK_BLOBS) {
                        return Err(format!(
                            "a data block of the wrong kind for {} {}",
                            self.entries[at].1, self.entries[at].2
                        ));
                    }
                    self.next = at + 1;
                    self.step = match blobs {
                        true => Step::BlobOid,
                        false => Step::ChunkLen { blob: false },
                    };
                }
                Step::ChunkLen { blob } => {
                    let Some(len) = self.int(&mut data) else {
                        continue;
                    };
                    self.step = match (len, blob) {
                        (l, _) if !(0..=i64::from(i32::MAX)).contains(&l) => {
                            return Err(format!("a chunk length out of range ({l})"))
                        }
                        (0, true) => Step::BlobOid,
                        (0, false) => self.block_ended(),
                        (l, blob) => Step::Chunk {
                            left: usize::try_from(l).map_err(|_| "a chunk length out of range")?,
                            blob,
                        },
                    };
                }
                Step::Chunk { left, blob } => {
                    let take = left.min(data.len());
                    data = &data[take..];
                    self.step = Step::rest_of_chunk(left - take, blob);
                }
                Step::BlobOid => {
                    let Some(oid) = self.int(&mut data) else {
                        continue;
                    };
                    self.step = match oid {
                        0 => self.block_ended(),
                        _ => Step::ChunkLen { blob: true },
                    };
                }
            }
        }
        Ok(())
    }

    /// A block ended: the stream ends with it when it was the last entry's.
    fn block_ended(&mut self) -> Step {
        self.ended = self.next == self.entries.len();
        Step::BlockType
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

    /// A custom archive (format 1.14, 4-byte integers) with `entries` (dump id, desc,
    /// has data) and then `blocks` (type, dump id, chunks) as written.
    fn archive(entries: &[(i64, &str, bool)], blocks: &[(u8, i64, &[&[u8]])]) -> Vec<u8> {
        let int = |out: &mut Vec<u8>, v: i64| {
            out.push(u8::from(v < 0));
            out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        };
        let string = |out: &mut Vec<u8>, s: Option<&str>| match s {
            None => int(out, -1),
            Some(s) => {
                int(out, s.len() as i64);
                out.extend_from_slice(s.as_bytes());
            }
        };
        let mut a = b"PGDMP\x01\x0e\x00\x04\x08\x01".to_vec();
        for v in [0, 0, 0, 0, 0, 0, 0, 0] {
            int(&mut a, v); // compression level, then the creation time
        }
        for s in ["db", "15.0", "15.0"] {
            string(&mut a, Some(s));
        }
        int(&mut a, entries.len() as i64);
        for (id, desc, data) in entries {
            int(&mut a, *id);
            int(&mut a, i64::from(*data));
            for s in [None, None, Some("t"), Some(*desc)] {
                string(&mut a, s);
            }
            int(&mut a, if *data { SECTION_DATA } else { 2 });
            for s in [
                Some(""),
                None,
                None,
                Some("public"),
                None,
                None,
                Some("o"),
                None,
            ] {
                string(&mut a, s);
            }
            string(&mut a, None); // end of the dependencies
            a.push(if *data { 1 } else { K_OFFSET_NO_DATA });
            a.extend_from_slice(&[0u8; 8]);
        }
        for (kind, id, chunks) in blocks {
            a.push(*kind);
            int(&mut a, *id);
            if *kind == BLK_BLOBS {
                int(&mut a, 77); // one large object's oid
            }
            for c in chunks.iter() {
                int(&mut a, c.len() as i64);
                a.extend_from_slice(c);
            }
            int(&mut a, 0);
            if *kind == BLK_BLOBS {
                int(&mut a, 0);
            }
        }
        a
    }

    /// The archive through the gate in pieces of `step` bytes: Ok once its end was
    /// accepted.
    fn through(a: &[u8], step: usize) -> Result<(), String> {
        use crate::engine::archive::Gate;
        let mut f = Framing::default();
        for piece in a.chunks(step) {
            f.inspect(piece)?;
        }
        f.end()
    }

    #[test]
    fn the_framing_takes_an_archive_that_ends_with_its_last_block_in_pieces_of_any_size() {
        let entries = [
            (1, "TABLE", false),
            (2, "TABLE DATA", true),
            (3, "BLOBS", true),
            (4, "INDEX", false),
        ];
        let rows: &[&[u8]] = &[b"1\ta\n", b"2\tb\n"];
        let a = archive(&entries, &[(BLK_DATA, 2, rows), (BLK_BLOBS, 3, &[b"xyz"])]);
        for step in [1, 2, 3, 5, 7, 64, a.len()] {
            assert_eq!(through(&a, step), Ok(()), "pieces of {step}");
        }
        // No data at all: the archive ends with its TOC.
        assert_eq!(through(&archive(&entries[..1], &[]), 1), Ok(()));
    }

    #[test]
    fn the_framing_refuses_what_pg_restore_would_not_read_to_the_end() {
        let entries = [(2, "TABLE DATA", true), (5, "TABLE DATA", true)];
        let rows: &[&[u8]] = &[b"1\n"];
        let good = archive(&entries, &[(BLK_DATA, 2, rows), (BLK_DATA, 5, rows)]);
        let mut filler = good.clone();
        filler.extend_from_slice(&[0u8; 100]);
        let refused = |a: &[u8], why: &str| {
            for step in [1, 3, a.len()] {
                let got = through(a, step);
                assert!(
                    got.as_ref().is_err_and(|e| e.contains(why)),
                    "{why}, pieces of {step}: {got:?}"
                );
            }
        };
        refused(&filler, "goes on after");
        // A block after the last entry's, for an entry pg_restore already passed.
        refused(
            &archive(
                &entries,
                &[
                    (BLK_DATA, 2, rows),
                    (BLK_DATA, 5, rows),
                    (BLK_DATA, 2, rows),
                ],
            ),
            "goes on after",
        );
        // The last entry's block first: pg_restore would read it and never the next.
        refused(
            &archive(&entries, &[(BLK_DATA, 5, rows), (BLK_DATA, 2, rows)]),
            "goes on after",
        );
        refused(
            &archive(&entries, &[(BLK_DATA, 9, rows)]),
            "does not announce",
        );
        refused(&archive(&entries, &[(BLK_BLOBS, 2, rows)]), "wrong kind");
        // Data announced for an entry a restore skips (the DATABASE entry without --create).
        refused(
            &archive(
                &[(1, "DATABASE", true), (2, "TABLE DATA", true)],
                &[(BLK_DATA, 2, rows)],
            ),
            "never writes",
        );
        refused(
            b"PGDMP\x01\x0e\x00\x04\x08\x01 not an archive",
            "not one pg_dump wrote",
        );
        // The last entry's "had dumper" cleared: pg_restore would skip its block.
        let announced = [0u8, 5, 0, 0, 0, 0, 1, 0, 0, 0];
        let at = good.windows(10).position(|w| w == announced).unwrap();
        let mut skipped = good.clone();
        skipped[at + 6] = 0;
        refused(&skipped, "a restore would skip");
        // Eight-byte integers (pg_restore reads C ints).
        let mut wide = good.clone();
        wide[8] = 8;
        refused(&wide, "pg_dump");
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
