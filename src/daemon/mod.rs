//! The daemon: its config, storages and schedules, reload, the registry of runs, and the
//! ordered stop. No HTTP and no signal handling here: `cli::run` binds the port and turns
//! signals into [`Daemon::reload`] and [`Daemon::shutdown`].

mod alerts;
mod health;
pub mod notify;
pub mod registry;
mod schedule;

pub use schedule::Role;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigError, Target};
use crate::metrics;
use crate::notify::Notifiers;
use crate::ops::backup::{self, BackupError, Outcome};
use crate::ops::status::{CatalogSummary, DbStatus};
use crate::ops::{cleanup, verify, Context};
use crate::scheduler::Clock;
use crate::state::StateFile;
use crate::storage::{self, StorageError, Storages};

use self::registry::{Registry, RunState};

/// Why a reload was rejected (the old config keeps running).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// After the grace, cancelled runs get this long to stop their children and clean up.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// The key of skipped schema drift checks in the target's warnings.
const WARN_SCHEMA: &str = "schema";

pub struct Daemon {
    config: RwLock<Arc<Config>>,
    storages: RwLock<Arc<Storages>>,
    notify: RwLock<Arc<Notifiers>>,
    /// This replica's role per target (active: it runs the target's schedules).
    roles: Mutex<HashMap<String, schedule::Role>>,
    /// Whether each target was stale at the last look (stale/recovered fire on changes).
    stale: Mutex<HashMap<String, bool>>,
    /// Declared schemas built once, until their files change (drift checks follow every
    /// backup: building each time would create and drop a database each time).
    declared: Arc<crate::ops::DeclaredCache>,
    permits: RwLock<Arc<Semaphore>>,
    state: Arc<StateFile>,
    clock: Clock,
    next_runs: Mutex<HashMap<String, DateTime<Utc>>>,
    db: health::Cache<DbStatus>,
    catalog: health::Cache<CatalogSummary>,
    /// Every run the daemon starts, for the API.
    pub runs: Registry,
    tasks: TaskTracker,
    /// Cancelled when the shutdown grace is over: running work stops.
    work_cancel: CancellationToken,
    /// Cancelled to stop the schedules (reload replaces it).
    schedules: Mutex<CancellationToken>,
    ready: AtomicBool,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .map(|c| c.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

fn write<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

impl Daemon {
    pub async fn new(cfg: Config, clock: Clock) -> Result<Arc<Self>, StorageError> {
        let storages = storage::build(&cfg).await?;
        let permits = Semaphore::new(cfg.daemon.max_concurrent);
        Ok(Arc::new(Daemon {
            state: Arc::new(StateFile::beside(&cfg.daemon.work_dir)),
            storages: RwLock::new(Arc::new(storages)),
            notify: RwLock::new(Notifiers::new(&cfg.notify)),
            roles: Mutex::new(HashMap::new()),
            stale: Mutex::new(HashMap::new()),
            declared: Arc::default(),
            permits: RwLock::new(Arc::new(permits)),
            config: RwLock::new(Arc::new(cfg)),
            clock,
            next_runs: Mutex::new(HashMap::new()),
            db: health::Cache::new(),
            catalog: health::Cache::new(),
            runs: Registry::default(),
            tasks: TaskTracker::new(),
            work_cancel: CancellationToken::new(),
            schedules: Mutex::new(CancellationToken::new()),
            ready: AtomicBool::new(false),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    pub fn storages(&self) -> Arc<Storages> {
        read(&self.storages)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// What a use case runs with now: current storages, the state file, and a
    /// cancellation that fires at the end of the shutdown grace.
    pub fn context(&self) -> Context {
        Context {
            storages: self.storages(),
            state: self.state.clone(),
            cancel: self.work_cancel.child_token(),
            clock: self.clock,
            notify: read(&self.notify),
            retry_after: None,
            trigger: "manual",
            declared: self.declared.clone(),
            identity: None,
        }
    }

    /// Start every schedule; the daemon is ready afterwards.
    pub fn start(self: &Arc<Self>) {
        let token = self.schedules.lock().map(|t| t.clone()).unwrap_or_default();
        self.start_schedules(&token);
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Run `f` as tracked work: shutdown waits for it like for scheduled runs.
    pub fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(f);
    }

    /// Back up `targets` one after another as one registered run; returns its id and
    /// the task that runs it.
    pub fn start_backups(
        self: &Arc<Self>,
        targets: Vec<String>,
        trigger: &str,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let id = self.runs.start("backup", trigger, &targets);
        let (d, run_id, run_trigger) = (self.clone(), id.clone(), trigger.to_string());
        let task = self.tasks.spawn(async move {
            for (i, name) in targets.iter().enumerate() {
                d.runs
                    .step(&run_id, i, |step| step.state = RunState::Running);
                let r = if run_trigger == "schedule" {
                    d.backup_with_retries(name).await
                } else {
                    d.backup_target(name, run_trigger == "api", None).await
                };
                d.runs.step(&run_id, i, |step| match r {
                    Some(Ok(o)) => {
                        step.state = RunState::Succeeded;
                        step.backup_id = Some(o.id.to_string());
                        step.bytes = Some(o.stored_bytes());
                    }
                    Some(Err(e)) => {
                        step.state = RunState::Failed;
                        step.error = Some(crate::error::chain(&e));
                    }
                    None => {
                        step.state = RunState::Failed;
                        step.error = Some("the daemon is stopping".into());
                    }
                });
            }
        });
        (id, task)
    }

    /// A scheduled backup, tried again after a failure: `retries` more times, after
    /// `retry_delay`, doubled each time (a database restarting at 02:00 does not cost a
    /// day's backup). While a retry is due, the failure is not a problem in `/health` and
    /// not yet a `failed` notification. Refusals (another run holds the target) and
    /// cancellations are not retried.
    pub async fn backup_with_retries(
        self: &Arc<Self>,
        name: &str,
    ) -> Option<Result<Outcome, BackupError>> {
        let (retries, delay, schedule) = {
            let cfg = self.config();
            let t = cfg.target(name)?;
            (t.retries, t.retry_delay, t.schedule.clone())
        };
        let mut attempt = 0;
        loop {
            // A retry later than the next scheduled run would only come after it: the
            // next run is the retry then.
            let now = self.clock.now();
            let wait = delay.saturating_mul(1 << attempt.min(16));
            let retry_at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
            let next_slot = crate::scheduler::next_run(&schedule, Some(now), now);
            let last = attempt >= retries || next_slot.is_some_and(|n| retry_at >= n);
            let r = self
                .backup_target(name, false, (!last).then_some(wait))
                .await;
            let retry = match &r {
                Some(Err(e)) if !last => crate::ops::backup::worth_retrying(e),
                _ => false,
            };
            if !retry {
                self.state.update(name, |s| s.retry_at = None);
                metrics::retry_pending(name, false);
                return r;
            }
            // The run recorded its failure and the retry time together.
            let at = self.state.get(name).retry_at.unwrap_or(retry_at);
            attempt += 1;
            metrics::retry_pending(name, true);
            metrics::backup_retry(name);
            tracing::warn!(target = name, attempt, of = retries, retry_at = %at.to_rfc3339(), "backup failed; trying again");
            tokio::select! {
                _ = self.work_cancel.cancelled() => {
                    self.state.update(name, |s| s.retry_at = None);
                    metrics::retry_pending(name, false);
                    return r;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A backup of `name` now: waits for a slot, runs it (which records it), cleans up
    /// when cleanup follows backups, refreshes the counts and checks schema drift.
    /// `None` when shutting down or the target is gone.
    /// An asked-for backup (`queued`) waits for a run of the target another process
    /// holds; a scheduled one is skipped (counted as `locked`).
    pub async fn backup_target(
        self: &Arc<Self>,
        name: &str,
        queued: bool,
        retry_after: Option<std::time::Duration>,
    ) -> Option<Result<Outcome, BackupError>> {
        let permit = self.acquire().await?;
        let cfg = self.config();
        let target = cfg.target(name)?;
        let mut ctx = self.context();
        ctx.retry_after = retry_after;
        if !queued {
            ctx.trigger = "scheduled";
        }
        let result = match queued {
            true => backup::run_queued(&ctx, target, None).await,
            false => backup::run(&ctx, target, None).await,
        };
        let ok = result.is_ok();
        if ok && target.cleanup_schedule.is_none() {
            self.cleanup_target(&ctx, target).await;
        }
        // Counts, the stale deadline and /health's cached listing follow every run.
        self.refresh_catalog(name).await;
        drop(permit);
        if ok {
            self.check_drift(target).await;
        }
        Some(result)
    }

    async fn run_drill(self: Arc<Self>, name: String) {
        let Some(permit) = self.acquire().await else {
            return;
        };
        let cfg = self.config();
        if let Some(target) = cfg.target(&name) {
            // The outcome is logged, counted and kept in the state file by `drill` itself.
            let _ = verify::drill(&self.context(), target).await;
            let st = self.state.get(&name);
            metrics::verify_stale_after(
                &name,
                crate::ops::status::drill_deadline(target, &st, self.clock.now()),
            );
        }
        drop(permit);
    }

    async fn run_cleanup(self: Arc<Self>, name: String) {
        let Some(permit) = self.acquire().await else {
            return;
        };
        let cfg = self.config();
        if let Some(target) = cfg.target(&name) {
            self.cleanup_target(&self.context(), target).await;
            self.refresh_catalog(&name).await;
        }
        drop(permit);
    }

    async fn cleanup_target(&self, ctx: &Context, target: &Target) {
        if let Err(e) = cleanup::run(ctx, target, false, self.clock.now()).await {
            tracing::error!(target = %target.name, error = %e, "cleanup failed");
        }
    }

    /// Wait for a run slot (`daemon.max_concurrent`); `None` when shutting down.
    async fn acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = read(&self.permits);
        tokio::select! {
            p = sem.acquire_owned() => p.ok(),
            _ = self.work_cancel.cancelled() => None,
        }
    }

    /// Compare the live schema with the declared one and set `dbkeep_schema_drift`.
    async fn check_drift(&self, target: &Target) {
        if target.schema.is_none() {
            return;
        }
        // A check the role may not do is a warning (once), not a log line per backup.
        let denied = crate::engine::build(target)
            .scratch_denied(crate::engine::Purpose::Declared)
            .await
            .ok()
            .flatten();
        let mut newly = false;
        self.state.update(&target.name, |s| match &denied {
            Some(why) => newly = s.warnings.insert(WARN_SCHEMA.into(), why.clone()).is_none(),
            None => {
                s.warnings.remove(WARN_SCHEMA);
            }
        });
        if let Some(why) = denied {
            if newly {
                tracing::warn!(target = %target.name, reason = %why, "schema drift checks are skipped");
            }
            return;
        }
        match crate::schema::status(&self.context(), target).await {
            Ok(r) => {
                let differences = r.schemas.iter().map(|s| s.differences.len()).sum();
                let pending = r
                    .schemas
                    .iter()
                    .flat_map(|s| &s.migrations)
                    .filter(|m| m.state != crate::schema::migrations::MigrationState::Applied)
                    .count();
                metrics::schema_drift(&target.name, !r.in_sync, differences, pending);
            }
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "cannot compare the live schema with the declared one")
            }
        }
    }

    /// Replace targets and schedules with a new valid config; keep the old one otherwise.
    /// (The declared schemas built so far stay: they are rebuilt when their files change.)
    pub async fn reload(self: &Arc<Self>) -> Result<(), ReloadError> {
        let result = self.try_reload().await;
        match &result {
            Ok(()) => metrics::config_reloaded(true, None),
            Err(e) => metrics::config_reloaded(false, Some(e)),
        }
        result
    }

    async fn try_reload(self: &Arc<Self>) -> Result<(), ReloadError> {
        let file = self.config().source_file.clone();
        let new = config::load(file.as_deref())?;
        let storages = storage::build(&new).await?;
        let old = self.config();
        for t in &old.targets {
            if new.target(&t.name).is_none() {
                let mirrors: Vec<&str> = self.storages().mirrors().map(|m| m.name()).collect();
                metrics::target_removed(&t.name, &mirrors);
            }
        }
        if new.daemon.listen != old.daemon.listen {
            tracing::warn!(old = %old.daemon.listen, new = %new.daemon.listen, "daemon.listen changes only at restart");
        }
        write(&self.storages, Arc::new(storages));
        write(&self.notify, Notifiers::new(&new.notify));
        write(
            &self.permits,
            Arc::new(Semaphore::new(new.daemon.max_concurrent)),
        );
        write(&self.config, Arc::new(new));
        let token = {
            let mut t = self.schedules.lock().unwrap_or_else(|p| p.into_inner());
            t.cancel();
            *t = CancellationToken::new();
            t.clone()
        };
        self.start_schedules(&token);
        Ok(())
    }

    /// Stop: no new runs; wait up to the config's `shutdown_grace` for running ones, then
    /// cancel them and wait a little more for their cleanup.
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        if let Ok(t) = self.schedules.lock() {
            t.cancel();
        }
        self.tasks.close();
        let grace = self.config().daemon.shutdown_grace;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = %humantime::format_duration(grace), "shutdown grace over: cancelling running jobs");
            self.work_cancel.cancel();
            if tokio::time::timeout(CANCEL_WAIT, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::error!("runs did not stop after cancellation; exiting anyway");
            }
        }
    }
}
