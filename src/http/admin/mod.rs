//! The admin API under `/api/v1/admin/database`, split by resource: `auth` (bearer
//! token, signed links), `database` (info, schema, restore), `jobs` (backups started over
//! the API and their runs), `backups` (list, download), `page` (the admin page and the
//! OpenAPI document generated from the handlers).

mod auth;
mod backups;
mod database;
mod jobs;
mod page;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::daemon::Daemon;
use crate::error::{Classify, ErrorKind};

pub const PREFIX: &str = "/api/v1/admin/database";

#[derive(Clone)]
pub struct AdminState {
    daemon: Arc<Daemon>,
    limiter: Arc<auth::Limiter>,
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    let state = AdminState {
        daemon,
        limiter: Arc::new(auth::Limiter::default()),
    };
    let api = Router::new()
        .route("/info", get(database::info))
        .route("/schema/status", get(database::schema_status))
        .route("/schema/sync", post(database::schema_sync))
        .route("/backup", post(jobs::start_backup))
        .route("/jobs/{id}", get(jobs::job))
        .route("/backups", get(backups::backups))
        .route("/backups/{target}/{file}", get(backups::download))
        .route("/restore", post(database::start_restore))
        .route("/pins", post(backups::pin))
        .route("/pins/{target}/{id}", axum::routing::delete(backups::unpin))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state.clone());
    let pages = Router::new()
        .route(
            "/api/v1/openapi.json",
            get(page::openapi).fallback(page::other_method),
        )
        .route("/admin", get(page::page).fallback(page::other_method))
        .route(
            "/admin/app.js",
            get(page::script).fallback(page::other_method),
        )
        .route(
            "/admin/app.css",
            get(page::style).fallback(page::other_method),
        )
        .with_state(state);
    Router::new().nest(PREFIX, api).merge(pages)
}

// ---------------------------------------------------------------- errors

/// Every error of the API: `{"error": "...", "hint": "..."}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

pub struct ApiError(StatusCode, ErrorBody);

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> Self {
        ApiError(
            status,
            ErrorBody {
                error: error.into(),
                hint: Some(hint.into()),
            },
        )
    }
    fn unknown_target(name: &str, d: &Daemon) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no target named {name:?}"),
            format!(
                "configured targets: {}",
                d.config().target_names().join(", ")
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad request body: {}", r.body_text()),
            "send a JSON object with Content-Type: application/json",
        )
    }
}

/// The one place an error's kind becomes an HTTP status.
impl<E: Classify + 'static> From<E> for ApiError {
    fn from(e: E) -> Self {
        let status = match e.kind() {
            ErrorKind::Usage => StatusCode::BAD_REQUEST,
            ErrorKind::Refused | ErrorKind::Drift | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            // The daemon's database or storage failed it: a bad gateway, not a bad request.
            _ => StatusCode::BAD_GATEWAY,
        };
        let hint = e.hint().unwrap_or_else(|| match e.kind() {
            ErrorKind::Usage | ErrorKind::Refused => "fix what the error names, then retry".into(),
            _ => "check the database, the storage and the daemon's log".into(),
        });
        ApiError::new(status, crate::error::chain(&e), hint)
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint",
        "the API is described at /api/v1/openapi.json",
    )
}

// ---------------------------------------------------------------- the document

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dbkeep admin API", description = "Databases, schema and backups of a dbkeep daemon. Every call needs `Authorization: Bearer <token>` (daemon.admin_token_file)."),
    paths(database::info, database::schema_status, database::schema_sync, jobs::start_backup,
        jobs::job, backups::backups, backups::download, database::start_restore, backups::pin,
        backups::unpin),
    modifiers(&BearerAuth),
    tags((name = "admin"))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_endpoint_with_bearer_auth() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/info",
            "/schema/status",
            "/schema/sync",
            "/backup",
            "/jobs/{id}",
            "/backups",
            "/backups/{target}/{file}",
            "/restore",
            "/pins",
            "/pins/{target}/{id}",
        ] {
            assert!(paths.contains_key(&format!("{PREFIX}{p}")), "{p}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
