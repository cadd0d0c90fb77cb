//! `schema` and `migrate`: argument shapes, confirmation, and output.

use clap::Subcommand;

use super::{confirm_by_name, interruptible, print_json, usage, Failure};
use crate::config::Config;
use crate::error::ErrorKind;
use crate::ops::restore::Selector;
use crate::ops::Context;
use crate::schema::{self, Direction};

#[derive(Subcommand)]
pub enum SchemaCmd {
    /// Migrations applied/pending/modified and drift from the declared schema (exit 3 on drift)
    Status {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Create the missing tables (with their indexes and constraints) after a pre-sync backup
    Sync {
        target: String,
        /// Do not ask
        #[arg(long)]
        yes: bool,
    },
    /// Live schema against the declared one, or against the schema in a past backup
    Diff {
        target: String,
        /// Compare with the schema inside this backup (an id, or `latest`)
        #[arg(long, value_name = "BACKUP_ID")]
        against: Option<String>,
        /// Print a proposed migration script (never applied)
        #[arg(long)]
        sql: bool,
        #[arg(long)]
        json: bool,
        /// The age identity file that decrypts the backup (instead of the target's
        /// `identity_file`)
        #[arg(long, value_name = "FILE")]
        identity: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum MigrateCmd {
    /// Apply pending migrations (the default), after a pre-migrate backup
    Up {
        /// Stop after this version
        #[arg(long, value_name = "N")]
        to: Option<i64>,
    },
    /// Revert the newest applied migrations with their down files
    Down {
        /// How many to revert
        #[arg(long, default_value_t = 1, value_name = "N")]
        steps: usize,
        /// Required: reverting usually drops data
        #[arg(long)]
        yes: bool,
    },
    /// Adopt the migrations folder on a database that already has its schema: check the
    /// live schema equals what migrations 1..N build, then record them as applied (none is run)
    Baseline {
        /// The newest migration the database already has (default: the newest in the folder)
        #[arg(long, value_name = "N")]
        to: Option<i64>,
    },
    /// The applied migrations of every schema
    History {
        #[arg(long)]
        json: bool,
    },
}

use super::target;

pub(super) async fn schema(ctx: &Context, cfg: &Config, cmd: SchemaCmd) -> Result<(), Failure> {
    match cmd {
        SchemaCmd::Status {
            target: name,
            json: as_json,
        } => {
            let t = target(cfg, &name)?;
            let report = schema::status(ctx, t).await?;
            if as_json {
                print_json(&report)?;
            } else {
                print!("{}", schema::render_status(&report));
            }
            if report.in_sync {
                Ok(())
            } else {
                Err(Failure::new(
                    ErrorKind::Drift,
                    format!("{name}: the live schema differs from the declared one"),
                ))
            }
        }
        SchemaCmd::Sync { target: name, yes } => {
            let t = target(cfg, &name)?;
            let plan = schema::plan_sync(ctx, t).await?;
            if plan.is_empty() {
                println!("{name}: no table is missing; nothing to create");
                return Ok(());
            }
            println!("{}", plan.render());
            if !yes {
                confirm_by_name(
                    &name,
                    "create these tables",
                    "This creates the tables above (a pre-sync backup is taken first)",
                )?;
            }
            interruptible(ctx);
            let id = schema::apply_sync(ctx, t, &plan).await?;
            let created: usize = plan
                .schemas
                .iter()
                .map(|(_, s)| s.iter().filter(|s| s.starts_with("CREATE TABLE")).count())
                .sum();
            println!("{name}: created {created} table(s) after backup {id} (pre-sync)");
            Ok(())
        }
        SchemaCmd::Diff {
            target: name,
            against,
            sql,
            json: as_json,
            ..
        } => {
            let t = target(cfg, &name)?;
            let selector = against
                .as_deref()
                .map(|a| a.parse::<Selector>().map_err(usage))
                .transpose()?;
            interruptible(ctx);
            let report = schema::diff(ctx, t, selector.as_ref()).await?;
            if as_json {
                return print_json(&report);
            }
            if sql {
                println!(
                    "-- dbkeep schema diff {name}: statements that would bring the live schema to the {}.\n-- Review before use; destructive statements are commented out. Nothing was applied.",
                    report.reference
                );
                for s in &report.schemas {
                    if s.sql.is_empty() {
                        continue;
                    }
                    if report.schemas.len() > 1 {
                        println!(
                            "\n-- schema {}\nSET search_path TO \"{}\";",
                            s.schema,
                            s.schema.replace('"', "\"\"")
                        );
                    }
                    for stmt in &s.sql {
                        println!("{stmt}");
                    }
                }
                return Ok(());
            }
            for s in &report.schemas {
                if s.differences.is_empty() {
                    println!("schema {}: same as the {}", s.schema, report.reference);
                } else {
                    println!(
                        "schema {}: {} difference(s) from the {}:",
                        s.schema,
                        s.differences.len(),
                        report.reference
                    );
                    for d in &s.differences {
                        println!("  {}", d.message);
                    }
                }
            }
            Ok(())
        }
    }
}

pub(super) async fn migrate(
    ctx: &Context,
    cfg: &Config,
    name: &str,
    cmd: Option<MigrateCmd>,
) -> Result<(), Failure> {
    let t = target(cfg, name)?;
    let direction = match cmd.unwrap_or(MigrateCmd::Up { to: None }) {
        MigrateCmd::History { json: as_json } => {
            let rows = schema::history(t).await?;
            if as_json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                println!("{name}: no migration applied yet");
            }
            for r in rows {
                println!(
                    "{:<12} {:04}  {}  {:>8.1} ms  {}{}",
                    crate::error::one_line(&r.schema),
                    r.applied.version,
                    r.applied.installed_on.format("%Y-%m-%d %H:%M:%S"),
                    r.applied.execution_ms,
                    r.file.as_deref().unwrap_or("(file missing)"),
                    if r.modified {
                        "  MODIFIED since applied"
                    } else {
                        ""
                    }
                );
            }
            return Ok(());
        }
        MigrateCmd::Baseline { to } => {
            let r = schema::baseline(ctx, t, to).await?;
            for (s, versions) in &r.schemas {
                let list: Vec<String> = versions.iter().map(|v| format!("{v:04}")).collect();
                println!(
                    "{name}: schema {}: matches migrations 1..{}; recorded as applied: {} (nothing was run)",
                    crate::error::one_line(s),
                    r.to,
                    list.join(", ")
                );
            }
            return Ok(());
        }
        MigrateCmd::Up { to } => Direction::Up { to },
        MigrateCmd::Down { steps, yes } => {
            if !yes {
                return Err(usage(
                    "`migrate down` reverts applied migrations, which usually drops data: add --yes (a pre-migrate backup is taken first)",
                ));
            }
            if steps == 0 {
                return Err(usage("--steps 0 reverts nothing: use 1 or more"));
            }
            Direction::Down { steps }
        }
    };
    let down = matches!(direction, Direction::Down { .. });
    interruptible(ctx);
    let report = schema::migrate(ctx, t, direction).await?;
    let Some(id) = report.backup else {
        println!(
            "{name}: nothing to {}; every schema is up to date",
            if down { "revert" } else { "apply" }
        );
        return Ok(());
    };
    println!("{name}: backup {id} (pre-migrate) taken and verified");
    for (schema, versions) in &report.schemas {
        let list: Vec<String> = versions.iter().map(|v| format!("{v:04}")).collect();
        println!(
            "  schema {schema}: {} {}",
            if down { "reverted" } else { "applied" },
            if list.is_empty() {
                "nothing".to_string()
            } else {
                list.join(", ")
            }
        );
    }
    Ok(())
}
