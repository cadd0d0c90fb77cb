//! The only place that spawns child processes: null stdin, kill on drop, SIGTERM on
//! cancel or timeout, every exit status checked, the tail of stderr kept for errors.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;

/// How many lines of a child's stderr are kept for its error message.
const STDERR_TAIL_LINES: usize = 12;
/// How long a child gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}){}", fmt_tail(.stderr))]
    Failed {
        program: String,
        status: String,
        exit_code: Option<i32>,
        stderr: String,
    },
    #[error("{program} was stopped: the job was cancelled")]
    Cancelled { program: String },
    #[error("{program} did not finish within {}; raise the target's `timeout` if the database is that large", humantime::format_duration(*.after))]
    TimedOut { program: String, after: Duration },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for ProcessError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ProcessError::Spawn { source, .. } | ProcessError::Wait { source, .. } => {
                crate::error::io_kind(source)
            }
            ProcessError::Cancelled { .. } | ProcessError::TimedOut { .. } => ErrorKind::Cancelled,
            ProcessError::Failed { .. } => ErrorKind::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            // A restore over a database where objects outside the archive depend on ones
            // it replaces (a view or foreign key on an archived table, a table created
            // since in an archived schema): PostgreSQL names them in its message.
            ProcessError::Failed { stderr, .. }
                if stderr.contains("other objects depend on it") =>
            {
                Some("objects that are not in the backup depend on objects the restore replaces (PostgreSQL names them above); drop or move them first, or restore --into a new database. Nothing was changed".into())
            }
            _ => None,
        }
    }
}

fn fmt_tail(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", tail.trim())
    }
}

/// Whether a child inherits the environment variable `k`: the basics of a process (PATH,
/// HOME, locale, time zone, temp folder) and libpq's own settings, but no password.
fn inherited(k: &str) -> bool {
    matches!(
        k,
        "PATH" | "HOME" | "USER" | "LOGNAME" | "LANG" | "LANGUAGE" | "TZ" | "TMPDIR"
    ) || k.starts_with("LC_")
        || (k.starts_with("PG") && k != "PGPASSWORD")
}

/// What to run. Secrets go to the child's environment only, never its command line.
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub secret_env: Vec<(String, Secret)>,
    /// Log every line the child prints (stdout and stderr) at info under this label,
    /// rather than stderr at debug (hooks: their output is the operator's).
    pub log_as: Option<String>,
}

impl Spec {
    pub fn new(program: impl AsRef<Path>) -> Self {
        Spec {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            secret_env: Vec::new(),
            log_as: None,
        }
    }
    pub fn log_as(mut self, label: impl Into<String>) -> Self {
        self.log_as = Some(label.into());
        self
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }
    pub fn secret_env(mut self, k: &str, v: Option<&Secret>) -> Self {
        if let Some(v) = v {
            self.secret_env.push((k.to_string(), v.clone()));
        }
        self
    }
    fn display_name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.display().to_string())
    }
}

/// A running child whose stdout is streamed by the caller.
pub struct Running {
    program: String,
    child: Child,
    pid: Option<u32>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: Option<JoinHandle<()>>,
    reaped: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropped before its exit was seen (the job was abandoned): kill the whole group;
        // kill_on_drop alone would reach only the direct child.
        if !self.reaped {
            self.stopper().signal(libc::SIGKILL);
        }
    }
}

/// The pipes of a started child that the caller asked for.
struct Pipes {
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
}

