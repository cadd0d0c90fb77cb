//! The `dbkeep` command line: parses arguments, runs one command, maps the result to
//! an exit code (0 success, 1 failure, 2 usage or config error).

mod app;
mod catalog;
mod compress;
mod config;
mod demo;
mod health;
mod http;
mod job;
mod metrics;
mod process;
mod restore;
mod retention;
mod scheduler;
mod schema;
mod schema_cmd;
mod source;
mod state;
mod storage;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::catalog::Backup;
use crate::config::Config;
use crate::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "dbkeep",
    version,
    about = "Backups of PostgreSQL and SQLite that restore: streamed, checksummed, kept by age and count"
)]
struct Cli {
    /// Config file (default: $DBKEEP_CONFIG, ./dbkeep.toml, /etc/dbkeep/dbkeep.toml, or env only)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log line format on stderr
    #[arg(
        long,
        global = true,
        env = "DBKEEP_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: scheduled backups and cleanup, /metrics, /health, /ready
    Run,
    /// Take one backup now, of the named targets or of all of them
    Backup {
        /// Targets to back up (all when none is named)
        targets: Vec<String>,
        /// Only upload archives a remote storage missed earlier; take no new backup
        #[arg(long)]
        upload_pending: bool,
    },
    /// List complete backups, newest first
    List {
        /// Only this target
        target: Option<String>,
        /// Only this storage
        #[arg(long, value_name = "local|s3")]
        storage: Option<String>,
        /// One JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Apply retention now: delete old backups and leftovers of interrupted runs
    Cleanup {
        /// Only this target
        target: Option<String>,
        /// Show the plan (id, age, keep/delete, reason) and delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a backup (latest by default): checksum first, one transaction
    Restore {
        /// The target to restore
        target: String,
        /// `latest`, an id (YYYYMMDD_HHMMSS) or ID:SCHEMA
        #[arg(default_value = "latest")]
        backup: String,
        /// Restore into another database (postgres URL) or file (SQLite path)
        #[arg(long, value_name = "URL|PATH")]
        into: Option<String>,
        /// Do not ask; replace what needs replacing
        #[arg(long)]
        yes: bool,
        /// Skip the backup of the current database taken before restoring over it
        #[arg(long)]
        no_safety_backup: bool,
        /// Restore the roles and tablespaces archive (pg_dumpall --globals-only) with psql
        #[arg(long)]
        globals: bool,
    },
    /// Re-read stored archives and check their sha256; --drill restores the newest into a scratch database
    Verify {
        /// Only this target
        target: Option<String>,
        /// Restore the newest complete backup into a scratch database and check it
        #[arg(long)]
        drill: bool,
    },
    /// Per-target health from the backups and the state file, without a running daemon
    Status {
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Declared versus live schema: status, sync, diff
    Schema {
        #[command(subcommand)]
        cmd: schema_cmd::SchemaCmd,
    },
    /// Versioned migrations (up by default), each run after a verified pre-migrate backup
    Migrate {
        /// The target whose schema to migrate
        target: String,
        #[command(subcommand)]
        cmd: Option<schema_cmd::MigrateCmd>,
    },
    /// Config commands
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Exit 0 when the daemon's /health is 200, else 1 (for container health checks)
    Healthcheck {
        /// The health URL (default: http://<daemon.listen>/health)
        #[arg(long)]
        url: Option<String>,
    },
    /// The daemon on a built-in SQLite demo (no server needed) until Ctrl-C
    Demo {
        /// Folder for the demo database and its backups
        #[arg(long, default_value = "dbkeep-demo")]
        dir: PathBuf,
        /// Time between backups
        #[arg(long, default_value = "30s")]
        every: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate; print the effective config with secrets as ***
    Check,
    /// List every environment variable dbkeep reads
    Keys,
}

/// Why a command failed, which decides the exit code.
enum Failure {
    /// Bad arguments or config: exit 2.
    Usage(anyhow::Error),
    /// The work failed: exit 1.
    Failed(anyhow::Error),
    /// The live schema differs from the declared one: exit 3.
    Drift(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Failed(e.into())
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

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
    let cli = Cli::parse();
    let quiet = matches!(
        cli.cmd,
        Cmd::List { .. } | Cmd::Config { .. } | Cmd::Status { .. } | Cmd::Healthcheck { .. }
    );
    telemetry::init(cli.log_format, if quiet { "warn" } else { "info" });
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::Drift(e)) => {
            eprintln!("drift: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, Failure> {
    let file = config::find_config_file(path).map_err(usage)?;
    config::load(file.as_deref()).map_err(usage)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Cmd::Config {
            cmd: ConfigCmd::Check,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            match &cfg.source_file {
                Some(f) => println!("# config OK: {} + DBKEEP_* environment", f.display()),
                None => println!("# config OK: DBKEEP_* environment only (no file)"),
            }
            println!("{}", cfg.to_display_json());
            Ok(())
        }
        Cmd::Config {
            cmd: ConfigCmd::Keys,
        } => {
            for k in config::env_keys() {
                println!("{k}");
            }
            Ok(())
        }
        Cmd::Healthcheck { url } => {
            let url = match url {
                Some(u) => u,
                None => {
                    let cfg = load_config(cli.config.as_deref())?;
                    let listen = cfg
                        .daemon
                        .listen
                        .replace("0.0.0.0:", "127.0.0.1:")
                        .replace("[::]:", "[::1]:");
                    format!("http://{listen}/health")
                }
            };
            healthcheck(&url).await
        }
        Cmd::Backup {
            targets,
            upload_pending: true,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            let selected = select_targets(&cfg, &targets)?;
            upload_pending(&cfg, &selected).await
        }
        Cmd::Backup { targets, .. } => {
            let cfg = load_config(cli.config.as_deref())?;
            let selected = select_targets(&cfg, &targets)?;
            let cancel = cancel_on_ctrl_c();
            backup_targets(&cfg, &selected, &cancel).await
        }
        Cmd::List {
            target,
            storage,
            json,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            let selected = select_targets(&cfg, target.as_slice())?;
            list(&cfg, &selected, storage.as_deref(), json).await
        }
        Cmd::Run => {
            let cfg = load_config(cli.config.as_deref())?;
            app::run(cfg).await.map_err(Failure::Failed)
        }
        Cmd::Cleanup { target, dry_run } => {
            let cfg = load_config(cli.config.as_deref())?;
            let selected = select_targets(&cfg, target.as_slice())?;
            cleanup(&cfg, &selected, dry_run).await
        }
        Cmd::Restore {
            target,
            backup,
            into,
            yes,
            no_safety_backup,
            globals,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            select_targets(&cfg, std::slice::from_ref(&target))?;
            let opts = restore::Options {
                yes,
                safety_backup: !no_safety_backup,
            };
            restore_cmd(&cfg, &target, &backup, into.as_deref(), globals, &opts).await
        }
        Cmd::Verify { target, drill } => {
            let cfg = load_config(cli.config.as_deref())?;
            let selected = select_targets(&cfg, target.as_slice())?;
            verify_cmd(&cfg, &selected, drill).await
        }
        Cmd::Status { json } => {
            let cfg = load_config(cli.config.as_deref())?;
            status(&cfg, json).await
        }
        Cmd::Demo { dir, every } => run_demo(dir, &every).await,
        Cmd::Schema { cmd } => {
            let cfg = load_config(cli.config.as_deref())?;
            schema_cmd::schema(&cfg, cmd).await
        }
        Cmd::Migrate { target, cmd } => {
            let cfg = load_config(cli.config.as_deref())?;
            schema_cmd::migrate(&cfg, &target, cmd).await
        }
    }
}

fn select_targets(cfg: &Config, names: &[String]) -> Result<Vec<String>, Failure> {
    if names.is_empty() {
        return Ok(cfg.targets.iter().map(|t| t.name.clone()).collect());
    }
    for n in names {
        if cfg.target(n).is_none() {
            return Err(usage(anyhow!(
                "unknown target `{n}`: the config defines {}",
                cfg.target_names().join(", ")
            )));
        }
    }
    Ok(names.to_vec())
}

fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the running backup, nothing partial is kept");
            c.cancel();
        }
    });
    cancel
}

async fn backup_targets(
    cfg: &Config,
    names: &[String],
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let storages = storage::build(cfg).await;
    let state = state::StateFile::beside(&cfg.daemon.work_dir);
    let mut failed = Vec::new();
    for name in names {
        let Some(target) = cfg.target(name) else {
            continue;
        };
        let started = chrono::Utc::now();
        let result = job::backup(target, &storages, &state, None, cancel).await;
        let error = result.as_ref().err().map(|e| e.to_string());
        state.update(name, |s| s.record_run(started, chrono::Utc::now(), error));
        match result {
            Ok(outcome) => print_outcome(&outcome),
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(name.clone());
            }
        }
    }
    all_done(&failed, "backup")
}

