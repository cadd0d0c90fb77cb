//! The HTTP port: `/metrics` (Prometheus text), `/health` (503 when any target is stale or
//! failing, with the reasons), `/ready` (config loaded, port bound, not stopping), and the
//! admin API and page (`admin.rs`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::daemon::Daemon;
use crate::metrics;

pub mod admin;

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(daemon.clone())
        .merge(admin::router(daemon))
}

async fn metrics_page(State(d): State<Arc<Daemon>>) -> Response {
    d.check_databases().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
        .into_response()
}

async fn health(State(d): State<Arc<Daemon>>) -> Response {
    let targets = d.health().await;
    let healthy = targets.iter().all(|t| t.healthy);
    let unhealthy: Vec<&str> = targets
        .iter()
        .filter(|t| !t.healthy)
        .map(|t| t.target.as_str())
        .collect();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "unhealthy_targets": unhealthy,
        "targets": targets,
        "running": d.runs.running(),
    });
    (status, Json(body)).into_response()
}

async fn ready(State(d): State<Arc<Daemon>>) -> Response {
    if d.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or stopping\n",
        )
            .into_response()
    }
}
