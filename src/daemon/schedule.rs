//! The daemon's schedules: per target, a loop for backups, one for cleanup when it has
//! its own schedule, and one for restore drills, each started without overlap.

use crate::ops::hooks::{self, HookKind};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::engine::{self, HoldKind};
use crate::metrics;
use crate::ops::lock;
use crate::ops::status;
use crate::scheduler::{self, Runner};
use crate::state::RunStatus;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Backup,
    Cleanup,
    Drill,
}

struct ScheduledRun {
    daemon: Arc<Daemon>,
    target: String,
    kind: Kind,
}

impl Runner for ScheduledRun {
    fn start(&self) -> JoinHandle<()> {
        let d = self.daemon.clone();
        let name = self.target.clone();
        match self.kind {
            Kind::Backup => d.start_backups(vec![name], "schedule").1,
            Kind::Cleanup => self.daemon.tasks.spawn(d.run_cleanup(name)),
            Kind::Drill => self.daemon.tasks.spawn(d.run_drill(name)),
        }
    }

    fn skipped(&self, reason: &str) {
        metrics::run_skipped(&self.target, reason);
    }

    fn planned(&self, at: DateTime<Utc>) {
        if self.kind == Kind::Backup {
            if let Ok(mut m) = self.daemon.next_runs.lock() {
                m.insert(self.target.clone(), at);
            }
        }
    }
}

impl Daemon {
    /// Start the backup (and cleanup, and drill) loop of every target; they stop with
    /// `cancel`.
    pub(super) fn start_schedules(self: &Arc<Self>, cancel: &CancellationToken) {
        let cfg = self.config();
        let now = self.clock.now();
        let storages = self.storages();
        let storage_names = storages.names();
        let mirror_names: Vec<&str> = storages.mirrors().map(|m| m.name()).collect();
        for t in &cfg.targets {
            if self.state.get(&t.name).since.is_none() {
                self.state.update(&t.name, |s| s.since = Some(now));
            }
            let st = self.state.get(&t.name);
            metrics::target_registered(
                &t.name,
                &storage_names,
                &mirror_names,
                &metrics::Known {
                    last_attempt: st.last_run,
                    last_success: st.last_success,
                    last_run_failed: st.last_status == Some(RunStatus::Failure),
                    last_verify_success: (st.last_verify_status == Some(RunStatus::Success))
                        .then_some(st.last_verify)
                        .flatten(),
                    last_verify_failed: st.last_verify_status == Some(RunStatus::Failure),
                    uploads_pending: st.pending_by_storage(),
                    has_schema: t.schema.is_some(),
                    hooks: [HookKind::Before, HookKind::After, HookKind::OnFailure]
                        .into_iter()
                        .filter(|k| hooks::command(t, *k).is_some())
                        .map(HookKind::name)
                        .collect(),
                },
            );
            metrics::verify_stale_after(&t.name, status::drill_deadline(t, &st, now));
            metrics::objectives(&t.name, t.rpo, t.rto);
            if let Some(p) = &st.last_proven {
                metrics::drill_proved(&t.name, p.seconds, p.bytes, p.rows_proven);
            }
            // Until the first listing says when the newest backup is (right below).
            let last = st.last_success.or(st.last_run);
            metrics::stale_after(&t.name, status::stale_after(t, last, st.since, now));
            match cfg.daemon.lease {
                None => {
                    metrics::target_active(&t.name, true);
                    self.set_role(&t.name, Role::Active);
                    self.run_schedules(t, &st, cancel);
                }
                Some(period) => self.keep_lease(t.name.clone(), period, cancel),
            }
            let d = self.clone();
            let name = t.name.clone();
            tokio::spawn(async move {
                d.refresh_catalog(&name).await;
                if let Some(t) = d.config().target(&name) {
                    d.check_drift(t).await;
                }
            });
        }
        self.start_stale_watch(cancel);
    }

