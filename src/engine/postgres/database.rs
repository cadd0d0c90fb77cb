//! Whole databases on a PostgreSQL server: create the one a restore goes into (refusing
//! a non-empty one), make and drop scratch databases for drills and schema work.

use sqlx::Connection;

use super::conn::{quote_ident, Dsn};
use crate::engine::EngineError;

/// The server's maintenance database (for CREATE/DROP DATABASE) and the database named.
fn maintenance(dsn: &Dsn) -> Result<(Dsn, String), EngineError> {
    let db = dsn.database()?;
    Ok((dsn.with_database("postgres")?, db))
}

/// Whether the server of `dsn` has a database named `db`.
pub async fn exists(dsn: &Dsn, db: &str) -> Result<bool, EngineError> {
    let mut c = dsn.connect().await?;
    let found: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(db)
        .fetch_optional(&mut c)
        .await
        .map_err(EngineError::db(format!("looking up database {db}")))?;
    let _ = c.close().await;
    Ok(found.is_some())
}

/// What [`prepare`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// It was missing, and is now created, empty.
    Created,
    /// It exists and holds no relation.
    Empty,
    /// It exists and is not empty (`yes` lets the restore go over it).
    NotEmpty,
}

/// Create the database `dsn` names when missing; refuse a non-empty one without `yes`.
pub async fn prepare(dsn: &Dsn, yes: bool) -> Result<Prepared, EngineError> {
    let (admin_dsn, db) = maintenance(dsn)?;
    if !exists(&admin_dsn, &db).await? {
        let mut admin = admin_dsn.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_ident(&db)
        )))
        .execute(&mut admin)
        .await
        .map_err(EngineError::db(format!("cannot create database {db}")))?;
        let _ = admin.close().await;
        tracing::info!(database = %db, "created database");
        return Ok(Prepared::Created);
    }
    let mut conn = dsn.connect().await?;
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(EngineError::db(format!("counting the relations of {db}")))?;
    let _ = conn.close().await;
    if tables > 0 && !yes {
        return Err(EngineError::Refused(format!(
            "database {db} exists and is not empty ({tables} relations): pick a new name, or add --yes to restore over it (what the archive holds is dropped there first)"
        )));
    }
    Ok(match tables > 0 {
        true => Prepared::NotEmpty,
        false => Prepared::Empty,
    })
}

/// Why the role of `dsn` may not make a scratch database for `purpose` (no CREATEDB, not
/// a superuser), with the grant that fixes it; `None` when it may.
pub async fn scratch_denied(
    dsn: &Dsn,
    purpose: crate::engine::Purpose,
) -> Result<Option<String>, EngineError> {
    let mut conn = dsn.connect().await?;
    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_optional(&mut conn)
    .await
    .map_err(EngineError::db("reading the role's rights"))?;
    let _ = conn.close().await;
    let Some((role, false)) = row else {
        return Ok(None);
    };
    let role = crate::engine::model::sql_ident(&role);
    Ok(Some(match purpose {
        crate::engine::Purpose::Drill | crate::engine::Purpose::Diff => format!(
            "role {role} may not create databases, and a restore drill restores into a scratch database: \
             ALTER ROLE {role} CREATEDB, or set drill_url to a server where it may (e.g. a test server)"
        ),
        crate::engine::Purpose::Declared => format!(
            "role {role} may not create databases, and the declared schema is built in a scratch database: \
             ALTER ROLE {role} CREATEDB (schema checks are skipped until then)"
        ),
    }))
}

/// What the names of scratch databases start with.
const SCRATCH_PREFIX: &str = "dbkeep_";

/// The purpose word of a table restore's scratch database (`restore --table`).
pub const TABLE_SCRATCH: &str = "table";

/// Whether `name` is one of dbkeep's scratch databases (see [`create_scratch`]): a server
/// target never backs them up.
pub fn is_scratch(name: &str) -> bool {
    use crate::engine::Purpose;
    name.strip_prefix(SCRATCH_PREFIX).is_some_and(|rest| {
        [Purpose::Drill, Purpose::Diff, Purpose::Declared]
            .iter()
            .map(|p| p.word())
            .chain([TABLE_SCRATCH])
            .any(|w| rest.starts_with(&format!("{w}_")))
    })
}

/// A new, empty database `dbkeep_<purpose>_<target>_<random>` on `server`'s server.
pub async fn create_scratch(server: &Dsn, target: &str, purpose: &str) -> Result<Dsn, EngineError> {
    let name = format!(
        "{SCRATCH_PREFIX}{purpose}_{}_{:08x}",
        target.replace('-', "_"),
        rand::random::<u32>()
    );
    let dsn = server.with_database(&name)?;
    prepare(&dsn, false).await?;
    Ok(dsn)
}

/// Before a per-schema archive is restored into another database: a schema of that name
/// that exists there but holds nothing (every new database has an empty `public`) is
/// dropped, since the archive creates it; one that holds objects is refused.
pub async fn make_room_for_schema(dsn: &Dsn, schema: &str) -> Result<(), EngineError> {
    let mut conn = dsn.connect().await?;
    let what = format!("checking schema {schema} in {}", dsn.location());
    let found: Option<(bool,)> = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_depend d \
                        WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid \
                          AND d.deptype = 'n') \
         FROM pg_namespace n WHERE n.nspname = $1",
    )
    .bind(schema)
    .fetch_optional(&mut conn)
    .await
    .map_err(EngineError::db(what.clone()))?;
    let result = match found {
        None => Ok(()),
        Some((true,)) => Err(EngineError::Refused(format!(
            "schema {schema} already holds objects in {}; restore the archive of a schema into a database without it (or into the target's own database, which replaces it)",
            dsn.location()
        ))),
        Some((false,)) => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {}",
            quote_ident(schema)
        )))
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(EngineError::db(what)),
    };
    let _ = conn.close().await;
    result
}

