//! Metric definitions and one helper per notable event that logs and counts it with the
//! same names (`target`, `storage`, `status`, `reason`).

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub const BACKUP_LAST_SUCCESS: &str = "dbkeep_backup_last_success_timestamp_seconds";
pub const BACKUP_LAST_ATTEMPT: &str = "dbkeep_backup_last_attempt_timestamp_seconds";
pub const BACKUP_DURATION: &str = "dbkeep_backup_duration_seconds";
pub const BACKUP_SIZE: &str = "dbkeep_backup_size_bytes";
pub const BACKUP_RUNS: &str = "dbkeep_backup_runs_total";
pub const BACKUPS: &str = "dbkeep_backups";
pub const BACKUP_OLDEST: &str = "dbkeep_backup_oldest_timestamp_seconds";
pub const RETENTION_DELETED: &str = "dbkeep_retention_deleted_total";
pub const RUNS_SKIPPED: &str = "dbkeep_runs_skipped_total";
pub const TARGET_UP: &str = "dbkeep_target_up";
pub const BUILD_INFO: &str = "dbkeep_build_info";
pub const CONFIG_RELOAD: &str = "dbkeep_config_reload_total";
pub const UPLOAD_DURATION: &str = "dbkeep_upload_duration_seconds";
pub const UPLOADS_PENDING: &str = "dbkeep_uploads_pending";
pub const STORAGE_UP: &str = "dbkeep_storage_up";
pub const VERIFY_LAST_SUCCESS: &str = "dbkeep_verify_last_success_timestamp_seconds";
pub const VERIFY_RUNS: &str = "dbkeep_verify_runs_total";
pub const VERIFY_DURATION: &str = "dbkeep_verify_duration_seconds";
pub const STALE_AFTER: &str = "dbkeep_backup_stale_after_timestamp_seconds";
pub const LAST_RUN_FAILED: &str = "dbkeep_backup_last_run_failed";
pub const SCHEMA_DRIFT: &str = "dbkeep_schema_drift";
pub const ADMIN_REQUESTS: &str = "dbkeep_admin_requests_total";
pub const ADMIN_DENIED: &str = "dbkeep_admin_auth_failures_total";
pub const VERIFY_LAST_RUN_FAILED: &str = "dbkeep_verify_last_run_failed";
pub const BACKUPS_BROKEN: &str = "dbkeep_backups_broken";
pub const VERIFY_STALE_AFTER: &str = "dbkeep_verify_stale_after_timestamp_seconds";
pub const HOOK_RUNS: &str = "dbkeep_hook_runs_total";
pub const NOTIFICATIONS: &str = "dbkeep_notifications_total";
pub const TARGET_ACTIVE: &str = "dbkeep_target_active";
pub const RETRIES: &str = "dbkeep_backup_retries_total";
pub const RETRY_PENDING: &str = "dbkeep_backup_retry_pending";
pub const DATABASE_LAST_SUCCESS: &str = "dbkeep_database_last_success_timestamp_seconds";
pub const DATABASE_SIZE: &str = "dbkeep_database_backup_size_bytes";
pub const DATABASE_GONE: &str = "dbkeep_database_gone";
pub const SUSPECT_TOTAL: &str = "dbkeep_backups_suspect_total";
pub const SUSPECT: &str = "dbkeep_backup_suspect";
pub const DRILL_RESTORE_SECONDS: &str = "dbkeep_drill_restore_seconds";
pub const DRILL_RESTORE_BYTES: &str = "dbkeep_drill_restore_bytes";
pub const DRILL_ROWS_PROVEN: &str = "dbkeep_drill_rows_proven";
pub const RTO: &str = "dbkeep_rto_seconds";
pub const RPO: &str = "dbkeep_rpo_seconds";

