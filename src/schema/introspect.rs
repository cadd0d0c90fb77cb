//! Catalog → normalized model: the tables, columns, indexes and constraints of one schema,
//! read from PostgreSQL's or SQLite's own catalog (no SQL text is parsed here).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

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

// ---------------------------------------------------------------- PostgreSQL

/// The schemas of a database that hold user objects.
pub async fn pg_schemas(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT nspname::text FROM pg_namespace \
         WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' ORDER BY 1",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// The schema unqualified names land in (`public` unless search_path says otherwise).
pub async fn pg_current_schema(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    let (s,): (Option<String>,) = sqlx::query_as("SELECT current_schema()::text")
        .fetch_one(conn)
        .await?;
    Ok(s.unwrap_or_else(|| "public".into()))
}

/// Read one schema. The connection's search_path is set to `schema` for the duration,
/// so the server's deparsed definitions name its own objects without qualification and
/// two schemas built from the same migrations compare equal.
pub async fn pg_schema(conn: &mut PgConnection, schema: &str) -> Result<SchemaModel, sqlx::Error> {
    let (old_path,): (String,) = sqlx::query_as("SELECT current_setting('search_path')")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(quote_ident(schema))
        .execute(&mut *conn)
        .await?;
    let model = pg_read(conn, schema).await;
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(old_path)
        .execute(&mut *conn)
        .await?;
    model
}

async fn pg_read(conn: &mut PgConnection, schema: &str) -> Result<SchemaModel, sqlx::Error> {
    let mut model = SchemaModel::default();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
         AND c.relname <> $2 ORDER BY 1",
    )
    .bind(schema)
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await?;
    for (t,) in tables {
        model.tables.insert(t, Table::default());
    }

    type ColumnRow = (String, String, String, bool, Option<String>, String, String);
    let columns: Vec<ColumnRow> = sqlx::query_as(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY c.relname, a.attnum",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    for (table, name, data_type, not_null, default, identity, generated) in columns {
        let Some(t) = model.tables.get_mut(&table) else {
            continue;
        };
        t.columns.push(Column {
            name,
            data_type,
            nullable: !not_null,
            default,
            identity: match identity.as_str() {
                "a" => Some("always".into()),
                "d" => Some("by default".into()),
                _ => None,
            },
            generated: generated == "s",
        });
    }

    // Indexes that back a primary key, unique or exclusion constraint are reported as
    // that constraint.
    let indexes: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, i.relname::text, pg_get_indexdef(x.indexrelid), x.indisunique \
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
         JOIN pg_class c ON c.oid = x.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid \
                         AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x')) \
         ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    for (table, name, def, unique) in indexes {
        let Some(t) = model.tables.get_mut(&table) else {
            continue;
        };
        let definition = def
            .find(" USING ")
            .map(|i| def[i + 1..].to_string())
            .unwrap_or_else(|| def.clone());
        t.indexes.insert(
            name,
            Index {
                unique,
                definition,
                create_sql: Some(def),
            },
        );
    }

    let constraints: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT c.relname::text, k.conname::text, k.contype::text, pg_get_constraintdef(k.oid) \
         FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND k.contype IN ('p', 'u', 'f', 'c', 'x') \
         ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    for (table, name, kind, definition) in constraints {
        let Some(t) = model.tables.get_mut(&table) else {
            continue;
        };
        let kind = match kind.as_str() {
            "p" => ConstraintKind::PrimaryKey,
            "u" => ConstraintKind::Unique,
            "f" => ConstraintKind::ForeignKey,
            "c" => ConstraintKind::Check,
            _ => ConstraintKind::Exclusion,
        };
        t.constraints.insert(name, Constraint { kind, definition });
    }
    Ok(model)
}

// ---------------------------------------------------------------- SQLite

