//! The registry of runs: every backup, cleanup, drill, restore and schema change the
//! daemon starts (by schedule or over the API) with its kind, targets, state and errors,
//! kept in memory for the API and `/health`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// Finished runs kept for `GET /jobs/{id}`.
const RUNS_KEPT: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// One target's part of a run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunStep {
    pub target: String,
    pub state: RunState,
    pub backup_id: Option<String>,
    pub bytes: Option<u64>,
    pub error: Option<String>,
    /// While the step runs: bytes so far, rate, percent and ETA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::progress::RunProgress>,
    /// A table restore's copies, once it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<TableCopied>>,
}

/// A table restored beside the live data: the original, its copy, the copy's rows.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TableCopied {
    pub table: String,
    pub copy: String,
    pub rows: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunInfo {
    pub id: String,
    /// `backup`, `cleanup`, `drill` or `restore`.
    pub kind: String,
    /// `schedule` or `api`.
    pub trigger: String,
    pub state: RunState,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    /// Steps done out of `total`.
    pub done: usize,
    pub total: usize,
    pub steps: Vec<RunStep>,
}

#[derive(Default)]
pub struct Registry {
    runs: Mutex<BTreeMap<String, RunInfo>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RunInfo>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a run of `kind` over `targets`; returns its id.
    pub fn start(&self, kind: &str, trigger: &str, targets: &[String]) -> String {
        let id = format!("{:016x}", rand::random::<u64>());
        let run = RunInfo {
            id: id.clone(),
            kind: kind.to_string(),
            trigger: trigger.to_string(),
            state: RunState::Queued,
            started: Utc::now(),
            finished: None,
            done: 0,
            total: targets.len(),
            steps: targets
                .iter()
                .map(|t| RunStep {
                    target: t.clone(),
                    state: RunState::Queued,
                    backup_id: None,
                    bytes: None,
                    error: None,
                    progress: None,
                    tables: None,
                })
                .collect(),
        };
        let mut runs = self.lock();
        while runs.len() >= RUNS_KEPT {
            let oldest = runs
                .values()
                .filter(|j| j.finished.is_some())
                .min_by_key(|j| j.started)
                .map(|j| j.id.clone());
            match oldest {
                Some(o) => runs.remove(&o),
                None => break,
            };
        }
        runs.insert(id.clone(), run);
        id
    }

    /// Change step `i` of run `id`; the run's own state follows its steps.
    pub fn step(&self, id: &str, i: usize, f: impl FnOnce(&mut RunStep)) {
        let mut runs = self.lock();
        let Some(r) = runs.get_mut(id) else {
            return;
        };
        r.state = RunState::Running;
        if let Some(s) = r.steps.get_mut(i) {
            f(s);
        }
        r.done = r
            .steps
            .iter()
            .filter(|s| matches!(s.state, RunState::Succeeded | RunState::Failed))
            .count();
        if r.done == r.total && r.finished.is_none() {
            r.finished = Some(Utc::now());
            r.state = if r.steps.iter().all(|s| s.state == RunState::Succeeded) {
                RunState::Succeeded
            } else {
                RunState::Failed
            };
        }
    }

    pub fn get(&self, id: &str) -> Option<RunInfo> {
        self.lock().get(id).cloned().map(with_progress)
    }

    /// Runs not finished yet, oldest first.
    pub fn running(&self) -> Vec<RunInfo> {
        let mut out: Vec<RunInfo> = self
            .lock()
            .values()
            .filter(|r| r.finished.is_none())
            .cloned()
            .map(with_progress)
            .collect();
        out.sort_by_key(|r| r.started);
        out
    }
}

/// A run with the live progress of its running steps.
fn with_progress(mut r: RunInfo) -> RunInfo {
    for s in r.steps.iter_mut().filter(|s| s.state == RunState::Running) {
        s.progress = crate::progress::current(&s.target)
            .into_iter()
            .find(|p| p.kind == r.kind);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_finishes_when_every_step_did() {
        let reg = Registry::default();
        let id = reg.start("backup", "api", &["a".into(), "b".into()]);
        reg.step(&id, 0, |s| s.state = RunState::Succeeded);
        assert_eq!(reg.get(&id).unwrap().state, RunState::Running);
        assert_eq!(reg.running().len(), 1);
        reg.step(&id, 1, |s| s.state = RunState::Failed);
        let r = reg.get(&id).unwrap();
        assert_eq!(r.state, RunState::Failed);
        assert_eq!(r.done, 2);
        assert!(r.finished.is_some());
        assert!(reg.running().is_empty());
    }
}
