//! `dbkeep doctor` for a PostgreSQL target: connect, the client tools of the right major
//! version, the rights a dump needs, and the rights of each feature turned on. Reads the
//! catalog only: nothing is created, granted or changed.

use sqlx::Connection;

use super::conn::Dsn;
use super::tools::find_tool_dir;
use super::PostgresEngine;
use crate::engine::doctor::{Check, Verdict, Wants};
use crate::engine::model::sql_ident;
use crate::engine::{EngineError, Purpose};

/// The most unreadable relations named in one finding.
const NAMED: usize = 5;

pub async fn doctor(e: &PostgresEngine, wants: Wants) -> Vec<Check> {
    let mut out = Vec::new();
    let mut conn = match e.dsn.connect().await {
        Ok(c) => c,
        Err(err) => {
            let hint = crate::error::Classify::hint(&err)
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            out.push(Check::new(
                "connect",
                Verdict::Cannot,
                format!("{}{hint}", crate::error::chain(&err)),
            ));
            return out;
        }
    };
    let facts = match role_facts(&mut conn).await {
        Ok(f) => f,
        Err(err) => {
            out.push(Check::new(
                "connect",
                Verdict::Cannot,
                crate::error::chain(&err),
            ));
            return out;
        }
    };
    out.push(Check::new(
        "connect",
        Verdict::Ok,
        format!(
            "{} as role {} (PostgreSQL {})",
            e.dsn.location(),
            facts.role,
            facts.version
        ),
    ));
    let role = sql_ident(&facts.role);
    for (tool, feature) in [("pg_dump", "pg_dump"), ("pg_restore", "pg_restore")] {
        out.push(
            match find_tool_dir(tool, facts.major, e.cfg.pg_bin_dir.as_deref(), &e.target).await {
                Ok((dir, line)) => {
                    Check::new(feature, Verdict::Ok, format!("{line} in {}", dir.display()))
                }
                Err(err) => Check::new(feature, Verdict::Cannot, err.to_string()),
            },
        );
    }
    out.push(dump_rights(&mut conn, &facts, &role, &e.cfg.schemas).await);
    if !e.cfg.databases.is_empty() {
        out.push(databases(&mut conn, e, &role).await);
    } else if !e.cfg.exclude_tables.is_empty() || !e.cfg.exclude_table_data.is_empty() {
        out.push(exclusions(&mut conn, e).await);
    }
    if wants.globals {
        out.push(if facts.superuser {
            Check::new(
                "globals",
                Verdict::Ok,
                "superuser: roles are dumped with their passwords",
            )
        } else {
            Check::new(
                "globals",
                Verdict::Limited,
                format!(
                    "role {role} cannot read pg_authid: roles are dumped without their passwords \
                     (--no-role-passwords); a superuser role keeps them"
                ),
            )
        });
    }
    out.push(leftover_scratch(&mut conn).await);
    let _ = conn.close().await;
    if wants.drills {
        out.push(scratch_check(e, "drills", Purpose::Drill).await);
    }
    if wants.schema {
        out.push(scratch_check(e, "schema checks", Purpose::Declared).await);
    }
    out
}

struct RoleFacts {
    role: String,
    version: String,
    major: u32,
    superuser: bool,
    reads_all: bool,
}

