//! `dbkeep doctor`: connect to every target and storage and say, per feature, whether it
//! can work with the rights, tools and space at hand, and what to grant or change if not.
//! Nothing is changed but a probe object, written and removed again.

use serde::Serialize;

use super::Context;
use crate::config::{Config, SourceConfig, Target};
use crate::engine::doctor::{Check, Verdict, Wants};
use crate::engine::{self};
use crate::storage::{free_space, human_size, Storage};

/// One finding, with what it is about (`target app`, `storage s3`).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub scope: String,
    #[serde(flatten)]
    pub check: Check,
}

/// Below this much free space beside the local backups, a backup is at risk whatever
/// the archives' size.
const LOW_SPACE: u64 = 1024 * 1024 * 1024;

/// Every check of `targets` and of every storage.
pub async fn run(ctx: &Context, cfg: &Config, targets: &[&Target]) -> Vec<Finding> {
    let mut out = Vec::new();
    for t in targets {
        let wants = Wants {
            globals: matches!(&t.source, SourceConfig::Postgres(pg) if pg.globals),
            drills: t.verify_schedule.is_some(),
            schema: t.schema.is_some(),
        };
        for check in engine::build(t).doctor(wants).await {
            out.push(Finding {
                scope: format!("target {}", t.name),
                check,
            });
        }
    }
    // Storages are probed in the folder of the first target checked (that is where its
    // backups go); with no target, in a folder of the probe's own.
    let folder = targets
        .first()
        .map(|t| t.name.as_str())
        .unwrap_or("dbkeep-probe");
    for s in ctx.storages.iter() {
        let scope = format!("storage {}", s.name());
        // Folders the probe creates go again afterwards (the first backup makes them).
        let missing: Vec<std::path::PathBuf> = s
            .folder(folder)
            .map(|d| {
                d.ancestors()
                    .take_while(|p| !p.exists())
                    .map(|p| p.to_path_buf())
                    .collect()
            })
            .unwrap_or_default();
        let probed = s.probe(folder).await;
        for d in &missing {
            let _ = std::fs::remove_dir(d);
        }
        for (step, result) in probed {
            let check = match result {
                Ok(()) => Check::new(step, Verdict::Ok, s.location(folder)),
                Err(e) => {
                    let hint = crate::error::Classify::hint(&e)
                        .map(|h| format!("; {h}"))
                        .unwrap_or_default();
                    Check::new(
                        step,
                        Verdict::Cannot,
                        format!("{}{hint}", crate::error::chain(&e)),
                    )
                }
            };
            out.push(Finding {
                scope: scope.clone(),
                check,
            });
        }
        if let Some(dir) = s.folder(folder) {
            out.push(Finding {
                scope: scope.clone(),
                check: space(s, &dir, targets).await,
            });
        }
    }
    out.push(Finding {
        scope: "work_dir".into(),
        check: work_dir(&cfg.daemon.work_dir),
    });
    out
}

/// Free space beside the local backups against the largest archive stored there.
async fn space(s: &dyn Storage, dir: &std::path::Path, targets: &[&Target]) -> Check {
    let Some(free) = free_space(dir) else {
        return Check::new(
            "free space",
            Verdict::Cannot,
            format!("cannot read the free space of {}", dir.display()),
        );
    };
    let mut largest = 0u64;
    for t in targets {
        if let Ok(objects) = s.list(&t.name).await {
            largest = largest.max(objects.iter().map(|o| o.bytes).max().unwrap_or(0));
        }
    }
    let said = format!(
        "{} free in {}; the largest archive is {}",
        human_size(free),
        dir.display(),
        human_size(largest)
    );
    if largest > 0 && free < largest {
        Check::new(
            "free space",
            Verdict::Cannot,
            format!("{said}: the next backup does not fit; free space or lower keep_days"),
        )
    } else if free < LOW_SPACE || free < largest.saturating_mul(2) {
        Check::new(
            "free space",
            Verdict::Limited,
            format!("{said}: little room left; a full disk fails the run and keeps nothing"),
        )
    } else {
        Check::new("free space", Verdict::Ok, said)
    }
}

/// The state file and scratch files go to `work_dir`: it must be writable (or, when it
/// does not exist yet, its nearest existing parent, where the first run creates it).
fn work_dir(dir: &std::path::Path) -> Check {
    let Some(existing) = dir.ancestors().find(|d| d.exists()) else {
        return Check::new(
            "write",
            Verdict::Cannot,
            format!("{}: no part of it exists", dir.display()),
        );
    };
    let probe = existing.join(crate::storage::probe_name());
    let written = std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe));
    match written {
        Ok(()) => Check::new("write", Verdict::Ok, dir.display().to_string()),
        Err(e) => Check::new(
            "write",
            Verdict::Cannot,
            format!(
                "{}: {e}; make it writable by this user, or set daemon.work_dir",
                dir.display()
            ),
        ),
    }
}