async fn upload_pending(cfg: &Config, names: &[String]) -> Result<(), Failure> {
    let storages = storage::build(cfg).await;
    let state = state::StateFile::beside(&cfg.daemon.work_dir);
    let mut failed = Vec::new();
    for name in names {
        let Some(target) = cfg.target(name) else {
            continue;
        };
        match job::upload_pending(target, &storages, &state).await {
            Ok(n) => println!("{name}: uploaded {n} pending archive(s)"),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed.push(name.clone());
            }
        }
        let left = state.get(name).pending_uploads.len();
        if left > 0 {
            println!("{name}: {left} archive(s) still pending upload");
        }
    }
    all_done(&failed, "pending uploads")
}

/// Success when no target failed; else exit 1 naming the ones that did.
fn all_done(failed: &[String], what: &str) -> Result<(), Failure> {
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(anyhow!(
            "{what} failed for: {}",
            failed.join(", ")
        )))
    }
}

fn print_outcome(o: &job::Outcome) {
    for (file, storage) in &o.pending {
        println!("{:<12} {file}: NOT uploaded to {storage}; kept locally, pending upload (retried at the next run)", o.target);
    }
    if !o.leftovers_removed.is_empty() {
        println!(
            "{:<12} removed {} leftover temp file(s) of an interrupted run",
            o.target,
            o.leftovers_removed.len()
        );
    }
    for m in &o.manifests {
        println!(
            "{:<12} {}  {:<48} {:>10}  (raw {}, {:.1}x)  sha256 {}",
            o.target,
            o.id,
            m.file,
            human_bytes(m.stored_bytes),
            human_bytes(m.raw_bytes),
            m.raw_bytes as f64 / m.stored_bytes.max(1) as f64,
            &m.sha256[..16],
        );
    }
    println!(
        "{:<12} {}  OK: {} archive(s), {} in {:.2}s",
        o.target,
        o.id,
        o.manifests.len(),
        human_bytes(o.stored_bytes()),
        o.duration.as_secs_f64()
    );
}

