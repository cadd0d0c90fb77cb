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

/// Create the database `dsn` names when missing; refuse a non-empty one without `yes`.
pub async fn prepare(dsn: &Dsn, yes: bool) -> Result<(), EngineError> {
    let (admin_dsn, db) = maintenance(dsn)?;
    let mut admin = admin_dsn.connect().await?;
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&db)
        .fetch_optional(&mut admin)
        .await
        .map_err(EngineError::db(format!("looking up database {db}")))?;
    if exists.is_none() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_ident(&db)
        )))
        .execute(&mut admin)
        .await
        .map_err(EngineError::db(format!("cannot create database {db}")))?;
        let _ = admin.close().await;
        tracing::info!(database = %db, "created database");
        return Ok(());
    }
    let _ = admin.close().await;
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
            "database {db} exists and is not empty ({tables} relations): pick a new name, or add --yes to restore over it"
        )));
    }
    Ok(())
}

/// A new, empty database `dbkeep_<purpose>_<target>_<random>` on `server`'s server.
pub async fn create_scratch(server: &Dsn, target: &str, purpose: &str) -> Result<Dsn, EngineError> {
    let name = format!(
        "dbkeep_{purpose}_{}_{:08x}",
        target.replace('-', "_"),
        rand::random::<u32>()
    );
    let dsn = server.with_database(&name)?;
    prepare(&dsn, false).await?;
    Ok(dsn)
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