pub struct Metrics {
    registry: Registry,
    last_success: GaugeVec,
    last_attempt: GaugeVec,
    duration: HistogramVec,
    size: IntGaugeVec,
    runs: IntCounterVec,
    backups: IntGaugeVec,
    broken: IntGaugeVec,
    oldest: GaugeVec,
    deleted: IntCounterVec,
    skipped: IntCounterVec,
    target_up: IntGaugeVec,
    reloads: IntCounterVec,
    upload_duration: HistogramVec,
    uploads_pending: IntGaugeVec,
    storage_up: IntGaugeVec,
    verify_last_success: GaugeVec,
    verify_runs: IntCounterVec,
    verify_duration: HistogramVec,
    stale_after: GaugeVec,
    verify_stale_after: GaugeVec,
    last_run_failed: IntGaugeVec,
    verify_last_run_failed: IntGaugeVec,
    schema_drift: IntGaugeVec,
    admin_requests: IntCounterVec,
    admin_denied: IntCounterVec,
    hook_runs: IntCounterVec,
    notifications: IntCounterVec,
    target_active: IntGaugeVec,
    retries: IntCounterVec,
    retry_pending: IntGaugeVec,
    database_last_success: GaugeVec,
    database_size: IntGaugeVec,
    database_gone: IntGaugeVec,
    suspect_total: IntCounterVec,
    suspect: IntGaugeVec,
    drill_restore_seconds: GaugeVec,
    drill_restore_bytes: IntGaugeVec,
    drill_rows_proven: IntGaugeVec,
    rto: GaugeVec,
    rpo: GaugeVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Registration fails only for a duplicate or malformed name: a programming error
    // caught by the metric-name tests, so the metric then simply stays unexported.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        r,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
    )
}