async fn list(
    cfg: &Config,
    names: &[String],
    only: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let storages = storage::build(cfg).await;
    if let Some(s) = only {
        if !storages.iter().any(|st| st.name() == s) {
            let configured: Vec<&str> = storages.iter().map(|st| st.name()).collect();
            return Err(usage(anyhow!(
                "storage `{s}` is not configured (configured: {}); add a [storage.{s}] section",
                configured.join(", ")
            )));
        }
    }
    let now = chrono::Utc::now();
    let mut all: Vec<Backup> = Vec::new();
    for name in names {
        for s in storages
            .iter()
            .filter(|s| only.is_none_or(|o| o == s.name()))
        {
            let listing = catalog::list(s.as_ref(), name, now)
                .await
                .with_context(|| format!("listing {} on {}", name, s.location(name)))?;
            for (file, why) in &listing.broken {
                tracing::warn!(target = %name, storage = s.name(), file = %file, "not a complete backup: {why}");
            }
            all.extend(listing.complete);
        }
    }
    all.sort_by(|a, b| {
        b.id.cmp(&a.id)
            .then_with(|| a.target.cmp(&b.target))
            .then_with(|| a.storage.cmp(&b.storage))
            .then_with(|| a.file.cmp(&b.file))
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no complete backups");
        return Ok(());
    }
    println!(
        "{:<15}  {:<12} {:<16} {:<7} {:>10}  {:<20}  FILE",
        "ID", "TARGET", "SCHEMA", "STORAGE", "SIZE", "CREATED"
    );
    for b in &all {
        let schema = match (b.contents, &b.schema) {
            (catalog::Contents::Globals, _) => "(globals)".to_string(),
            (_, Some(s)) => s.clone(),
            (_, None) => "-".to_string(),
        };
        println!(
            "{:<15}  {:<12} {:<16} {:<7} {:>10}  {:<20}  {}",
            b.id,
            b.target,
            schema,
            b.storage,
            human_bytes(b.bytes),
            b.created.format("%Y-%m-%d %H:%M:%SZ"),
            b.file
        );
    }
    Ok(())
}

async fn cleanup(cfg: &Config, names: &[String], dry_run: bool) -> Result<(), Failure> {
    let storages = storage::build(cfg).await;
    let state = state::StateFile::beside(&cfg.daemon.work_dir);
    let now = chrono::Utc::now();
    let mut failed = Vec::new();
    for name in names {
        let Some(target) = cfg.target(name) else {
            continue;
        };
        let reports = match job::cleanup(target, &storages, &state, dry_run, now).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(name.clone());
                continue;
            }
        };
        for r in reports {
            print_cleanup(&r, dry_run, now);
        }
    }
    all_done(&failed, "cleanup")
}

