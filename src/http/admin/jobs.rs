//! Backups started over the API, and the progress of any run by its id.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AdminState, ApiError, ErrorBody, PREFIX};
use crate::daemon::registry::RunInfo;

#[derive(Debug, Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: String,
    /// Where to follow it.
    pub status_url: String,
}

pub(super) fn accepted(id: String) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(JobAccepted {
            status_url: format!("{PREFIX}/jobs/{id}"),
            job_id: id,
        }),
    )
        .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BackupBody {
    /// The target to back up; all targets when absent.
    pub target: Option<String>,
}

/// Start a backup of one target (or of all) and return its job id at once.
#[utoipa::path(post, path = "/api/v1/admin/database/backup", tag = "admin",
    request_body = BackupBody,
    responses((status = 202, body = JobAccepted), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn start_backup(
    State(st): State<AdminState>,
    body: Result<Json<BackupBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let cfg = st.daemon.config();
    let targets: Vec<String> = match &body.target {
        Some(t) => {
            cfg.target(t)
                .ok_or_else(|| ApiError::unknown_target(t, &st.daemon))?;
            vec![t.clone()]
        }
        None => cfg.target_names().into_iter().map(str::to_string).collect(),
    };
    let (id, _) = st.daemon.start_backups(targets, "api");
    Ok(accepted(id))
}

/// A job's progress and result.
#[utoipa::path(get, path = "/api/v1/admin/database/jobs/{id}", tag = "admin",
    params(("id" = String, Path, description = "the job id from POST /backup or /restore")),
    responses((status = 200, body = RunInfo), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn job(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    st.daemon.runs.get(&id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no job {id:?}"),
            "jobs are kept in memory until the daemon restarts",
        )
    })
}