fn int_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
    )
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
    )
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let build = int_gauge(&r, BUILD_INFO, "dbkeep build, value 1", &["version"]);
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    let duration = register(
        &r,
        HistogramVec::new(
            HistogramOpts::new(BACKUP_DURATION, "Wall time of backup runs").buckets(vec![
                0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
            ]),
            &["target"],
        )
        .expect("valid histogram"),
    );
    let upload_duration = register(
        &r,
        HistogramVec::new(
            HistogramOpts::new(
                UPLOAD_DURATION,
                "Wall time of archive uploads to remote storage",
            )
            .buckets(vec![
                0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
            ]),
            &["target", "storage"],
        )
        .expect("valid histogram"),
    );
    let verify_duration = register(
        &r,
        HistogramVec::new(
            HistogramOpts::new(VERIFY_DURATION, "Wall time of restore drills").buckets(vec![
                1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
            ]),
            &["target"],
        )
        .expect("valid histogram"),
    );
    Metrics {
        suspect_total: counter(
            &r,
            SUSPECT_TOTAL,
            "Backups marked suspect (rows or bytes dropped sharply against the last good one)",
            &["target"],
        ),
        suspect: int_gauge(
            &r,
            SUSPECT,
            "1 when the newest complete backup is suspect and not accepted (health amber)",
            &["target"],
        ),
        drill_restore_seconds: gauge(
            &r,
            DRILL_RESTORE_SECONDS,
            "Wall time of the last successful restore drill: the measured restore time",
            &["target"],
        ),
        drill_restore_bytes: int_gauge(
            &r,
            DRILL_RESTORE_BYTES,
            "Stored bytes the last successful restore drill restored",
            &["target"],
        ),
        drill_rows_proven: int_gauge(
            &r,
            DRILL_ROWS_PROVEN,
            "Rows the last successful drill proved identical to the backup's (content fingerprints)",
            &["target"],
        ),
        rto: gauge(
            &r,
            RTO,
            "The target's recovery time objective (rto); +Inf when none is set",
            &["target"],
        ),
        rpo: gauge(
            &r,
            RPO,
            "The target's recovery point objective (rpo); +Inf when none is set",
            &["target"],
        ),
        admin_requests: counter(
            &r,
            ADMIN_REQUESTS,
            "Authenticated admin API calls by method and status",
            &["method", "status"],
        ),
        admin_denied: counter(
            &r,
            ADMIN_DENIED,
            "Admin API calls refused for a missing or wrong token",
            &[],
        ),
        schema_drift: int_gauge(
            &r,
            SCHEMA_DRIFT,
            "1 when the live schema differs from the declared one (or migrations are pending)",
            &["target"],
        ),
        stale_after: gauge(
            &r,
            STALE_AFTER,
            "Unix time after which the target is stale without a new backup",
            &["target"],
        ),
        verify_stale_after: gauge(
            &r,
            VERIFY_STALE_AFTER,
            "Unix time after which the target's restore drill is overdue (+Inf when drills are off)",
            &["target"],
        ),
        last_run_failed: int_gauge(
            &r,
            LAST_RUN_FAILED,
            "1 when the last backup run of the target failed",
            &["target"],
        ),
        verify_last_run_failed: int_gauge(
            &r,
            VERIFY_LAST_RUN_FAILED,
            "1 when the last restore drill failed",
            &["target"],
        ),
        verify_duration,
        verify_last_success: gauge(
            &r,
            VERIFY_LAST_SUCCESS,
            "Unix time of the last successful restore drill",
            &["target"],
        ),
        verify_runs: counter(
            &r,
            VERIFY_RUNS,
            "Restore drills by outcome",
            &["target", "status"],
        ),
        upload_duration,
        uploads_pending: int_gauge(
            &r,
            UPLOADS_PENDING,
            "Archives on the primary storage not yet uploaded to this mirror",
            &["target", "storage"],
        ),
        storage_up: int_gauge(
            &r,
            STORAGE_UP,
            "1 when the storage answered its last request",
            &["storage"],
        ),
        last_success: gauge(
            &r,
            BACKUP_LAST_SUCCESS,
            "Unix time of the last successful backup",
            &["target"],
        ),
        last_attempt: gauge(
            &r,
            BACKUP_LAST_ATTEMPT,
            "Unix time the last backup run started",
            &["target"],
        ),
        duration,
        size: int_gauge(
            &r,
            BACKUP_SIZE,
            "Stored bytes of the last successful backup",
            &["target"],
        ),
        runs: counter(
            &r,
            BACKUP_RUNS,
            "Backup runs by outcome",
            &["target", "status"],
        ),
        backups: int_gauge(
            &r,
            BACKUPS,
            "Complete backups per storage",
            &["target", "storage"],
        ),
        broken: int_gauge(
            &r,
            BACKUPS_BROKEN,
            "Manifests that cannot be trusted (unreadable, not matching their archive); not counted as backups and never deleted automatically",
            &["target", "storage"],
        ),
        oldest: gauge(
            &r,
            BACKUP_OLDEST,
            "Unix time of the oldest complete backup",
            &["target", "storage"],
        ),
        deleted: counter(
            &r,
            RETENTION_DELETED,
            "Backups deleted by retention",
            &["target", "storage"],
        ),
        retries: counter(
            &r,
            RETRIES,
            "Failed scheduled backups tried again",
            &["target"],
        ),
        retry_pending: int_gauge(
            &r,
            RETRY_PENDING,
            "1 while a failed scheduled backup waits for its retry",
            &["target"],
        ),
        target_active: int_gauge(
            &r,
            TARGET_ACTIVE,
            "1 when this replica runs the target's schedules (holds its lease), 0 on standby",
            &["target"],
        ),
        notifications: counter(
            &r,
            NOTIFICATIONS,
            "Notifications sent, by notifier, event and result (after retries)",
            &["notifier", "event", "result"],
        ),
        hook_runs: counter(
            &r,
            HOOK_RUNS,
            "Hook commands run, by hook (before, after, on_failure) and result",
            &["target", "hook", "result"],
        ),
        skipped: counter(
            &r,
            RUNS_SKIPPED,
            "Scheduled runs not started",
            &["target", "reason"],
        ),
        target_up: int_gauge(
            &r,
            TARGET_UP,
            "1 when the target's database answers",
            &["target"],
        ),
        database_last_success: gauge(
            &r,
            DATABASE_LAST_SUCCESS,
            "When the newest complete backup of each database of a server target was taken",
            &["target", "database"],
        ),
        database_size: int_gauge(
            &r,
            DATABASE_SIZE,
            "Stored bytes of each database's archive in the last successful run of a server target",
            &["target", "database"],
        ),
        database_gone: int_gauge(
            &r,
            DATABASE_GONE,
            "1 for a database of a server target that is no longer on the server (its backups are kept under retention)",
            &["target", "database"],
        ),
        reloads: counter(
            &r,
            CONFIG_RELOAD,
            "Config reloads (SIGHUP) by outcome",
            &["status"],
        ),
        registry: r,
    }
});

