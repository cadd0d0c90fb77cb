//! Tables of an archive restored into the live SQLite file under new names (`restore
//! --table`): the archive is unpacked into a scratch file (its sha256 proven), attached to
//! a connection on the live file, and each table is created from its own definition under
//! the new name (without foreign keys: the copy must not tie the live rows), filled from
//! the scratch file with its rowids, and given its indexes; all in one write transaction.
//! Triggers are not copied. A taken name is refused before anything is written.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection};
use tokio_util::sync::CancellationToken;

use super::restore::sql_err;
use super::SqliteEngine;
use crate::engine::archive::unpack_to_file;
use crate::engine::model::{quote_ident, sql_ident};
use crate::engine::{Archive, EngineError, TableCopy, TableRestored};
use crate::storage::local::ScratchFile;

/// The scratch file's name on the live connection.
const SOURCE: &str = "dbkeep_src";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Word,
    /// A quoted name: "x", [x] or `x`.
    Quoted,
    /// A string literal 'x' (SQLite takes one as a name where a name is expected).
    Str,
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

/// SQLite's SQL as tokens, enough to find names and clauses: white space and comments,
/// words, quoted names, string literals, and single punctuation bytes.
fn lex(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // The end of a run quoted by `close`, where a doubled `close` stands for itself.
    let quoted_end = |from: usize, close: u8, doubles: bool| {
        let mut j = from + 1;
        while j < b.len() {
            if b[j] == close {
                if doubles && b.get(j + 1) == Some(&close) {
                    j += 2;
                    continue;
                }
                return j + 1;
            }
            j += 1;
        }
        b.len()
    };
    while i < b.len() {
        let c = b[i];
        let (kind, end) = if c.is_ascii_whitespace() {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            (Kind::Space, j)
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            let j = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p);
            (Kind::Space, j)
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let j = sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
            (Kind::Space, j)
        } else if c == b'\'' {
            (Kind::Str, quoted_end(i, b'\'', true))
        } else if c == b'"' || c == b'`' {
            (Kind::Quoted, quoted_end(i, c, true))
        } else if c == b'[' {
            (Kind::Quoted, quoted_end(i, b']', false))
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            let mut j = i;
            while j < b.len()
                && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'$' || b[j] >= 0x80)
            {
                j += 1;
            }
            (Kind::Word, j)
        } else {
            (Kind::Punct, i + 1)
        };
        out.push(Tok {
            kind,
            start: i,
            end,
        });
        i = end;
    }
    out.retain(|t| t.kind != Kind::Space);
    out
}

/// The tokens and the text they are cut from.
struct Sql<'a> {
    text: &'a str,
    toks: Vec<Tok>,
}

impl<'a> Sql<'a> {
    fn new(text: &'a str) -> Self {
        Sql {
            text,
            toks: lex(text),
        }
    }

    fn is(&self, i: usize, word: &str) -> bool {
        self.toks.get(i).is_some_and(|t| {
            t.kind == Kind::Word && self.text[t.start..t.end].eq_ignore_ascii_case(word)
        })
    }

    fn punct(&self, i: usize, p: u8) -> bool {
        self.toks
            .get(i)
            .is_some_and(|t| t.kind == Kind::Punct && self.text.as_bytes()[t.start] == p)
    }

    fn is_name(&self, i: usize) -> bool {
        self.toks
            .get(i)
            .is_some_and(|t| matches!(t.kind, Kind::Word | Kind::Quoted | Kind::Str))
    }

    /// The name at `i` (maybe `schema.name`): the index after it and its byte span.
    fn name_at(&self, i: usize) -> Option<(usize, usize, usize)> {
        if !self.is_name(i) {
            return None;
        }
        let start = self.toks[i].start;
        if self.punct(i + 1, b'.') && self.is_name(i + 2) {
            return Some((i + 3, start, self.toks[i + 2].end));
        }
        Some((i + 1, start, self.toks[i].end))
    }

