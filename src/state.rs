//! The persisted run state of each target (last run, its outcome), kept in a small JSON
//! file beside the local backups so a restart neither repeats nor forgets a due run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = ".dbkeep-state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Success,
    Failure,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetState {
    /// When the daemon first scheduled this target (the clock for "first backup overdue").
    pub since: Option<DateTime<Utc>>,
    pub last_run: Option<DateTime<Utc>>,
    pub last_finished: Option<DateTime<Utc>>,
    pub last_status: Option<RunStatus>,
    pub last_error: Option<String>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_cleanup: Option<DateTime<Utc>>,
    /// The last restore drill: when, how it went, and why it failed.
    pub last_verify: Option<DateTime<Utc>>,
    pub last_verify_status: Option<RunStatus>,
    pub last_verify_error: Option<String>,
    /// Archives stored locally whose upload to a remote storage has not succeeded yet.
    #[serde(default)]
    pub pending_uploads: Vec<PendingUpload>,
    /// When a restore drill last proved each archive (by file name).
    #[serde(default)]
    pub verified: BTreeMap<String, DateTime<Utc>>,
    /// Archives whose bytes no longer match their manifest, by [`corrupt_key`], with what
    /// was found: retention neither counts nor deletes them, health names them.
    #[serde(default)]
    pub corrupt: BTreeMap<String, String>,
    /// A failed scheduled backup is tried again at this time (the daemon's retries).
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    /// Checks the role's rights do not allow (`drill`, `schema`), with why and the fix:
    /// shown by `status` and `/health` as warnings, which do not make a target unhealthy.
    #[serde(default)]
    pub warnings: BTreeMap<String, String>,
    /// A server target's databases whose backup failed in the last run, with why (the
    /// others were stored): each is a problem of its own, and none is taken for dropped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_databases: BTreeMap<String, String>,
    /// What the last successful drill measured and proved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_proven: Option<ProvenRestore>,
    /// The run going on now, as its process last reported it (every few seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<crate::progress::RunProgress>,
}

impl TargetState {
    /// How many archives wait for each mirror.
    pub fn pending_by_storage(&self) -> BTreeMap<String, usize> {
        let mut by = BTreeMap::new();
        for p in &self.pending_uploads {
            *by.entry(p.storage.clone()).or_default() += 1;
        }
        by
    }
}

/// A restore a drill measured: the proven restore time and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvenRestore {
    pub at: DateTime<Utc>,
    pub backup_id: String,
    /// Wall time of the drill: fetching, checking, restoring and proving.
    pub seconds: f64,
    /// Stored bytes restored.
    pub bytes: u64,
    pub tables: usize,
    /// Rows proven identical to the backup's (0 for archives without fingerprints).
    pub rows_proven: u64,
    pub tables_proven: usize,
}

/// The key of one stored archive in [`TargetState::corrupt`].
pub fn corrupt_key(storage: &str, file: &str) -> String {
    format!("{storage}/{file}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    pub file: String,
    pub storage: String,
    pub since: DateTime<Utc>,
    pub error: String,
    /// Not a failure: the archive was left out of the stream to this rate-limited mirror
    /// and is copied from the primary's archive after the run.
    #[serde(default)]
    pub deferred: bool,
}

pub struct StateFile {
    path: PathBuf,
    lock: Mutex<()>,
}

impl StateFile {
    /// The state file in `work_dir` (the local backup folder unless configured).
    pub fn beside(work_dir: &Path) -> Self {
        StateFile {
            path: work_dir.join(FILE_NAME),
            lock: Mutex::new(()),
        }
    }

    pub fn work_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn read(&self) -> BTreeMap<String, TargetState> {
        // Never through a planted link, and never an unbounded read.
        match crate::files::read_no_follow(&self.path, 64 * 1024 * 1024) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "state file unreadable; starting from the backups themselves");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    pub fn get(&self, target: &str) -> TargetState {
        self.read().remove(target).unwrap_or_default()
    }

    /// Read, change one target's entry, write back atomically (temp + rename).
    pub fn update(&self, target: &str, change: impl FnOnce(&mut TargetState)) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.read();
        change(all.entry(target.to_string()).or_default());
        if let Err(e) = self.write(&all) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save the state file; schedules fall back to the backups' own times after a restart");
        }
    }

    fn write(&self, all: &BTreeMap<String, TargetState>) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(all).map_err(std::io::Error::other)?;
        crate::files::write_atomic(&self.path, &bytes)
    }
}

impl TargetState {
    /// Record a finished run; `error` is `None` on success.
    pub fn record_run(
        &mut self,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        error: Option<String>,
    ) {
        self.last_run = Some(started);
        self.last_finished = Some(finished);
        match error {
            None => {
                self.last_status = Some(RunStatus::Success);
                self.last_error = None;
                self.last_success = Some(finished);
            }
            Some(e) => {
                self.last_status = Some(RunStatus::Failure);
                self.last_error = Some(e);
            }
        }
    }
}