fn m() -> &'static Metrics {
    &METRICS
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = m().registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// What is known of a target when the daemon starts, for its first values.
pub struct Known {
    pub last_attempt: Option<chrono::DateTime<chrono::Utc>>,
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    pub last_run_failed: bool,
    pub last_verify_success: Option<chrono::DateTime<chrono::Utc>>,
    pub last_verify_failed: bool,
    /// Archives waiting for each mirror, by the mirror's name.
    pub uploads_pending: std::collections::BTreeMap<String, usize>,
    pub has_schema: bool,
    /// The hooks the target has (`before`, `after`, `on_failure`).
    pub hooks: Vec<&'static str>,
}

/// Make every per-target series exist from start-up, with the values known from the
/// state file (0 where nothing is known: "never"), so an alert on any of them sees a
/// target that has never backed up or never been drilled.
pub fn target_registered(target: &str, storages: &[&str], mirrors: &[&str], known: &Known) {
    let m = m();
    let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or(0.0, |t| t.timestamp() as f64);
    for status in ["success", "failure"] {
        m.runs.with_label_values(&[target, status]);
        m.verify_runs.with_label_values(&[target, status]);
    }
    for reason in ["overlap", "locked"] {
        m.skipped.with_label_values(&[target, reason]);
    }
    m.duration.with_label_values(&[target]);
    m.retries.with_label_values(&[target]);
    m.suspect_total.with_label_values(&[target]);
    m.suspect.with_label_values(&[target]);
    m.drill_restore_seconds.with_label_values(&[target]);
    m.drill_restore_bytes.with_label_values(&[target]);
    m.drill_rows_proven.with_label_values(&[target]);
    m.retry_pending.with_label_values(&[target]);
    m.verify_duration.with_label_values(&[target]);
    m.size.with_label_values(&[target]);
    m.target_up.with_label_values(&[target]);
    m.last_attempt
        .with_label_values(&[target])
        .set(ts(known.last_attempt));
    m.last_success
        .with_label_values(&[target])
        .set(ts(known.last_success));
    m.verify_last_success
        .with_label_values(&[target])
        .set(ts(known.last_verify_success));
    m.last_run_failed
        .with_label_values(&[target])
        .set(i64::from(known.last_run_failed));
    m.verify_last_run_failed
        .with_label_values(&[target])
        .set(i64::from(known.last_verify_failed));
    if known.has_schema {
        m.schema_drift.with_label_values(&[target]);
    }
    for hook in &known.hooks {
        for result in ["success", "failure"] {
            m.hook_runs.with_label_values(&[target, hook, result]);
        }
    }
    for s in storages {
        m.deleted.with_label_values(&[target, s]);
        m.backups.with_label_values(&[target, s]);
        m.broken.with_label_values(&[target, s]);
        // No backup yet: the oldest is "now" until the first listing says otherwise.
        let oldest = m.oldest.with_label_values(&[target, s]);
        if oldest.get() == 0.0 {
            oldest.set(chrono::Utc::now().timestamp() as f64);
        }
    }
    for s in mirrors {
        m.upload_duration.with_label_values(&[target, s]);
        m.uploads_pending
            .with_label_values(&[target, s])
            .set(known.uploads_pending.get(*s).copied().unwrap_or(0) as i64);
    }
}

/// The newest complete backup in storage (taken by the daemon or not): the last success
/// is at least that recent.
pub fn newest_backup_seen(target: &str, at: chrono::DateTime<chrono::Utc>) {
    let g = m().last_success.with_label_values(&[target]);
    if (at.timestamp() as f64) > g.get() {
        g.set(at.timestamp() as f64);
    }
}

/// When the target's restore drill is overdue (`None`: drills are off).
pub fn verify_stale_after(target: &str, at: Option<chrono::DateTime<chrono::Utc>>) {
    m().verify_stale_after
        .with_label_values(&[target])
        .set(at.map_or(f64::INFINITY, |t| t.timestamp() as f64));
}

pub fn upload_finished(target: &str, storage: &str, bytes: u64, duration: std::time::Duration) {
    m().upload_duration
        .with_label_values(&[target, storage])
        .observe(duration.as_secs_f64());
    tracing::info!(
        target,
        storage,
        bytes,
        duration_ms = duration.as_millis() as u64,
        "upload finished"
    );
}

