//! PostgreSQL catalog -> normalized model, read with `search_path` set to the schema so
//! deparsed definitions compare across schemas; and the migration history of a schema.

use sqlx::postgres::PgConnection;
use sqlx::AssertSqlSafe;

use crate::engine::model::{
    applied_from_rows, history_table, quote_ident, Applied, AppliedRow, Column, Constraint,
    ConstraintKind, Index, SchemaModel, Table, APPLIED_COLUMNS, MIGRATIONS_TABLE,
};

/// The schemas of a database that hold user objects.
pub async fn schemas(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT nspname::text FROM pg_namespace \
         WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' ORDER BY 1",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// The schema unqualified names land in (`public` unless search_path says otherwise).
pub async fn current_schema(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    let (s,): (Option<String>,) = sqlx::query_as("SELECT current_schema()::text")
        .fetch_one(conn)
        .await?;
    Ok(s.unwrap_or_else(|| "public".into()))
}

/// Read one schema. The connection's search_path is set to `schema` for the duration,
/// so the server's deparsed definitions name its own objects without qualification and
/// two schemas built from the same migrations compare equal.
pub async fn schema_model(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<SchemaModel, sqlx::Error> {
    let (old_path,): (String,) = sqlx::query_as("SELECT current_setting('search_path')")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(quote_ident(schema))
        .execute(&mut *conn)
        .await?;
    let model = read_model(conn, schema).await;
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(old_path)
        .execute(&mut *conn)
        .await?;
    model
}

async fn read_model(conn: &mut PgConnection, schema: &str) -> Result<SchemaModel, sqlx::Error> {
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

/// The migrations applied to `schema` (its own history table); none when it has none.
pub async fn applied(conn: &mut PgConnection, schema: &str) -> Result<Vec<Applied>, sqlx::Error> {
    let table = history_table(Some(schema));
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<AppliedRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {APPLIED_COLUMNS} FROM {table} ORDER BY version"
    )))
    .fetch_all(conn)
    .await?;
    Ok(applied_from_rows(rows))
}
