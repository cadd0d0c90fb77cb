//! Tables of an archive restored beside the live data under new names (`restore
//! --table`). The archive goes into a scratch database without the other tables' rows,
//! without foreign keys, triggers, rules, large objects or grants. There each table is
//! detached from its parent (a partition), renamed with its indexes and owned sequences,
//! counted, and dumped alone; that dump goes into the live database with `pg_restore
//! --single-transaction`. Every new name is checked free in the live database first:
//! nothing that exists there is changed, and a failure leaves nothing behind.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use sqlx::{AssertSqlSafe, PgConnection};
use tokio_util::sync::CancellationToken;

use super::conn::{quote_ident, Dsn};
use super::custom::TocEntry;
use super::{database, dump, restore, PostgresEngine};
use crate::engine::{Archive, EngineError, RestoreMode, TableCopy, TableRestored};
use crate::process;
use crate::storage::local::ScratchFile;

/// PostgreSQL's longest name, in bytes.
const NAME_MAX: usize = 63;

/// TOC entries a table copy never needs: they tie it to other tables (foreign keys), act
/// on writes (triggers, rules), or are data of other kinds.
const LEFT_OUT: &[&str] = &[
    "FK CONSTRAINT",
    "TRIGGER",
    "EVENT TRIGGER",
    "RULE",
    "MATERIALIZED VIEW DATA",
    "BLOB",
    "BLOBS",
    "BLOB METADATA",
    "LARGE OBJECT",
    "PUBLICATION",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "SUBSCRIPTION",
    "SUBSCRIPTION TABLE",
    "ACL",
    "DEFAULT ACL",
];

fn schema_of(t: &crate::engine::TableName) -> &str {
    t.schema.as_deref().unwrap_or("public")
}

/// The archive's entries to restore into the scratch database, in archive order: all
/// but [`LEFT_OUT`], the rows of tables not in `keep`, and what depends on those.
pub fn restore_list(toc: &[TocEntry], keep: &[(String, String)]) -> Vec<i64> {
    let mut out: HashSet<i64> = toc
        .iter()
        .filter(|e| {
            LEFT_OUT.contains(&e.desc.as_str())
                || (e.desc == "TABLE DATA"
                    && !keep
                        .iter()
                        .any(|(s, t)| e.schema.as_deref() == Some(s.as_str()) && e.tag == *t))
        })
        .map(|e| e.id)
        .collect();
    // What depends on a left-out entry (a comment on a trigger) is left out too; each
    // pass adds at least one entry or ends.
    for _ in 0..toc.len() {
        let before = out.len();
        for e in toc {
            if !out.contains(&e.id) && e.deps.iter().any(|d| out.contains(d)) {
                out.insert(e.id);
            }
        }
        if out.len() == before {
            break;
        }
    }
    toc.iter()
        .map(|e| e.id)
        .filter(|id| !out.contains(id))
        .collect()
}

/// The archive's own entry for a table, or why it cannot be copied.
fn check_in_toc(toc: &[TocEntry], copy: &TableCopy) -> Result<(), EngineError> {
    let (schema, name) = (schema_of(&copy.from), copy.from.name.as_str());
    let entry = toc
        .iter()
        .find(|e| e.desc == "TABLE" && e.schema.as_deref() == Some(schema) && e.tag == name);
    let Some(entry) = entry else {
        return Err(EngineError::NotInArchive(format!(
            "the archive holds no table {}; `dbkeep list` shows the backups, and a table of another schema is written SCHEMA.NAME",
            copy.from
        )));
    };
    // pg_dump writes a partitioned table's key after its columns.
    if entry.defn.contains("\nPARTITION BY ") {
        let parts: Vec<String> = toc
            .iter()
            .filter(|e| {
                e.desc == "TABLE ATTACH"
                    && e.deps.contains(&entry.id)
                    && !(e.tag == entry.tag && e.schema == entry.schema)
            })
            .map(|e| {
                crate::engine::TableName {
                    schema: e.schema.clone(),
                    name: e.tag.clone(),
                }
                .to_string()
            })
            .collect();
        return Err(EngineError::Unsupported(format!(
            "{} is partitioned: its rows are in its partitions; restore those with --table (they are: {})",
            copy.from,
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            }
        )));
    }
    Ok(())
}