pub fn upload_pending(target: &str, storage: &str, file: &str, error: &str) {
    tracing::error!(
        target,
        storage,
        file,
        error,
        "upload failed; the local backup is kept and marked pending upload"
    );
}

/// How many archives wait for each mirror: `pending` holds the storage name of each
/// waiting archive; a mirror with none is 0.
pub fn uploads_pending<'a>(
    target: &str,
    mirrors: impl Iterator<Item = &'a str>,
    pending: impl Iterator<Item = &'a str> + Clone,
) {
    for s in mirrors {
        let n = pending.clone().filter(|p| *p == s).count();
        m().uploads_pending
            .with_label_values(&[target, s])
            .set(n as i64);
    }
}

pub fn drill_succeeded(target: &str, backup_id: &str, duration: std::time::Duration) {
    let m = m();
    m.verify_runs.with_label_values(&[target, "success"]).inc();
    m.verify_last_run_failed.with_label_values(&[target]).set(0);
    m.verify_last_success
        .with_label_values(&[target])
        .set(chrono::Utc::now().timestamp() as f64);
    m.verify_duration
        .with_label_values(&[target])
        .observe(duration.as_secs_f64());
    tracing::info!(
        target,
        backup_id,
        duration_ms = duration.as_millis() as u64,
        "restore drill succeeded"
    );
}

pub fn drill_failed(target: &str, error: &dyn std::fmt::Display, duration: std::time::Duration) {
    let m = m();
    m.verify_runs.with_label_values(&[target, "failure"]).inc();
    m.verify_last_run_failed.with_label_values(&[target]).set(1);
    m.verify_duration
        .with_label_values(&[target])
        .observe(duration.as_secs_f64());
    if crate::telemetry::log_failures() {
        tracing::error!(target, duration_ms = duration.as_millis() as u64, error = %error, "restore drill failed");
    } else {
        tracing::debug!(target, duration_ms = duration.as_millis() as u64, error = %error, "restore drill failed");
    }
}

/// A drill the role's rights do not allow: counted as `impossible`, not as a failure.
pub fn drill_impossible(target: &str, why: &str) {
    let m = m();
    m.verify_runs
        .with_label_values(&[target, "impossible"])
        .inc();
    m.verify_last_run_failed.with_label_values(&[target]).set(0);
    tracing::warn!(
        target,
        reason = why,
        "restore drill not possible with this role"
    );
}

/// When the target turns stale without a new complete backup (schedule plus grace).
pub fn stale_after(target: &str, at: chrono::DateTime<chrono::Utc>) {
    m().stale_after
        .with_label_values(&[target])
        .set(at.timestamp() as f64);
}

pub fn storage_up(storage: &str, up: bool) {
    m().storage_up
        .with_label_values(&[storage])
        .set(i64::from(up));
}

pub fn backup_started(
    target: &str,
    backup_id: &str,
    archives: usize,
    at: chrono::DateTime<chrono::Utc>,
) {
    m().last_attempt
        .with_label_values(&[target])
        .set(at.timestamp() as f64);
    tracing::info!(target, backup_id, archives, "backup started");
}

pub fn backup_succeeded(target: &str, backup_id: &str, bytes: u64, duration: std::time::Duration) {
    let m = m();
    m.last_run_failed.with_label_values(&[target]).set(0);
    m.runs.with_label_values(&[target, "success"]).inc();
    m.last_success
        .with_label_values(&[target])
        .set(chrono::Utc::now().timestamp() as f64);
    m.size.with_label_values(&[target]).set(bytes as i64);
    m.duration
        .with_label_values(&[target])
        .observe(duration.as_secs_f64());
    tracing::info!(
        target,
        backup_id,
        bytes,
        duration_ms = duration.as_millis() as u64,
        "backup succeeded"
    );
}

/// An admin API call without a valid token (logged once per peer and minute).
pub fn admin_denied(peer: &str, method: &str, path: &str, log: bool) {
    m().admin_denied.with_label_values(&[] as &[&str]).inc();
    if log {
        tracing::warn!(
            who = peer,
            method,
            path,
            "admin API call refused: missing or wrong token (further ones from this address are counted, and summed up in a minute)"
        );
    }
}

