//! The command line: arguments, one file per command group, and the one place an error
//! becomes an exit code (0 success, 1 failure, 2 usage or refusal, 3 drift).

mod backup;
mod restore;
mod run;
mod schema;
mod status;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::error::{Classify, ErrorKind};
use crate::ops::Context;
use crate::state::StateFile;
use crate::storage;
use crate::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "dbkeep",
    version,
    about = "Backups of PostgreSQL and SQLite that restore: streamed, checksummed, kept by age and count"
)]
pub struct Cli {
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
    pub log_format: LogFormat,
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
    /// Keep a backup whatever retention says, until `unpin` (on every storage that has it)
    Pin {
        target: String,
        /// The backup's id (YYYYMMDD_HHMMSS), as `list` shows it
        id: String,
        /// Why it is kept, shown by list, status, cleanup --dry-run and the admin page
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove a pin: retention decides about the backup again
    Unpin { target: String, id: String },
    /// Clear a backup's suspect mark (its rows or size dropped sharply) when the drop was
    /// intended: retention counts it again
    Accept {
        target: String,
        /// The backup's id (YYYYMMDD_HHMMSS), as `list` shows it
        id: String,
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
        /// A file holding the password for the --into URL's user (the target's own password
        /// is used only for the target's own user on its own server)
        #[arg(long, value_name = "FILE", requires = "into")]
        into_password_file: Option<PathBuf>,
        /// Do not ask; replace what needs replacing
        #[arg(long)]
        yes: bool,
        /// Skip the backup of the current database taken before restoring over it
        #[arg(long)]
        no_safety_backup: bool,
        /// Restore the roles and tablespaces archive (pg_dumpall --globals-only) with psql
        #[arg(long)]
        globals: bool,
        /// Let replacing a schema drop the objects outside it that depend on it (they are
        /// listed first; without this flag the restore refuses)
        #[arg(long)]
        drop_dependents: bool,
        /// Read the archive only from this storage (`local`, `s3` or a mirror's name);
        /// by default the first that has it, then the next if it fails
        #[arg(long, value_name = "NAME")]
        storage: Option<String>,
        /// The database to restore, of a target that backs up a server (`databases`)
        #[arg(long, value_name = "NAME", conflicts_with = "globals")]
        database: Option<String>,
        /// The age identity file that decrypts encrypted archives (instead of the
        /// target's `identity_file`)
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Restore only this table, beside the live data under a new name
        /// (<name>_restored_<id>); repeat for several. The original is not touched
        #[arg(long, value_name = "SCHEMA.NAME", conflicts_with_all = ["into", "globals", "drop_dependents", "no_safety_backup"])]
        table: Vec<String>,
        /// The copy's name, for one --table (default: <name>_restored_<id> in the table's schema)
        #[arg(long = "as", value_name = "SCHEMA.NAME", requires = "table")]
        rename: Option<String>,
    },
    /// Re-read stored archives and check their sha256; --drill restores the newest into a scratch database
    Verify {
        /// Only this target
        target: Option<String>,
        /// Restore the newest complete backup into a scratch database and check it
        #[arg(long)]
        drill: bool,
        /// The age identity file that decrypts encrypted archives (instead of the
        /// target's `identity_file`)
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Connect to every target and storage; per feature, whether the role, tools and
    /// space allow it and what to grant if not (exit 1 when something configured cannot work)
    Doctor {
        /// Only this target
        target: Option<String>,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
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
        cmd: schema::SchemaCmd,
    },
    /// Versioned migrations (up by default), each run after a verified pre-migrate backup
    Migrate {
        /// The target whose schema to migrate
        target: String,
        #[command(subcommand)]
        cmd: Option<schema::MigrateCmd>,
    },
    /// Config commands
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Notifier commands
    Notify {
        #[command(subcommand)]
        cmd: NotifyCmd,
    },
    /// Exit 0 when the daemon's /health is 200, else 1 (for container health checks)
    Healthcheck {
        /// The health URL (default: http://<daemon.listen>/health)
        #[arg(long)]
        url: Option<String>,
    },
    /// Key commands (encryption and manifest signing)
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
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
    Check {
        /// Also connect to every target and storage and check each feature (`dbkeep doctor`)
        #[arg(long)]
        connect: bool,
    },
    /// List every environment variable dbkeep reads
    Keys,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Write a new key to FILE (owner-only, never over an existing file) and print its
    /// public half: an age identity (its recipient goes in `encrypt_to`), or with
    /// --signing a manifest signing key (its verify key goes in `verify_key`)
    New {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A manifest signing key (ed25519) instead of an encryption key
        #[arg(long)]
        signing: bool,
    },
}

#[derive(Subcommand)]
enum NotifyCmd {
    /// Send a test message through the notifier NAME now, and say whether it arrived
    Test {
        /// The notifier (a [notify.NAME] section)
        name: String,
    },
}

impl Cli {
    /// Report commands print data on stdout and only warnings on stderr.
    /// The daemon (and the demo) log failures; every other command prints them.
    pub fn is_daemon(&self) -> bool {
        matches!(self.cmd, Cmd::Run | Cmd::Demo { .. })
    }

    pub fn is_report(&self) -> bool {
        matches!(
            self.cmd,
            Cmd::List { .. } | Cmd::Config { .. } | Cmd::Status { .. } | Cmd::Healthcheck { .. }
        )
    }
}

/// Why a command failed: what the operator reads, and its kind (the exit code).
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }
}

