//! The target's database over the API: info, schema status and sync, and restores.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::jobs::{accepted, JobAccepted};
use super::{AdminState, ApiError, ErrorBody};
use crate::daemon::registry::RunState;
use crate::engine::{self, DatabaseInfo};
use crate::ops::restore::{self, Selector};
use crate::schema::{self, StatusReport};

/// Each target's database: kind, server version, connection, size and tables.
#[utoipa::path(get, path = "/api/v1/admin/database/info", tag = "admin",
    responses((status = 200, body = [DatabaseInfo]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn info(State(st): State<AdminState>) -> Json<Vec<DatabaseInfo>> {
    let cfg = st.daemon.config();
    let mut out = Vec::new();
    for t in &cfg.targets {
        out.push(engine::build(t).info().await);
    }
    Json(out)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaStatusEntry {
    pub target: String,
    /// Whether the target declares a schema at all.
    pub configured: bool,
    pub in_sync: Option<bool>,
    pub report: Option<StatusReport>,
    pub error: Option<String>,
}

/// The schema status of each target: drift and pending migrations, per schema.
#[utoipa::path(get, path = "/api/v1/admin/database/schema/status", tag = "admin",
    responses((status = 200, body = [SchemaStatusEntry]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn schema_status(State(st): State<AdminState>) -> Json<Vec<SchemaStatusEntry>> {
    let cfg = st.daemon.config();
    let mut out = Vec::new();
    for t in &cfg.targets {
        let mut e = SchemaStatusEntry {
            target: t.name.clone(),
            configured: t.schema.is_some(),
            in_sync: None,
            report: None,
            error: None,
        };
        if t.schema.is_some() {
            match schema::status(&st.daemon.context(), t).await {
                Ok(r) => {
                    e.in_sync = Some(r.in_sync);
                    e.report = Some(r);
                }
                Err(err) => e.error = Some(crate::error::chain(&err)),
            }
        }
        out.push(e);
    }
    Json(out)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TargetBody {
    pub target: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncResult {
    pub target: String,
    /// The pre-sync backup; null when nothing was missing.
    pub backup_id: Option<String>,
    pub created_tables: usize,
    pub statements: Vec<String>,
}

/// Create the missing tables of a target (with their indexes and constraints), after a
/// verified pre-sync backup. Nothing existing is altered or dropped.
#[utoipa::path(post, path = "/api/v1/admin/database/schema/sync", tag = "admin",
    request_body = TargetBody,
    responses((status = 200, body = SyncResult), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn schema_sync(
    State(st): State<AdminState>,
    body: Result<Json<TargetBody>, JsonRejection>,
) -> Result<Json<SyncResult>, ApiError> {
    let Json(body) = body?;
    let cfg = st.daemon.config();
    let target = cfg
        .target(&body.target)
        .ok_or_else(|| ApiError::unknown_target(&body.target, &st.daemon))?;
    let ctx = st.daemon.context();
    let plan = schema::plan_sync(&ctx, target).await?;
    let statements: Vec<String> = plan.schemas.iter().flat_map(|(_, s)| s.clone()).collect();
    let created_tables = statements
        .iter()
        .filter(|s| s.starts_with("CREATE TABLE"))
        .count();
    let backup_id = if plan.is_empty() {
        None
    } else {
        let id = schema::apply_sync(&ctx, target, &plan).await?;
        Some(id.to_string())
    };
    Ok(Json(SyncResult {
        target: target.name.clone(),
        backup_id,
        created_tables,
        statements,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RestoreBody {
    pub target: String,
    /// `latest` or a backup id (YYYYMMDD_HHMMSS).
    pub id: String,
    /// Restore only this schema.
    pub schema: Option<String>,
    /// Must equal `target`: the typed confirmation.
    pub confirm: Option<String>,
    /// Let replacing a schema drop the objects outside it that depend on it.
    pub drop_dependents: Option<bool>,
    /// Read the archive only from this storage (`local`, `s3` or a mirror's name).
    pub storage: Option<String>,
    /// The database to restore, of a target that backs up a server (`databases`).
    pub database: Option<String>,
    /// Restore only these tables (`schema.name`), beside the live data under new names
    /// (`<name>_restored_<id>`), as `dbkeep restore TARGET ID --table ...` does: the
    /// originals are not touched, so no confirmation is needed.
    pub tables: Option<Vec<String>>,
    /// The copy's name (`schema.name`), for one table.
    #[serde(rename = "as")]
    pub rename: Option<String>,
}

/// Restore a backup over the target's own database, as `dbkeep restore TARGET ID --yes`
/// does: checksum first, a safety backup, one transaction; or, with `tables`, only those
/// tables beside the live data. Returns a job id.
#[utoipa::path(post, path = "/api/v1/admin/database/restore", tag = "admin",
    request_body = RestoreBody,
    responses((status = 202, body = JobAccepted), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn start_restore(
    State(st): State<AdminState>,
    body: Result<Json<RestoreBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let tables = body.tables.clone().unwrap_or_default();
    if tables.is_empty() && body.confirm.as_deref() != Some(body.target.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the restore is not confirmed",
            "set \"confirm\" to the target's name: a restore replaces the live data",
        ));
    }
    let cfg = st.daemon.config();
    let target = cfg
        .target(&body.target)
        .ok_or_else(|| ApiError::unknown_target(&body.target, &st.daemon))?
        .clone();
    let spec = match &body.schema {
        Some(s) => format!("{}:{s}", body.id),
        None => body.id.clone(),
    };
    let selector: Selector = spec.parse().map_err(|e: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            e,
            "use `latest` or an id from GET /backups",
        )
    })?;
    let drop_dependents = body.drop_dependents;
    let mut selector = selector;
    selector.from = body.storage.clone();
    selector.database = body.database.clone();
    let ctx = st.daemon.context();
    if !tables.is_empty() {
        let plan =
            crate::ops::tables::plan(&ctx, &target, &selector, &tables, body.rename.as_deref())
                .await?;
        return Ok(start_table_restore(&st, ctx, target, plan));
    }
    let mut plan = restore::plan(&ctx, &target, &selector, None, None, false).await?;
    let backup_id = plan.chosen.backup.id.to_string();
    let name = target.name.clone();
    let work = async move {
        let result = async {
            plan.chosen.prove(&ctx, &target).await?;
            let opts = restore::Options {
                yes: true,
                safety_backup: true,
                drop_dependents: drop_dependents.unwrap_or(false),
            };
            restore::execute(&ctx, &target, &mut plan, &opts).await
        }
        .await;
        if result.is_ok() {
            tracing::info!(target = %target.name, backup_id = %plan.chosen.backup.id, "restored over the admin API");
        }
        result.map(|_| plan.chosen.backup.bytes)
    };
    Ok(restore_job(&st, &name, backup_id, work, |step, bytes| {
        step.bytes = Some(bytes)
    }))
}

/// Start a restore job: its one step runs `work`, then records the error, or what `done`
/// takes from the result.
fn restore_job<T: Send + 'static>(
    st: &AdminState,
    target: &str,
    backup_id: String,
    work: impl std::future::Future<Output = Result<T, restore::RestoreError>> + Send + 'static,
    done: impl FnOnce(&mut crate::daemon::registry::RunStep, T) + Send + 'static,
) -> Response {
    let run_id = st
        .daemon
        .runs
        .start("restore", "api", std::slice::from_ref(&target.to_string()));
    let (d, id, target) = (st.daemon.clone(), run_id.clone(), target.to_string());
    st.daemon.spawn(async move {
        d.runs.step(&id, 0, |step| {
            step.state = RunState::Running;
            step.backup_id = Some(backup_id);
        });
        let result = work.await;
        if let Err(e) = &result {
            tracing::error!(target = %target, error = %e, "restore over the admin API failed");
        }
        d.runs.step(&id, 0, |step| match result {
            Ok(value) => {
                step.state = RunState::Succeeded;
                done(step, value);
            }
            Err(e) => {
                step.state = RunState::Failed;
                step.error = Some(crate::error::chain(&e));
            }
        });
    });
    accepted(run_id)
}

/// Run a table restore as a job; its step lists each copy and its rows.
fn start_table_restore(
    st: &AdminState,
    ctx: crate::ops::Context,
    target: crate::config::Target,
    mut plan: crate::ops::tables::Plan,
) -> Response {
    let backup_id = plan.chosen.backup.id.to_string();
    let name = target.name.clone();
    let work = async move { crate::ops::tables::execute(&ctx, &target, &mut plan).await };
    restore_job(st, &name, backup_id, work, |step, done| {
        step.tables = Some(
            done.restored
                .iter()
                .map(|r| crate::daemon::registry::TableCopied {
                    table: r.copy.from.to_string(),
                    copy: r.copy.to.to_string(),
                    rows: r.rows,
                })
                .collect(),
        );
    })
}