/// Start `spec` with the given stdin and stdout; stderr is kept (tail) for errors.
fn start(spec: Spec, stdin: Stdio, stdout: Stdio) -> Result<(Running, Pipes), ProcessError> {
    let program = spec.display_name();
    let mut cmd = Command::new(&spec.program);
    // Children get only what they need: not dbkeep's own settings and secrets (DBKEEP_*,
    // AWS_*, a PGPASSWORD meant for another database), which would reach their environment
    // (readable in /proc by the same user) and any tool they start.
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if inherited(&k.to_string_lossy()) {
            cmd.env(k, v);
        }
    }
    cmd.args(&spec.args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        // Its own process group, so a stop reaches grandchildren (a wrapper's pipeline) too.
        .process_group(0)
        .kill_on_drop(true);
    // A child never outlives dbkeep, even one killed with SIGKILL (no drop runs then): an
    // orphaned pg_restore reading a finished file would go on and commit. Children are
    // started from the runtime's long-lived threads, whose exit is the process's.
    // SAFETY: prctl is async-signal-safe and touches only the new child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    for (k, v) in &spec.secret_env {
        cmd.env(k, v.expose());
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: format!("{program} ({})", spec.program.display()),
        source,
    })?;
    let pipes = Pipes {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
    };
    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    let log_as = spec.log_as.clone();
    let stderr_task = child.stderr.take().map(|stderr| {
        let tail = stderr_tail.clone();
        let name = program.clone();
        tokio::spawn(async move {
            let mut lines = Lines::new(stderr);
            while let Some(line) = lines.next().await {
                match &log_as {
                    Some(label) => tracing::info!(hook = %label, stream = "stderr", "{line}"),
                    None => tracing::debug!(program = %name, "{line}"),
                }
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        })
    });
    let pid = child.id();
    Ok((
        Running {
            program,
            child,
            pid,
            stderr_tail,
            stderr_task,
            reaped: false,
        },
        pipes,
    ))
}

fn missing_pipe(program: &str, which: &str) -> ProcessError {
    ProcessError::Spawn {
        program: program.to_string(),
        source: std::io::Error::other(format!("{which} was not captured")),
    }
}

/// Start `spec` with stdout piped to us; returns the child and its stdout.
pub fn spawn_streaming(spec: Spec) -> Result<(Running, ChildStdout), ProcessError> {
    let name = spec.display_name();
    let (running, pipes) = start(spec, Stdio::null(), Stdio::piped())?;
    let stdout = pipes.stdout.ok_or_else(|| missing_pipe(&name, "stdout"))?;
    Ok((running, stdout))
}

/// Start `spec` with stdout piped to us as a plain blocking pipe, for a reader on a
/// blocking thread: each read then waits in the kernel, where a runtime pipe read from a
/// blocking thread (`SyncIoBridge`) wakes the reactor's thread and then ours for every
/// 64 KiB a dump writes.
pub fn spawn_reading(spec: Spec) -> Result<(Running, std::fs::File), ProcessError> {
    let name = spec.display_name();
    let (running, stdout) = spawn_streaming(spec)?;
    let fd = stdout
        .into_owned_fd()
        .map_err(|source| ProcessError::Spawn {
            program: name,
            source,
        })?;
    let file = std::fs::File::from(fd);
    widen_pipe(&file);
    Ok((running, file))
}