impl<E: Classify + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            kind: e.kind(),
            message: crate::error::chain(&e),
            hint: e.hint(),
        }
    }
}

pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure::new(ErrorKind::Usage, message)
}

pub(crate) fn failed(message: impl Into<String>) -> Failure {
    Failure::new(ErrorKind::Failed, message)
}

/// Printing to stdout failed (a closed pipe, a full disk).
fn output(e: impl std::fmt::Display) -> Failure {
    failed(format!("cannot write the output: {e}"))
}

/// Print `v` as pretty JSON on stdout.
pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).map_err(output)?;
    println!("{text}");
    Ok(())
}

/// How long a command waits, before it exits, for uploads it dropped to be aborted.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Run one command; before returning, wait for what it left in flight (uploads to
/// abort) so nothing is left open on a remote store.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let result = dispatch(cli).await;
    if !crate::notify::settle(SETTLE).await {
        eprintln!(
            "warning: some notifications were still being delivered after {}s; they are given up",
            SETTLE.as_secs()
        );
    }
    if !storage::settle(SETTLE).await {
        eprintln!(
            "warning: some multipart uploads were still being aborted after {}s; the next run aborts them",
            SETTLE.as_secs()
        );
    }
    result
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let path = cli.config.as_deref();
    // A one-shot backup, restore or drill on a terminal shows a progress bar.
    if matches!(
        cli.cmd,
        Cmd::Backup { .. } | Cmd::Restore { .. } | Cmd::Verify { drill: true, .. }
    ) {
        use std::io::IsTerminal;
        crate::progress::set_interactive(std::io::stderr().is_terminal());
    }
    match cli.cmd {
        Cmd::Config {
            cmd: ConfigCmd::Check { connect },
        } => {
            let cfg = load_config(path)?;
            match &cfg.source_file {
                Some(f) => println!("# config OK: {} + DBKEEP_* environment", f.display()),
                None => println!("# config OK: DBKEEP_* environment only (no file)"),
            }
            println!("{}", cfg.to_display_json());
            if !connect {
                return Ok(());
            }
            let ctx = context(&cfg).await?;
            status::doctor(&ctx, &cfg, &[], false).await
        }
        Cmd::Doctor { target, json } => {
            let cfg = load_config(path)?;
            let selected = select_targets(&cfg, target.as_slice())?;
            let ctx = context(&cfg).await?;
            status::doctor(&ctx, &cfg, &selected, json).await
        }
        Cmd::Config {
            cmd: ConfigCmd::Keys,
        } => {
            for k in config::env_keys() {
                println!("{k}");
            }
            Ok(())
        }
        Cmd::Healthcheck { url } => status::healthcheck(path, url).await,
        Cmd::Key {
            cmd: KeyCmd::New { out, signing },
        } => {
            let (text, public) = match signing {
                true => crate::crypt::SigningKey::generate(),
                false => crate::crypt::new_identity(),
            };
            crate::files::create_private(&out, text.as_bytes()).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Failure::new(
                    ErrorKind::Refused,
                    format!(
                        "{} exists already; a key file is never overwritten (losing a key loses every backup made for it): choose another path",
                        out.display()
                    ),
                ),
                _ => Failure::new(
                    crate::error::io_kind(&e),
                    format!("cannot write the key to {}: {e}; nothing was written", out.display()),
                ),
            })?;
            let (what, key) = match signing {
                true => ("signing key", "verify_key"),
                false => ("age identity", "encrypt_to"),
            };
            eprintln!(
                "wrote the {what} to {} (mode 0600); keep a copy where this host's disks are not: without it {}",
                out.display(),
                match signing {
                    true => "new manifests cannot be signed",
                    false => "no backup encrypted to it can be restored",
                }
            );
            eprintln!("put the line below in `{key}`:");
            println!("{public}");
            Ok(())
        }
        Cmd::Notify {
            cmd: NotifyCmd::Test { name },
        } => {
            let cfg = load_config(path)?;
            let notifiers = crate::notify::Notifiers::new(&cfg.notify);
            match notifiers.test(&name).await {
                Ok(()) => {
                    println!("{name}: test message delivered");
                    Ok(())
                }
                Err(e) if cfg.notify.iter().any(|n| n.name == name) => Err(failed(format!(
                    "{name}: the test message was not delivered: {e}"
                ))),
                Err(e) => Err(usage(e)),
            }
        }
        Cmd::Backup {
            targets,
            upload_pending,
        } => {
            let cfg = load_config(path)?;
            let selected = select_targets(&cfg, &targets)?;
            let ctx = context(&cfg).await?;
            interruptible(&ctx);
            if upload_pending {
                backup::upload_pending(&ctx, &cfg, &selected).await
            } else {
                backup::backup(&ctx, &cfg, &selected).await
            }
        }
        Cmd::List {
            target,
            storage,
            json,
        } => {
            let cfg = load_config(path)?;
            let selected = select_targets(&cfg, target.as_slice())?;
            let ctx = context(&cfg).await?;
            let targets: Vec<&crate::config::Target> =
                selected.iter().filter_map(|n| cfg.target(n)).collect();
            backup::list(&ctx, &targets, storage.as_deref(), json).await
        }
        Cmd::Pin { target, id, reason } => {
            let cfg = load_config(path)?;
            let ctx = context(&cfg).await?;
            backup::pin(&ctx, &cfg, &target, &id, reason.as_deref(), true).await
        }
        Cmd::Unpin { target, id } => {
            let cfg = load_config(path)?;
            let ctx = context(&cfg).await?;
            backup::pin(&ctx, &cfg, &target, &id, None, false).await
        }
        Cmd::Accept { target, id } => {
            let cfg = load_config(path)?;
            let ctx = context(&cfg).await?;
            backup::accept(&ctx, &cfg, &target, &id).await
        }
        Cmd::Cleanup { target, dry_run } => {
            let cfg = load_config(path)?;
            let selected = select_targets(&cfg, target.as_slice())?;
            let ctx = context(&cfg).await?;
            interruptible(&ctx);
            backup::cleanup(&ctx, &cfg, &selected, dry_run).await
        }
        Cmd::Restore {
            target,
            backup,
            into,
            into_password_file,
            yes,
            no_safety_backup,
            globals,
            drop_dependents,
            storage,
            database,
            identity,
            table,
            rename,
        } => {
            let cfg = load_config(path)?;
            select_targets(&cfg, std::slice::from_ref(&target))?;
            let into_password = match &into_password_file {
                Some(f) => Some(crate::config::Secret::new(
                    std::fs::read_to_string(f)
                        .map_err(|e| {
                            usage(format!(
                                "--into-password-file {}: {e}; check the path and that dbkeep's user may read it",
                                f.display()
                            ))
                        })?
                        .trim_end_matches(['\n', '\r']),
                )),
                None => None,
            };
            let mut ctx = context(&cfg).await?;
            ctx.identity = identity;
            let args = restore::RestoreArgs {
                target: &target,
                backup: &backup,
                into: into.as_deref(),
                into_password,
                globals,
                storage,
                database,
                tables: table,
                rename,
                opts: crate::ops::restore::Options {
                    yes,
                    safety_backup: !no_safety_backup,
                    drop_dependents,
                },
            };
            restore::restore(&ctx, &cfg, args).await
        }
        Cmd::Verify {
            target,
            drill,
            identity,
        } => {
            let cfg = load_config(path)?;
            let selected = select_targets(&cfg, target.as_slice())?;
            let mut ctx = context(&cfg).await?;
            ctx.identity = identity;
            interruptible(&ctx);
            restore::verify(&ctx, &cfg, &selected, drill).await
        }
        Cmd::Status { json } => {
            let cfg = load_config(path)?;
            let ctx = context(&cfg).await?;
            status::status(&ctx, &cfg, json).await
        }
        Cmd::Schema { cmd } => {
            let cfg = load_config(path)?;
            let mut ctx = context(&cfg).await?;
            if let schema::SchemaCmd::Diff { identity, .. } = &cmd {
                ctx.identity = identity.clone();
            }
            schema::schema(&ctx, &cfg, cmd).await
        }
        Cmd::Migrate { target, cmd } => {
            let cfg = load_config(path)?;
            let ctx = context(&cfg).await?;
            schema::migrate(&ctx, &cfg, &target, cmd).await
        }
        Cmd::Run => run::daemon(load_config(path)?).await,
        Cmd::Demo { dir, every } => run::demo(dir, &every).await,
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    let file = config::find_config_file(path)?;
    if file.is_none() && !config::env_configures() {
        // Nothing found anywhere: say where dbkeep looked, not what the empty config lacks.
        return Err(usage(format!(
            "no config file: looked for --config FILE, $DBKEEP_CONFIG, {}; pass --config FILE, set DBKEEP_CONFIG, or configure with DBKEEP_* variables (`dbkeep config keys` lists them)",
            config::DEFAULT_CONFIG_PATHS.join(", ")
        )));
    }
    Ok(config::load(file.as_deref())?)
}

