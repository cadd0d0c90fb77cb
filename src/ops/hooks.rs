//! Hooks: the operator's commands before and after each backup of a target (pause an
//! application, flush a cache, tell a ticket system). An argument list, no shell unless
//! the operator writes one; run through `process` (its own process group, stopped with it
//! on timeout or shutdown); what it prints goes to the log; counted in metrics.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Context;
use crate::config::Target;
use crate::error::{Classify, ErrorKind};
use crate::metrics;
use crate::process::{self, ProcessError, Spec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Before,
    After,
    OnFailure,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Before => "before",
            HookKind::After => "after",
            HookKind::OnFailure => "on_failure",
        }
    }
}

/// What a hook is told about the run, as `DBKEEP_*` environment variables.
#[derive(Default)]
pub struct RunInfo {
    pub reason: Option<String>,
    pub backup_id: Option<String>,
    /// `success` or `failure` (after and on_failure hooks).
    pub status: Option<&'static str>,
    pub error: Option<String>,
    /// A JSON file listing the run's manifests (after a successful run).
    pub archives: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the {hook} hook of {target} ({program}) failed: {detail}")]
    Failed {
        target: String,
        hook: &'static str,
        program: String,
        detail: String,
    },
    #[error("the {hook} hook of {target} ({program}) did not finish within {}; it was stopped with its child processes (raise hooks.timeout if it needs longer)", humantime::format_duration(*.after))]
    TimedOut {
        target: String,
        hook: &'static str,
        program: String,
        after: Duration,
    },
    #[error("the {hook} hook of {target} was stopped: the run was cancelled")]
    Cancelled { target: String, hook: &'static str },
}

impl Classify for HookError {
    fn kind(&self) -> ErrorKind {
        match self {
            HookError::Failed { .. } => ErrorKind::Failed,
            HookError::TimedOut { .. } | HookError::Cancelled { .. } => ErrorKind::Cancelled,
        }
    }
}

/// The most of an error a hook gets in `DBKEEP_ERROR`.
const ERROR_KEEP: usize = 16 * 1024;

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let kept = crate::engine::model::cut_at_char(s, max);
    format!("{kept} … ({} more bytes)", s.len() - kept.len())
}

/// The command configured for `kind`, if any.
pub fn command(target: &Target, kind: HookKind) -> Option<&Vec<String>> {
    match kind {
        HookKind::Before => target.hooks.before.as_ref(),
        HookKind::After => target.hooks.after.as_ref(),
        HookKind::OnFailure => target.hooks.on_failure.as_ref(),
    }
}

/// Run the target's `kind` hook, if it has one, and wait for it (at most the hooks'
/// timeout; the run's cancellation stops it too).
pub async fn run(
    ctx: &Context,
    target: &Target,
    kind: HookKind,
    info: &RunInfo,
) -> Result<(), HookError> {
    let Some(argv) = command(target, kind) else {
        return Ok(());
    };
    let hook = kind.name();
    let name = target.name.as_str();
    let program = argv[0].clone();
    let label = format!("{name}.{hook}");
    let mut spec = Spec::new(&program)
        .log_as(&label)
        .env("DBKEEP_TARGET", name)
        .env("DBKEEP_HOOK", hook)
        .env("DBKEEP_KIND", target.source.kind())
        .env("DBKEEP_REASON", info.reason.clone().unwrap_or_default());
    for a in &argv[1..] {
        spec = spec.arg(a);
    }
    if let Some(id) = &info.backup_id {
        spec = spec.env("DBKEEP_BACKUP_ID", id.clone());
    }
    if let Some(status) = info.status {
        spec = spec.env("DBKEEP_STATUS", status);
    }
    if let Some(error) = &info.error {
        // An environment string has a size limit (128 KiB on Linux): the error is cut well
        // below it, so the hook always starts.
        spec = spec.env("DBKEEP_ERROR", cut(error, ERROR_KEEP));
    }
    if let Some(file) = &info.archives {
        spec = spec.env("DBKEEP_ARCHIVES", file.display().to_string());
    }
    tracing::info!(target = name, hook, program = %program, "running hook");
    let t0 = Instant::now();
    let result = process::run_logged(spec, &ctx.cancel, target.hooks.timeout)
        .await
        .map_err(|e| match e {
            ProcessError::TimedOut { after, .. } => HookError::TimedOut {
                target: name.to_string(),
                hook,
                program: program.clone(),
                after,
            },
            ProcessError::Cancelled { .. } => HookError::Cancelled {
                target: name.to_string(),
                hook,
            },
            other => HookError::Failed {
                target: name.to_string(),
                hook,
                program: program.clone(),
                detail: match other {
                    ProcessError::Failed { status, stderr, .. } if stderr.trim().is_empty() => {
                        status
                    }
                    ProcessError::Failed { status, stderr, .. } => {
                        format!("{status}: {}", stderr.trim())
                    }
                    e => e.to_string(),
                },
            },
        });
    metrics::hook_run(name, hook, result.is_ok(), t0.elapsed());
    if let Err(e) = &result {
        tracing::warn!(target = name, hook, error = %e, "hook failed");
    }
    result
}