/// How much a pipe between dbkeep and a child holds: the kernel's default of 64 KiB
/// makes the side that waits sleep and wake once per 64 KiB (pg_restore's stdio reads 4
/// KiB at a time); 1 MiB is the most an unprivileged process may ask for by default
/// (/proc/sys/fs/pipe-max-size).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Ask for a [`PIPE_SIZE`] pipe; a kernel that refuses keeps its default, which only
/// costs speed.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a descriptor we own; the call has no memory arguments.
    let got = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    if got < 0 {
        tracing::debug!(
            "the pipe keeps its default size: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A child's stdin as a plain blocking pipe, for a writer on a blocking thread (see
/// [`spawn_reading`]).
pub fn blocking_stdin(stdin: ChildStdin) -> std::io::Result<std::fs::File> {
    let file = std::fs::File::from(stdin.into_owned_fd()?);
    widen_pipe(&file);
    Ok(file)
}

/// Run `spec` to completion with no input, its output discarded (stderr's tail is kept
/// for the error).
pub async fn run(
    spec: Spec,
    cancel: &CancellationToken,
    timeout: Duration,
) -> Result<(), ProcessError> {
    let (running, _) = start(spec, Stdio::null(), Stdio::null())?;
    running.wait(cancel, timeout).await
}

/// Start `spec` reading its stdin from us; its stdout is discarded.
pub fn spawn_stdin(spec: Spec) -> Result<(Running, ChildStdin), ProcessError> {
    let name = spec.display_name();
    let (running, pipes) = start(spec, Stdio::piped(), Stdio::null())?;
    let stdin = pipes.stdin.ok_or_else(|| missing_pipe(&name, "stdin"))?;
    Ok((running, stdin))
}

/// Start `spec` as a filter: we write its stdin and read its stdout.
pub fn spawn_filter(spec: Spec) -> Result<(Running, ChildStdin, ChildStdout), ProcessError> {
    let name = spec.display_name();
    let (running, pipes) = start(spec, Stdio::piped(), Stdio::piped())?;
    let stdin = pipes.stdin.ok_or_else(|| missing_pipe(&name, "stdin"))?;
    let stdout = pipes.stdout.ok_or_else(|| missing_pipe(&name, "stdout"))?;
    Ok((running, stdin, stdout))
}

impl Running {
    /// A handle that can ask the child to stop from another task.
    pub fn stopper(&self) -> Stopper {
        Stopper { pid: self.pid }
    }

    /// Wait for the child to exit; cancel or timeout sends SIGTERM, then SIGKILL.
    /// A non-zero exit or a death by signal is an error carrying the stderr tail.
    pub async fn wait(
        mut self,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<(), ProcessError> {
        let outcome = tokio::select! {
            status = self.child.wait() => Ok(status),
            _ = cancel.cancelled() => Err(ProcessError::Cancelled { program: self.program.clone() }),
            _ = tokio::time::sleep(timeout) => Err(ProcessError::TimedOut { program: self.program.clone(), after: timeout }),
        };
        let status = match outcome {
            Ok(status) => status.map_err(|source| ProcessError::Wait {
                program: self.program.clone(),
                source,
            })?,
            Err(e) => {
                let stopper = self.stopper();
                stopper.terminate();
                let started = tokio::time::Instant::now();
                if tokio::time::timeout(TERM_GRACE, self.child.wait())
                    .await
                    .is_err()
                {
                    stopper.signal(libc::SIGKILL);
                    let _ = self.child.kill().await;
                }
                // The leader may be gone while others of its group ignore SIGTERM: they
                // get what is left of the grace, then SIGKILL.
                stopper
                    .end_group(TERM_GRACE.saturating_sub(started.elapsed()))
                    .await;
                self.reaped = true;
                return Err(e);
            }
        };
        self.reaped = true;
        // Let the stderr reader drain so the tail is complete.
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        check_status(&self.program, status, &self.stderr_tail)
    }
}

fn check_status(
    program: &str,
    status: ExitStatus,
    tail: &Mutex<VecDeque<String>>,
) -> Result<(), ProcessError> {
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let status_text = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    };
    let stderr = tail
        .lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    Err(ProcessError::Failed {
        program: program.to_string(),
        status: status_text,
        exit_code: status.code(),
        stderr,
    })
}

/// Signals a child's process group, e.g. when the stage reading its output failed.
#[derive(Clone, Copy)]
pub struct Stopper {
    pid: Option<u32>,
}

impl Stopper {
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Whether any process of the group is left.
    fn group_alive(&self) -> bool {
        match self.pid {
            // SAFETY: kill(2) with signal 0 only checks for the process group.
            Some(pid) => {
                let r = unsafe { libc::kill(-(pid as libc::pid_t), 0) };
                r == 0
            }
            None => false,
        }
    }

    /// End what is left of the group: SIGTERM, up to `grace` to go, then SIGKILL.
    pub async fn end_group(&self, grace: Duration) {
        if !self.group_alive() {
            return;
        }
        self.terminate();
        let deadline = tokio::time::Instant::now() + grace;
        while self.group_alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.group_alive() {
            self.signal(libc::SIGKILL);
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid {
            // SAFETY: kill(2) on the process group we created for a child not yet reaped.
            unsafe {
                libc::kill(-(pid as libc::pid_t), sig);
            }
        }
    }
}

/// The longest line kept of what a child prints (the rest is counted, not kept): a child
/// that prints one endless line must not fill dbkeep's memory, log or state file.
const LINE_KEEP: usize = 2000;

/// A child's output as lines, whatever bytes it prints: invalid UTF-8 is shown lossily,
/// long lines are cut, and reading goes on to the end, so the child never dies of a pipe
/// nobody reads.
struct Lines<R> {
    inner: BufReader<R>,
}

impl<R: tokio::io::AsyncRead + Unpin> Lines<R> {
    fn new(r: R) -> Self {
        Lines {
            inner: BufReader::new(r),
        }
    }

    /// The next line, or `None` at the end (or on a read error).
    async fn next(&mut self) -> Option<String> {
        let mut kept: Vec<u8> = Vec::new();
        let mut dropped = 0usize;
        loop {
            let buf = match self.inner.fill_buf().await {
                Ok(b) => b,
                Err(_) => return None,
            };
            if buf.is_empty() {
                if kept.is_empty() && dropped == 0 {
                    return None;
                }
                break;
            }
            let (chunk, end) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            let room = LINE_KEEP.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            dropped += chunk.len().saturating_sub(room);
            let used = end.unwrap_or(buf.len());
            self.inner.consume(used);
            if end.is_some() {
                break;
            }
        }
        let mut line = String::from_utf8_lossy(&kept).into_owned();
        if line.ends_with('\r') {
            line.pop();
        }
        if dropped > 0 {
            line.push_str(&format!(" … ({dropped} more bytes)"));
        }
        Some(line)
    }
}

/// Run a command to completion, logging what it prints (see [`Spec::log_as`]); cancel or
/// timeout stops its whole process group.
pub async fn run_logged(
    spec: Spec,
    cancel: &CancellationToken,
    timeout: Duration,
) -> Result<(), ProcessError> {
    let label = spec.log_as.clone().unwrap_or_else(|| spec.display_name());
    let (running, stdout) = spawn_streaming(spec)?;
    let stopper = running.stopper();
    let printing = tokio::spawn(async move {
        let mut lines = Lines::new(stdout);
        while let Some(line) = lines.next().await {
            tracing::info!(hook = %label, stream = "stdout", "{line}");
        }
    });
    let waited = running.wait(cancel, timeout).await;
    // A hook's children do not outlive it (they would hold its pipes and escape every
    // timeout): what is left of its group is ended.
    stopper.end_group(Duration::from_secs(2)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), printing).await;
    waited
}

/// Run a short command to completion and return its stdout (e.g. `pg_dump --version`).
pub async fn run_capture(spec: Spec, timeout: Duration) -> Result<String, ProcessError> {
    let program = spec.display_name();
    let (running, mut stdout) = spawn_streaming(spec)?;
    let mut out = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out);
    let never = CancellationToken::new();
    let (read, waited) = tokio::join!(read, running.wait(&never, timeout));
    waited?;
    read.map_err(|source| ProcessError::Wait { program, source })?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::inherited;

    #[test]
    fn children_inherit_no_dbkeep_or_cloud_secrets() {
        for k in [
            "PATH",
            "HOME",
            "LC_ALL",
            "TZ",
            "PGHOST",
            "PGSSLMODE",
            "PGPASSFILE",
        ] {
            assert!(inherited(k), "{k}");
        }
        for k in [
            "PGPASSWORD",
            "DBKEEP_TARGETS__APP__PASSWORD",
            "DBKEEP_STORAGE__S3__SECRET_ACCESS_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
        ] {
            assert!(!inherited(k), "{k}");
        }
    }
}
