//! The daemon's wiring and lifecycle: HTTP port, schedules, signals (reload on SIGHUP,
//! ordered shutdown on SIGTERM/SIGINT) and systemd notifications.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog;
use crate::config::{self, Config, Target};
use crate::health::{self, DbStatus, TargetHealth};
use crate::job;
use crate::metrics;
use crate::restore;
use crate::scheduler::{self, Clock, Runner};
use crate::source;
use crate::state::StateFile;
use crate::storage::{self, Storage};

/// How long a database check result is reused before asking again.
const DB_CHECK_TTL: Duration = Duration::from_secs(5);
/// How long `/health` reuses a target's newest-backup lookup (a storage listing, an S3
/// LIST) before listing again; every run refreshes it anyway.
const CATALOG_TTL: Duration = Duration::from_secs(30);

/// The newest complete backup (id, time) and the number of backups of a target.
type CatalogSummary = (Option<(String, DateTime<Utc>)>, usize);
/// After the grace, cancelled jobs get this long to stop their children and clean up.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

pub struct Daemon {
    config: RwLock<Arc<Config>>,
    storages: RwLock<Arc<Vec<Box<dyn Storage>>>>,
    permits: RwLock<Arc<Semaphore>>,
    state: StateFile,
    clock: Clock,
    next_runs: Mutex<HashMap<String, DateTime<Utc>>>,
    db: Mutex<HashMap<String, (Instant, DbStatus)>>,
    catalog: Mutex<HashMap<String, (Instant, CatalogSummary)>>,
    jobs: TaskTracker,
    /// Cancelled when the shutdown grace is over: running jobs stop.
    jobs_cancel: CancellationToken,
    ready: AtomicBool,
}

