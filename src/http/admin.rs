//! The admin API under `/api/v1/admin/database`: bearer-token access to database info,
//! schema status and sync, backups (start, list, download) and restores, described by an
//! OpenAPI document generated from these handlers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::app::Daemon;
use crate::catalog::{self, Backup};
use crate::config::{Secret, SourceConfig, Target};
use crate::metrics;
use crate::restore::{self, Selector};
use crate::schema::{self, SchemaError, StatusReport};

pub const PREFIX: &str = "/api/v1/admin/database";
/// How long a signed download link from `GET /backups` stays valid.
const LINK_TTL_SECS: i64 = 3600;
/// Finished jobs kept for `GET /jobs/{id}`.
const JOBS_KEPT: usize = 200;

#[derive(Clone)]
pub struct AdminState {
    daemon: Arc<Daemon>,
    jobs: Arc<Mutex<BTreeMap<String, JobInfo>>>,
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    let state = AdminState {
        daemon,
        jobs: Arc::new(Mutex::new(BTreeMap::new())),
    };
    let api = Router::new()
        .route("/info", get(info))
        .route("/schema/status", get(schema_status))
        .route("/schema/sync", post(schema_sync))
        .route("/backup", post(start_backup))
        .route("/jobs/{id}", get(job))
        .route("/backups", get(backups))
        .route("/backups/{target}/{file}", get(download))
        .route("/restore", post(start_restore))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    Router::new()
        .nest(PREFIX, api)
        .route("/api/v1/openapi.json", get(openapi))
        .route("/admin", get(page))
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

impl From<SchemaError> for ApiError {
    fn from(e: SchemaError) -> Self {
        let (status, hint) = match &e {
            SchemaError::NotConfigured(_) => (
                StatusCode::CONFLICT,
                "declare the schema in the config ([targets.NAME.schema])",
            ),
            SchemaError::Refused(_) | SchemaError::Modified { .. } => {
                (StatusCode::CONFLICT, "fix what the error names, then retry")
            }
            _ => (
                StatusCode::BAD_GATEWAY,
                "check the database and the daemon's log",
            ),
        };
        ApiError::new(status, e.to_string(), hint)
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint",
        "the API is described at /api/v1/openapi.json",
    )
}

// ---------------------------------------------------------------- access

/// A digest comparison whose time does not depend on where the inputs differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Who a token is in logs: a short hash, never the token.
fn token_id(token: &Secret) -> String {
    format!(
        "token:{}",
        &hex::encode(Sha256::digest(token.expose().as_bytes()))[..8]
    )
}

fn link_signature(token: &Secret, path: &str, expires: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("GET\n{path}\n{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A download link that works without the header for `LINK_TTL_SECS`.
fn signed_link(token: &Secret, target: &str, file: &str, now: DateTime<Utc>) -> String {
    let path = format!("{PREFIX}/backups/{target}/{file}");
    let expires = now.timestamp() + LINK_TTL_SECS;
    let sig = link_signature(token, &path, expires);
    format!("{path}?expires={expires}&sig={sig}")
}

#[derive(Deserialize)]
struct LinkQuery {
    expires: Option<String>,
    sig: Option<String>,
}

/// Whether `uri` (as the client sent it, prefix included) is a valid, unexpired signed link.
fn signed_ok(token: &Secret, method: &axum::http::Method, uri: &axum::http::Uri) -> bool {
    if method != axum::http::Method::GET || !uri.path().starts_with(&format!("{PREFIX}/backups/")) {
        return false;
    }
    let Ok(Query(q)) = Query::<LinkQuery>::try_from_uri(uri) else {
        return false;
    };
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return false;
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return false;
    };
    expires >= Utc::now().timestamp()
        && same_secret(
            sig.as_bytes(),
            link_signature(token, uri.path(), expires).as_bytes(),
        )
}

/// Token check, then one log line per call (who, what, result). The API is off (404)
/// without a configured token; a wrong or missing token is 401 with no detail, logged and
/// counted.
async fn guard(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let t0 = Instant::now();
    // Inside `nest` the URI lost its prefix; the original one is what the client signed.
    let uri = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| req.uri().clone());
    let method = req.method().to_string();
    let path = uri.path().to_string();
    let cfg = st.daemon.config();
    let Some(token) = cfg.daemon.admin_token.as_ref() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "the admin API is off",
            "set daemon.admin_token_file to turn it on",
        )
        .into_response();
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let who = match bearer {
        Some(b) if same_secret(b.as_bytes(), token.expose().as_bytes()) => token_id(token),
        _ if signed_ok(token, req.method(), &uri) => format!("signed link from {peer}"),
        _ => {
            metrics::admin_denied(&peer.to_string(), &method, &path);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(ErrorBody {
                    error: "unauthorized".into(),
                    hint: None,
                }),
            )
                .into_response();
        }
    };
    let response = next.run(req).await;
    metrics::admin_call(
        &who,
        &method,
        &path,
        response.status().as_u16(),
        t0.elapsed(),
    );
    response
}

