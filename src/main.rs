//! The `dbkeep` binary: tune the allocator, parse the command line, start the runtime,
//! run one command, and exit with the code its error kind gives.

use std::process::ExitCode;

use clap::Parser;
use dbkeep::cli::{self, Cli};
use dbkeep::error::ErrorKind;
use dbkeep::telemetry;

/// Large buffers (S3 parts, stream chunks) go straight to mmap and back to the system on
/// free. glibc otherwise raises its mmap threshold after the first such free and keeps later
/// parts in its heap, where they stay resident.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    // Everything dbkeep creates (archives hold whole databases) is private to its user and
    // group whatever umask it was started with: at most 0750 for folders, 0640 for files.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o027);
    }
    let cli = Cli::parse();
    let quiet = cli.is_report();
    telemetry::init(cli.log_format, if quiet { "warn" } else { "info" });
    if !cli.is_daemon() {
        telemetry::failures_printed_by_caller();
    }
    if quiet {
        // Report commands end quietly when their reader goes away (`dbkeep list | head`).
        // Not for the others: they write into child pipes (pg_restore may close its input
        // early on purpose) and must see EPIPE as an error, not die of SIGPIPE.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let label = if f.kind == ErrorKind::Drift {
                "drift"
            } else {
                "error"
            };
            eprintln!("{label}: {}", f.message);
            if let Some(hint) = &f.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(f.exit_code())
        }
    }
}