fn print_cleanup(r: &job::CleanupReport, dry_run: bool, now: chrono::DateTime<chrono::Utc>) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    let deleting = r
        .decisions
        .iter()
        .filter(|(d, _)| d.action == retention::Action::Delete)
        .count();
    println!(
        "{} on {}: {} backup(s), {verb} {deleting}, keeping {}{}",
        r.target,
        r.storage,
        r.decisions.len(),
        r.remaining,
        if dry_run {
            " (dry run: nothing deleted)"
        } else {
            ""
        }
    );
    println!("  {:<15}  {:>8}  {:<6}  REASON", "ID", "AGE", "ACTION");
    for (d, _files) in &r.decisions {
        let action = match d.action {
            retention::Action::Keep => "keep",
            retention::Action::Delete => "delete",
        };
        println!(
            "  {:<15}  {:>8}  {:<6}  {}",
            d.id,
            retention::fmt_age(now - d.id.time()),
            action,
            d.reason
        );
    }
    for (file, why) in &r.leftovers {
        println!("  {verb} leftover {file}: {why}");
    }
}

/// Ask for the target name on a terminal before a change; without a terminal the caller
/// needs `--yes`. `action` completes "refusing to ..."; `detail` is shown before the question.
fn confirm_by_name(name: &str, action: &str, detail: &str) -> Result<(), Failure> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(usage(anyhow!(
            "refusing to {action} without confirmation: run it on a terminal, or add --yes"
        )));
    }
    eprint!("{detail}. Type the target name ({name}) to go on: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != name {
        return Err(usage(anyhow!("not confirmed; nothing was changed")));
    }
    Ok(())
}

fn restore_failure(e: restore::RestoreError) -> Failure {
    match e {
        restore::RestoreError::Refused(_) => Failure::Usage(e.into()),
        other => Failure::Failed(other.into()),
    }
}