// ---------------------------------------------------------------- info

#[derive(Debug, Serialize, ToSchema)]
pub struct TableEntry {
    pub schema: Option<String>,
    pub name: String,
    /// The server's row estimate (PostgreSQL); null when unknown.
    pub rows: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetInfo {
    pub target: String,
    /// `postgres` or `sqlite`.
    pub kind: String,
    /// host:port/database, or the SQLite file; never credentials.
    pub location: String,
    pub connected: bool,
    pub error: Option<String>,
    pub server_version: Option<String>,
    pub size_bytes: Option<i64>,
    pub table_count: usize,
    pub tables: Vec<TableEntry>,
}

async fn describe(target: &Target) -> TargetInfo {
    let mut out = TargetInfo {
        target: target.name.clone(),
        kind: target.source.kind().to_string(),
        location: String::new(),
        connected: false,
        error: None,
        server_version: None,
        size_bytes: None,
        table_count: 0,
        tables: Vec::new(),
    };
    let read = match &target.source {
        SourceConfig::Postgres(pg) => {
            out.location = url::Url::parse(&pg.url)
                .map(|u| {
                    format!(
                        "{}:{}{}",
                        u.host_str().unwrap_or("localhost"),
                        u.port().unwrap_or(5432),
                        u.path()
                    )
                })
                .unwrap_or_default();
            postgres_info(pg, &mut out).await
        }
        SourceConfig::Sqlite(sq) => {
            out.location = sq.path.display().to_string();
            sqlite_info(&sq.path, &mut out).await
        }
    };
    match read {
        Ok(()) => out.connected = true,
        Err(e) => out.error = Some(e),
    }
    out.table_count = out.tables.len();
    out
}

async fn postgres_info(
    pg: &crate::config::PostgresConfig,
    out: &mut TargetInfo,
) -> Result<(), String> {
    let (url, password) =
        restore::split_password(&pg.url, pg.password.as_ref()).map_err(|e| e.to_string())?;
    let mut c = restore::connect(&url, password.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let (version, size): (String, i64) = sqlx::query_as(
        "SELECT current_setting('server_version'), pg_database_size(current_database())",
    )
    .fetch_one(&mut c)
    .await
    .map_err(|e| e.to_string())?;
    let rows: Vec<(String, String, f32)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, c.reltuples FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') \
         AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' ORDER BY 1, 2",
    )
    .fetch_all(&mut c)
    .await
    .map_err(|e| e.to_string())?;
    let _ = sqlx::Connection::close(c).await;
    out.server_version = Some(version);
    out.size_bytes = Some(size);
    out.tables = rows
        .into_iter()
        .map(|(schema, name, est)| TableEntry {
            schema: Some(schema),
            name,
            rows: (est >= 0.0).then_some(est as i64),
        })
        .collect();
    Ok(())
}

async fn sqlite_info(path: &std::path::Path, out: &mut TargetInfo) -> Result<(), String> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    use sqlx::Connection;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    let mut c = SqliteConnection::connect_with(&opts)
        .await
        .map_err(|e| e.to_string())?;
    let (version,): (String,) = sqlx::query_as("SELECT sqlite_version()")
        .fetch_one(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut c)
    .await
    .map_err(|e| e.to_string())?;
    let _ = c.close().await;
    out.server_version = Some(format!("SQLite {version}"));
    out.size_bytes = Some(meta.len() as i64);
    out.tables = names
        .into_iter()
        .map(|(name,)| TableEntry {
            schema: None,
            name,
            rows: None,
        })
        .collect();
    Ok(())
}