/// Read the `main` schema of a SQLite database.
pub async fn sqlite_schema(conn: &mut SqliteConnection) -> Result<SchemaModel, sqlx::Error> {
    let mut model = SchemaModel::default();
    let tables: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name <> ?1 ORDER BY name",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await?;
    for (name, sql) in tables {
        let mut table = Table {
            create_sql: sql,
            ..Table::default()
        };
        // Table-valued pragmas take the name as a string, not an identifier.
        let q = name.replace('\'', "''");

        type InfoRow = (i64, String, String, bool, Option<String>, i64);
        let cols: Vec<InfoRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT cid, name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{q}') ORDER BY cid"
        )))
        .fetch_all(&mut *conn)
        .await?;
        let mut pk: Vec<(i64, String)> = Vec::new();
        for (_, col, data_type, not_null, default, pk_pos) in cols {
            if pk_pos > 0 {
                pk.push((pk_pos, col.clone()));
            }
            table.columns.push(Column {
                name: col,
                data_type,
                nullable: !not_null,
                default,
                identity: None,
                generated: false,
            });
        }
        if !pk.is_empty() {
            pk.sort();
            let cols: Vec<String> = pk.into_iter().map(|(_, c)| c).collect();
            table.constraints.insert(
                format!("{name}_pkey"),
                Constraint {
                    kind: ConstraintKind::PrimaryKey,
                    definition: format!("PRIMARY KEY ({})", cols.join(", ")),
                },
            );
        }

        let indexes: Vec<(String, bool, String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(
            format!("SELECT name, \"unique\", origin, partial FROM pragma_index_list('{q}')"),
        ))
        .fetch_all(&mut *conn)
        .await?;
        for (index, unique, origin, _partial) in indexes {
            let qi = index.replace('\'', "''");
            let cols: Vec<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_index_info('{qi}') ORDER BY seqno"
            )))
            .fetch_all(&mut *conn)
            .await?;
            let cols: Vec<String> = cols
                .into_iter()
                .map(|(c,)| c.unwrap_or_else(|| "<expression>".into()))
                .collect();
            match origin.as_str() {
                // The primary key is already a constraint.
                "pk" => {}
                "u" => {
                    table.constraints.insert(
                        format!("{name}_{}_key", cols.join("_")),
                        Constraint {
                            kind: ConstraintKind::Unique,
                            definition: format!("UNIQUE ({})", cols.join(", ")),
                        },
                    );
                }
                _ => {
                    let (sql,): (Option<String>,) = sqlx::query_as(
                        "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?1",
                    )
                    .bind(&index)
                    .fetch_one(&mut *conn)
                    .await?;
                    // The WHERE of a partial index is only in its statement; keep it.
                    let predicate = sql
                        .as_deref()
                        .and_then(|s| s.to_ascii_uppercase().rfind(" WHERE ").map(|i| &s[i..]))
                        .map(str::trim)
                        .map(|w| format!(" {w}"))
                        .unwrap_or_default();
                    table.indexes.insert(
                        index,
                        Index {
                            unique,
                            definition: format!("({}){predicate}", cols.join(", ")),
                            create_sql: sql,
                        },
                    );
                }
            }
        }

        type FkRow = (i64, i64, String, String, Option<String>);
        let fks: Vec<FkRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, seq, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list('{q}') ORDER BY id, seq"
        )))
        .fetch_all(&mut *conn)
        .await?;
        let mut grouped: BTreeMap<i64, (String, Vec<String>, Vec<String>)> = BTreeMap::new();
        for (id, _, other, from, to) in fks {
            let e = grouped
                .entry(id)
                .or_insert_with(|| (other.clone(), Vec::new(), Vec::new()));
            e.1.push(from);
            e.2.push(to.unwrap_or_default());
        }
        for (other, from, to) in grouped.into_values() {
            // SQLite foreign keys have no names; name them the way PostgreSQL would.
            table.constraints.insert(
                format!("{name}_{}_fkey", from.join("_")),
                Constraint {
                    kind: ConstraintKind::ForeignKey,
                    definition: format!(
                        "FOREIGN KEY ({}) REFERENCES {other}({})",
                        from.join(", "),
                        to.join(", ")
                    ),
                },
            );
        }
        model.tables.insert(name, table);
    }
    Ok(model)
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
