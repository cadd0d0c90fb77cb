//! `run` and `demo`: the composition root. Binds the port, builds the daemon and its
//! router, and turns signals into events: SIGHUP reloads, SIGTERM/SIGINT stop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{failed, usage, Failure};
use crate::config::{self, Config, ConfigError};
use crate::daemon::notify::{sd_notify, spawn_watchdog};
use crate::daemon::Daemon;
use crate::engine::sqlite::demo;
use crate::scheduler::Clock;

/// Run the daemon until SIGTERM/SIGINT. Returns after an orderly shutdown.
pub(super) async fn daemon(cfg: Config) -> Result<(), Failure> {
    let listen = cfg.daemon.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| {
        failed(format!(
            "cannot listen on {listen} (daemon.listen): {e}; is another dbkeep running? or pick another port"
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| failed(format!("the bound port has no address: {e}")))?;
    let daemon = Daemon::new(cfg, Clock::System).await?;

    let http_cancel = CancellationToken::new();
    let router = crate::http::router(daemon.clone());
    let http = {
        let c = http_cancel.clone();
        tokio::spawn(crate::http::serve(listener, router, c))
    };
    let mut signals = signal_hook_tokio::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| failed(format!("cannot install signal handlers: {e}")))?;

    daemon.start();
    println!("dbkeep listening on http://{addr}");
    tracing::info!(listen = %addr, targets = daemon.config().targets.len(), "daemon started");
    sd_notify("READY=1\nSTATUS=backing up on schedule");
    let watchdog = spawn_watchdog(CancellationToken::new());

    while let Some(sig) = signals.next().await {
        if sig == signal_hook::consts::SIGHUP {
            tracing::info!("SIGHUP: reloading config");
            sd_notify("RELOADING=1");
            // A rejected config is logged and counted; the old one keeps running.
            let _ = daemon.reload().await;
            sd_notify("READY=1");
            continue;
        }
        tracing::info!(
            signal = sig,
            "stopping: no new runs; waiting for running ones"
        );
        break;
    }
    sd_notify("STOPPING=1");
    daemon.shutdown().await;
    http_cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The demo's configuration, through the same loader and validation as a real one.
fn demo_config(dir: &Path, every: &str) -> Result<Config, ConfigError> {
    let toml = format!(
        r#"
[daemon]
listen = "127.0.0.1:9187"

[storage.local]
path = {backups:?}

[targets.shop]
kind = "sqlite"
path = {db:?}
every = {every:?}
compression = "zstd"
keep_days = 0
min_keep = 3
"#,
        backups = dir.join("backups").display().to_string(),
        db = dir.join(demo::DB_FILE).display().to_string(),
    );
    config::load_from(Some(&toml), Default::default())
}

/// The daemon on a sample SQLite shop database that keeps taking orders.
pub(super) async fn demo(dir: PathBuf, every: &str) -> Result<(), Failure> {
    let cfg = demo_config(&dir, every).map_err(|e| usage(e.to_string()))?;
    let pool = demo::open_database(&dir).await.map_err(|e| {
        failed(format!(
            "creating the demo database in {}: {e}",
            dir.display()
        ))
    })?;
    let stop_writer = CancellationToken::new();
    let writer = tokio::spawn(demo::keep_writing(
        pool.clone(),
        Duration::from_millis(250),
        stop_writer.clone(),
    ));
    println!(
        "dbkeep demo: {} is taking orders; the daemon backs it up every {every} into {}, keeping the newest 3.\n\
         Try: curl -s localhost:9187/metrics | grep ^dbkeep_   and   curl -s localhost:9187/health   (Ctrl-C stops)",
        dir.join(demo::DB_FILE).display(),
        dir.join("backups").join("shop").display()
    );
    let result = daemon(cfg).await;
    stop_writer.cancel();
    let _ = writer.await;
    pool.close().await;
    result
}