    /// After `IF NOT EXISTS` at `i`, if it is there.
    fn skip_if_not_exists(&self, i: usize) -> usize {
        if self.is(i, "IF") && self.is(i + 1, "NOT") && self.is(i + 2, "EXISTS") {
            i + 3
        } else {
            i
        }
    }

    /// The index after a foreign key's clause whose target table is at `k` (just after
    /// `REFERENCES`): the table, its columns, and any ON DELETE / ON UPDATE / MATCH /
    /// DEFERRABLE parts.
    fn references_end(&self, mut k: usize) -> usize {
        if self.is_name(k) {
            k += 1;
        }
        if self.punct(k, b'(') {
            k = self.after_group(k);
        }
        loop {
            if self.is(k, "ON") && (self.is(k + 1, "DELETE") || self.is(k + 1, "UPDATE")) {
                k += 2;
                if (self.is(k, "SET") && (self.is(k + 1, "NULL") || self.is(k + 1, "DEFAULT")))
                    || (self.is(k, "NO") && self.is(k + 1, "ACTION"))
                {
                    k += 2;
                } else {
                    k += 1; // CASCADE, RESTRICT
                }
            } else if self.is(k, "MATCH") || (self.is(k, "NOT") && self.is(k + 1, "DEFERRABLE")) {
                k += 2;
            } else if self.is(k, "DEFERRABLE") {
                k += 1;
            } else if self.is(k, "INITIALLY") {
                k += 2;
            } else {
                return k;
            }
        }
    }

    /// One statement only: a `;` outside strings and quoted names means more than one
    /// (a planted definition would run its second statement in the live database).
    fn single(&self) -> Result<(), String> {
        match self.toks.iter().any(|t| t.kind == Kind::Punct && self.text.as_bytes()[t.start] == b';') {
            true => Err(format!(
                "the stored definition holds more than one statement, which SQLite never stores: refused, the archive is not what dbkeep wrote: {}",
                self.text
            )),
            false => Ok(()),
        }
    }

