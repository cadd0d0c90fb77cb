//! What `/health` and `/metrics` ask the daemon: each target's health from cached
//! listings and database checks. Probes never list storage or connect per request: each
//! target's check runs at most once at a time (concurrent requests wait for it and share
//! its result) and is reused for a few seconds, so a flood of scrapes opens at most one
//! database connection per target.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Mutex as AsyncMutex;

use super::Daemon;
use crate::config::Target;
use crate::metrics;
use crate::ops::status::{self, CatalogSummary, DbStatus, Facts, TargetHealth};
use crate::storage::Storages;

/// How long a database check result is reused before asking again.
const DB_CHECK_TTL: Duration = Duration::from_secs(5);
/// How long `/health` reuses a target's listing (a storage listing, an S3 LIST, its
/// manifests) before listing again; every run refreshes it anyway.
const CATALOG_TTL: Duration = Duration::from_secs(30);
const STANDBY_CATALOG_TTL: Duration = Duration::from_secs(5);

/// One target's cached value and when it was taken, behind the lock its refresh holds.
type Slot<T> = Arc<AsyncMutex<Option<(Instant, T)>>>;

/// A cached value per target, refreshed by one caller at a time.
pub(super) struct Cache<T> {
    slots: std::sync::Mutex<HashMap<String, Slot<T>>>,
}

impl<T: Clone> Cache<T> {
    pub(super) fn new() -> Self {
        Cache {
            slots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, key: &str) -> Slot<T> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_string()).or_default().clone()
    }

    /// The cached value when younger than `ttl`, else `fetch`'s (which callers arriving
    /// meanwhile wait for and share).
    async fn get_or<F: std::future::Future<Output = T>>(
        &self,
        key: &str,
        ttl: Duration,
        fetch: F,
    ) -> T {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some((at, v)) = guard.as_ref() {
            if at.elapsed() < ttl {
                return v.clone();
            }
        }
        let v = fetch.await;
        *guard = Some((Instant::now(), v.clone()));
        v
    }

    async fn put(&self, key: &str, v: T) {
        *self.slot(key).lock().await = Some((Instant::now(), v));
    }
}

impl Daemon {
    /// List a target on every storage and publish what was found: counts, oldest, broken
    /// manifests, storage availability, and when the target turns stale.
    pub(super) async fn refresh_catalog(&self, name: &str) -> CatalogSummary {
        let now = self.clock.now();
        let storages = self.storages();
        let verify = self.verify_key(name);
        let summary = status::summarize(&storages, name, verify.as_ref(), now).await;
        for (storage, count, oldest, broken) in &summary.per_storage {
            metrics::backups_counted(name, storage, *count, *oldest, *broken);
        }
        for s in storages.iter() {
            let listed = summary.per_storage.iter().any(|(n, ..)| *n == s.name());
            metrics::storage_up(s.name(), listed);
        }
        if let Some((_, at)) = &summary.newest {
            metrics::newest_backup_seen(name, *at);
        }
        metrics::newest_suspect(name, summary.suspect.is_some());
        let mut dbs = summary.databases.clone();
        crate::catalog::mark_failing(&mut dbs, &self.state.get(name).failed_databases);
        for db in &dbs {
            metrics::database_seen(
                name,
                &db.name,
                db.newest_created.map(|t| (t, db.bytes)),
                db.gone,
            );
        }
        if let Some(target) = self.config().target(name) {
            metrics::objectives(name, target.rpo, target.rto);
            let since = self.state.get(name).since;
            metrics::stale_after(
                name,
                status::stale_after(target, summary.newest.as_ref().map(|n| n.1), since, now),
            );
        }
        self.catalog.put(name, summary.clone()).await;
        summary
    }

    /// The target's listing summary, listed at most every `CATALOG_TTL`.
    async fn catalog_summary(
        &self,
        storages: &Storages,
        name: &str,
        now: DateTime<Utc>,
    ) -> CatalogSummary {
        // A standby runs nothing that would refresh it: the shared storage is its only news
        // of the active replica's backups, so it lists more often.
        let ttl = match self.role(name) {
            Some(super::Role::Standby) => STANDBY_CATALOG_TTL,
            _ => CATALOG_TTL,
        };
        let verify = self.verify_key(name);
        self.catalog
            .get_or(
                name,
                ttl,
                status::summarize(storages, name, verify.as_ref(), now),
            )
            .await
    }

    /// The key the target's manifests must be signed with, when it has one.
    fn verify_key(&self, name: &str) -> Option<crate::crypt::VerifyingKey> {
        self.config()
            .target(name)
            .and_then(|t| t.crypto.verify.clone())
    }

    /// Does the target's database answer? At most one check at a time, reused for a few
    /// seconds.
    async fn db_status(&self, target: &Target) -> DbStatus {
        self.db
            .get_or(&target.name, DB_CHECK_TTL, async {
                let status = status::database(target, self.clock.now()).await;
                metrics::target_up(&target.name, status.up, status.error.as_deref());
                status
            })
            .await
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
            let catalog = self.catalog_summary(&storages, &t.name, now).await;
            let mut h = status::assess(
                t,
                Facts {
                    catalog,
                    state: &state,
                    next_run: next_runs.get(&t.name).copied(),
                    database: db.remove(&i),
                },
                now,
            );
            h.role = self.role(&t.name).map(super::Role::name);
            // What runs in this process is known live; another process's run, from its
            // last report in the state file.
            let live = crate::progress::current(&t.name);
            if !live.is_empty() {
                h.running = live;
            }
            out.push(h);
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
