//! SQLite content fingerprints: every row of every table as typed values (null, integer,
//! real as its bits, text and blob with their lengths), hashed and summed per table.

use futures_util::TryStreamExt;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Decode, Row, Sqlite, TypeInfo, ValueRef};

use crate::catalog::Content;
use crate::engine::content::{Collector, Fold, SQLITE_VALUES};

/// A table's name quoted for SQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The content of every table of the database on `conn` (virtual tables left out: their
/// rows live in their shadow tables, which are read).
pub async fn content(conn: &mut SqliteConnection) -> Result<Content, sqlx::Error> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut collector = Collector::new(SQLITE_VALUES);
    let mut row_bytes = Vec::with_capacity(4096);
    for (name,) in names {
        let sql = format!("SELECT * FROM {}", quote_ident(&name));
        let mut fold = Fold::default();
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            row_bytes.clear();
            for i in 0..row.len() {
                let raw = row.try_get_raw(i)?;
                encode(raw, &mut row_bytes)?;
            }
            fold.add(&row_bytes);
        }
        collector.table(None, name, fold);
    }
    Ok(collector.finish())
}

fn encode(raw: sqlx::sqlite::SqliteValueRef<'_>, out: &mut Vec<u8>) -> Result<(), sqlx::Error> {
    let decode = |e: sqlx::error::BoxDynError| sqlx::Error::Decode(e);
    if raw.is_null() {
        out.push(0);
        return Ok(());
    }
    let kind = raw.type_info().name().to_string();
    match kind.as_str() {
        "INTEGER" => {
            out.push(1);
            let v = <i64 as Decode<Sqlite>>::decode(raw).map_err(decode)?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        "REAL" => {
            out.push(2);
            let v = <f64 as Decode<Sqlite>>::decode(raw).map_err(decode)?;
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        // Text and blob: their bytes with their length, tagged apart.
        other => {
            out.push(if other == "TEXT" { 3 } else { 4 });
            let v = <&[u8] as Decode<Sqlite>>::decode(raw).map_err(decode)?;
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    Ok(())
}
