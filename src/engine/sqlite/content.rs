//! SQLite content fingerprints: every row of every table as typed values (null, integer,
//! real as its bits, text and blob with their lengths), hashed and summed per table.
//!
//! The rows are read through SQLite's C API on the calling thread: sqlx hands each row
//! from its worker thread to the caller across a channel, a wake-up per row, which cost
//! more than the hashing (2.5 M rows: 3.3 s of a 6.3 s backup).

use std::ffi::c_int;
use std::path::Path;

use libsqlite3_sys as ffi;

use super::raw::{Conn, Stmt};
use crate::catalog::Content;
use crate::engine::content::{Collector, Fold, SQLITE_VALUES};

/// A table's name quoted for SQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A read-only connection to one database file.
pub struct RowReader {
    conn: Conn,
}

impl RowReader {
    /// Open `path` read-only. Open it before the file may be unlinked: the open file is
    /// what is read.
    pub fn open(path: &Path) -> Result<RowReader, String> {
        Ok(RowReader {
            conn: Conn::read_only(path)?,
        })
    }

    /// Every table's rows, counted and hashed.
    pub fn content(&self) -> Result<Content, String> {
        let mut names = Vec::new();
        let mut list = self.conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL%' ORDER BY name",
        )?;
        while list.step()? {
            names.push(list.text(0));
        }
        drop(list);
        let mut collector = Collector::new(SQLITE_VALUES);
        let mut row = Vec::with_capacity(4096);
        for name in names {
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT * FROM {}", quote_ident(&name)))?;
            let mut fold = Fold::default();
            while stmt.step()? {
                row.clear();
                for i in 0..stmt.columns() {
                    encode_column(&stmt, i, &mut row);
                }
                fold.add(&row);
            }
            collector.table(None, name, fold);
        }
        Ok(collector.finish())
    }
}

/// Column `i` of the current row, encoded: a tag (0 null, 1 integer, 2 real, 3 text,
/// 4 blob), then the integer or the real's bits (8 bytes, little-endian), or the length
/// (8 bytes) and the bytes. The value's own storage class decides.
fn encode_column(stmt: &Stmt<'_>, i: c_int, out: &mut Vec<u8>) {
    let stmt = stmt.as_ptr();
    // SAFETY: the statement is on a row and `i` is below the column count; the bytes of
    // a text or blob stay valid until the next step, and are copied now.
    unsafe {
        match ffi::sqlite3_column_type(stmt, i) {
            ffi::SQLITE_INTEGER => {
                out.push(1);
                let v = ffi::sqlite3_column_int64(stmt, i);
                out.extend_from_slice(&v.to_le_bytes());
            }
            ffi::SQLITE_FLOAT => {
                out.push(2);
                let v = ffi::sqlite3_column_double(stmt, i);
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            kind @ (ffi::SQLITE_TEXT | ffi::SQLITE_BLOB) => {
                out.push(if kind == ffi::SQLITE_TEXT { 3 } else { 4 });
                // The blob view of a text is its bytes in the database's encoding.
                let p = ffi::sqlite3_column_blob(stmt, i);
                let n = usize::try_from(ffi::sqlite3_column_bytes(stmt, i)).unwrap_or(0);
                out.extend_from_slice(&(n as u64).to_le_bytes());
                if !p.is_null() && n > 0 {
                    out.extend_from_slice(std::slice::from_raw_parts(p.cast::<u8>(), n));
                }
            }
            _ => out.push(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_with_their_storage_classes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let st = std::process::Command::new("sqlite3")
            .arg(&path)
            .arg(
                "CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 'x'), (2.5, x'00ff'), (NULL, ''), ('7', 7);
                 CREATE TABLE \"we\"\"ird\" (v); INSERT INTO \"we\"\"ird\" VALUES (1);",
            )
            .status();
        if !st.map(|s| s.success()).unwrap_or(false) {
            panic!("the sqlite3 CLI is needed (./scripts/test installs it)");
        }
        let table = |path: &Path, name: &str| {
            let c = RowReader::open(path).unwrap().content().unwrap();
            let v = serde_json::to_value(&c).unwrap();
            v["tables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {v}"))
                .clone()
        };
        let t = table(&path, "t");
        assert_eq!(t["rows"], 4, "{t}");
        assert_eq!(table(&path, "we\"ird")["rows"], 1);
        // The same rows in another order hash the same; a value of another storage
        // class ('1' for 1) does not.
        let other = dir.path().join("other.db");
        let sql = |p: &Path, s: &str| {
            assert!(std::process::Command::new("sqlite3")
                .arg(p)
                .arg(s)
                .status()
                .unwrap()
                .success())
        };
        sql(
            &other,
            "CREATE TABLE t (b, a); INSERT INTO t (a, b) VALUES ('7', 7), (NULL, ''), (2.5, x'00ff'), (1, 'x');",
        );
        // Columns in another order are other rows: compare a table of the same shape.
        let same = dir.path().join("same.db");
        sql(
            &same,
            "CREATE TABLE t (a, b); INSERT INTO t VALUES ('7', 7), (NULL, ''), (2.5, x'00ff'), (1, 'x');",
        );
        assert_eq!(table(&same, "t"), t);
        assert_ne!(table(&other, "t")["hash"], t["hash"]);
        let changed = dir.path().join("changed.db");
        sql(
            &changed,
            "CREATE TABLE t (a, b); INSERT INTO t VALUES ('1', 'x'), (2.5, x'00ff'), (NULL, ''), ('7', 7);",
        );
        assert_ne!(table(&changed, "t")["hash"], t["hash"]);
        assert!(RowReader::open(&dir.path().join("missing.db")).is_err());
    }
}
