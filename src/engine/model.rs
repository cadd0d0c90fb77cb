//! The normalized model of a schema (tables, columns, indexes, constraints) that every
//! engine reads from its own catalog, and the other plain types engines hand out:
//! migration history rows, SQL dialects, database info.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The table sqlx's migrator keeps its history in; never part of a compared schema.
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// One schema's user tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SchemaModel {
    pub tables: BTreeMap<String, Table>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// In the table's own column order.
    pub columns: Vec<Column>,
    pub indexes: BTreeMap<String, Index>,
    pub constraints: BTreeMap<String, Constraint>,
    /// SQLite keeps the statement that created the table; it is what `sync` replays.
    #[serde(skip)]
    pub create_sql: Option<String>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// As the server spells it (`character varying(80)`, `numeric(10,2)`, `INTEGER`).
    pub data_type: String,
    pub nullable: bool,
    /// The default expression, or for a generated column its expression.
    pub default: Option<String>,
    /// `always` or `by default` for an identity column.
    pub identity: Option<String>,
    pub generated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub unique: bool,
    /// Method, key and predicate without the names: `USING btree (lower(email)) WHERE ...`.
    pub definition: String,
    /// The full statement (SQLite's own, or PostgreSQL's `pg_get_indexdef`).
    #[serde(skip)]
    pub create_sql: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    PrimaryKey,
    Unique,
    ForeignKey,
    Check,
    Exclusion,
}

impl ConstraintKind {
    pub fn label(self) -> &'static str {
        match self {
            ConstraintKind::PrimaryKey => "primary key",
            ConstraintKind::Unique => "unique constraint",
            ConstraintKind::ForeignKey => "foreign key",
            ConstraintKind::Check => "check constraint",
            ConstraintKind::Exclusion => "exclusion constraint",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    pub kind: ConstraintKind,
    /// `PRIMARY KEY (id)`, `FOREIGN KEY (user_id) REFERENCES users(id)`.
    pub definition: String,
}

impl SchemaModel {
    /// sha256 of the normalized catalog: column order, SQL spelling and names of the
    /// history table do not count; anything `diff` would report does.
    pub fn fingerprint(&self) -> String {
        let mut canonical = self.clone();
        for t in canonical.tables.values_mut() {
            t.columns.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let json = serde_json::to_vec(&canonical).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
}

/// One fingerprint for several schemas (a whole database).
pub fn fingerprint_all(models: &BTreeMap<String, SchemaModel>) -> String {
    let mut h = Sha256::new();
    for (name, m) in models {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(m.fingerprint().as_bytes());
    }
    hex::encode(h.finalize())
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The longest start of `s` that fits in `max` bytes without splitting a character.
pub fn cut_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The new name of an index or sequence `old` of table `table` once the table is copied as
/// `new`: `orders_pkey` of `orders` becomes `<new>_pkey`; a name that does not start with
/// the table's gets the new name in front (`<new>_<old>`).
pub fn derived_name(old: &str, table: &str, new: &str) -> String {
    match old.strip_prefix(table) {
        Some(rest) => format!("{new}{rest}"),
        None => format!("{new}_{old}"),
    }
}

/// An identifier as an operator would type it in SQL: bare when it needs no quotes (lower
/// case letters, digits, `_`, and not a word SQL reserves), else quoted.
pub fn sql_ident(s: &str) -> String {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "as",
        "user",
        "group",
        "role",
        "select",
        "table",
        "order",
        "from",
        "where",
        "to",
        "grant",
        "default",
        "check",
        "column",
        "primary",
        "references",
        "session_user",
        "current_user",
        "case",
        "end",
    ];
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !RESERVED.contains(&s);
    match plain {
        true => s.to_string(),
        false => quote_ident(s),
    }
}

/// The history table of `schema`, quoted for SQL (`"tenant_a"."_sqlx_migrations"`), or
/// the unqualified one.
pub fn history_table(schema: Option<&str>) -> String {
    match schema {
        Some(s) => format!("{}.{}", quote_ident(s), quote_ident(MIGRATIONS_TABLE)),
        None => quote_ident(MIGRATIONS_TABLE),
    }
}

/// A row of a schema's `_sqlx_migrations` table.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub version: i64,
    pub description: String,
    pub installed_on: DateTime<Utc>,
    pub success: bool,
    #[serde(skip)]
    pub checksum: Vec<u8>,
    pub execution_ms: f64,
}

/// The columns of a history table, in the order [`applied_from_rows`] reads them.
pub const APPLIED_COLUMNS: &str =
    "version, description, installed_on, success, checksum, execution_time";

pub type AppliedRow = (i64, String, DateTime<Utc>, bool, Vec<u8>, i64);

pub fn applied_from_rows(rows: Vec<AppliedRow>) -> Vec<Applied> {
    rows.into_iter()
        .map(
            |(version, description, installed_on, success, checksum, nanos)| Applied {
                version,
                description,
                installed_on,
                success,
                checksum,
                execution_ms: nanos.max(0) as f64 / 1e6,
            },
        )
        .collect()
}

/// The SQL spelling rules a generated statement follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// What the admin API shows of a target's database.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TableEntry {
    pub schema: Option<String>,
    pub name: String,
    /// The server's row estimate (PostgreSQL); null when unknown.
    pub rows: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatabaseInfo {
    pub target: String,
    /// `postgres` or `sqlite`.
    pub kind: String,
    /// host:port/database, or the SQLite file; never credentials.
    pub location: String,
    pub connected: bool,
    pub error: Option<String>,
    pub server_version: Option<String>,
    pub size_bytes: Option<i64>,
    pub table_count: usize,
    pub tables: Vec<TableEntry>,
}

impl DatabaseInfo {
    /// The info of a database, from what `read` filled in or the error it ended with.
    pub async fn gather<F, E>(target: &str, kind: &str, location: String, read: F) -> Self
    where
        F: AsyncFnOnce(&mut DatabaseInfo) -> Result<(), E>,
        E: std::fmt::Display,
    {
        let mut out = DatabaseInfo {
            target: target.to_string(),
            kind: kind.to_string(),
            location,
            connected: false,
            error: None,
            server_version: None,
            size_bytes: None,
            table_count: 0,
            tables: Vec::new(),
        };
        match read(&mut out).await {
            Ok(()) => out.connected = true,
            Err(e) => out.error = Some(e.to_string()),
        }
        out.table_count = out.tables.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            data_type: "integer".into(),
            nullable: true,
            default: None,
            identity: None,
            generated: false,
        }
    }

    #[test]
    fn fingerprint_ignores_column_order_and_sql_text_but_not_types() {
        let mut a = SchemaModel::default();
        a.tables.insert(
            "t".into(),
            Table {
                columns: vec![column("a"), column("b")],
                create_sql: Some("CREATE TABLE t(a, b)".into()),
                ..Table::default()
            },
        );
        let mut b = a.clone();
        b.tables.get_mut("t").unwrap().columns.reverse();
        b.tables.get_mut("t").unwrap().create_sql = Some("create table t (b, a)".into());
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.tables.get_mut("t").unwrap().columns[0].data_type = "bigint".into();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
