//! Server-side locks that every replica sees: session advisory locks, each on a
//! connection of its own, released when that connection ends (however it ends).

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use sqlx::Connection;

use super::conn::Dsn;
use crate::engine::{EngineError, Hold, HoldKind};

/// How often a held lock's connection is checked.
const CHECK: Duration = Duration::from_secs(1);

/// The advisory lock key of `kind` for `target` (dbkeep's own key space: a hash, not a
/// number an application would pick).
pub fn key(kind: HoldKind, target: &str) -> i64 {
    let what = match kind {
        HoldKind::Lease => "lease",
        HoldKind::Run => "run",
    };
    let digest = Sha256::digest(format!("dbkeep {what} {target}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

pub struct PgHold {
    conn: Option<PgConnection>,
}

/// Take the advisory lock without waiting; `None` when another session holds it.
pub async fn try_hold(
    dsn: &Dsn,
    kind: HoldKind,
    target: &str,
) -> Result<Option<Box<dyn Hold>>, EngineError> {
    let app = match kind {
        HoldKind::Lease => "dbkeep-lease",
        HoldKind::Run => "dbkeep-run-lock",
    };
    let opts = dsn.options()?.application_name(app);
    let mut conn = tokio::time::timeout(
        super::conn::CONNECT_TIMEOUT,
        PgConnection::connect_with(&opts),
    )
    .await
    .map_err(|_| EngineError::Connect {
        what: format!("PostgreSQL at {}", dsn.location()),
        message: "no answer".into(),
        kind: crate::error::ErrorKind::Unreachable,
        hint: Some("check host, port and firewall"),
        source: None,
    })?
    .map_err(|e| super::conn::connect_error(format!("PostgreSQL at {}", dsn.location()), e))?;
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(key(kind, target))
        .fetch_one(&mut conn)
        .await
        .map_err(EngineError::db(format!("taking the {app} lock")))?;
    if !got {
        let _ = conn.close().await;
        return Ok(None);
    }
    Ok(Some(Box::new(PgHold { conn: Some(conn) })))
}

#[async_trait]
impl Hold for PgHold {
    async fn lost(&mut self) {
        loop {
            tokio::time::sleep(CHECK).await;
            let alive = match self.conn.as_mut() {
                Some(c) => {
                    tokio::time::timeout(CHECK * 5, sqlx::query("SELECT 1").execute(&mut *c))
                        .await
                        .is_ok_and(|r| r.is_ok())
                }
                None => false,
            };
            if !alive {
                self.conn = None;
                return;
            }
        }
    }
}
