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
    // Warnings (a drill the role may not do) are shown, never a reason for 503.
    let warned: Vec<&str> = targets
        .iter()
        .filter(|t| !t.warnings.is_empty())
        .map(|t| t.target.as_str())
        .collect();
    // Amber (a suspect newest backup, a drill slower than rto) asks for a look, and is no
    // outage: 200, with `"status": "amber"` and the targets named for alerts.
    let amber: Vec<&str> = targets
        .iter()
        .filter(|t| t.level == "amber")
        .map(|t| t.target.as_str())
        .collect();
    let word = match (healthy, amber.is_empty()) {
        (false, _) => "unhealthy",
        (true, false) => "amber",
        (true, true) => "ok",
    };
    let body = json!({
        "status": word,
        "unhealthy_targets": unhealthy,
        "amber_targets": amber,
        "targets_with_warnings": warned,
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

/// How long a client may take to send a request's headers (a connection that trickles
/// them, or sends nothing, is closed then instead of holding a task and a socket).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long running requests get to finish once the server is told to stop.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve `router` on `listener` (HTTP/1.1, each request knowing its peer address) until
/// `stop` is cancelled; then running requests get [`DRAIN`] to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let stop = stop.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
        // Reap finished connections so the set does not grow with the daemon's age.
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}
