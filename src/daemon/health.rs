//! What `/health` and `/metrics` ask the daemon: each target's health from cached
//! listings and database checks, so probes never list storage or connect per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Daemon;
use crate::catalog;
use crate::config::Target;
use crate::metrics;
use crate::ops::status::{self, CatalogSummary, DbStatus, Facts, TargetHealth};
use crate::storage::Storages;

/// How long a database check result is reused before asking again.
const DB_CHECK_TTL: Duration = Duration::from_secs(5);
/// How long `/health` reuses a target's newest-backup lookup (a storage listing, an S3
/// LIST) before listing again; every run refreshes it anyway.
const CATALOG_TTL: Duration = Duration::from_secs(30);

impl Daemon {
    /// Count the complete backups of a target per storage, and when it turns stale.
    pub(super) async fn refresh_catalog(&self, name: &str) {
        let now = self.clock.now();
        let storages = self.storages();
        if let Some(target) = self.config().target(name) {
            let summary = status::newest_backup(&storages, name, now).await;
            let newest = summary.0.clone();
            if let Ok(mut c) = self.catalog.lock() {
                c.insert(name.to_string(), (Instant::now(), summary));
            }
            let since = self.state.get(name).since;
            metrics::stale_after(
                name,
                status::stale_after(target, newest.map(|n| n.1), since, now),
            );
        }
        for s in storages.iter() {
            match catalog::scan(s, name, now).await {
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
        storages: &Storages,
        name: &str,
        now: DateTime<Utc>,
    ) -> CatalogSummary {
        if let Some((at, summary)) = self.catalog.lock().ok().and_then(|c| c.get(name).cloned()) {
            if at.elapsed() < CATALOG_TTL {
                return summary;
            }
        }
        let summary = status::newest_backup(storages, name, now).await;
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
        let status = status::database(target, self.clock.now()).await;
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
            out.push(status::assess(
                t,
                Facts {
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
}
