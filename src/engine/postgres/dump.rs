//! Dumping PostgreSQL: `pg_dump -Fc -Z0` per database or schema, and `pg_dumpall
//! --globals-only`, streamed from the client binaries that match the server's version.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use sqlx::postgres::PgConnection;
use tokio_util::sync::CancellationToken;

use super::conn::Dsn;
use super::introspect;
use super::tools::find_tool_dir;
use super::PostgresEngine;
use crate::catalog::{Contents, TableInfo, ToolVersions};
use crate::engine::dump::Fingerprints;
use crate::engine::dump::PendingContent;
use crate::engine::model::fingerprint_all;
use crate::engine::{glob_match, Dump, EngineError, Part, Prepared};
use crate::process;

pub const CUSTOM_FORMAT_MAGIC: &[u8] = b"PGDMP";
const SQL_MAGIC: &[u8] = b"--";

/// Quote a schema name so pg_dump's `-n` matches exactly it (no case folding, no wildcards).
pub(super) fn exact_pattern(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Open the run's view of the database: a repeatable-read transaction whose snapshot is
/// exported for every pg_dump of the run, held open (on its own connection) until the
/// run ends. The catalog and the schema fingerprints are read in the same snapshot.
async fn open_snapshot(conn: &mut PgConnection, what: &str) -> Result<Option<String>, EngineError> {
    // A server-side idle timeout must not end the transaction between two archives.
    sqlx::raw_sql(
        "SET idle_in_transaction_session_timeout = 0; \
         BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .execute(&mut *conn)
    .await
    .map_err(EngineError::db(what.to_string()))?;
    match sqlx::query_as::<_, (String,)>("SELECT pg_export_snapshot()")
        .fetch_one(&mut *conn)
        .await
    {
        Ok((id,)) => Ok(Some(id)),
        Err(err) => {
            // A server that cannot export snapshots (some poolers, old standbys): each
            // pg_dump then takes its own, which is consistent for a single archive.
            tracing::warn!(error = %crate::engine::sql_message(&err), "cannot export a snapshot; archives of this run are each consistent on their own");
            sqlx::raw_sql("ROLLBACK; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *conn)
                .await
                .map_err(EngineError::db(what.to_string()))?;
            Ok(None)
        }
    }
}

/// The schema fingerprints as the snapshot sees them; a failure is logged, rolled back
/// to a savepoint (the snapshot stays usable), and leaves `None`.
async fn read_fingerprints(conn: &mut PgConnection, target: &str) -> Option<Fingerprints> {
    let read = async {
        sqlx::raw_sql("SAVEPOINT dbkeep_fingerprint")
            .execute(&mut *conn)
            .await?;
        let mut models = BTreeMap::new();
        for s in introspect::schemas(&mut *conn).await? {
            let m = introspect::schema_model(&mut *conn, &s).await?;
            models.insert(s, m);
        }
        sqlx::raw_sql("RELEASE SAVEPOINT dbkeep_fingerprint")
            .execute(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>(models)
    }
    .await;
    match read {
        Ok(models) => {
            let each = models
                .iter()
                .map(|(s, m)| (s.clone(), m.fingerprint()))
                .collect();
            Some((fingerprint_all(&models), each))
        }
        Err(err) => {
            tracing::warn!(target, error = %crate::engine::sql_message(&err), "cannot read the schema fingerprint; the backup goes on without it");
            let _ = sqlx::raw_sql("ROLLBACK TO SAVEPOINT dbkeep_fingerprint")
                .execute(&mut *conn)
                .await;
            None
        }
    }
}

/// The server's data directory, when the role may read it (pg_settings hides it from
/// others, without an error) and it is a PostgreSQL data directory on this host.
pub async fn visible_data_dir(conn: &mut sqlx::PgConnection) -> Option<PathBuf> {
    let dir: Option<(String,)> =
        sqlx::query_as("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
            .fetch_optional(&mut *conn)
            .await
            .ok()
            .flatten();
    let dir = PathBuf::from(dir?.0);
    if !dir.join("PG_VERSION").is_file() {
        // Another host's folder (or one this user cannot see): nothing to compare with.
        return None;
    }
    dir.canonicalize().ok()
}

/// The note of a globals archive dumped without role passwords.
pub const NO_ROLE_PASSWORDS: &str = "role passwords left out: the backup role cannot read pg_authid (only a superuser can); restored roles need their passwords set again";

pub async fn prepare(e: &PostgresEngine) -> Result<Prepared, EngineError> {
    match e.cfg.databases.is_empty() {
        true => prepare_one(e, &e.dsn, None).await,
        false => prepare_server(e).await,
    }
}

/// The databases of the server a server target backs up: every one that allows
/// connections and is not a template, matching `databases` and not `exclude_databases`.
pub async fn discover(
    e: &PostgresEngine,
    conn: &mut PgConnection,
) -> Result<Vec<String>, EngineError> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT datname::text FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(EngineError::db(format!(
        "listing the databases of {}",
        e.dsn.location()
    )))?;
    // dbkeep's own scratch databases (a drill or check going on) are never backed up.
    let names: Vec<String> = names
        .into_iter()
        .map(|(n,)| n)
        .filter(|n| !super::database::is_scratch(n))
        .collect();
    let chosen: Vec<String> = names
        .iter()
        .filter(|n| e.cfg.databases.iter().any(|p| glob_match(p, n)))
        .filter(|n| !e.cfg.exclude_databases.iter().any(|p| glob_match(p, n)))
        .filter(|n| e.cfg.only_database.as_ref().is_none_or(|o| o == *n))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(EngineError::NoDatabaseMatch {
            target: e.target.clone(),
            available: names.join(", "),
        });
    }
    Ok(chosen)
}

/// The major version in `server_version_num` (`150018` is 15).
fn major_of(version_num: &str) -> Result<u32, EngineError> {
    version_num.parse::<u32>().map(|n| n / 10000).map_err(|_| {
        EngineError::Unsupported(format!(
            "the server reported an unreadable version {version_num:?}"
        ))
    })
}

/// The SQLSTATE a connection was refused with (`3D000`: no such database, `42501`: no
/// CONNECT right), when the server gave one.
fn connect_code(err: &EngineError) -> Option<String> {
    match err {
        EngineError::Connect {
            source: Some(s), ..
        } => s
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
        _ => None,
    }
}

/// A server target: each discovered database prepared in its own exported snapshot, and
/// the globals once for the server.
async fn prepare_server(e: &PostgresEngine) -> Result<Prepared, EngineError> {
    let mut conn = e.dsn.connect().await?;
    let what = format!("reading the server of {}", e.dsn.location());
    let (version_num,): (String,) = sqlx::query_as("SELECT current_setting('server_version_num')")
        .fetch_one(&mut conn)
        .await
        .map_err(EngineError::db(what.clone()))?;
    let major = major_of(&version_num)?;
    let names = discover(e, &mut conn).await?;
    let mut databases = BTreeMap::new();
    let mut failed = Vec::new();
    for db in &names {
        let dsn = e.dsn.with_database(db)?;
        match prepare_one(e, &dsn, Some(db)).await {
            Ok(p) => {
                databases.insert(db.clone(), p);
            }
            // Dropped between the listing and its snapshot: nothing left to back up.
            Err(ref err) if connect_code(err).as_deref() == Some("3D000") => {
                tracing::info!(target = %e.target, database = %db, "database dropped while the run started; not backed up");
            }
            // One database that cannot be prepared fails on its own: the others are backed
            // up. A role that may not connect is told the two ways out.
            Err(err) => {
                let mut why = crate::error::chain(&err);
                if connect_code(&err).as_deref() == Some("42501") {
                    why.push_str(
                        ": grant the backup role CONNECT on it, or add it to `exclude_databases`",
                    );
                }
                tracing::error!(target = %e.target, database = %db, error = %why, "cannot back up this database; the others go on");
                failed.push((db.clone(), why));
            }
        }
    }
    let Some(first) = databases.values().next() else {
        return Err(match failed.first() {
            Some((db, why)) => EngineError::Check(format!(
                "no database of the server of target {} could be backed up ({} failed; the first, {db:?}: {why})",
                e.target,
                failed.len()
            )),
            None => EngineError::NoDatabaseMatch {
                target: e.target.clone(),
                available: String::new(),
            },
        });
    };
    let tools = first.tools.clone();
    let tool_dir = first.tool_dir.clone();
    let mut parts: Vec<Part> = databases.values().flat_map(|p| p.parts.clone()).collect();
    // A run of one database (a restore's safety copy) needs no globals.
    if e.cfg.globals && e.cfg.only_database.is_none() {
        let dir = tool_dir.clone().unwrap_or_default();
        parts.push(globals_part(e, &mut conn, &dir, major, &what).await?);
    }
    let _ = sqlx::Connection::close(conn).await;
    Ok(Prepared {
        parts,
        tools,
        tool_dir,
        tables: Vec::new(),
        snapshot: None,
        fingerprints: None,
        hold: None,
        excluded: Vec::new(),
        data_excluded: Vec::new(),
        size_estimate: databases
            .values()
            .map(|p| p.size_estimate)
            .sum::<Option<u64>>(),
        databases,
        failed,
        fingerprint: true,
    })
}

/// Prepare one database (`dsn`'s): its snapshot, catalog and filters; `database` is set
/// for a database of a server target, whose globals the server run dumps once.
async fn prepare_one(
    e: &PostgresEngine,
    dsn: &Dsn,
    database: Option<&str>,
) -> Result<Prepared, EngineError> {
    let mut conn = dsn.connect().await?;
    let what = format!("reading the catalog of {}", dsn.location());
    let snapshot = open_snapshot(&mut conn, &what).await?;
    let (version_num, version, size): (String, String, i64) = sqlx::query_as(
        "SELECT current_setting('server_version_num'), current_setting('server_version'), \
                pg_database_size(current_database())",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(EngineError::db(what.clone()))?;
    let major = major_of(&version_num)?;

    let mut parts = Vec::new();
    if e.cfg.schemas.is_empty() {
        parts.push(Part {
            schema: None,
            database: database.map(str::to_string),
            contents: Contents::Database,
            format: "dump",
            magic: CUSTOM_FORMAT_MAGIC,
            note: None,
        });
    } else {
        let names: Vec<(String,)> = sqlx::query_as(
            "SELECT nspname::text FROM pg_namespace \
             WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(EngineError::db(what.clone()))?;
        let names: Vec<String> = names.into_iter().map(|(n,)| n).collect();
        let mut chosen: Vec<String> = Vec::new();
        for pattern in &e.cfg.schemas {
            let matched: Vec<&String> = names.iter().filter(|n| glob_match(pattern, n)).collect();
            if matched.is_empty() {
                return Err(EngineError::NoSchemaMatch {
                    target: e.target.clone(),
                    pattern: pattern.clone(),
                    available: names.join(", "),
                });
            }
            for n in matched {
                if !chosen.contains(n) {
                    chosen.push(n.clone());
                }
            }
        }
        chosen.sort();
        parts.extend(chosen.into_iter().map(|s| Part {
            schema: Some(s),
            database: None,
            contents: Contents::Schema,
            format: "dump",
            magic: CUSTOM_FORMAT_MAGIC,
            note: None,
        }));
    }
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, \
                greatest(c.reltuples::bigint, coalesce(s.n_live_tup, -1))::bigint \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(EngineError::db(what.clone()))?;
    // The patterns are resolved here, with dbkeep's own glob rules on the real names, and
    // pg_dump gets the exact names: pg_dump's pattern rules (case folding, quotes) can
    // then never pick other tables than the manifest and the drill expect. What the archive
    // will not hold is not expected back: excluded tables are not listed, tables whose
    // data is excluded are expected empty.
    let matches = |list: &[String], schema: &str, name: &str| {
        let full = format!("{schema}.{name}");
        list.iter().any(|p| crate::engine::glob_match(p, &full))
    };
    // A partitioned table's partitions go with it (pg_dump would otherwise dump a
    // partition whose parent it left out, which cannot be restored).
    let filtering = !e.cfg.exclude_tables.is_empty() || !e.cfg.exclude_table_data.is_empty();
    let partitions: Vec<(String, String, String, String)> = match filtering {
        false => Vec::new(),
        true => sqlx::query_as(
            "SELECT pn.nspname::text, p.relname::text, cn.nspname::text, c.relname::text \
         FROM pg_class p JOIN pg_namespace pn ON pn.oid = p.relnamespace, \
              LATERAL pg_partition_tree(p.oid) t JOIN pg_class c ON c.oid = t.relid \
              JOIN pg_namespace cn ON cn.oid = c.relnamespace \
         WHERE p.relkind = 'p' AND t.level > 0",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(EngineError::db(what.clone()))?,
    };
    let matches = |list: &[String], schema: &str, name: &str| {
        matches(list, schema, name)
            || partitions
                .iter()
                .any(|(ps, pt, cs, ct)| cs == schema && ct == name && matches(list, ps, pt))
    };
    let mut excluded = Vec::new();
    let mut data_excluded = Vec::new();
    let mut tables = Vec::new();
    for (schema, name, rows) in rows {
        if matches(&e.cfg.exclude_tables, &schema, &name) {
            excluded.push((schema, name));
            continue;
        }
        let no_data = matches(&e.cfg.exclude_table_data, &schema, &name);
        if no_data {
            data_excluded.push((schema.clone(), name.clone()));
        }
        tables.push(TableInfo {
            rows: match no_data {
                true => Some(0),
                false => (rows >= 0).then_some(rows),
            },
            schema: Some(schema),
            name,
        });
    }
    if filtering {
        let conflicts = fk_conflicts(&mut conn, &excluded, &data_excluded)
            .await
            .map_err(EngineError::db(what.clone()))?;
        if !conflicts.is_empty() {
            return Err(EngineError::Refused(format!(
                "the table filters of target {} would make a backup that cannot be restored: {}; exclude the referencing tables too (or their data), or keep the referenced ones",
                e.target,
                conflicts.join("; ")
            )));
        }
    }
    if snapshot.is_none() && parts.len() > 1 {
        return Err(EngineError::Unsupported(format!(
            "the server cannot export a snapshot, so the {} archives of a run of {} could not be consistent with each other; back up the whole database (no `schemas`), or connect to the server directly rather than through a pooler",
            parts.len(),
            e.target
        )));
    }
    let fingerprints = read_fingerprints(&mut conn, &e.target).await;

    let (tool_dir, dump_version) =
        find_tool_dir("pg_dump", major, e.cfg.pg_bin_dir.as_deref(), &e.target).await?;
    if e.cfg.globals && database.is_none() {
        parts.push(globals_part(e, &mut conn, &tool_dir, major, &what).await?);
    }
    tracing::debug!(target = %e.target, server = %version, tool = %dump_version, dir = %tool_dir.display(), "postgres source prepared");
    Ok(Prepared {
        parts,
        tools: ToolVersions {
            dbkeep: env!("CARGO_PKG_VERSION").to_string(),
            dump_tool: Some(dump_version),
            server: Some(format!("PostgreSQL {version}")),
        },
        tool_dir: Some(tool_dir),
        tables,
        snapshot,
        fingerprints,
        hold: Some(Box::new(std::sync::Mutex::new(conn))),
        excluded,
        data_excluded,
        size_estimate: u64::try_from(size).ok().filter(|n| *n > 0),
        databases: BTreeMap::new(),
        failed: Vec::new(),
        fingerprint: true,
    })
}

/// The globals archive (`pg_dumpall --globals-only`), without role passwords when the
/// role cannot read them.
async fn globals_part(
    e: &PostgresEngine,
    conn: &mut PgConnection,
    tool_dir: &std::path::Path,
    major: u32,
    what: &str,
) -> Result<Part, EngineError> {
    if !tool_dir.join("pg_dumpall").is_file() {
        return Err(EngineError::ToolMissing(format!(
            "pg_dumpall is missing beside {}: install the full postgresql-client-{major} package",
            tool_dir.join("pg_dump").display()
        )));
    }
    // Role passwords live in pg_authid, which only superusers read: a role without
    // that right gets the roles without their passwords, rather than a failed run that
    // throws the good database archive away.
    let (can_read_authid,): (bool,) =
        sqlx::query_as("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')")
            .fetch_one(&mut *conn)
            .await
            .map_err(EngineError::db(what.to_string()))?;
    let note = (!can_read_authid).then(|| NO_ROLE_PASSWORDS.to_string());
    if note.is_some() {
        tracing::warn!(target = %e.target, "{NO_ROLE_PASSWORDS}");
    }
    Ok(Part {
        schema: None,
        database: None,
        contents: Contents::Globals,
        format: "sql",
        magic: SQL_MAGIC,
        note,
    })
}

pub fn open(
    e: &PostgresEngine,
    prepared: &Prepared,
    part: &Part,
    cancel: &CancellationToken,
) -> Result<Dump, EngineError> {
    let dir = prepared
        .tool_dir
        .clone()
        .ok_or_else(|| EngineError::Unsupported("pg_dump was started before prepare".into()))?;
    let view = prepared.view(part);
    let url = match &part.database {
        Some(db) => e.dsn.with_database(db)?.url,
        None => e.dsn.url.clone(),
    };
    let dbname: OsString = format!("--dbname={url}").into();
    let spec = match part.contents {
        Contents::Globals => {
            let spec = e
                .spec(dir.join("pg_dumpall"))
                .arg("--globals-only")
                .arg("--no-password")
                .arg(dbname);
            if part.note.as_deref() == Some(NO_ROLE_PASSWORDS) {
                spec.arg("--no-role-passwords")
            } else {
                spec
            }
        }
        Contents::Database | Contents::Schema => {
            let mut spec = e
                .spec(dir.join("pg_dump"))
                .arg("--format=custom")
                .arg("--compress=0")
                .arg("--no-password")
                .arg(dbname);
            if let Some(schema) = &part.schema {
                spec = spec.arg(format!("--schema={}", exact_pattern(schema)));
            }
            if let Some(snapshot) = &view.snapshot {
                spec = spec.arg(format!("--snapshot={snapshot}"));
            }
            let exact =
                |(s, t): &(String, String)| format!("{}.{}", exact_pattern(s), exact_pattern(t));
            for t in &view.excluded {
                spec = spec.arg(format!("--exclude-table={}", exact(t)));
            }
            for t in &view.data_excluded {
                spec = spec.arg(format!("--exclude-table-data={}", exact(t)));
            }
            spec
        }
    };
    let spec = same_output(spec);
    let (running, stdout) = process::spawn_reading(spec)?;
    let stopper = running.stopper();
    let cancel = cancel.clone();
    let timeout = e.timeout;
    let (reader, content): (Box<dyn std::io::Read + Send>, _) = match part.contents {
        _ if !prepared.fingerprint => (Box::new(stdout), PendingContent::Ready(None)),
        Contents::Globals => (Box::new(stdout), PendingContent::Ready(None)),
        Contents::Database | Contents::Schema => {
            let (tap, pending) = super::custom::tap(stdout, &e.target);
            (
                Box::new(tap),
                PendingContent::Later(Box::new(move || {
                    pending.lock().ok().and_then(|mut c| c.take())
                })),
            )
        }
    };
    Ok(Dump {
        content,
        reader,
        done: Box::pin(async move {
            running
                .wait(&cancel, timeout)
                .await
                .map_err(EngineError::from)
        }),
        stopper: Some(stopper),
        tables: None,
    })
}

/// One time zone and one bytea format for every dump and every drill's dump (pg_dump
/// sets DateStyle, IntervalStyle and extra_float_digits itself): values are then written
/// the same way on both sides, whatever each server's and database's settings (a
/// database-level `bytea_output = escape` would otherwise differ). Added to the caller's
/// PGOPTIONS.
fn same_output(spec: process::Spec) -> process::Spec {
    let options = format!(
        "{} -c bytea_output=hex",
        std::env::var("PGOPTIONS").unwrap_or_default()
    );
    spec.env("PGTZ", "UTC")
        .env("PGOPTIONS", options.trim().to_string())
}

/// The content of the database at `dsn` (a drill's scratch database), read from a
/// data-only dump made the way a backup's is (custom format, uncompressed, TimeZone UTC,
/// in `encoding`: the backup's client encoding), with `tools`' pg_dump.
pub async fn content_of(
    tools: &std::path::Path,
    dsn: &Dsn,
    encoding: Option<&str>,
    timeout: std::time::Duration,
    cancel: &CancellationToken,
) -> Result<crate::catalog::Content, EngineError> {
    let mut spec = same_output(super::client_spec(tools.join("pg_dump"), dsn))
        .arg("--format=custom")
        .arg("--compress=0")
        .arg("--data-only")
        .arg("--no-password")
        .arg(format!("--dbname={}", dsn.url));
    if let Some(enc) = encoding {
        spec = spec.arg(format!("--encoding={enc}"));
    }
    let (running, mut reader) = process::spawn_reading(spec)?;
    let read = tokio::task::spawn_blocking(move || {
        let got = super::custom::read_content(&mut reader);
        // Drain what is left so pg_dump never blocks on a reader that stopped.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        got
    });
    let (waited, read) = tokio::join!(running.wait(cancel, timeout), read);
    waited?;
    read.map_err(|e| EngineError::Check(format!("reading the restored rows failed: {e}")))?
        .map_err(|e| {
            EngineError::Check(format!(
                "cannot read the rows of the restored database {}: {e}",
                dsn.location()
            ))
        })
}

/// Foreign keys a filtered dump could not restore: one from a kept table to an excluded
/// table (the constraint fails), or from a table that keeps its rows to one whose rows
/// are left out (the rows fail it). Each as "a.b references c.d (constraint)".
pub(super) async fn fk_conflicts(
    conn: &mut PgConnection,
    excluded: &[(String, String)],
    data_excluded: &[(String, String)],
) -> Result<Vec<String>, sqlx::Error> {
    let fks: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT cn.nspname::text, c.relname::text, con.conname::text, rn.nspname::text, r.relname::text \
         FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
         JOIN pg_namespace cn ON cn.oid = c.relnamespace \
         JOIN pg_class r ON r.oid = con.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace \
         WHERE con.contype = 'f' ORDER BY 1, 2, 3",
    )
    .fetch_all(&mut *conn)
    .await?;
    let has =
        |list: &[(String, String)], s: &str, t: &str| list.iter().any(|(a, b)| a == s && b == t);
    let mut out = Vec::new();
    for (cs, ct, con, rs, rt) in fks {
        if has(excluded, &cs, &ct) {
            continue;
        }
        let why = if has(excluded, &rs, &rt) {
            "which is excluded"
        } else if has(data_excluded, &rs, &rt) && !has(data_excluded, &cs, &ct) {
            "whose rows are excluded"
        } else {
            continue;
        };
        out.push(format!("{cs}.{ct} references {rs}.{rt} ({con}), {why}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_quoted_exactly() {
        assert_eq!(exact_pattern("tenant_1"), "\"tenant_1\"");
        assert_eq!(exact_pattern("we\"ird"), "\"we\"\"ird\"");
    }
}