async fn role_facts(conn: &mut sqlx::PgConnection) -> Result<RoleFacts, EngineError> {
    let (role, version, num, superuser, reads_all): (String, String, i32, bool, bool) =
        sqlx::query_as(
            "SELECT current_user::text, current_setting('server_version'), \
                current_setting('server_version_num')::int, \
                (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data') \
                     THEN pg_has_role(current_user, 'pg_read_all_data', 'MEMBER') ELSE false END",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(EngineError::db("reading the role's rights"))?;
    Ok(RoleFacts {
        role,
        version,
        major: (num / 10000) as u32,
        superuser,
        reads_all,
    })
}

/// Whether pg_dump can read everything it will dump: superuser, or `pg_read_all_data`
/// (else SELECT on every table and sequence and USAGE on their schemas); no table behind
/// row-level security the role does not bypass (pg_dump refuses those); every large object
/// readable (whole-database dumps carry them, and `pg_read_all_data` does not cover them).
/// Only the configured `schemas` count, when there are some.
async fn dump_rights(
    conn: &mut sqlx::PgConnection,
    f: &RoleFacts,
    role: &str,
    schemas: &[String],
) -> Check {
    if f.superuser {
        return Check::new(
            "dump",
            Verdict::Ok,
            format!("role {role} may read everything (superuser)"),
        );
    }
    let in_scope = |schema: &str| {
        schemas.is_empty() || schemas.iter().any(|p| crate::engine::glob_match(p, schema))
    };
    let mut problems = Vec::new();
    if !f.reads_all {
        match relations(
            conn,
            "NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'))",
        )
        .await
        {
            Err(e) => problems.push(e),
            Ok(rows) => {
                let rows: Vec<_> = rows.into_iter().filter(|(s, _)| in_scope(s)).collect();
                if !rows.is_empty() {
                    let grant = if f.major >= 14 {
                        format!("GRANT pg_read_all_data TO {role}")
                    } else {
                        format!("GRANT USAGE ON SCHEMA <schema> TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO {role}; GRANT SELECT ON ALL SEQUENCES IN SCHEMA <schema> TO {role}")
                    };
                    problems.push(format!(
                        "role {role} may not read {}: pg_dump would fail; {grant}",
                        named(&rows)
                    ));
                }
            }
        }
    }
    match relations(
        conn,
        "c.relkind IN ('r', 'p') AND c.relrowsecurity \
         AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')) \
         AND NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user)",
    )
    .await
    {
        Err(e) => problems.push(e),
        Ok(rows) => {
            let rows: Vec<_> = rows.into_iter().filter(|(s, _)| in_scope(s)).collect();
            if !rows.is_empty() {
                problems.push(format!(
                    "{} {} row-level security, which pg_dump refuses to dump for a role that does not bypass it: ALTER ROLE {role} BYPASSRLS",
                    named(&rows),
                    if rows.len() == 1 { "has" } else { "have" }
                ));
            }
        }
    }
    // `pg_dump -n` leaves large objects out: only whole-database dumps need them.
    if schemas.is_empty() {
        let unreadable: Result<(i64, Option<i64>), _> = sqlx::query_as(
            "SELECT count(*), min(m.oid::bigint) FROM pg_largeobject_metadata m \
             WHERE NOT current_setting('lo_compat_privileges')::bool \
               AND NOT pg_has_role(m.lomowner, 'USAGE') \
               AND NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(m.lomacl, acldefault('L', m.lomowner))) a \
                               WHERE a.privilege_type = 'SELECT' \
                                 AND CASE WHEN a.grantee = 0 THEN true ELSE pg_has_role(a.grantee, 'USAGE') END)",
        )
        .fetch_one(&mut *conn)
        .await;
        match unreadable {
            Err(e) => problems.push(crate::engine::sql_message(&e)),
            Ok((0, _)) => {}
            Ok((n, first)) => problems.push(format!(
                "role {role} may not read {n} large object(s), which a whole-database dump includes: GRANT SELECT ON LARGE OBJECT {} TO {role} (for each), or back up as their owner",
                first.unwrap_or_default()
            )),
        }
    }
    if problems.is_empty() {
        let how = if f.reads_all {
            "member of pg_read_all_data"
        } else {
            "SELECT on every table and sequence"
        };
        return Check::new(
            "dump",
            Verdict::Ok,
            format!("role {role} may read every table, sequence and large object it dumps ({how})"),
        );
    }
    Check::new("dump", Verdict::Cannot, problems.join("; "))
}

/// Scratch databases (of drills, schema diffs and checks, `--table` restores) that no
/// session uses: a run killed before it could drop its own leaves one behind, holding a
/// restored copy of the data. Named, with the statements that drop them.
async fn leftover_scratch(conn: &mut sqlx::PgConnection) -> Check {
    let feature = "scratch databases";
    let rows: Result<Vec<(String,)>, _> = sqlx::query_as(
        "SELECT d.datname::text FROM pg_database d \
         WHERE d.datname LIKE 'dbkeep\\_%' \
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) \
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await;
    let left: Vec<String> = match rows {
        Ok(r) => r
            .into_iter()
            .map(|(n,)| n)
            .filter(|n| super::database::is_scratch(n))
            .collect(),
        Err(err) => return Check::new(feature, Verdict::Cannot, crate::engine::sql_message(&err)),
    };
    if left.is_empty() {
        return Check::new(
            feature,
            Verdict::Ok,
            "none left behind by an interrupted run",
        );
    }
    Check::new(
        feature,
        Verdict::Limited,
        format!(
            "{} left behind by runs killed before they could drop them, each a restored copy of the data: {}; unless a dbkeep run is using them right now, drop them: {}",
            left.len(),
            left.join(", "),
            left.iter()
                .map(|d| format!("DROP DATABASE {}", crate::engine::model::sql_ident(d)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    )
}

/// A server target: which databases a run would back up now, and whether the role may
/// connect to each (one it may not fails the run).
async fn databases(conn: &mut sqlx::PgConnection, e: &PostgresEngine, role: &str) -> Check {
    let names = match super::dump::discover(e, conn).await {
        Ok(n) => n,
        Err(err) => return Check::new("databases", Verdict::Cannot, err.to_string()),
    };
    let mut denied = Vec::new();
    for db in &names {
        let ok: Result<(bool,), _> = sqlx::query_as("SELECT has_database_privilege($1, 'CONNECT')")
            .bind(db)
            .fetch_one(&mut *conn)
            .await;
        if !matches!(ok, Ok((true,))) {
            denied.push(db.clone());
        }
    }
    match denied.is_empty() {
        true => Check::new(
            "databases",
            Verdict::Ok,
            format!("{} database(s) to back up: {}", names.len(), names.join(", ")),
        ),
        false => Check::new(
            "databases",
            Verdict::Cannot,
            format!(
                "role {role} may not connect to {}: grant it ({}), or add them to `exclude_databases`",
                denied.join(", "),
                denied
                    .iter()
                    .map(|d| format!("GRANT CONNECT ON DATABASE {} TO {role}", crate::engine::model::sql_ident(d)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
    }
}

/// Every exclusion pattern matches some table; one that matches nothing is likely a typo
/// (the table it meant is backed up in full).
async fn exclusions(conn: &mut sqlx::PgConnection, e: &PostgresEngine) -> Check {
    let tables = match relations(conn, "c.relkind IN ('r', 'p')").await {
        Ok(t) => t,
        Err(why) => return Check::new("exclusions", Verdict::Cannot, why),
    };
    let unmatched: Vec<String> = e
        .cfg
        .exclude_tables
        .iter()
        .map(|p| ("exclude_tables", p))
        .chain(
            e.cfg
                .exclude_table_data
                .iter()
                .map(|p| ("exclude_table_data", p)),
        )
        .filter(|(_, p)| {
            !tables
                .iter()
                .any(|(s, t)| crate::engine::glob_match(p, &format!("{s}.{t}")))
        })
        .map(|(k, p)| format!("{k} {p:?}"))
        .collect();
    let hit = |list: &[String]| -> Vec<(String, String)> {
        tables
            .iter()
            .filter(|(s, t)| {
                list.iter()
                    .any(|p| crate::engine::glob_match(p, &format!("{s}.{t}")))
            })
            .cloned()
            .collect()
    };
    let excluded = hit(&e.cfg.exclude_tables);
    let data_excluded = hit(&e.cfg.exclude_table_data);
    match super::dump::fk_conflicts(conn, &excluded, &data_excluded).await {
        Err(err) => return Check::new("exclusions", Verdict::Cannot, crate::engine::sql_message(&err)),
        Ok(c) if !c.is_empty() => {
            return Check::new(
                "exclusions",
                Verdict::Cannot,
                format!(
                    "the backup could not be restored: {}; exclude the referencing tables too (or their data), or keep the referenced ones",
                    c.join("; ")
                ),
            )
        }
        Ok(_) => {}
    }
    match unmatched.is_empty() {
        true => Check::new("exclusions", Verdict::Ok, "every pattern matches a table"),
        false => Check::new(
            "exclusions",
            Verdict::Limited,
            format!(
                "{} match no table, so nothing is left out for them: check the spelling (schema.table, lower case)",
                unmatched.join(", ")
            ),
        ),
    }
}

/// (schema, name) of the user relations matching `condition` (on `c` and `n`), sorted.
async fn relations(
    conn: &mut sqlx::PgConnection,
    condition: &str,
) -> Result<Vec<(String, String)>, String> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'm', 'S') AND n.nspname !~ '^pg_' \
           AND n.nspname <> 'information_schema' AND {condition} \
         ORDER BY 1, 2"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| crate::engine::sql_message(&e))
}

/// The first few relations, qualified, and how many more.
fn named(rows: &[(String, String)]) -> String {
    let names: Vec<String> = rows
        .iter()
        .take(NAMED)
        .map(|(s, t)| format!("{}.{}", sql_ident(s), sql_ident(t)))
        .collect();
    let more = rows.len().saturating_sub(NAMED);
    format!(
        "{}{}",
        names.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// Whether the scratch database of `purpose` can be made, on the drill server when one
/// is set for drills.
async fn scratch_check(e: &PostgresEngine, feature: &str, purpose: Purpose) -> Check {
    let server = match (purpose, &e.cfg.drill_url) {
        (Purpose::Drill, Some(u)) => match Dsn::parse(u, e.cfg.password.as_ref()) {
            Ok(d) => d,
            Err(err) => return Check::new(feature, Verdict::Cannot, err.to_string()),
        },
        _ => e.dsn.clone(),
    };
    match super::database::scratch_denied(&server, purpose).await {
        Ok(None) => Check::new(
            feature,
            Verdict::Ok,
            format!(
                "the role may create scratch databases on {}",
                server.location()
            ),
        ),
        Ok(Some(why)) => Check::new(feature, Verdict::Cannot, why),
        Err(err) => Check::new(
            feature,
            Verdict::Cannot,
            format!("{} ({})", crate::error::chain(&err), server.location()),
        ),
    }
}