async fn restore_cmd(
    cfg: &Config,
    name: &str,
    backup: &str,
    into: Option<&str>,
    globals: bool,
    opts: &restore::Options,
) -> Result<(), Failure> {
    let Some(target) = cfg.target(name) else {
        return Err(usage(anyhow!("unknown target `{name}`")));
    };
    let selector: restore::Selector = backup.parse().map_err(|e: String| usage(anyhow!(e)))?;
    let dest = restore::Destination::parse(target, into).map_err(restore_failure)?;
    let storages = storage::build(cfg).await;
    let state = state::StateFile::beside(&cfg.daemon.work_dir);
    let chosen = restore::choose(target, &storages, &selector, globals)
        .await
        .map_err(restore_failure)?;
    let plan = restore::describe(target, &chosen, &dest);
    eprintln!("{plan}");
    // The archive is proven intact before anything is asked or touched.
    restore::verify_checksum(storages[chosen.storage].as_ref(), &chosen.backup)
        .await
        .map_err(restore_failure)?;
    eprintln!("checksum OK (sha256 {})", &chosen.backup.sha256[..16]);
    if dest.is_own() && !opts.yes {
        confirm_by_name(
            name,
            "restore over the live database",
            if opts.safety_backup {
                "This replaces data in the live database (a safety backup is taken first)"
            } else {
                "This replaces data in the live database"
            },
        )?;
    }
    let cancel = cancel_on_ctrl_c();
    let t0 = std::time::Instant::now();
    restore::execute(target, &storages, &state, &chosen, &dest, opts, &cancel)
        .await
        .map_err(restore_failure)?;
    println!(
        "{name}: restored {} from {} in {:.1}s",
        chosen.backup.file,
        chosen.backup.storage,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn verify_cmd(cfg: &Config, names: &[String], drill: bool) -> Result<(), Failure> {
    let storages = storage::build(cfg).await;
    let state = state::StateFile::beside(&cfg.daemon.work_dir);
    let cancel = cancel_on_ctrl_c();
    let mut bad = 0usize;
    for name in names {
        let Some(target) = cfg.target(name) else {
            continue;
        };
        if drill {
            match restore::drill(target, &storages, &state, &cancel).await {
                Ok(r) => println!(
                    "{name}: drill OK: backup {} restored ({} archive(s), {} tables checked) in {:.1}s",
                    r.id,
                    r.archives,
                    r.tables,
                    r.duration.as_secs_f64()
                ),
                Err(e) => {
                    bad += 1;
                    println!("{name}: drill FAILED: {e}");
                }
            }
            continue;
        }
        match restore::verify_all(target, &storages).await {
            Ok(checked) => {
                for c in &checked {
                    match &c.problem {
                        None => println!("{name} {:<6} OK       {}", c.storage, c.file),
                        Some(p) => {
                            bad += 1;
                            println!("{name} {:<6} PROBLEM  {}: {p}", c.storage, c.file);
                        }
                    }
                }
                if checked.is_empty() {
                    println!("{name}: no backups to verify");
                }
            }
            Err(e) => {
                bad += 1;
                println!("{name}: cannot verify: {e}");
            }
        }
    }
    if bad == 0 {
        Ok(())
    } else {
        Err(Failure::Failed(anyhow!("{bad} problem(s) found")))
    }
}

async fn status(cfg: &Config, json: bool) -> Result<(), Failure> {
    let storages = storage::build(cfg).await;
    let state = state::StateFile::beside(&cfg.daemon.work_dir);
    let now = chrono::Utc::now();
    let mut all = Vec::new();
    for t in &cfg.targets {
        let st = state.get(&t.name);
        let (newest, count) = app::newest_backup(&storages, &t.name, now).await;
        let ping = source::build(t).ping().await;
        let db = health::DbStatus {
            up: ping.is_ok(),
            error: ping.err().map(|e| e.to_string()),
            checked: now,
        };
        let last = st.last_run.or(newest.as_ref().map(|n| n.1));
        let next = scheduler::next_run(&t.schedule, last, now).max(now);
        all.push(health::assess(
            t,
            health::Facts {
                newest,
                backups: count,
                state: &st,
                next_run: Some(next),
                database: Some(db),
            },
            now,
        ));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print_status(&all);
    }
    if all.iter().all(|h| h.healthy) {
        Ok(())
    } else {
        let failing: Vec<&str> = all
            .iter()
            .filter(|h| !h.healthy)
            .map(|h| h.target.as_str())
            .collect();
        Err(Failure::Failed(anyhow!(
            "failing targets: {}",
            failing.join(", ")
        )))
    }
}

fn print_status(all: &[health::TargetHealth]) {
    println!(
        "{:<12} {:<8} {:<7} {:<15} {:>8} {:>7} {:<8} {:<20}  DATABASE",
        "TARGET", "KIND", "HEALTH", "NEWEST", "AGE", "BACKUPS", "LAST RUN", "NEXT RUN"
    );
    for h in all {
        let (id, age) = match &h.newest_backup {
            Some(n) => (
                n.id.clone(),
                retention::fmt_age(chrono::Duration::seconds(n.age_seconds)),
            ),
            None => ("-".into(), "-".into()),
        };
        let last = match h.last_run.status {
            Some(state::RunStatus::Success) => "success",
            Some(state::RunStatus::Failure) => "failure",
            None => "-",
        };
        let db = match &h.database {
            Some(d) if d.up => "up".to_string(),
            Some(d) => format!("DOWN: {}", d.error.as_deref().unwrap_or("")),
            None => "-".into(),
        };
        let next = h
            .next_run
            .map(|n| n.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_default();
        let health = if h.healthy { "ok" } else { "FAILING" };
        println!(
            "{:<12} {:<8} {:<7} {:<15} {:>8} {:>7} {:<8} {:<20}  {db}",
            h.target, h.kind, health, id, age, h.backups, last, next
        );
        for p in &h.problems {
            println!("{:<12} problem: {p}", "");
        }
    }
}

/// GET `url` (plain HTTP, loopback) and succeed on 200.
async fn healthcheck(url: &str) -> Result<(), Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| usage(anyhow!("{url}: only http:// URLs are supported")))?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/health".into()));
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(host).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&raw).into_owned())
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| Failure::Failed(anyhow!("{url}: no answer within 10 s")))?
        .map_err(|e| Failure::Failed(anyhow!("{url}: {e}")))?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    println!("{}", body.trim());
    if status == "200" {
        Ok(())
    } else {
        Err(Failure::Failed(anyhow!("{url} answered {status}")))
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn run_demo(dir: PathBuf, every: &str) -> Result<(), Failure> {
    let cfg = demo::config(&dir, every).map_err(usage)?;
    let pool = demo::open_database(&dir)
        .await
        .with_context(|| format!("creating the demo database in {}", dir.display()))?;
    let stop_writer = CancellationToken::new();
    let writer = tokio::spawn(demo::keep_writing(
        pool.clone(),
        Duration::from_millis(250),
        stop_writer.clone(),
    ));
    println!(
        "dbkeep demo: {} is taking orders; the daemon backs it up every {every} into {}, keeping the newest 3.\n\
         Try: curl -s localhost:9187/metrics | grep ^dbkeep_   and   curl -s localhost:9187/health   (Ctrl-C stops)",
        dir.join(demo::DB_FILE).display(),
        dir.join("backups").join("shop").display()
    );
    let result = app::run(cfg).await;
    stop_writer.cancel();
    let _ = writer.await;
    pool.close().await;
    result.map_err(Failure::Failed)
}