    /// Start the target's backup, cleanup and drill loops until `cancel`.
    fn run_schedules(
        self: &Arc<Self>,
        t: &crate::config::Target,
        st: &crate::state::TargetState,
        cancel: &CancellationToken,
    ) {
        let now = self.clock.now();
        let run = |kind| ScheduledRun {
            daemon: self.clone(),
            target: t.name.clone(),
            kind,
        };
        let (d, name, schedule, jitter, cancel_loop) = (
            self.clone(),
            t.name.clone(),
            t.schedule.clone(),
            t.jitter,
            cancel.clone(),
        );
        let backups = run(Kind::Backup);
        let own_last = st.last_run;
        let verify = t.crypto.verify.clone();
        tokio::spawn(async move {
            // The later of this daemon's last run and the newest backup in the storage:
            // without a state file, or after taking over from another replica, a run
            // missed meanwhile happens once, and one just taken is not taken again.
            let newest = status::summarize(&d.storages(), &name, verify.as_ref(), d.clock.now())
                .await
                .newest
                .map(|(_, t)| t);
            let last = own_last.max(newest);
            scheduler::run_loop(schedule, jitter, last, d.clock, backups, cancel_loop).await;
        });
        if let Some(cleanup) = &t.cleanup_schedule {
            tokio::spawn(scheduler::run_loop(
                cleanup.clone(),
                t.jitter,
                st.last_cleanup,
                self.clock,
                run(Kind::Cleanup),
                cancel.clone(),
            ));
        }
        if let Some(drills) = &t.verify_schedule {
            // Never drilled: the first drill follows the first schedule slot, not start-up.
            let last = st.last_verify.or(Some(now));
            tokio::spawn(scheduler::run_loop(
                drills.clone(),
                t.jitter,
                last,
                self.clock,
                run(Kind::Drill),
                cancel.clone(),
            ));
        }
    }

    /// Take the target's lease (its lock file here, and the database's advisory lock where
    /// the engine has one), run its schedules while it is held, and try again every
    /// `period` while another replica holds it. A lease whose database connection drops
    /// is lost at once: the schedules stop (a run already going finishes; the server run
    /// lock keeps another replica's run from overlapping it).
    fn keep_lease(
        self: &Arc<Self>,
        name: String,
        period: std::time::Duration,
        cancel: &CancellationToken,
    ) {
        let d = self.clone();
        let cancel = cancel.clone();
        metrics::target_active(&name, false);
        self.set_role(&name, Role::Standby);
        tokio::spawn(async move {
            let mut told_standby = false;
            // After a reload the previous watch may still hold the lease for a moment
            // (its tenure ends as this one starts): the first try waits for that.
            let mut first = true;
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                let Some(t) = d.config().target(&name).cloned() else {
                    return;
                };
                let work_dir = d.state.work_dir().to_path_buf();
                let mut unreachable = false;
                let mut held = None;
                for _ in 0..if first { 20 } else { 1 } {
                    held = match lock::acquire_lease(&work_dir, &name, d.clock.now()) {
                        Ok(file) => match engine::build(&t).try_hold(HoldKind::Lease).await {
                            Ok(Some(hold)) => Some((file, hold)),
                            Ok(None) => None,
                            Err(e) => {
                                tracing::warn!(target = %name, error = %crate::error::chain(&e), "cannot reach the database to take the lease; trying again");
                                unreachable = true;
                                None
                            }
                        },
                        Err(lock::LockError::Busy { .. }) => None,
                        Err(e) => {
                            tracing::warn!(target = %name, error = %e, "cannot open the lease file");
                            None
                        }
                    };
                    if held.is_some() || unreachable {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                first = false;
                if let Some((file, mut hold)) = held {
                    tracing::info!(target = %name, "this replica is active for the target: it runs its schedules");
                    told_standby = false;
                    d.set_role(&name, Role::Active);
                    metrics::target_active(&name, true);
                    let tenure = cancel.child_token();
                    let st = d.state.get(&name);
                    d.run_schedules(&t, &st, &tenure);
                    tokio::select! {
                        _ = hold.lost() => {
                            tracing::warn!(target = %name, "lease lost (its database connection ended): schedules stopped; standby until it can be taken again");
                        }
                        _ = cancel.cancelled() => {}
                    }
                    tenure.cancel();
                    drop(file);
                    d.set_role(&name, Role::Standby);
                    metrics::target_active(&name, false);
                } else if !told_standby && !unreachable {
                    tracing::info!(target = %name, "another replica is active for the target: standing by");
                    told_standby = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        });
    }

    fn set_role(&self, target: &str, role: Role) {
        if let Ok(mut m) = self.roles.lock() {
            m.insert(target.to_string(), role);
        }
    }

    /// This replica's role for `target`.
    pub fn role(&self, target: &str) -> Option<Role> {
        self.roles.lock().ok().and_then(|m| m.get(target).copied())
    }
}

/// Whether this daemon runs a target's schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}
