//! Backups over the API: the list with signed download links, and downloads that stream
//! only files the catalog knows.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::signed_link;
use super::{not_found, AdminState, ApiError, ErrorBody};
use crate::catalog::{self, Backup};
use crate::config::Secret;
use crate::error::Classify;
use crate::ops::list::inventory;

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupEntry {
    #[schema(value_type = String)]
    pub id: String,
    pub target: String,
    pub schema: Option<String>,
    /// The database of a server target's archive (`databases`).
    pub database: Option<String>,
    /// `database`, `schema` or `globals`.
    pub contents: String,
    pub storage: String,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub created: DateTime<Utc>,
    pub reason: Option<String>,
    pub verified_at: Option<DateTime<Utc>>,
    /// Why the backup is pinned (retention keeps it), when it is.
    pub pinned: Option<String>,
    /// Why the backup is suspect (rows or size dropped sharply against the last good
    /// one), when it is and has not been accepted.
    pub suspect: Option<String>,
    /// Exact rows of the archive's tables (from its content fingerprint), when known.
    pub rows: Option<u64>,
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
        database: b.database.clone(),
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
        verified_at: b.verified_at,
        pinned: b.pinned.clone(),
        suspect: crate::ops::suspect::open_reason(b).cloned(),
        rows: b.manifest.content.as_ref().map(|c| c.rows()),
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
pub(super) async fn backups(
    State(st): State<AdminState>,
) -> Result<Json<Vec<BackupEntry>>, ApiError> {
    let cfg = st.daemon.config();
    let Some(token) = cfg.daemon.admin_token.as_ref() else {
        return Err(not_found().await);
    };
    let now = Utc::now();
    // A storage that does not answer hides nothing the others hold (it is logged, and
    // /health reports it).
    let targets: Vec<&crate::config::Target> = cfg.targets.iter().collect();
    let inv = inventory(&st.daemon.context(), &targets, None).await;
    let mut out: Vec<BackupEntry> = inv.backups.iter().map(|b| entry(b, token, now)).collect();
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
        (status = 401, body = ErrorBody),
        (status = 403, description = "the stored file is a link or not a regular file", body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn download(
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
        let verify = cfg.target(&target).and_then(|t| t.crypto.verify.as_ref());
        let Ok(listing) = catalog::list(s, &target, verify, now).await else {
            continue;
        };
        for b in &listing.complete {
            if b.file == file {
                let reader = s.open(&target, &file).await.map_err(|e| {
                    if e.kind() == crate::error::ErrorKind::Refused {
                        // A planted link or device: named in the log, never served.
                        tracing::warn!(target = %target, file = %file, error = %e, "download refused");
                        ApiError::new(
                            StatusCode::FORBIDDEN,
                            "this stored file is not a plain file dbkeep wrote, so it is not served",
                            "see the daemon's log; remove the file or find out who put it there",
                        )
                    } else {
                        missing()
                    }
                })?;
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

#[derive(Debug, Deserialize, ToSchema)]
pub struct PinBody {
    pub target: String,
    /// The backup's id (YYYYMMDD_HHMMSS).
    pub id: String,
    /// Why it is kept (one line); `pinned` when missing.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PinDone {
    pub target: String,
    pub id: String,
    pub pinned: bool,
    /// The storages the pin was written to (or removed from).
    pub storages: Vec<String>,
}

fn parse_id(id: &str) -> Result<catalog::BackupId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a backup id"),
            "use an id from GET /backups (YYYYMMDD_HHMMSS)",
        )
    })
}

/// Pin a backup, as `dbkeep pin TARGET ID --reason TEXT`: retention keeps it until it is
/// unpinned. Pinning again replaces the reason.
#[utoipa::path(post, path = "/api/v1/admin/database/pins", tag = "admin",
    request_body = PinBody,
    responses((status = 200, body = PinDone), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn pin(
    State(st): State<AdminState>,
    body: Result<Json<PinBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PinDone>, ApiError> {
    let Json(body) = body?;
    let cfg = st.daemon.config();
    let target = cfg
        .target(&body.target)
        .ok_or_else(|| ApiError::unknown_target(&body.target, &st.daemon))?;
    let id = parse_id(&body.id)?;
    let on = crate::ops::pin::pin(&st.daemon.context(), target, id, body.reason.as_deref()).await?;
    Ok(Json(PinDone {
        target: body.target,
        id: id.to_string(),
        pinned: true,
        storages: on.iter().map(|s| s.to_string()).collect(),
    }))
}

/// Unpin a backup, as `dbkeep unpin TARGET ID`: retention decides about it again.
#[utoipa::path(delete, path = "/api/v1/admin/database/pins/{target}/{id}", tag = "admin",
    params(("target" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = PinDone), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn unpin(
    State(st): State<AdminState>,
    Path((target_name, id)): Path<(String, String)>,
) -> Result<Json<PinDone>, ApiError> {
    let cfg = st.daemon.config();
    let target = cfg
        .target(&target_name)
        .ok_or_else(|| ApiError::unknown_target(&target_name, &st.daemon))?;
    let id = parse_id(&id)?;
    let on = crate::ops::pin::unpin(&st.daemon.context(), target, id).await?;
    Ok(Json(PinDone {
        target: target_name,
        id: id.to_string(),
        pinned: false,
        storages: on.iter().map(|s| s.to_string()).collect(),
    }))
}
