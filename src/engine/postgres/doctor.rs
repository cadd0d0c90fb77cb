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
    out.push(dump_rights(&mut conn, &facts, &role).await);
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

/// Whether pg_dump can read everything: superuser, pg_read_all_data, or SELECT on every
/// table and sequence and USAGE on their schemas.
async fn dump_rights(conn: &mut sqlx::PgConnection, f: &RoleFacts, role: &str) -> Check {
    if f.superuser || f.reads_all {
        let how = if f.superuser {
            "superuser"
        } else {
            "member of pg_read_all_data"
        };
        return Check::new(
            "dump",
            Verdict::Ok,
            format!("role {role} may read every table ({how})"),
        );
    }
    let denied: Result<Vec<(String, String)>, _> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'm', 'S') AND n.nspname !~ '^pg_' \
           AND n.nspname <> 'information_schema' \
           AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')) \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await;
    match denied {
        Err(err) => Check::new("dump", Verdict::Cannot, crate::engine::sql_message(&err)),
        Ok(rows) if rows.is_empty() => Check::new(
            "dump",
            Verdict::Ok,
            format!("role {role} may read every table, sequence and schema"),
        ),
        Ok(rows) => {
            let named: Vec<String> = rows
                .iter()
                .take(NAMED)
                .map(|(s, t)| format!("{}.{}", sql_ident(s), sql_ident(t)))
                .collect();
            let more = rows.len().saturating_sub(NAMED);
            let grant = if f.major >= 14 {
                format!("GRANT pg_read_all_data TO {role}")
            } else {
                format!("GRANT USAGE ON SCHEMA <schema> TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO {role}; GRANT SELECT ON ALL SEQUENCES IN SCHEMA <schema> TO {role}")
            };
            Check::new(
                "dump",
                Verdict::Cannot,
                format!(
                    "role {role} may not read {}{}: pg_dump would fail; {grant}",
                    named.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            )
        }
    }
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