/// [`crate::engine::model::derived_name`] within PostgreSQL's 63 bytes: the new table's
/// name is cut, not the part that tells the objects apart (`_pkey`, `_id_seq`), so a
/// long name never yields its own table's name or two equal names.
pub fn derived_name(old: &str, table: &str, new: &str) -> String {
    // PostgreSQL names an index of a long table by the table's name cut short
    // (`tttt…tt_pkey` in 63 bytes): that cut name stands for the table's.
    use crate::engine::model::cut_at_char;
    let common = old
        .bytes()
        .zip(table.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    // A byte count is sliced only where it falls between characters.
    let cut_rest = old.get(common..).filter(|rest| {
        old.len() == NAME_MAX
            && !old.starts_with(table)
            && common >= NAME_MAX / 2
            && rest.starts_with('_')
    });
    let joined = match cut_rest {
        Some(rest) => format!("{new}{rest}"),
        None => crate::engine::model::derived_name(old, table, new),
    };
    if joined.len() <= NAME_MAX {
        return joined;
    }
    let rest = &joined[new.len()..];
    match NAME_MAX.checked_sub(rest.len()) {
        Some(keep) if keep > 0 => format!("{}{rest}", cut_at_char(new, keep)),
        _ => cut_at_char(&joined, NAME_MAX).to_string(),
    }
}

/// A relation in the scratch database: its oid and qualified name (as SQL).
struct Rel {
    oid: i64,
    sql: String,
}

async fn rel(
    conn: &mut PgConnection,
    schema: &str,
    name: &str,
) -> Result<Option<Rel>, sqlx::Error> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT c.oid::int8, c.oid::regclass::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(schema)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(oid, sql)| Rel { oid, sql }))
}

/// The indexes and owned sequences (serial, identity) of table `oid`: (oid, name).
async fn dependents(conn: &mut PgConnection, oid: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.oid::int8, c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = $1::int8::oid \
         UNION ALL \
         SELECT c.oid::int8, c.relname::text FROM pg_depend d JOIN pg_class c ON c.oid = d.objid \
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
         AND d.refobjid = $1::int8::oid AND c.relkind = 'S' AND d.deptype IN ('a', 'i') \
         ORDER BY 2",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await
}

/// Run one statement of this module's own making.
async fn exec(conn: &mut PgConnection, sql: String) -> Result<(), EngineError> {
    sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(&mut *conn)
        .await
        .map_err(EngineError::db(format!("in the scratch database: {sql}")))?;
    Ok(())
}

/// Move aside, in the scratch database, relations and types of `schema` named one of
/// `names` that are not `ours` (objects the archive had under a name a copy takes): each
/// is renamed, never dropped, since a drop would cascade into the table being copied (a
/// column of that type, a default on that sequence). A copy that still needs one then
/// fails to load, and says which.
async fn clear(
    conn: &mut PgConnection,
    schema: &str,
    names: &[String],
    ours: &HashSet<i64>,
) -> Result<(), EngineError> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT c.oid::int8, c.oid::regclass::text, c.relkind::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = ANY($2)",
    )
    .bind(schema)
    .bind(names)
    .fetch_all(&mut *conn)
    .await
    .map_err(EngineError::db("reading the scratch database's catalog"))?;
    for (oid, sql, kind) in rows {
        if ours.contains(&oid) {
            continue;
        }
        let what = match kind.as_str() {
            "i" | "I" => "INDEX",
            "S" => "SEQUENCE",
            "v" => "VIEW",
            "m" => "MATERIALIZED VIEW",
            "f" => "FOREIGN TABLE",
            "c" => "TYPE",
            _ => "TABLE",
        };
        exec(
            conn,
            format!("ALTER {what} {sql} RENAME TO \"dbkeep_moved_{oid}\""),
        )
        .await?;
    }
    let types: Vec<(i64, String)> = sqlx::query_as(
        "SELECT t.oid::int8, t.oid::regtype::text FROM pg_type t \
         JOIN pg_namespace n ON n.oid = t.typnamespace \
         WHERE n.nspname = $1 AND t.typname = ANY($2) AND t.typrelid = 0",
    )
    .bind(schema)
    .bind(names)
    .fetch_all(&mut *conn)
    .await
    .map_err(EngineError::db("reading the scratch database's catalog"))?;
    for (oid, sql) in types {
        exec(
            conn,
            format!("ALTER TYPE {sql} RENAME TO \"dbkeep_moved_{oid}\""),
        )
        .await?;
    }
    Ok(())
}