/// The context of a one-shot command: the config's storages and state file. Commands
/// that run long work call [`interruptible`] once nothing is left to ask.
async fn context(cfg: &Config) -> Result<Context, Failure> {
    let storages = storage::build(cfg).await?;
    Ok(Context::new(
        Arc::new(storages),
        Arc::new(StateFile::beside(&cfg.daemon.work_dir)),
        CancellationToken::new(),
    )
    .with_notifiers(crate::notify::Notifiers::new(&cfg.notify)))
}

/// The configured target `name`, or a usage error listing the configured ones.
pub(super) fn target<'a>(
    cfg: &'a Config,
    name: &str,
) -> Result<&'a crate::config::Target, Failure> {
    cfg.target(name).ok_or_else(|| {
        usage(format!(
            "unknown target `{name}`: the config defines {}",
            cfg.target_names().join(", ")
        ))
    })
}

fn select_targets(cfg: &Config, names: &[String]) -> Result<Vec<String>, Failure> {
    for n in names {
        target(cfg, n)?;
    }
    Ok(match names.is_empty() {
        true => cfg.targets.iter().map(|t| t.name.clone()).collect(),
        false => names.to_vec(),
    })
}

/// From now on, SIGTERM and SIGINT (Ctrl-C, `systemctl stop`, a stopped container or
/// CronJob) cancel `ctx`'s work instead of killing the process: children are stopped,
/// uploads aborted, temp files removed, and the command exits non-zero. A second signal
/// exits at once (the next run removes what is left).
fn interruptible(ctx: &Context) {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before returning, so no signal in between falls to the default action.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    let c = ctx.cancel.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!(
            "interrupted by {name}: stopping; uploads are aborted and nothing partial is kept (send it again to exit at once)"
        );
        c.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("interrupted again: exiting now; the next run removes what is left");
        std::process::exit(130);
    });
}

