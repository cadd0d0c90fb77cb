//! SQLite catalog -> normalized model, from its pragmas; and the migration history.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteConnection;
use sqlx::AssertSqlSafe;

use crate::engine::model::{
    applied_from_rows, history_table, Applied, AppliedRow, Column, Constraint, ConstraintKind,
    Index, SchemaModel, Table, APPLIED_COLUMNS, MIGRATIONS_TABLE,
};

/// Read the `main` schema of a SQLite database.
pub async fn schema_model(conn: &mut SqliteConnection) -> Result<SchemaModel, sqlx::Error> {
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

/// The migrations applied to the database; none when it has no history table.
pub async fn applied(conn: &mut SqliteConnection) -> Result<Vec<Applied>, sqlx::Error> {
    let exists: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")
            .bind(MIGRATIONS_TABLE)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let rows: Vec<AppliedRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {APPLIED_COLUMNS} FROM {} ORDER BY version",
        history_table(None)
    )))
    .fetch_all(conn)
    .await?;
    Ok(applied_from_rows(rows))
}