/// An authenticated admin API call and how it ended.
pub fn admin_call(who: &str, method: &str, path: &str, status: u16, duration: std::time::Duration) {
    m().admin_requests
        .with_label_values(&[method, &status.to_string()])
        .inc();
    tracing::info!(
        who,
        method,
        path,
        status,
        duration_ms = duration.as_millis() as u64,
        "admin API call"
    );
}

/// The result of comparing the live schema with the declared one.
pub fn schema_drift(target: &str, drifted: bool, differences: usize, pending: usize) {
    let g = m().schema_drift.with_label_values(&[target]);
    if drifted && g.get() != 1 {
        tracing::warn!(
            target,
            differences,
            pending_migrations = pending,
            "the live schema differs from the declared one; `dbkeep schema status {target}` names the differences"
        );
    }
    g.set(i64::from(drifted));
}

/// A new backup was marked suspect.
pub fn backup_suspect(target: &str) {
    m().suspect_total.with_label_values(&[target]).inc();
}

/// Whether the newest complete backup is suspect (and not accepted).
pub fn newest_suspect(target: &str, suspect: bool) {
    m().suspect
        .with_label_values(&[target])
        .set(i64::from(suspect));
}

/// What the last successful drill measured and proved.
pub fn drill_proved(target: &str, seconds: f64, bytes: u64, rows: u64) {
    let m = m();
    m.drill_restore_seconds
        .with_label_values(&[target])
        .set(seconds);
    m.drill_restore_bytes
        .with_label_values(&[target])
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    m.drill_rows_proven
        .with_label_values(&[target])
        .set(i64::try_from(rows).unwrap_or(i64::MAX));
}

/// The target's recovery objectives, exported beside what is measured against them.
pub fn objectives(
    target: &str,
    rpo: Option<std::time::Duration>,
    rto: Option<std::time::Duration>,
) {
    let m = m();
    // None: +Inf, so `measured > objective` never fires for a target without one.
    for (g, v) in [(&m.rpo, rpo), (&m.rto, rto)] {
        g.with_label_values(&[target])
            .set(v.map_or(f64::INFINITY, |d| d.as_secs_f64()));
    }
}

/// The live schema's fingerprint differs from the one the newest backup recorded.
pub fn schema_changed(target: &str, since_backup: &str, before: &str, now: &str) {
    tracing::info!(
        target,
        since_backup,
        before = &before[..before.len().min(12)],
        now = &now[..now.len().min(12)],
        "schema changed since the last backup (fingerprint differs); `dbkeep schema diff {target} --against {since_backup}` shows how"
    );
}

pub fn backup_failed(target: &str, error: &dyn std::fmt::Display, duration: std::time::Duration) {
    let m = m();
    m.last_run_failed.with_label_values(&[target]).set(1);
    m.runs.with_label_values(&[target, "failure"]).inc();
    m.duration
        .with_label_values(&[target])
        .observe(duration.as_secs_f64());
    if crate::telemetry::log_failures() {
        tracing::error!(target, duration_ms = duration.as_millis() as u64, error = %error, "backup failed");
    } else {
        tracing::debug!(target, duration_ms = duration.as_millis() as u64, error = %error, "backup failed");
    }
}

pub fn run_skipped(target: &str, reason: &str) {
    m().skipped.with_label_values(&[target, reason]).inc();
    tracing::warn!(target, reason, "scheduled run skipped");
}

pub fn retention_deleted(target: &str, storage: &str, backup_id: &str, reason: &str) {
    m().deleted.with_label_values(&[target, storage]).inc();
    tracing::info!(
        target,
        storage,
        backup_id,
        reason,
        "backup deleted by retention"
    );
}

/// A manifest that is not trusted: never counted as a backup, never deleted by cleanup.
pub fn broken_manifest(target: &str, storage: &str, file: &str, why: &str) {
    tracing::warn!(
        target,
        storage,
        file,
        why,
        "broken manifest: not counted as a backup and not deleted; `dbkeep verify` lists it"
    );
}

pub fn leftover_removed(target: &str, storage: &str, file: &str, why: &str) {
    tracing::warn!(
        target,
        storage,
        file,
        why,
        "removed leftover of an interrupted run"
    );
}

