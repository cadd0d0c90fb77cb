//! Content fingerprints: per table an exact row count and an order-independent hash of
//! its rows (the sum, as a 128-bit number, of each row's 64-bit xxh3), so a drill can prove that
//! every row came back without caring in which order the server returns them. A sum,
//! not an exclusive or: two equal rows do not cancel out.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::catalog::{Content, SequenceValue, TableContent, Tally};

/// PostgreSQL: rows as `pg_dump` writes them in COPY text (`-Fc -Z0`, DateStyle ISO,
/// extra_float_digits 3, TimeZone UTC, the archive's client encoding).
pub const PG_COPY_TEXT: &str = "xxh3-64-sum/pg-copy-text/v1";
/// SQLite: rows as typed values (see `sqlite::content`).
pub const SQLITE_VALUES: &str = "xxh3-64-sum/sqlite-values/v1";

/// A running count and hash sum.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fold {
    pub count: u64,
    sum: u128,
}

impl Fold {
    pub fn add_hash(&mut self, h: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(u128::from(h));
    }

    /// Add one item given as its bytes.
    pub fn add(&mut self, item: &[u8]) {
        self.add_hash(xxh3_64(item));
    }

    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }

    pub fn tally(&self) -> Tally {
        Tally {
            count: self.count,
            hash: self.hex(),
        }
    }
}

/// Splits a stream of COPY text into rows (`\n`-terminated; a newline inside a value is
/// written `\n`, two characters) and folds each row's hash. A row split across chunks
/// is joined first; the end-of-data line `\.` and anything after it is not a row.
#[derive(Debug, Default)]
pub struct RowFolder {
    pub fold: Fold,
    partial: Vec<u8>,
    ended: bool,
}

impl RowFolder {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !self.ended && !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    if self.partial.is_empty() {
                        self.row_bytes(&chunk[..i]);
                    } else {
                        self.partial.extend_from_slice(&chunk[..i]);
                        let row = std::mem::take(&mut self.partial);
                        self.row_bytes(&row);
                    }
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(chunk);
                    return;
                }
            }
        }
    }

    fn row_bytes(&mut self, row: &[u8]) {
        if row == b"\\." {
            self.ended = true;
        } else {
            self.fold.add(row);
        }
    }

    /// The fold once the data ended; a last row without its newline still counts.
    pub fn finish(mut self) -> Fold {
        if !self.ended && !self.partial.is_empty() {
            let row = std::mem::take(&mut self.partial);
            self.row_bytes(&row);
        }
        self.fold
    }
}

/// A large object's hash, fed as its bytes arrive.
pub struct ObjectHasher(Xxh3);

impl ObjectHasher {
    pub fn new(oid: u64) -> Self {
        let mut h = Xxh3::new();
        h.update(&oid.to_le_bytes());
        ObjectHasher(h)
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn digest(&self) -> u64 {
        self.0.digest()
    }
}

/// Content being collected: tables keyed by (schema, name), in name order.
#[derive(Debug, Default)]
pub struct Collector {
    pub method: &'static str,
    pub encoding: Option<String>,
    pub tables: BTreeMap<(Option<String>, String), Fold>,
    pub large_objects: Option<Fold>,
    pub sequences: Vec<SequenceValue>,
}

impl Collector {
    pub fn new(method: &'static str) -> Self {
        Collector {
            method,
            ..Default::default()
        }
    }

    /// Merge a table's fold (a table's data can come in more than one block).
    pub fn table(&mut self, schema: Option<String>, name: String, fold: Fold) {
        let t = self.tables.entry((schema, name)).or_default();
        t.count += fold.count;
        t.sum = t.sum.wrapping_add(fold.sum);
    }

    pub fn finish(self) -> Content {
        let mut sequences = self.sequences;
        sequences.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        Content {
            method: self.method.to_string(),
            encoding: self.encoding,
            tables: self
                .tables
                .into_iter()
                .map(|((schema, name), f)| TableContent {
                    schema,
                    name,
                    rows: f.count,
                    hash: f.hex(),
                })
                .collect(),
            large_objects: self.large_objects.map(|f| f.tally()),
            sequences,
        }
    }
}

/// The content of several archives restored together (a drill of a run of schema
/// archives): their tables, large objects and sequences side by side.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Content>) -> Option<Content> {
    let mut out: Option<Content> = None;
    for c in parts {
        match &mut out {
            None => out = Some(c.clone()),
            Some(o) => {
                if o.method != c.method {
                    return None;
                }
                o.tables.extend(c.tables.iter().cloned());
                o.sequences.extend(c.sequences.iter().cloned());
                o.large_objects = match (o.large_objects.take(), &c.large_objects) {
                    (None, x) => x.clone(),
                    (x, None) => x,
                    // Large objects belong to the database, not a schema: each schema
                    // archive of a run carries the same ones.
                    (Some(a), Some(_)) => Some(a),
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold_of(chunks: &[&[u8]]) -> Fold {
        let mut r = RowFolder::default();
        for c in chunks {
            r.feed(c);
        }
        r.finish()
    }

    #[test]
    fn rows_split_anywhere_fold_the_same() {
        let text = b"1\ta\n2\tb\\nc\n3\t\\N\n\n";
        let whole = fold_of(&[text]);
        assert_eq!(
            whole.count, 4,
            "an empty line is a row (one empty text column)"
        );
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(fold_of(&[a, b]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn order_does_not_matter_but_duplicates_and_values_do() {
        let a = fold_of(&[b"1\tx\n2\ty\n"]);
        let b = fold_of(&[b"2\ty\n1\tx\n"]);
        assert_eq!(a, b);
        let dup = fold_of(&[b"1\tx\n1\tx\n"]);
        let one = fold_of(&[b"1\tx\n"]);
        assert_ne!(dup.hex(), one.hex());
        assert_ne!(dup.hex(), Fold::default().hex(), "equal rows do not cancel");
        assert_ne!(fold_of(&[b"1\tx\n2\tz\n"]).hex(), a.hex());
    }

    #[test]
    fn the_end_of_data_line_is_not_a_row() {
        let with = fold_of(&[b"1\n2\n\\.\n\n\n"]);
        let without = fold_of(&[b"1\n2\n"]);
        assert_eq!(with, without);
        // An escaped backslash-dot row is data.
        assert_eq!(fold_of(&[b"\\\\.\n"]).count, 1);
    }
}