    /// The index after the parenthesised group that opens at `i`.
    fn after_group(&self, i: usize) -> usize {
        let mut depth = 0usize;
        for j in i..self.toks.len() {
            if self.punct(j, b'(') {
                depth += 1;
            } else if self.punct(j, b')') {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
        }
        self.toks.len()
    }
}

/// Replace the byte spans `cuts` (in order, not overlapping) of `text`.
fn splice(text: &str, cuts: &[(usize, usize, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, with) in cuts {
        out.push_str(&text[at..*start]);
        out.push_str(with);
        at = *end;
    }
    out.push_str(&text[at..]);
    out
}

/// `CREATE TABLE` text as SQLite stores it, for a table named `new`, without its foreign
/// keys (column `REFERENCES` clauses and `FOREIGN KEY` table constraints).
pub fn create_table_as(sql: &str, new: &str) -> Result<String, String> {
    let s = Sql::new(sql);
    s.single()?;
    let bad = || {
        format!("cannot read the table's definition, so it cannot be renamed: {sql}; restore the whole backup --into a new file and copy from there")
    };
    if !(s.is(0, "CREATE") && s.is(1, "TABLE")) {
        return Err(bad());
    }
    let (mut i, start, end) = s.name_at(s.skip_if_not_exists(2)).ok_or_else(bad)?;
    let mut cuts = vec![(start, end, quote_ident(new))];
    if !s.punct(i, b'(') {
        // `CREATE TABLE x AS SELECT` is not stored; anything else is unknown.
        return Err(bad());
    }
    let close = s.after_group(i) - 1;
    i += 1;
    // The items between the outer parentheses, split at top-level commas.
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut item_start = i;
    let mut depth = 0usize;
    while i < close {
        if s.punct(i, b'(') {
            depth += 1;
        } else if s.punct(i, b')') {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && s.punct(i, b',') {
            items.push((item_start, i));
            item_start = i + 1;
        }
        i += 1;
    }
    items.push((item_start, close));
    for (n, &(a, b)) in items.iter().enumerate() {
        // Each foreign key of the item: a column's `REFERENCES ...` clause, or a table
        // constraint `FOREIGN KEY (...) REFERENCES ...` (SQLite lets table constraints
        // follow each other without commas, so the rest of the item may hold others).
        let mut found: Vec<(usize, usize)> = Vec::new();
        let mut j = a;
        while j < b {
            if s.punct(j, b'(') {
                j = s.after_group(j);
                continue;
            }
            let table_fk = s.is(j, "FOREIGN") && s.is(j + 1, "KEY");
            if !table_fk && !s.is(j, "REFERENCES") {
                j += 1;
                continue;
            }
            let first = if j >= a + 2 && s.is(j - 2, "CONSTRAINT") {
                j - 2
            } else {
                j
            };
            let mut k = j + 1;
            if table_fk {
                k = j + 2;
                if s.punct(k, b'(') {
                    k = s.after_group(k);
                }
                if !s.is(k, "REFERENCES") {
                    return Err(bad());
                }
                k += 1;
            }
            let k = s.references_end(k).min(b);
            found.push((first, k));
            j = k;
        }
        let removed: usize = found.iter().map(|(f, k)| k - f).sum();
        if n > 0 && !found.is_empty() && removed == b - a {
            // Nothing but foreign keys: the item goes, with the comma before it.
            cuts.push((s.toks[a - 1].start, s.toks[b - 1].end, String::new()));
            continue;
        }
        for (first, k) in found {
            cuts.push((s.toks[first].start, s.toks[k - 1].end, String::new()));
        }
    }
    cuts.sort_by_key(|c| c.0);
    Ok(splice(sql, &cuts))
}

/// `CREATE INDEX` text as SQLite stores it, for an index named `new` on `table`.
pub fn create_index_as(sql: &str, new: &str, table: &str) -> Result<String, String> {
    let s = Sql::new(sql);
    s.single()?;
    let bad = || {
        format!("cannot read the index's definition, so it cannot be renamed: {sql}; restore the whole backup --into a new file and copy from there")
    };
    let mut i = 1;
    if !s.is(0, "CREATE") {
        return Err(bad());
    }
    if s.is(i, "UNIQUE") {
        i += 1;
    }
    if !s.is(i, "INDEX") {
        return Err(bad());
    }
    let (i, name_start, name_end) = s.name_at(s.skip_if_not_exists(i + 1)).ok_or_else(bad)?;
    if !s.is(i, "ON") {
        return Err(bad());
    }
    let (_, table_start, table_end) = s.name_at(i + 1).ok_or_else(bad)?;
    Ok(splice(
        sql,
        &[
            (name_start, name_end, quote_ident(new)),
            (table_start, table_end, quote_ident(table)),
        ],
    ))
}

pub async fn restore_tables(
    e: &SqliteEngine,
    archive: Archive<'_>,
    copies: &[TableCopy],
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<(Vec<TableRestored>, Vec<String>), EngineError> {
    let live = e.cfg.path.clone();
    if std::fs::symlink_metadata(&live).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(EngineError::Refused(format!(
            "{} is a symbolic link; dbkeep restores only into a file (point `path` at the file itself)",
            live.display()
        )));
    }
    if !live.exists() {
        return Err(EngineError::Refused(format!(
            "{} does not exist, so there is no live database to restore a table into; restore the whole backup instead",
            live.display()
        )));
    }
    crate::files::create_dir(dir)
        .map_err(EngineError::io(format!("cannot create {}", dir.display())))?;
    let scratch = ScratchFile::reserve(dir, "tables.sqlite");
    // A scratch copy, read then removed: not made durable.
    unpack_to_file(archive, scratch.path()).await?;

    let opts = SqliteConnectOptions::new()
        .filename(&live)
        .create_if_missing(false)
        .foreign_keys(false)
        .busy_timeout(Duration::from_millis(500));
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .map_err(sql_err(&live, "cannot open the database"))?;
    let attached = sqlx::query(AssertSqlSafe(format!("ATTACH DATABASE ?1 AS {SOURCE}")))
        .bind(scratch.path().to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .map_err(sql_err(scratch.path(), "cannot attach the unpacked backup"));
    let result = match attached {
        Ok(_) => copy_all(&mut conn, &live, copies, cancel).await,
        Err(err) => Err(err),
    };
    if result.is_err() {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    }
    let _ = sqlx::raw_sql(AssertSqlSafe(format!("DETACH DATABASE {SOURCE}")))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    let restored = result?;
    let notes = vec![format!(
        "the copies have no foreign keys and no triggers; nothing else in {} was changed",
        live.display()
    )];
    Ok((restored, notes))
}

async fn copy_all(
    conn: &mut SqliteConnection,
    live: &Path,
    copies: &[TableCopy],
    cancel: &CancellationToken,
) -> Result<Vec<TableRestored>, EngineError> {
    if let Err(err) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
        return Err(EngineError::Refused(format!(
            "another process holds a write lock on {} ({err}); try again when it is done",
            live.display()
        )));
    }
    let mut restored = Vec::new();
    for copy in copies {
        let rows = copy_one(conn, live, copy).await?;
        restored.push(TableRestored {
            copy: copy.clone(),
            rows,
        });
    }
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    sqlx::raw_sql("COMMIT")
        .execute(&mut *conn)
        .await
        .map_err(sql_err(live, "cannot commit the restored tables"))?;
    Ok(restored)
}

async fn copy_one(
    conn: &mut SqliteConnection,
    live: &Path,
    copy: &TableCopy,
) -> Result<i64, EngineError> {
    let (from, to) = (&copy.from.name, &copy.to.name);
    let read = || sql_err(live, "reading the unpacked backup's catalog");
    let def: Option<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT sql FROM {SOURCE}.sqlite_schema WHERE type = 'table' AND name = ?1"
    )))
    .bind(from)
    .fetch_optional(&mut *conn)
    .await
    .map_err(read())?;
    let Some((def,)) = def else {
        return Err(EngineError::NotInArchive(format!(
            "the backup holds no table {}",
            sql_ident(from)
        )));
    };
    if def
        .trim_start()
        .get(..20)
        .is_some_and(|h| h.eq_ignore_ascii_case("CREATE VIRTUAL TABLE"))
    {
        return Err(EngineError::Unsupported(format!(
            "{} is a virtual table: its rows live in its module's own tables; restore those, or the whole backup",
            sql_ident(from)
        )));
    }
    let create = create_table_as(&def, to).map_err(EngineError::Check)?;
    let indexes: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT name, sql FROM {SOURCE}.sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY name"
    )))
    .bind(from)
    .fetch_all(&mut *conn)
    .await
    .map_err(read())?;
    let mut names = vec![to.clone()];
    let mut creates = vec![create];
    for (name, sql) in &indexes {
        let new = crate::engine::model::derived_name(name, from, to);
        creates.push(create_index_as(sql, &new, to).map_err(EngineError::Check)?);
        names.push(new);
    }
    // SQLite's names are the same whatever the case of their ASCII letters.
    let mut taken = Vec::new();
    for name in &names {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT type FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_err(live, "reading the catalog"))?;
        if let Some((kind,)) = found {
            taken.push(format!("{kind} {}", sql_ident(name)));
        }
    }
    if !taken.is_empty() {
        return Err(EngineError::Refused(format!(
            "the restored copy would need names that are taken in {}: {}; nothing was changed. Name the copy otherwise with --as NAME (or drop an earlier copy)",
            live.display(),
            taken.join(", ")
        )));
    }
    let columns: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM pragma_table_xinfo(?1, ?2) WHERE hidden = 0 ORDER BY cid")
            .bind(from)
            .bind(SOURCE)
            .fetch_all(&mut *conn)
            .await
            .map_err(read())?;
    let (without_rowid,): (i64,) =
        sqlx::query_as("SELECT wr FROM pragma_table_list(?1) WHERE schema = ?2")
            .bind(from)
            .bind(SOURCE)
            .fetch_one(&mut *conn)
            .await
            .map_err(read())?;
    let mut list: Vec<String> = columns.iter().map(|(c,)| quote_ident(c)).collect();
    // The rowid too, unless the table has none or a column takes its name.
    let shadowed = columns.iter().any(|(c,)| {
        ["rowid", "oid", "_rowid_"]
            .iter()
            .any(|r| c.eq_ignore_ascii_case(r))
    });
    if without_rowid == 0 && !shadowed {
        list.insert(0, "rowid".into());
    }
    let list = list.join(", ");
    let write = || sql_err(live, format!("restoring the copy {}", quote_ident(to)));
    sqlx::raw_sql(AssertSqlSafe(creates[0].clone()))
        .execute(&mut *conn)
        .await
        .map_err(write())?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "INSERT INTO main.{} ({list}) SELECT {list} FROM {SOURCE}.{}",
        quote_ident(to),
        quote_ident(from)
    )))
    .execute(&mut *conn)
    .await
    .map_err(write())?;
    for create in &creates[1..] {
        sqlx::raw_sql(AssertSqlSafe(create.clone()))
            .execute(&mut *conn)
            .await
            .map_err(write())?;
    }
    let (rows,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*) FROM main.{}",
        quote_ident(to)
    )))
    .fetch_one(&mut *conn)
    .await
    .map_err(write())?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_renamed_and_loses_its_foreign_keys() {
        let sql = "CREATE TABLE \"order items\" (id INTEGER PRIMARY KEY, \
            order_id INTEGER NOT NULL CONSTRAINT fk_o REFERENCES orders(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED, \
            sku TEXT REFERENCES [skus] CHECK (sku <> 'REFERENCES x'), \
            note TEXT DEFAULT 'a,b', \
            CONSTRAINT one UNIQUE (order_id, sku), \
            FOREIGN KEY (sku) REFERENCES skus(code) ON UPDATE SET NULL)";
        assert_eq!(
            create_table_as(sql, "copy").unwrap(),
            "CREATE TABLE \"copy\" (id INTEGER PRIMARY KEY, \
            order_id INTEGER NOT NULL , \
            sku TEXT  CHECK (sku <> 'REFERENCES x'), \
            note TEXT DEFAULT 'a,b', \
            CONSTRAINT one UNIQUE (order_id, sku))"
        );
        assert_eq!(
            create_table_as("CREATE TABLE t(a, b) WITHOUT ROWID", "x\"y").unwrap(),
            "CREATE TABLE \"x\"\"y\"(a, b) WITHOUT ROWID"
        );
        assert!(create_table_as("CREATE VIEW v AS SELECT 1", "x").is_err());
        // Table constraints without commas between them: only the foreign key goes.
        assert_eq!(
            create_table_as(
                "CREATE TABLE t1(a int, b int, foreign key(b) references p(id) unique(a) check (a > 0))",
                "c"
            )
            .unwrap(),
            "CREATE TABLE \"c\"(a int, b int,  unique(a) check (a > 0))"
        );
        // A second statement planted in a stored definition is refused, in a table's
        // and in an index's.
        for planted in [
            "CREATE TABLE p(id integer primary key); DROP TABLE wr",
            "CREATE TABLE p(id integer primary key);",
        ] {
            assert!(create_table_as(planted, "x")
                .unwrap_err()
                .contains("more than one statement"));
        }
        assert!(create_index_as("CREATE INDEX i ON t(a); DROP TABLE wr", "j", "u").is_err());
        assert!(create_table_as("CREATE TABLE p(v TEXT DEFAULT ';')", "x").is_ok());
    }

    #[test]
    fn an_index_is_renamed_onto_the_copy() {
        assert_eq!(
            create_index_as(
                "CREATE UNIQUE INDEX [by sku] ON \"order items\" (sku)",
                "c_by",
                "c"
            )
            .unwrap(),
            "CREATE UNIQUE INDEX \"c_by\" ON \"c\" (sku)"
        );
        assert!(create_index_as("CREATE TABLE t(a)", "i", "t").is_err());
    }
}