pub fn backups_counted(
    target: &str,
    storage: &str,
    count: usize,
    oldest: Option<chrono::DateTime<chrono::Utc>>,
    broken: usize,
) {
    let m = m();
    m.backups
        .with_label_values(&[target, storage])
        .set(count as i64);
    m.broken
        .with_label_values(&[target, storage])
        .set(broken as i64);
    // No backup: the oldest is "now" (the series stays, for alerts on its age).
    let t = oldest.unwrap_or_else(chrono::Utc::now);
    m.oldest
        .with_label_values(&[target, storage])
        .set(t.timestamp() as f64);
}

pub fn target_up(target: &str, up: bool, error: Option<&str>) {
    let gauge = m().target_up.with_label_values(&[target]);
    if gauge.get() != i64::from(up) {
        match error {
            Some(e) if !up => tracing::warn!(target, error = e, "database does not answer"),
            _ => tracing::info!(target, up, "database reachability changed"),
        }
    }
    gauge.set(i64::from(up));
}

pub fn config_reloaded(ok: bool, error: Option<&dyn std::fmt::Display>) {
    let status = if ok { "success" } else { "failure" };
    m().reloads.with_label_values(&[status]).inc();
    match error {
        Some(e) => {
            tracing::error!(status, error = %e, "config reload rejected; the previous config keeps running")
        }
        None => tracing::info!(status, "config reloaded"),
    }
}

/// Forget a target that a reload removed.
pub fn target_removed(target: &str, mirrors: &[&str]) {
    let m = m();
    let _ = m.last_success.remove_label_values(&[target]);
    let _ = m.last_attempt.remove_label_values(&[target]);
    let _ = m.size.remove_label_values(&[target]);
    let _ = m.target_up.remove_label_values(&[target]);
    let _ = m.stale_after.remove_label_values(&[target]);
    let _ = m.verify_stale_after.remove_label_values(&[target]);
    let _ = m.verify_last_success.remove_label_values(&[target]);
    let _ = m.verify_last_run_failed.remove_label_values(&[target]);
    for s in mirrors {
        let _ = m.uploads_pending.remove_label_values(&[target, s]);
    }
    let _ = m.schema_drift.remove_label_values(&[target]);
    let _ = m.last_run_failed.remove_label_values(&[target]);
}

/// A database of a server target: its newest complete backup (when it has one), the
/// stored bytes of that archive, and whether it is gone from the server.
pub fn database_seen(
    target: &str,
    database: &str,
    newest: Option<(chrono::DateTime<chrono::Utc>, u64)>,
    gone: bool,
) {
    let m = m();
    if let Some((at, bytes)) = newest {
        m.database_last_success
            .with_label_values(&[target, database])
            .set(at.timestamp() as f64);
        m.database_size
            .with_label_values(&[target, database])
            .set(bytes as i64);
    }
    m.database_gone
        .with_label_values(&[target, database])
        .set(i64::from(gone));
}

/// One hook run and how it ended.
pub fn hook_run(target: &str, hook: &str, ok: bool, duration: std::time::Duration) {
    let result = if ok { "success" } else { "failure" };
    m().hook_runs
        .with_label_values(&[target, hook, result])
        .inc();
    tracing::debug!(
        target,
        hook,
        result,
        duration_ms = duration.as_millis() as u64,
        "hook finished"
    );
}

/// A notifier's series exist from start-up, for each event it sends.
pub fn notifier_registered(notifier: &str, events: &[&str]) {
    for event in events {
        for result in ["success", "failure"] {
            m().notifications
                .with_label_values(&[notifier, event, result]);
        }
    }
}

/// One notification delivered (or given up on after its retries).
pub fn notification(notifier: &str, event: &str, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    m().notifications
        .with_label_values(&[notifier, event, result])
        .inc();
}

/// This replica's role for a target: 1 active, 0 standby.
pub fn target_active(target: &str, active: bool) {
    m().target_active
        .with_label_values(&[target])
        .set(i64::from(active));
}

/// A failed scheduled backup will be tried again.
pub fn backup_retry(target: &str) {
    m().retries.with_label_values(&[target]).inc();
}

/// Whether a retry of `target`'s backup is due.
pub fn retry_pending(target: &str, pending: bool) {
    m().retry_pending
        .with_label_values(&[target])
        .set(i64::from(pending));
}