/// What a copy renames in the scratch database, decided before anything is renamed.
struct Plan {
    table: Rel,
    /// Its indexes and sequences.
    objects: Vec<Renamed>,
}

/// An index or sequence of a copied table: its oid, its name, and its name on the copy.
struct Renamed {
    oid: i64,
    name: String,
    new: String,
}

/// The names each copy takes in the live database (table, then its objects), and each
/// must be free there.
async fn check_live(
    live: &Dsn,
    copies: &[TableCopy],
    names: &[Vec<String>],
) -> Result<(), EngineError> {
    let mut conn = live.connect().await?;
    let what = format!("reading the catalog of {}", live.location());
    let mut taken = Vec::new();
    for (copy, names) in copies.iter().zip(names) {
        let schema = schema_of(&copy.to);
        let row: Option<(i64, bool)> = sqlx::query_as(
            "SELECT oid::int8, has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = $1",
        )
        .bind(schema)
        .fetch_optional(&mut conn)
        .await
        .map_err(EngineError::db(what.clone()))?;
        match row {
            None => {
                return Err(EngineError::Refused(format!(
                    "schema {} does not exist in {}: create it first (CREATE SCHEMA {}), or name another with --as SCHEMA.NAME",
                    quote_ident(schema),
                    live.location(),
                    quote_ident(schema)
                )))
            }
            Some((_, false)) => {
                let (role,): (String,) = sqlx::query_as("SELECT current_user::text")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(EngineError::db(what.clone()))?;
                return Err(EngineError::Refused(format!(
                    "role {role} may not create tables in schema {} of {}: GRANT CREATE ON SCHEMA {} TO {}, or name another schema with --as SCHEMA.NAME",
                    quote_ident(schema),
                    live.location(),
                    quote_ident(schema),
                    quote_ident(&role)
                )))
            }
            Some((nsp, true)) => {
                // A table's row type takes its name among the schema's types too.
                let found: Vec<(String, String)> = sqlx::query_as(
                    "SELECT relname::text, CASE relkind WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' \
                     WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' ELSE 'table' END \
                     FROM pg_class WHERE relnamespace = $1::int8::oid AND relname = ANY($2) \
                     UNION SELECT typname::text, 'type' FROM pg_type \
                     WHERE typnamespace = $1::int8::oid AND typname = ANY($2) AND typrelid = 0",
                )
                .bind(nsp)
                .bind(names)
                .fetch_all(&mut conn)
                .await
                .map_err(EngineError::db(what.clone()))?;
                for (name, kind) in found {
                    taken.push(format!(
                        "{kind} {}",
                        crate::engine::TableName {
                            schema: Some(schema.to_string()),
                            name
                        }
                    ));
                }
            }
        }
    }
    let _ = sqlx::Connection::close(conn).await;
    if !taken.is_empty() {
        return Err(EngineError::Refused(format!(
            "the restored copy would need names that are taken in {}: {}; nothing was changed. Name the copy otherwise with --as SCHEMA.NAME (or drop an earlier copy)",
            live.location(),
            taken.join(", ")
        )));
    }
    Ok(())
}

