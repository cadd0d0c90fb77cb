//! The daemon's schedules: per target, a loop for backups, one for cleanup when it has
//! its own schedule, and one for restore drills, each started without overlap.

use crate::ops::hooks::{self, HookKind};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::metrics;
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
                    uploads_pending: st.pending_uploads.len(),
                    has_schema: t.schema.is_some(),
                    hooks: [HookKind::Before, HookKind::After, HookKind::OnFailure]
                        .into_iter()
                        .filter(|k| hooks::command(t, *k).is_some())
                        .map(HookKind::name)
                        .collect(),
                },
            );
            metrics::verify_stale_after(&t.name, status::drill_deadline(t, &st, now));
            // Until the first listing says when the newest backup is (right below).
            let last = st.last_success.or(st.last_run);
            metrics::stale_after(&t.name, status::stale_after(t, last, st.since, now));
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
            tokio::spawn(async move {
                // Without a recorded run (state file new or lost), the newest backup in the
                // storage says when the target last ran.
                let last = match st.last_run {
                    Some(l) => Some(l),
                    None => status::summarize(&d.storages(), &name, d.clock.now())
                        .await
                        .newest
                        .map(|(_, t)| t),
                };
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
}