/// Each target's database: kind, server version, connection, size and tables.
#[utoipa::path(get, path = "/api/v1/admin/database/info", tag = "admin",
    responses((status = 200, body = [TargetInfo]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn info(State(st): State<AdminState>) -> Json<Vec<TargetInfo>> {
    let cfg = st.daemon.config();
    let mut out = Vec::new();
    for t in &cfg.targets {
        out.push(describe(t).await);
    }
    Json(out)
}

// ---------------------------------------------------------------- schema

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
async fn schema_status(State(st): State<AdminState>) -> Json<Vec<SchemaStatusEntry>> {
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
            match schema::status(t).await {
                Ok(r) => {
                    e.in_sync = Some(r.in_sync);
                    e.report = Some(r);
                }
                Err(err) => e.error = Some(err.to_string()),
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
async fn schema_sync(
    State(st): State<AdminState>,
    body: Result<Json<TargetBody>, JsonRejection>,
) -> Result<Json<SyncResult>, ApiError> {
    let Json(body) = body?;
    let cfg = st.daemon.config();
    let target = cfg
        .target(&body.target)
        .ok_or_else(|| ApiError::unknown_target(&body.target, &st.daemon))?;
    let plan = schema::plan_sync(target).await?;
    let statements: Vec<String> = plan.schemas.iter().flat_map(|(_, s)| s.clone()).collect();
    let created_tables = statements
        .iter()
        .filter(|s| s.starts_with("CREATE TABLE"))
        .count();
    let backup_id = if plan.is_empty() {
        None
    } else {
        let storages = st.daemon.storages();
        let id = schema::apply_sync(
            target,
            &plan,
            &storages,
            st.daemon.state(),
            &st.daemon.jobs_cancel(),
        )
        .await?;
        Some(id.to_string())
    };
    Ok(Json(SyncResult {
        target: target.name.clone(),
        backup_id,
        created_tables,
        statements,
    }))
}

// ---------------------------------------------------------------- jobs

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobStep {
    pub target: String,
    pub state: JobState,
    pub backup_id: Option<String>,
    pub bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobInfo {
    pub id: String,
    /// `backup` or `restore`.
    pub kind: String,
    pub state: JobState,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    /// Steps done out of `total`.
    pub done: usize,
    pub total: usize,
    pub steps: Vec<JobStep>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: String,
    /// Where to follow it.
    pub status_url: String,
}

impl AdminState {
    fn new_job(&self, kind: &str, targets: &[String]) -> String {
        let id = format!("{:016x}", rand::random::<u64>());
        let job = JobInfo {
            id: id.clone(),
            kind: kind.to_string(),
            state: JobState::Queued,
            started: Utc::now(),
            finished: None,
            done: 0,
            total: targets.len(),
            steps: targets
                .iter()
                .map(|t| JobStep {
                    target: t.clone(),
                    state: JobState::Queued,
                    backup_id: None,
                    bytes: None,
                    error: None,
                })
                .collect(),
        };
        if let Ok(mut jobs) = self.jobs.lock() {
            while jobs.len() >= JOBS_KEPT {
                let oldest = jobs
                    .values()
                    .filter(|j| j.finished.is_some())
                    .min_by_key(|j| j.started)
                    .map(|j| j.id.clone());
                match oldest {
                    Some(o) => jobs.remove(&o),
                    None => break,
                };
            }
            jobs.insert(id.clone(), job);
        }
        id
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobInfo)) {
        if let Ok(mut jobs) = self.jobs.lock() {
            if let Some(j) = jobs.get_mut(id) {
                f(j);
                j.done = j
                    .steps
                    .iter()
                    .filter(|s| matches!(s.state, JobState::Succeeded | JobState::Failed))
                    .count();
                if j.done == j.total && j.finished.is_none() {
                    j.finished = Some(Utc::now());
                    j.state = if j.steps.iter().all(|s| s.state == JobState::Succeeded) {
                        JobState::Succeeded
                    } else {
                        JobState::Failed
                    };
                }
            }
        }
    }

    fn step(&self, id: &str, i: usize, f: impl FnOnce(&mut JobStep)) {
        self.update(id, |j| {
            j.state = JobState::Running;
            if let Some(s) = j.steps.get_mut(i) {
                f(s);
            }
        });
    }
}

fn accepted(id: String) -> Response {
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
async fn start_backup(
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
    let id = st.new_job("backup", &targets);
    let (s, job_id) = (st.clone(), id.clone());
    st.daemon.spawn_job(async move {
        for (i, name) in targets.iter().enumerate() {
            s.step(&job_id, i, |step| step.state = JobState::Running);
            let r = s.daemon.backup_target(name).await;
            s.step(&job_id, i, |step| match r {
                Some(Ok(o)) => {
                    step.state = JobState::Succeeded;
                    step.backup_id = Some(o.id.to_string());
                    step.bytes = Some(o.stored_bytes());
                }
                Some(Err(e)) => {
                    step.state = JobState::Failed;
                    step.error = Some(e.to_string());
                }
                None => {
                    step.state = JobState::Failed;
                    step.error = Some("the daemon is stopping".into());
                }
            });
        }
    });
    Ok(accepted(id))
}

/// A job's progress and result.
#[utoipa::path(get, path = "/api/v1/admin/database/jobs/{id}", tag = "admin",
    params(("id" = String, Path, description = "the job id from POST /backup or /restore")),
    responses((status = 200, body = JobInfo), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn job(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    st.jobs
        .lock()
        .ok()
        .and_then(|j| j.get(&id).cloned())
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no job {id:?}"),
                "jobs are kept in memory until the daemon restarts",
            )
        })
}

// ---------------------------------------------------------------- backups

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupEntry {
    #[schema(value_type = String)]
    pub id: String,
    pub target: String,
    pub schema: Option<String>,
    /// `database`, `schema` or `globals`.
    pub contents: String,
    pub storage: String,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub created: DateTime<Utc>,
    pub reason: Option<String>,
    pub verified_at: Option<DateTime<Utc>>,
    pub schema_fingerprint: Option<String>,
    /// Streams the archive; signed, so it works without the header for an hour.
    pub download_url: String,
    pub manifest_url: String,
}

fn entry(b: &Backup, token: &Secret, now: DateTime<Utc>) -> BackupEntry {
    let manifest = catalog::manifest_name(&b.file);
    BackupEntry {
        id: b.id.to_string(),
        target: b.target.clone(),
        schema: b.schema.clone(),
        contents: serde_json::to_value(b.contents)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        storage: b.storage.clone(),
        file: b.file.clone(),
        bytes: b.bytes,
        sha256: b.sha256.clone(),
        created: b.created,
        reason: b.reason.clone(),
        verified_at: b.manifest.verified_at,
        schema_fingerprint: b.manifest.schema_fingerprint.clone(),
        download_url: signed_link(token, &b.target, &b.file, now),
        manifest_url: signed_link(token, &b.target, &manifest, now),
    }
}

/// Complete backups of every target and storage, newest first, with download links.
#[utoipa::path(get, path = "/api/v1/admin/database/backups", tag = "admin",
    responses((status = 200, body = [BackupEntry]), (status = 401, body = ErrorBody),
        (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
async fn backups(State(st): State<AdminState>) -> Result<Json<Vec<BackupEntry>>, ApiError> {
    let cfg = st.daemon.config();
    let Some(token) = cfg.daemon.admin_token.as_ref() else {
        return Err(not_found().await);
    };
    let now = Utc::now();
    let storages = st.daemon.storages();
    let mut out = Vec::new();
    for t in &cfg.targets {
        for s in storages.iter() {
            let listing = catalog::list(s.as_ref(), &t.name, now).await.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot list {} on {}: {e}", t.name, s.name()),
                    "check the storage",
                )
            })?;
            out.extend(listing.complete.iter().map(|b| entry(b, token, now)));
        }
    }
    out.sort_by(|a, b| b.id.cmp(&a.id).then_with(|| a.file.cmp(&b.file)));
    Ok(Json(out))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[allow(dead_code)]
struct DownloadParams {
    /// Expiry of a signed link (unix seconds).
    expires: Option<i64>,
    /// Signature of a signed link.
    sig: Option<String>,
}

fn content_type(file: &str) -> &'static str {
    if file.ends_with(".json") {
        "application/json"
    } else if file.ends_with(".zst") {
        "application/zstd"
    } else if file.ends_with(".gz") {
        "application/gzip"
    } else if file.ends_with(".sql") {
        "application/sql"
    } else if file.ends_with(".sqlite") {
        "application/vnd.sqlite3"
    } else {
        "application/octet-stream"
    }
}

/// Stream an archive or its manifest. Only names in the catalog are served: anything else
/// (traversal, encoded slashes, absolute paths, links planted in the folder) is 404.
#[utoipa::path(get, path = "/api/v1/admin/database/backups/{target}/{file}", tag = "admin",
    params(("target" = String, Path), ("file" = String, Path), DownloadParams),
    responses((status = 200, description = "the file's bytes, typed by its name", content(
            (Vec<u8> = "application/zstd"), (Vec<u8> = "application/gzip"),
            (Vec<u8> = "application/octet-stream"), (Vec<u8> = "application/sql"),
            (Vec<u8> = "application/vnd.sqlite3"), (Object = "application/json"))),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn download(
    State(st): State<AdminState>,
    Path((target, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no such backup file",
            "GET /api/v1/admin/database/backups lists the files and their links",
        )
    };
    let cfg = st.daemon.config();
    if cfg.target(&target).is_none()
        || file.is_empty()
        || file.starts_with('.')
        || file.contains(['/', '\\', '\0'])
        || catalog::id_of_file(&target, &file).is_none()
    {
        return Err(missing());
    }
    let storages = st.daemon.storages();
    let now = Utc::now();
    for s in storages.iter() {
        let Ok(listing) = catalog::list(s.as_ref(), &target, now).await else {
            continue;
        };
        for b in &listing.complete {
            if b.file == file {
                let reader = s.open(&target, &file).await.map_err(|_| missing())?;
                return Ok(stream_file(reader, &file, b.bytes));
            }
            if catalog::manifest_name(&b.file) == file {
                let bytes = s.get_bytes(&target, &file).await.map_err(|_| missing())?;
                return Ok(file_response(&file, bytes.len() as u64, Body::from(bytes)));
            }
        }
    }
    Err(missing())
}

fn file_response(file: &str, len: u64, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type(file).to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// Read a blocking reader on a blocking thread into a bounded channel: constant memory
/// whatever the archive's size.
fn stream_file(mut reader: Box<dyn std::io::Read + Send>, file: &str, len: u64) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || loop {
        let mut buf = vec![0u8; 256 * 1024];
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    file_response(file, len, Body::from_stream(stream))
}

// ---------------------------------------------------------------- restore

#[derive(Debug, Deserialize, ToSchema)]
pub struct RestoreBody {
    pub target: String,
    /// `latest` or a backup id (YYYYMMDD_HHMMSS).
    pub id: String,
    /// Restore only this schema.
    pub schema: Option<String>,
    /// Must equal `target`: the typed confirmation.
    pub confirm: Option<String>,
}

/// Restore a backup over the target's own database, as `dbkeep restore TARGET ID --yes`
/// does: checksum first, a safety backup, one transaction. Returns a job id.
#[utoipa::path(post, path = "/api/v1/admin/database/restore", tag = "admin",
    request_body = RestoreBody,
    responses((status = 202, body = JobAccepted), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn start_restore(
    State(st): State<AdminState>,
    body: Result<Json<RestoreBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    if body.confirm.as_deref() != Some(body.target.as_str()) {
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
    let storages = st.daemon.storages();
    let chosen = restore::choose(&target, &storages, &selector, false)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                e.to_string(),
                "GET /api/v1/admin/database/backups lists what can be restored",
            )
        })?;
    let dest = restore::Destination::parse(&target, None)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string(), "check the target"))?;
    let id = st.new_job("restore", std::slice::from_ref(&target.name));
    let (s, job_id) = (st.clone(), id.clone());
    st.daemon.spawn_job(async move {
        s.step(&job_id, 0, |step| {
            step.state = JobState::Running;
            step.backup_id = Some(chosen.backup.id.to_string());
        });
        let cancel = s.daemon.jobs_cancel();
        let result = async {
            restore::verify_checksum(storages[chosen.storage].as_ref(), &chosen.backup).await?;
            let opts = restore::Options {
                yes: true,
                safety_backup: true,
            };
            restore::execute(
                &target,
                &storages,
                s.daemon.state(),
                &chosen,
                &dest,
                &opts,
                &cancel,
            )
            .await
        }
        .await;
        match &result {
            Ok(()) => tracing::info!(target = %target.name, backup_id = %chosen.backup.id, "restored over the admin API"),
            Err(e) => tracing::error!(target = %target.name, error = %e, "restore over the admin API failed"),
        }
        s.step(&job_id, 0, |step| match result {
            Ok(()) => {
                step.state = JobState::Succeeded;
                step.bytes = Some(chosen.backup.bytes);
            }
            Err(e) => {
                step.state = JobState::Failed;
                step.error = Some(e.to_string());
            }
        });
    });
    Ok(accepted(id))
}

// ---------------------------------------------------------------- document and page

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
    paths(info, schema_status, schema_sync, start_backup, job, backups, download, start_restore),
    modifiers(&BearerAuth),
    tags((name = "admin"))
)]
pub struct ApiDoc;

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}

const PAGE: &str = include_str!("admin.html");

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_only() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn signed_links_are_bound_to_path_and_expiry() {
        let token = Secret::new("0123456789abcdef0123");
        let a = link_signature(&token, "/p/a", 100);
        assert_eq!(a, link_signature(&token, "/p/a", 100));
        assert_ne!(a, link_signature(&token, "/p/b", 100));
        assert_ne!(a, link_signature(&token, "/p/a", 101));
        assert_ne!(
            a,
            link_signature(&Secret::new("another-token-0000"), "/p/a", 100)
        );
    }

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
        ] {
            assert!(paths.contains_key(&format!("{PREFIX}{p}")), "{p}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