pub async fn restore_tables(
    e: &PostgresEngine,
    archive: Archive<'_>,
    copies: &[TableCopy],
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<(Vec<TableRestored>, Vec<String>), EngineError> {
    let manifest = &archive.backup.manifest;
    let live = e.dsn_of(
        &crate::engine::Destination::Own,
        archive.backup.database.as_deref(),
    )?;
    if !matches!(
        manifest.contents,
        crate::catalog::Contents::Database | crate::catalog::Contents::Schema
    ) {
        return Err(EngineError::NotInArchive(format!(
            "{} holds no tables",
            archive.backup.file
        )));
    }
    // The table names alone first: a taken name is refused before the archive is read.
    let first: Vec<Vec<String>> = copies.iter().map(|c| vec![c.to.name.clone()]).collect();
    check_live(&live, copies, &first).await?;

    let toc = read_toc(archive).await?;
    for copy in copies {
        check_in_toc(&toc, copy)?;
    }
    let keep: Vec<(String, String)> = copies
        .iter()
        .map(|c| (schema_of(&c.from).to_string(), c.from.name.clone()))
        .collect();
    crate::files::create_dir(dir)
        .map_err(EngineError::io(format!("cannot create {}", dir.display())))?;
    let list_file = ScratchFile::reserve(dir, "tables.list");
    let list: String = restore_list(&toc, &keep)
        .iter()
        .map(|id| format!("{id};\n"))
        .collect();
    std::fs::write(list_file.path(), list).map_err(EngineError::io(format!(
        "writing {}",
        list_file.path().display()
    )))?;

    let server = match &e.cfg.drill_url {
        Some(u) => Dsn::parse(u, e.cfg.password.as_ref())?,
        None => e.dsn.clone(),
    };
    let scratch = database::create_scratch(&server, &e.target, database::TABLE_SCRATCH).await?;
    let result = in_scratch(
        e,
        archive,
        copies,
        &scratch,
        &live,
        list_file.path(),
        dir,
        cancel,
    )
    .await;
    if let Err(err) = database::drop(&scratch).await {
        tracing::warn!(target = %e.target, error = %err, "the scratch database of a table restore was not dropped");
    }
    result
}

/// Read the archive's table of contents from its head.
async fn read_toc(archive: Archive<'_>) -> Result<Vec<TocEntry>, EngineError> {
    match read_toc_of(archive).await {
        Ok(toc) => Ok(toc),
        Err(e) => Err(crate::engine::archive::mismatch_or(archive, e).await),
    }
}

async fn read_toc_of(archive: Archive<'_>) -> Result<Vec<TocEntry>, EngineError> {
    let reader = archive.open().await?;
    let backup = archive.backup.clone();
    let keys = archive.keys.cloned();
    tokio::task::spawn_blocking(move || {
        let decoder = crate::engine::archive::plain(reader, &backup, keys.as_deref())?;
        super::custom::read_toc(decoder, 256 << 20).map_err(|err| {
            EngineError::io(format!("reading the table of contents of {}", backup.file))(err)
        })
    })
    .await
    .map_err(|err| EngineError::io("the TOC reader")(std::io::Error::other(err)))?
}

#[allow(clippy::too_many_arguments)]
async fn in_scratch(
    e: &PostgresEngine,
    archive: Archive<'_>,
    copies: &[TableCopy],
    scratch: &Dsn,
    live: &Dsn,
    list: &Path,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<(Vec<TableRestored>, Vec<String>), EngineError> {
    let tools =
        restore::restore_tools(&e.cfg, scratch, &archive.backup.manifest, &e.target).await?;
    let run = restore::Run {
        tools: &tools,
        dsn: scratch,
        keep_owner: false,
        timeout: e.timeout,
        lock_timeout: e.cfg.lock_timeout,
        cancel,
        list: Some(list),
    };
    // The caller proved the archive's sha256 first (ops::restore::proven_first); it is
    // proven again as it streams: nothing commits before it matched.
    restore::pg_restore(&run, archive, &RestoreMode::Whole { clean: false }).await?;

    let mut conn = scratch.connect().await?;
    let catalog = "reading the scratch database's catalog";
    // Every source table and its objects, so that clearing a name never drops one.
    let mut plans = Vec::new();
    let mut ours: HashSet<i64> = HashSet::new();
    for copy in copies {
        let table = rel(&mut conn, schema_of(&copy.from), &copy.from.name)
            .await
            .map_err(EngineError::db(catalog))?
            .ok_or_else(|| {
                EngineError::Check(format!(
                    "{} is in the archive's table of contents but not in the restored scratch database; nothing was changed. Check the archive with `dbkeep verify TARGET --drill`, or restore the whole backup --into a new database and copy from there",
                    copy.from
                ))
            })?;
        let objects: Vec<Renamed> = dependents(&mut conn, table.oid)
            .await
            .map_err(EngineError::db(catalog))?
            .into_iter()
            .map(|(oid, name)| Renamed {
                new: derived_name(&name, &copy.from.name, &copy.to.name),
                oid,
                name,
            })
            .collect();
        ours.insert(table.oid);
        ours.extend(objects.iter().map(|o| o.oid));
        plans.push(Plan { table, objects });
    }
    // Two objects of one copy cut to the same 63 bytes.
    let names: Vec<Vec<String>> = copies
        .iter()
        .zip(&plans)
        .map(|(c, p)| {
            std::iter::once(c.to.name.clone())
                .chain(p.objects.iter().map(|o| o.new.clone()))
                .collect()
        })
        .collect();
    for (copy, n) in copies.iter().zip(&names) {
        let unique: BTreeSet<&String> = n.iter().collect();
        if unique.len() != n.len() {
            return Err(EngineError::Refused(format!(
                "the indexes and sequences of {} would share a name once renamed for {} (names are cut to 63 bytes); choose a shorter name with --as",
                copy.from, copy.to
            )));
        }
    }
    check_live(live, copies, &names).await?;

    for ((copy, plan), names) in copies.iter().zip(&plans).zip(&names) {
        let (from_schema, to_schema) = (schema_of(&copy.from), schema_of(&copy.to));
        // A partition or an inheritance child (of each of its parents) stands alone.
        let parents: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.inhparent::regclass::text, p.relkind::text FROM pg_inherits i \
             JOIN pg_class p ON p.oid = i.inhparent WHERE i.inhrelid = $1::int8::oid",
        )
        .bind(plan.table.oid)
        .fetch_all(&mut conn)
        .await
        .map_err(EngineError::db(catalog))?;
        for (p, kind) in parents {
            let sql = match kind.as_str() {
                "p" => format!("ALTER TABLE {p} DETACH PARTITION {}", plan.table.sql),
                _ => format!("ALTER TABLE {} NO INHERIT {p}", plan.table.sql),
            };
            exec(&mut conn, sql).await?;
        }
        clear(&mut conn, from_schema, names, &ours).await?;
        for o in plan.objects.iter().filter(|o| o.new != o.name) {
            // Renaming an index also renames the constraint it backs. A copy of the same
            // name in another schema keeps its objects' names.
            let old = qualified_sql(&crate::engine::TableName {
                schema: Some(from_schema.to_string()),
                name: o.name.clone(),
            });
            exec(
                &mut conn,
                format!("ALTER TABLE {old} RENAME TO {}", quote_ident(&o.new)),
            )
            .await?;
        }
        if copy.to.name != copy.from.name {
            exec(
                &mut conn,
                format!(
                    "ALTER TABLE {} RENAME TO {}",
                    plan.table.sql,
                    quote_ident(&copy.to.name)
                ),
            )
            .await?;
        }
        if to_schema != from_schema {
            exec(
                &mut conn,
                format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(to_schema)),
            )
            .await?;
            clear(&mut conn, to_schema, names, &ours).await?;
            exec(
                &mut conn,
                format!(
                    "ALTER TABLE {} SET SCHEMA {}",
                    qualified_sql(&crate::engine::TableName {
                        schema: Some(from_schema.to_string()),
                        name: copy.to.name.clone()
                    }),
                    quote_ident(to_schema)
                ),
            )
            .await?;
        }
    }
    let mut restored = Vec::new();
    for copy in copies {
        let (rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            qualified_sql(&to_qualified(copy))
        )))
        .fetch_one(&mut conn)
        .await
        .map_err(EngineError::db("counting the restored rows"))?;
        restored.push(TableRestored {
            copy: copy.clone(),
            rows,
        });
    }
    let _ = sqlx::Connection::close(conn).await;
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }

    // The copies alone, out of the scratch database, into the live one.
    let file = ScratchFile::reserve(dir, "tables.dump");
    let mut spec = super::client_spec(tools.join("pg_dump"), scratch)
        .arg("--format=custom")
        .arg("--compress=0")
        .arg("--no-owner")
        .arg("--no-privileges")
        .arg("--no-publications")
        .arg("--no-subscriptions")
        .arg("--no-security-labels")
        .arg("--strict-names")
        .arg("--no-password")
        .arg(format!("--file={}", file.path().display()))
        .arg(format!("--dbname={}", scratch.url));
    for copy in copies {
        let t = to_qualified(copy);
        spec = spec.arg(format!(
            "--table={}.{}",
            dump::exact_pattern(schema_of(&t)),
            dump::exact_pattern(&t.name)
        ));
    }
    process::run(spec, cancel, e.timeout).await?;
    let load = restore::writer_spec(tools.join("pg_restore"), live, e.cfg.lock_timeout)
        .arg("--single-transaction")
        .arg("--exit-on-error")
        .arg("--no-owner")
        .arg("--no-privileges")
        .arg("--no-password")
        .arg(format!("--dbname={}", live.url))
        .arg(file.path());
    process::run(load, cancel, e.timeout).await?;
    let notes = vec![format!(
        "the copies have no foreign keys, triggers, rules or grants, and belong to the role dbkeep connects as; nothing else in {} was changed",
        live.location()
    )];
    Ok((restored, notes))
}