/// Ask for the target name on a terminal before a change; without a terminal the caller
/// needs `--yes`. `action` completes "refusing to ..."; `detail` is shown before the question.
fn confirm_by_name(name: &str, action: &str, detail: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "refusing to {action} without confirmation: run it on a terminal, or add --yes"
        )));
    }
    eprint!("{detail}. Type the target name ({name}) to go on: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| usage(format!("cannot read the confirmation: {e}")))?;
    if answer.trim() != name {
        return Err(usage("not confirmed; nothing was changed"));
    }
    Ok(())
}

/// Success when no target failed. One failure is the command's failure (printed once,
/// with its hint); several are printed each, then named together.
fn all_done(mut failures: Vec<(String, Failure)>, what: &str) -> Result<(), Failure> {
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0).1),
        _ => {
            for (_, f) in &failures {
                eprintln!("error: {}", f.message);
                if let Some(h) = &f.hint {
                    eprintln!("hint: {h}");
                }
            }
            let names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
            let kind = failures[0].1.kind;
            Err(Failure::new(
                kind,
                format!("{what} failed for: {}", names.join(", ")),
            ))
        }
    }
}

/// A name for a table or a line of output: control characters escaped (they would break
/// the line), everything else as it is, so it can be copied back into a command.
pub(super) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

fn human_bytes(n: u64) -> String {
    crate::storage::human_size(n)
}
