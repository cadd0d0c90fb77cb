//! `restore` and `verify` (checksums, or a restore drill).

use super::{confirm_by_name, failed, interruptible, usage, Failure};
use crate::config::Config;
use crate::ops::restore::{self as ops_restore, Options, Selector};
use crate::ops::verify as ops_verify;
use crate::ops::Context;

pub(super) struct RestoreArgs<'a> {
    pub target: &'a str,
    pub backup: &'a str,
    pub into: Option<&'a str>,
    pub into_password: Option<crate::config::Secret>,
    pub globals: bool,
    /// Only from this storage.
    pub storage: Option<String>,
    /// The database of a server target.
    pub database: Option<String>,
    /// Only these tables, beside the live data (`--table`), named `rename` (`--as`).
    pub tables: Vec<String>,
    pub rename: Option<String>,
    pub opts: Options,
}

/// `s` as one shell word: as it is when it is plain, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.,:/@%+=".contains(&b));
    match plain {
        true => s.to_string(),
        false => format!("'{}'", s.replace('\'', "'\\''")),
    }
}

/// Choose, prove the checksum, confirm, then restore.
pub(super) async fn restore(
    ctx: &Context,
    cfg: &Config,
    args: RestoreArgs<'_>,
) -> Result<(), Failure> {
    let name = args.target;
    let target = cfg
        .target(name)
        .ok_or_else(|| usage(format!("unknown target `{name}`")))?;
    let mut selector: Selector = args.backup.parse().map_err(usage)?;
    selector.from = args.storage.clone();
    selector.database = args.database.clone();
    if !args.tables.is_empty() {
        return restore_tables(ctx, target, &selector, &args).await;
    }
    // A run of one archive per schema goes into another database whole, `jobs` at once.
    if let (Some(into), false) = (args.into, args.globals) {
        let run = ops_restore::plan_run(ctx, target, &selector, into, args.into_password.clone());
        if let Some(mut run) = run.await? {
            eprintln!("{}", run.description);
            interruptible(ctx);
            let t0 = std::time::Instant::now();
            let notes = ops_restore::execute_run(ctx, target, &mut run, args.opts.yes).await?;
            for note in &notes {
                eprintln!("note: {note}");
            }
            println!(
                "{name}: restored {} schema archive(s) of backup {} in {:.1}s",
                run.archives.len(),
                run.archives[0].backup.id,
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
    }
    let mut plan = ops_restore::plan(
        ctx,
        target,
        &selector,
        args.into,
        args.into_password.clone(),
        args.globals,
    )
    .await?;
    eprintln!("{}", plan.description);
    // Over the live database, and for every PostgreSQL restore (ops_restore::proven_first),
    // the archive is proven intact before anything is asked or touched (the next storage's
    // copy is used when the chosen one cannot be read or does not match). A SQLite file
    // elsewhere is proven as it streams: it is renamed into place only after the check.
    let first = plan.dest.is_own() || ops_restore::proven_first(target);
    if first {
        plan.chosen.prove(ctx, target).await?;
        eprintln!(
            "checksum OK (sha256 {}, read from {})",
            &plan.chosen.backup.sha256[..16],
            plan.chosen.storage
        );
    }
    if plan.dest.is_own() && !args.opts.yes {
        confirm_by_name(
            name,
            "restore over the live database",
            if args.opts.safety_backup {
                "This replaces data in the live database (a safety backup is taken first)"
            } else {
                "This replaces data in the live database"
            },
        )?;
    }
    interruptible(ctx);
    let t0 = std::time::Instant::now();
    let done = ops_restore::execute(ctx, target, &mut plan, &args.opts).await?;
    if !first {
        eprintln!(
            "checksum OK (sha256 {}, read from {}, proven while restoring)",
            &plan.chosen.backup.sha256[..16],
            plan.chosen.storage
        );
    }
    for note in &done.notes {
        eprintln!("note: {note}");
    }
    println!(
        "{name}: restored {} from {} in {:.1}s",
        plan.chosen.backup.file,
        plan.chosen.backup.storage,
        t0.elapsed().as_secs_f64()
    );
    if let Some(id) = done.safety_backup {
        let mut what = match &plan.mode {
            crate::engine::RestoreMode::Schema { name, .. } => format!("{id}:{name}"),
            _ => id.to_string(),
        };
        if let Some(db) = &plan.chosen.backup.database {
            // `--database=NAME`: a name that starts with `-` stays the option's value.
            what.push_str(&format!(" --database={}", shell_quote(db)));
        }
        println!(
            "{name}: the state before this restore is backup {id} (pre-restore); to undo: dbkeep restore {name} {what} --yes"
        );
    }
    Ok(())
}

/// `--table`: the tables beside the live data. Nothing existing is replaced, so nothing
/// is asked and no safety backup is taken.
async fn restore_tables(
    ctx: &Context,
    target: &crate::config::Target,
    selector: &Selector,
    args: &RestoreArgs<'_>,
) -> Result<(), Failure> {
    let name = args.target;
    let mut plan =
        crate::ops::tables::plan(ctx, target, selector, &args.tables, args.rename.as_deref())
            .await?;
    eprintln!("{}", plan.description);
    interruptible(ctx);
    let t0 = std::time::Instant::now();
    let done = crate::ops::tables::execute(ctx, target, &mut plan).await?;
    eprintln!(
        "checksum OK (sha256 {}, read from {})",
        &done.backup.sha256[..16],
        done.storage
    );
    for note in &done.notes {
        eprintln!("note: {note}");
    }
    for r in &done.restored {
        println!(
            "{name}: restored {} as {} ({} row{}) from backup {}",
            r.copy.from,
            r.copy.to,
            r.rows,
            if r.rows == 1 { "" } else { "s" },
            done.backup.id
        );
    }
    println!(
        "{name}: {} table(s) restored beside the live data in {:.1}s; the originals are unchanged",
        done.restored.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(super) async fn verify(
    ctx: &Context,
    cfg: &Config,
    names: &[String],
    drill: bool,
) -> Result<(), Failure> {
    let mut bad = 0usize;
    for name in names {
        let Some(target) = cfg.target(name) else {
            continue;
        };
        if drill {
            match ops_verify::drill(ctx, target).await {
                Ok(r) => {
                    let proven = match r.tables_proven {
                        0 => format!("{} tables checked", r.tables),
                        n => format!(
                            "every row proven: {} rows in {n} tables proven identical to the backup's",
                            r.rows_proven
                        ),
                    };
                    println!(
                        "{name}: drill OK: backup {} restored ({} archive(s), {}) in {:.1}s",
                        r.id,
                        r.archives,
                        proven,
                        r.duration.as_secs_f64()
                    )
                }
                Err(crate::ops::restore::RestoreError::NotPermitted(why)) => {
                    bad += 1;
                    println!("{name}: drill NOT POSSIBLE (nothing was tried): {why}");
                }
                Err(e) => {
                    bad += 1;
                    println!("{name}: drill FAILED: {}", crate::error::chain(&e));
                }
            }
            continue;
        }
        match ops_verify::verify_all(ctx, target).await {
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
                println!("{name}: cannot verify: {}", crate::error::chain(&e));
            }
        }
    }
    if bad == 0 {
        Ok(())
    } else {
        Err(failed(format!("{bad} problem(s) found")))
    }
}