impl Daemon {
    pub async fn new(cfg: Config, clock: Clock) -> Arc<Self> {
        let storages = storage::build(&cfg).await;
        let permits = Semaphore::new(cfg.daemon.max_concurrent);
        Arc::new(Daemon {
            state: StateFile::beside(&cfg.daemon.work_dir),
            storages: RwLock::new(Arc::new(storages)),
            permits: RwLock::new(Arc::new(permits)),
            config: RwLock::new(Arc::new(cfg)),
            clock,
            next_runs: Mutex::new(HashMap::new()),
            db: Mutex::new(HashMap::new()),
            catalog: Mutex::new(HashMap::new()),
            jobs: TaskTracker::new(),
            jobs_cancel: CancellationToken::new(),
            ready: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(crate) fn storages(&self) -> Arc<Vec<Box<dyn Storage>>> {
        self.storages
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Start the backup (and cleanup) loop of every target; they stop with `cancel`.
    fn start_schedules(self: &Arc<Self>, cancel: &CancellationToken) {
        let cfg = self.config();
        let now = self.clock.now();
        let storage_names: Vec<&str> = self.storages().iter().map(|s| s.name()).collect();
        for t in &cfg.targets {
            metrics::target_registered(&t.name, &storage_names);
            let st = self.state.get(&t.name);
            if st.since.is_none() {
                self.state.update(&t.name, |s| s.since = Some(now));
            }
            let runner = JobRunner {
                daemon: self.clone(),
                target: t.name.clone(),
                kind: JobKind::Backup,
            };
            let (d, name, schedule, jitter, cancel_loop) = (
                self.clone(),
                t.name.clone(),
                t.schedule.clone(),
                t.jitter,
                cancel.clone(),
            );
            tokio::spawn(async move {
                // Without a recorded run (state file new or lost), the newest backup in the
                // storage says when the target last ran.
                let last = match st.last_run {
                    Some(l) => Some(l),
                    None => newest_backup(&d.storages(), &name, d.clock.now())
                        .await
                        .0
                        .map(|(_, t)| t),
                };
                scheduler::run_loop(schedule, jitter, last, d.clock, runner, cancel_loop).await;
            });
            if let Some(cleanup) = &t.cleanup_schedule {
                let runner = JobRunner {
                    daemon: self.clone(),
                    target: t.name.clone(),
                    kind: JobKind::Cleanup,
                };
                tokio::spawn(scheduler::run_loop(
                    cleanup.clone(),
                    t.jitter,
                    st.last_cleanup,
                    self.clock,
                    runner,
                    cancel.clone(),
                ));
            }
            if let Some(drills) = &t.verify_schedule {
                let runner = JobRunner {
                    daemon: self.clone(),
                    target: t.name.clone(),
                    kind: JobKind::Drill,
                };
                // Never drilled: the first drill follows the first schedule slot, not start-up.
                let last = st.last_verify.or(Some(now));
                tokio::spawn(scheduler::run_loop(
                    drills.clone(),
                    t.jitter,
                    last,
                    self.clock,
                    runner,
                    cancel.clone(),
                ));
            }
            let d = self.clone();
            let name = t.name.clone();
            tokio::spawn(async move {
                d.refresh_catalog(&name).await;
                if let Some(t) = d.config().target(&name) {
                    check_drift(t).await;
                }
            });
        }
    }

    /// One scheduled backup of `name`, then its cleanup when that follows each backup.
    async fn run_backup(self: Arc<Self>, name: String) {
        let _ = self.backup_target(&name).await;
    }

    /// A backup of `name` now (schedule or admin API): waits for a job slot, records the
    /// run in the state file, cleans up when cleanup follows backups, refreshes the counts
    /// and checks schema drift. `None` when shutting down or the target is gone.
    pub(crate) async fn backup_target(
        self: &Arc<Self>,
        name: &str,
    ) -> Option<Result<job::Outcome, job::JobError>> {
        let permit = self.acquire().await?;
        let cfg = self.config();
        let target = cfg.target(name)?;
        let storages = self.storages();
        let started = self.clock.now();
        self.state.update(name, |s| s.last_run = Some(started));
        let result = job::backup(
            target,
            &storages,
            &self.state,
            None,
            &self.jobs_cancel.child_token(),
        )
        .await;
        let finished = self.clock.now();
        let ok = result.is_ok();
        let error = result.as_ref().err().map(|e| e.to_string());
        self.state
            .update(name, |s| s.record_run(started, finished, error));
        if ok && target.cleanup_schedule.is_none() {
            self.cleanup_target(target, &storages).await;
        }
        // Counts, the stale deadline and /health's cached listing follow every run.
        self.refresh_catalog(name).await;
        drop(permit);
        if ok {
            check_drift(target).await;
        }
        Some(result)
    }

    pub(crate) fn state(&self) -> &StateFile {
        &self.state
    }

    /// Cancelled when running jobs must stop (end of the shutdown grace).
    pub(crate) fn jobs_cancel(&self) -> CancellationToken {
        self.jobs_cancel.child_token()
    }

    /// Run `f` as a tracked job: shutdown waits for it like for scheduled runs.
    pub(crate) fn spawn_job<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.jobs.spawn(f);
    }

    async fn run_drill(self: Arc<Self>, name: String) {
        let Some(permit) = self.acquire().await else {
            return;
        };
        let cfg = self.config();
        if let Some(target) = cfg.target(&name) {
            let storages = self.storages();
            // The outcome is logged, counted and kept in the state file by `drill` itself.
            let _ = restore::drill(
                target,
                &storages,
                &self.state,
                &self.jobs_cancel.child_token(),
            )
            .await;
        }
        drop(permit);
    }

    async fn run_cleanup(self: Arc<Self>, name: String) {
        let Some(permit) = self.acquire().await else {
            return;
        };
        let cfg = self.config();
        if let Some(target) = cfg.target(&name) {
            let storages = self.storages();
            self.cleanup_target(target, &storages).await;
            self.refresh_catalog(&name).await;
        }
        drop(permit);
    }

    async fn cleanup_target(&self, target: &Target, storages: &[Box<dyn Storage>]) {
        let now = self.clock.now();
        match job::cleanup(target, storages, &self.state, false, now).await {
            Ok(_) => self
                .state
                .update(&target.name, |s| s.last_cleanup = Some(now)),
            Err(e) => tracing::error!(target = %target.name, error = %e, "cleanup failed"),
        }
    }

    /// Wait for a job slot (`daemon.max_concurrent`); `None` when shutting down.
    async fn acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = self
            .permits
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        tokio::select! {
            p = sem.acquire_owned() => p.ok(),
            _ = self.jobs_cancel.cancelled() => None,
        }
    }

    /// Count the complete backups of a target per storage, and when it turns stale (metrics).
    async fn refresh_catalog(&self, name: &str) {
        let now = self.clock.now();
        if let Some(target) = self.config().target(name) {
            let summary = newest_backup(&self.storages(), name, now).await;
            let newest = summary.0.clone();
            if let Ok(mut c) = self.catalog.lock() {
                c.insert(name.to_string(), (Instant::now(), summary));
            }
            let since = self.state.get(name).since;
            metrics::stale_after(
                name,
                health::stale_after(target, newest.map(|n| n.1), since, now),
            );
        }
        for s in self.storages().iter() {
            match catalog::scan(s.as_ref(), name, now).await {
                Ok(scan) => {
                    let mut ids: Vec<_> = scan.complete.iter().map(|(id, _, _)| *id).collect();
                    ids.dedup();
                    metrics::backups_counted(
                        name,
                        s.name(),
                        ids.len(),
                        ids.iter().min().map(|i| i.time()),
                    );
                }
                Err(e) => {
                    tracing::warn!(target = name, storage = s.name(), error = %e, "cannot list backups")
                }
            }
        }
    }

    /// The target's newest backup and count, listed at most every `CATALOG_TTL`.
    async fn catalog_summary(
        &self,
        storages: &[Box<dyn Storage>],
        name: &str,
        now: DateTime<Utc>,
    ) -> CatalogSummary {
        if let Some((at, summary)) = self.catalog.lock().ok().and_then(|c| c.get(name).cloned()) {
            if at.elapsed() < CATALOG_TTL {
                return summary;
            }
        }
        let summary = newest_backup(storages, name, now).await;
        if let Ok(mut c) = self.catalog.lock() {
            c.insert(name.to_string(), (Instant::now(), summary.clone()));
        }
        summary
    }

    /// Does the target's database answer? Cached for a few seconds.
    async fn db_status(&self, target: &Target) -> DbStatus {
        if let Some((at, status)) = self
            .db
            .lock()
            .ok()
            .and_then(|m| m.get(&target.name).cloned())
        {
            if at.elapsed() < DB_CHECK_TTL {
                return status;
            }
        }
        let result = source::build(target).ping().await;
        let status = DbStatus {
            up: result.is_ok(),
            error: result.err().map(|e| e.to_string()),
            checked: self.clock.now(),
        };
        metrics::target_up(&target.name, status.up, status.error.as_deref());
        if let Ok(mut m) = self.db.lock() {
            m.insert(target.name.clone(), (Instant::now(), status.clone()));
        }
        status
    }

    /// The health of every target (database checks run concurrently).
    pub async fn health(self: &Arc<Self>) -> Vec<TargetHealth> {
        let cfg = self.config();
        let mut checks = tokio::task::JoinSet::new();
        for (i, t) in cfg.targets.iter().enumerate() {
            let d = self.clone();
            let t = t.clone();
            checks.spawn(async move { (i, d.db_status(&t).await) });
        }
        let mut db: HashMap<usize, DbStatus> = HashMap::new();
        while let Some(Ok((i, s))) = checks.join_next().await {
            db.insert(i, s);
        }
        let now = self.clock.now();
        let next_runs = self.next_runs.lock().map(|m| m.clone()).unwrap_or_default();
        let storages = self.storages();
        let mut out = Vec::new();
        for (i, t) in cfg.targets.iter().enumerate() {
            let state = self.state.get(&t.name);
            let (newest, count) = self.catalog_summary(&storages, &t.name, now).await;
            out.push(health::assess(
                t,
                health::Facts {
                    newest,
                    backups: count,
                    state: &state,
                    next_run: next_runs.get(&t.name).copied(),
                    database: db.remove(&i),
                },
                now,
            ));
        }
        out
    }

    /// Refresh the per-target database gauges (for `/metrics`).
    pub async fn check_databases(self: &Arc<Self>) {
        let cfg = self.config();
        let mut checks = tokio::task::JoinSet::new();
        for t in cfg.targets.iter() {
            let t = t.clone();
            let d = self.clone();
            checks.spawn(async move { d.db_status(&t).await });
        }
        while checks.join_next().await.is_some() {}
    }

    /// Replace targets and schedules with a new valid config; keep the old one otherwise.
    async fn reload(self: &Arc<Self>, schedules: &mut CancellationToken, root: &CancellationToken) {
        let file = self.config().source_file.clone();
        match config::load(file.as_deref()) {
            Ok(new) => {
                let old = self.config();
                for t in &old.targets {
                    if new.target(&t.name).is_none() {
                        metrics::target_removed(&t.name);
                    }
                }
                if new.daemon.listen != old.daemon.listen {
                    tracing::warn!(old = %old.daemon.listen, new = %new.daemon.listen, "daemon.listen changes only at restart");
                }
                let storages = Arc::new(storage::build(&new).await);
                if let Ok(mut s) = self.storages.write() {
                    *s = storages;
                }
                if let Ok(mut p) = self.permits.write() {
                    *p = Arc::new(Semaphore::new(new.daemon.max_concurrent));
                }
                if let Ok(mut c) = self.config.write() {
                    *c = Arc::new(new);
                }
                schedules.cancel();
                *schedules = root.child_token();
                self.start_schedules(schedules);
                metrics::config_reloaded(true, None);
            }
            Err(e) => metrics::config_reloaded(false, Some(&e)),
        }
    }
}

/// Newest complete backup (id, time) and the number of backups, across storages.
pub async fn newest_backup(
    storages: &[Box<dyn Storage>],
    target: &str,
    now: DateTime<Utc>,
) -> CatalogSummary {
    let mut newest: Option<catalog::BackupId> = None;
    let mut ids = std::collections::BTreeSet::new();
    for s in storages {
        if let Ok(scan) = catalog::scan(s.as_ref(), target, now).await {
            for (id, _, _) in scan.complete {
                ids.insert(id);
                newest = newest.max(Some(id));
            }
        }
    }
    (newest.map(|id| (id.to_string(), id.time())), ids.len())
}

/// Compare the live schema with the declared one and set `dbkeep_schema_drift`.
async fn check_drift(target: &Target) {
    if target.schema.is_none() {
        return;
    }
    match crate::schema::status(target).await {
        Ok(r) => {
            let differences = r.schemas.iter().map(|s| s.differences.len()).sum();
            let pending = r
                .schemas
                .iter()
                .flat_map(|s| &s.migrations)
                .filter(|m| m.state != crate::schema::migrate::MigrationState::Applied)
                .count();
            metrics::schema_drift(&target.name, !r.in_sync, differences, pending);
        }
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "cannot compare the live schema with the declared one")
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Backup,
    Cleanup,
    Drill,
}

struct JobRunner {
    daemon: Arc<Daemon>,
    target: String,
    kind: JobKind,
}

impl Runner for JobRunner {
    fn start(&self) -> JoinHandle<()> {
        let d = self.daemon.clone();
        let name = self.target.clone();
        match self.kind {
            JobKind::Backup => self.daemon.jobs.spawn(d.run_backup(name)),
            JobKind::Cleanup => self.daemon.jobs.spawn(d.run_cleanup(name)),
            JobKind::Drill => self.daemon.jobs.spawn(d.run_drill(name)),
        }
    }

    fn skipped(&self, reason: &str) {
        metrics::run_skipped(&self.target, reason);
    }

    fn planned(&self, at: DateTime<Utc>) {
        if self.kind == JobKind::Backup {
            if let Ok(mut m) = self.daemon.next_runs.lock() {
                m.insert(self.target.clone(), at);
            }
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT. Returns after an orderly shutdown.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let listen = cfg.daemon.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (daemon.listen): is another dbkeep running, or pick another port"))?;
    let addr = listener.local_addr()?;
    let daemon = Daemon::new(cfg, Clock::System).await;

    let http_cancel = CancellationToken::new();
    let router = crate::http::router(daemon.clone());
    let http = {
        let c = http_cancel.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move { c.cancelled().await })
            .await
        })
    };
    let mut signals = signal_hook_tokio::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;

    let root = CancellationToken::new();
    let mut schedules = root.child_token();
    daemon.start_schedules(&schedules);
    daemon.ready.store(true, Ordering::SeqCst);
    println!("dbkeep listening on http://{addr}");
    tracing::info!(listen = %addr, targets = daemon.config().targets.len(), "daemon started");
    sd_notify("READY=1\nSTATUS=backing up on schedule");
    let watchdog = spawn_watchdog(CancellationToken::new());

    while let Some(sig) = signals.next().await {
        if sig == signal_hook::consts::SIGHUP {
            tracing::info!("SIGHUP: reloading config");
            sd_notify("RELOADING=1");
            daemon.reload(&mut schedules, &root).await;
            sd_notify("READY=1");
            continue;
        }
        tracing::info!(
            signal = sig,
            "stopping: no new runs; waiting for running jobs"
        );
        break;
    }
    sd_notify("STOPPING=1");
    daemon.ready.store(false, Ordering::SeqCst);
    root.cancel();
    daemon.jobs.close();
    let grace = daemon.config().daemon.shutdown_grace;
    if tokio::time::timeout(grace, daemon.jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = %humantime::format_duration(grace), "shutdown grace over: cancelling running jobs");
        daemon.jobs_cancel.cancel();
        if tokio::time::timeout(CANCEL_WAIT, daemon.jobs.wait())
            .await
            .is_err()
        {
            tracing::error!("jobs did not stop after cancellation; exiting anyway");
        }
    }
    http_cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Tell systemd about our state when it started us with `Type=notify`.
pub fn sd_notify(msg: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Ping systemd's watchdog at half its interval when `WatchdogSec` is set.
fn spawn_watchdog(stop: CancellationToken) -> Option<JoinHandle<()>> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(500));
    Some(tokio::spawn(async move {
        loop {
            sd_notify("WATCHDOG=1");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }))
}