/// A restore stopped by its lock timeout: the error names the sessions that hold locks in
/// the database, and how to end them.
pub async fn explain_lock_wait(
    dsn: &Dsn,
    waited: std::time::Duration,
    cause: EngineError,
) -> EngineError {
    let holders: Vec<(i32, String, String, String, String)> = match dsn.connect().await {
        Ok(mut conn) => {
            let rows = sqlx::query_as(
                "SELECT DISTINCT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), \
                        coalesce(a.state, ''), left(coalesce(a.query, ''), 80) \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.granted AND l.relation IS NOT NULL AND a.datname = current_database() \
                   AND a.pid <> pg_backend_pid() AND a.application_name <> 'dbkeep-restore' \
                 ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
            let _ = conn.close().await;
            rows
        }
        Err(_) => Vec::new(),
    };
    let who = if holders.is_empty() {
        "sessions that have ended since".to_string()
    } else {
        holders
            .iter()
            .map(|(pid, user, app, state, query)| {
                format!("pid {pid} (user {user:?}, application {app:?}, {state}: {query:?})")
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let end = holders
        .iter()
        .map(|(pid, ..)| format!("SELECT pg_terminate_backend({pid});"))
        .collect::<Vec<_>>()
        .join(" ");
    EngineError::Refused(format!(
        "the restore waited {} for locks other sessions hold on what it replaces, and stopped; nothing was changed. Holding them: {who}. Stop the application or end those sessions{}{}, then restore again (or raise lock_timeout): {cause}",
        humantime::format_duration(waited),
        if end.is_empty() { "" } else { ": " },
        end
    ))
}

/// Drop the database `dsn` names, closing its sessions.
pub async fn drop(dsn: &Dsn) -> Result<(), EngineError> {
    let (admin_dsn, db) = maintenance(dsn)?;
    let mut admin = admin_dsn.connect().await?;
    let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(&db)
    )))
    .execute(&mut admin)
    .await
    .map_err(EngineError::db(format!(
        "cannot drop the scratch database {db}"
    )));
    let _ = admin.close().await;
    dropped.map(|_| ())
}

/// Objects outside `schema` that `DROP SCHEMA schema CASCADE` would drop with it (views
/// on its tables, foreign keys into it, ...), described by the server ("view public.v").
/// Empty when the schema does not exist.
pub async fn dependents_outside(dsn: &Dsn, schema: &str) -> Result<Vec<String>, EngineError> {
    let mut conn = dsn.connect().await?;
    // Follow pg_depend from the schema through everything that depends on it; a view
    // depends through its rewrite rule, which stands for the view itself.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "WITH RECURSIVE deps(classid, objid) AS ( \
             SELECT 'pg_namespace'::regclass::oid, n.oid FROM pg_namespace n WHERE n.nspname = $1 \
           UNION \
             SELECT CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 'pg_class'::regclass::oid ELSE d.classid END, \
                    CASE WHEN d.classid = 'pg_rewrite'::regclass THEN r.ev_class ELSE d.objid END \
             FROM pg_depend d JOIN deps ON d.refclassid = deps.classid AND d.refobjid = deps.objid \
             LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid \
             WHERE d.deptype IN ('n', 'a') \
         ) \
         SELECT DISTINCT i.type, i.identity \
         FROM deps, LATERAL pg_identify_object(deps.classid, deps.objid, 0) i \
         WHERE deps.classid <> 'pg_namespace'::regclass AND i.schema IS DISTINCT FROM quote_ident($1) \
         ORDER BY 1, 2",
    )
    .bind(schema)
    .fetch_all(&mut conn)
    .await
    .map_err(EngineError::db(format!(
        "listing what depends on schema {schema}"
    )))?;
    let _ = conn.close().await;
    Ok(rows.into_iter().map(|(t, i)| format!("{t} {i}")).collect())
}

/// Whether the connecting role may own objects as `owners` do (a superuser, or a member
/// of each): the roles it cannot be, and its own name.
pub async fn owners_not_kept(
    dsn: &Dsn,
    owners: &[String],
) -> Result<(Vec<String>, String), EngineError> {
    let mut conn = dsn.connect().await?;
    let what = "checking the restoring role's memberships";
    let (me, superuser): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(EngineError::db(what))?;
    let missing = if superuser {
        // A superuser can be anyone, but not a role that does not exist here.
        let exist: Vec<(String,)> =
            sqlx::query_as("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)")
                .bind(owners)
                .fetch_all(&mut conn)
                .await
                .map_err(EngineError::db(what))?;
        owners
            .iter()
            .filter(|o| !exist.iter().any(|(e,)| e == *o))
            .cloned()
            .collect()
    } else {
        let members: Vec<(String,)> = sqlx::query_as(
            "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1) \
             AND pg_has_role(current_user, oid, 'MEMBER')",
        )
        .bind(owners)
        .fetch_all(&mut conn)
        .await
        .map_err(EngineError::db(what))?;
        owners
            .iter()
            .filter(|o| !members.iter().any(|(m,)| m == *o))
            .cloned()
            .collect()
    };
    let _ = conn.close().await;
    Ok((missing, me))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_databases_of_every_purpose_are_told_from_the_users() {
        for name in [
            "dbkeep_drill_app_1a2b3c4d",
            "dbkeep_diff_app_1a2b3c4d",
            "dbkeep_schema_app_1a2b3c4d",
            "dbkeep_table_app_1a2b3c4d",
        ] {
            assert!(is_scratch(name), "{name}");
        }
        for name in ["dbkeep", "dbkeep_app", "dbkeep_tables", "drill_app", "app"] {
            assert!(!is_scratch(name), "{name}");
        }
    }
}