/// Where a copy ends up, with its schema spelled out.
fn to_qualified(copy: &TableCopy) -> crate::engine::TableName {
    crate::engine::TableName {
        schema: Some(schema_of(&copy.to).to_string()),
        name: copy.to.name.clone(),
    }
}

/// `"schema"."name"`.
fn qualified_sql(t: &crate::engine::TableName) -> String {
    format!("{}.{}", quote_ident(schema_of(t)), quote_ident(&t.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64, desc: &str, tag: &str, deps: &[i64]) -> TocEntry {
        TocEntry {
            id,
            desc: desc.into(),
            schema: Some("public".into()),
            tag: tag.into(),
            defn: String::new(),
            deps: deps.to_vec(),
            has_data: desc == "TABLE DATA",
            restored_data: desc == "TABLE DATA",
        }
    }

    #[test]
    fn the_list_keeps_definitions_and_only_the_chosen_rows() {
        let toc = [
            entry(1, "TABLE", "orders", &[]),
            entry(2, "TABLE", "customers", &[]),
            entry(3, "TABLE DATA", "orders", &[1]),
            entry(4, "TABLE DATA", "customers", &[2]),
            entry(5, "INDEX", "orders_pkey", &[1]),
            entry(6, "FK CONSTRAINT", "orders orders_customer_fkey", &[1, 2]),
            entry(
                7,
                "COMMENT",
                "CONSTRAINT orders_customer_fkey ON orders",
                &[6],
            ),
            entry(8, "TRIGGER", "orders audit", &[1]),
            entry(9, "ACL", "TABLE orders", &[1]),
        ];
        let keep = [("public".to_string(), "orders".to_string())];
        assert_eq!(restore_list(&toc, &keep), [1, 2, 3, 5]);
    }

    #[test]
    fn derived_names_follow_the_new_table_and_fit() {
        assert_eq!(
            derived_name("orders_pkey", "orders", "orders_restored_x"),
            "orders_restored_x_pkey"
        );
        assert_eq!(derived_name("by_day", "orders", "copy"), "copy_by_day");
        let long = "é".repeat(31);
        let d = derived_name("orders_pkey", "orders", &long);
        assert!(d.len() <= NAME_MAX && d.ends_with("_pkey"), "{d}");
        assert_ne!(d, long);
        // The key of a 60-byte table, as PostgreSQL names it: the table's name cut.
        let sixty = "t".repeat(60);
        let key = format!("{}_pkey", "t".repeat(58));
        let new = format!("{}_restored_20261121_143022", "t".repeat(38));
        let d = derived_name(&key, &sixty, &new);
        assert!(
            d.len() <= NAME_MAX && d.ends_with("_restored_20261121_1_pkey"),
            "{d}"
        );
        // A 63-byte name sharing a start with the table's that ends inside a character
        // (é and è share their first byte) is no cut name, and no panic either.
        let old = format!("{}è_", "é".repeat(30));
        assert_eq!(old.len(), NAME_MAX);
        assert_eq!(
            derived_name(&old, &"é".repeat(31), "copy"),
            format!("copy_{old}")[..NAME_MAX].to_string()
        );
    }
}
