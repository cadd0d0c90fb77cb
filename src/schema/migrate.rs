//! `migrate`: apply pending migrations (or revert the newest) in the main schema and
//! every tenant schema, after a verified `pre-migrate` backup.

use serde::Serialize;

use super::migrations::{self, MigrationFile, MigrationState, MigrationStatus};
use super::sync::backup_first;
use super::{config, live, load_migrations, managed_schemas, on, SchemaError};
use crate::catalog::BackupId;
use crate::config::{Declared, Target};
use crate::engine::MigrateStep;
use crate::ops::Context;

/// Where each schema stands against the migrations folder.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub target: String,
    /// The backup taken first (none when there was nothing to do).
    pub backup: Option<BackupId>,
    /// Per schema, the versions applied (up) or reverted (down).
    pub schemas: Vec<(String, Vec<i64>)>,
}

pub enum Direction {
    Up { to: Option<i64> },
    Down { steps: usize },
}

/// Apply pending migrations (or revert the newest) in the main schema and every tenant
/// schema, after a verified `pre-migrate` backup. Checks everything it can first: a
/// modified applied file, or a missing down file, refuses before anything is touched.
pub async fn migrate(
    ctx: &Context,
    target: &Target,
    direction: Direction,
) -> Result<MigrateReport, SchemaError> {
    let sc = config(target)?;
    let Declared::Migrations(_) = &sc.declared else {
        return Err(SchemaError::Refused(format!(
            "target {} declares its schema with a `desired` file, which has no versions: use `dbkeep schema sync` or `schema diff --sql`",
            target.name
        )));
    };
    let files = load_migrations(sc)?;
    let mut session = live(target).await?;
    let planned = async {
        let mut plan: Vec<(String, Vec<i64>, i64)> = Vec::new();
        for schema in managed_schemas(session.as_mut(), target, &sc.tenant_schemas).await? {
            let applied = session.applied(&schema).await.map_err(on(target))?;
            let st = migrations::statuses(&files, &applied);
            refuse_unclean(&schema, &st, &files)?;
            plan.push(match direction {
                Direction::Up { to } => {
                    let v: Vec<i64> = st
                        .iter()
                        .filter(|m| m.state == MigrationState::Pending)
                        .filter(|m| to.is_none_or(|t| m.version <= t))
                        .map(|m| m.version)
                        .collect();
                    (schema, v, to.unwrap_or(i64::MAX))
                }
                Direction::Down { steps } => {
                    let mut done: Vec<i64> = applied.iter().map(|a| a.version).collect();
                    done.sort_unstable_by(|a, b| b.cmp(a));
                    let revert: Vec<i64> = done.iter().take(steps).copied().collect();
                    for v in &revert {
                        let f = files.iter().find(|f| f.version == *v);
                        if f.is_none_or(|f| f.down_file.is_none()) {
                            return Err(SchemaError::Refused(format!(
                                "schema {schema}: migration {v} has no down file ({}); nothing was reverted",
                                f.map(|f| f.file_name().replace(".up.sql", ".down.sql"))
                                    .unwrap_or_else(|| format!("{v:04}_*.down.sql"))
                            )));
                        }
                    }
                    let to = done.get(steps).copied().unwrap_or(0);
                    (schema, revert, to)
                }
            });
        }
        Ok::<_, SchemaError>(plan)
    }
    .await;
    session.close().await;
    let plan = planned?;
    let mut report = MigrateReport {
        target: target.name.clone(),
        backup: None,
        schemas: plan
            .iter()
            .map(|(s, _, _)| (s.clone(), Vec::new()))
            .collect(),
    };
    if plan.iter().all(|(_, v, _)| v.is_empty()) {
        return Ok(report);
    }
    report.backup = Some(backup_first(ctx, target, "pre-migrate").await?);

    let main = plan[0].0.clone();
    for (i, (schema, versions, to)) in plan.iter().enumerate() {
        if versions.is_empty() {
            continue;
        }
        let mut session = live(target).await?;
        let m = migrations::migrator(&files, session.history_table(Some(schema)));
        let down = matches!(direction, Direction::Down { .. });
        let step = if down {
            MigrateStep::Down(*to)
        } else {
            MigrateStep::Up(Some(*to))
        };
        let search_path = (*schema != main).then_some(schema.as_str());
        let r = session.migrate(&m, search_path, step).await;
        session.close().await;
        if let Err(e) = r {
            return Err(migrations::explain(e, schema, &files, down));
        }
        report.schemas[i].1 = versions.clone();
    }
    Ok(report)
}

fn refuse_unclean(
    schema: &str,
    st: &[MigrationStatus],
    files: &[MigrationFile],
) -> Result<(), SchemaError> {
    for m in st {
        match m.state {
            MigrationState::Modified => {
                let file = files
                    .iter()
                    .find(|f| f.version == m.version)
                    .map(|f| f.up_file.clone())
                    .unwrap_or_default();
                return Err(SchemaError::Modified {
                    schema: schema.to_string(),
                    file,
                });
            }
            MigrationState::Missing => {
                return Err(SchemaError::Refused(format!(
                    "schema {schema}: migration {} ({}) was applied but its file is gone from the folder; put it back before migrating",
                    m.version, m.description
                )))
            }
            MigrationState::Failed => {
                return Err(SchemaError::Refused(format!(
                    "schema {schema}: migration {} is recorded as failed half way; repair the schema by hand and delete its row from _sqlx_migrations",
                    m.version
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// What `migrate baseline` recorded.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub target: String,
    /// The newest version recorded as applied.
    pub to: i64,
    /// Per schema, the versions recorded (none were run).
    pub schemas: Vec<(String, Vec<i64>)>,
}

/// Adopt the migrations folder on a database that already has its schema: check that
/// every managed schema has no migration history and equals what migrations 1..`to`
/// (all by default) build in a scratch database, then record them as applied without
/// running them. Any difference refuses, and nothing is recorded.
pub async fn baseline(
    ctx: &Context,
    target: &Target,
    to: Option<i64>,
) -> Result<BaselineReport, SchemaError> {
    let sc = config(target)?;
    let Declared::Migrations(dir) = &sc.declared else {
        return Err(SchemaError::Refused(format!(
            "target {} declares its schema with a `desired` file, which has no versions to record: baseline needs `migrations = \"DIR\"`",
            target.name
        )));
    };
    let files = load_migrations(sc)?;
    let Some(newest) = files.iter().map(|f| f.version).max() else {
        return Err(SchemaError::Refused(format!(
            "{} holds no migrations: nothing to record",
            dir.display()
        )));
    };
    let to = to.unwrap_or(newest);
    if !files.iter().any(|f| f.version == to) {
        return Err(SchemaError::Refused(format!(
            "--to {to} is not a migration in {} (versions: {})",
            dir.display(),
            files
                .iter()
                .map(|f| f.version.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let upto: Vec<MigrationFile> = files.iter().filter(|f| f.version <= to).cloned().collect();
    let reference = super::build_reference(ctx, target, sc, &upto).await?;
    let mut session = live(target).await?;
    let checked = async {
        let mut schemas = Vec::new();
        for schema in managed_schemas(session.as_mut(), target, &sc.tenant_schemas).await? {
            let applied = session.applied(&schema).await.map_err(on(target))?;
            if !applied.is_empty() {
                return Err(SchemaError::Refused(format!(
                    "schema {schema} already has a migration history (versions {}): baseline is for a database that has none; use `dbkeep migrate {}`",
                    applied
                        .iter()
                        .map(|a| a.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    target.name
                )));
            }
            let live_model = session.model(&schema).await.map_err(on(target))?;
            let mut shown: Vec<String> = super::diff::diff(&reference.main, &live_model, "migrations")
                .iter()
                .map(|d| crate::error::one_line(&d.message))
                .collect();
            let live_inventory = session.inventory(&schema).await.map_err(on(target))?;
            shown.extend(inventory_differences(&reference.main_inventory, &live_inventory, ""));
            // Schemas the migrations create besides (an `audit` schema): checked once, with
            // the main schema.
            if schemas.is_empty() {
                let live_schemas = session.schemas().await.map_err(on(target))?;
                for (other, model, inventory) in &reference.others {
                    if !live_schemas.contains(other) {
                        shown.push(format!("schema {other} is missing"));
                        continue;
                    }
                    let m = session.model(other).await.map_err(on(target))?;
                    shown.extend(
                        super::diff::diff(model, &m, "migrations")
                            .iter()
                            .map(|d| format!("in schema {other}: {}", d.message)),
                    );
                    let inv = session.inventory(other).await.map_err(on(target))?;
                    shown.extend(inventory_differences(inventory, &inv, &format!("in schema {other}: ")));
                }
            }
            if !shown.is_empty() {
                let shown: Vec<String> = shown.iter().map(|s| crate::error::one_line(s)).collect();
                let schema = crate::error::one_line(&schema);
                return Err(SchemaError::Refused(format!(
                    "schema {schema} is not what migrations 1..{to} build, so they cannot be recorded as applied ({} difference(s): {}); nothing was recorded. Make the schema match (or pick --to), then run baseline again",
                    shown.len(),
                    shown.join("; ")
                )));
            }
            schemas.push(schema);
        }
        Ok::<_, SchemaError>(schemas)
    }
    .await;
    session.close().await;
    let schemas = checked?;
    let versions: Vec<i64> = upto.iter().map(|f| f.version).collect();
    let main = schemas.first().cloned().unwrap_or_default();
    let mut report = BaselineReport {
        target: target.name.clone(),
        to,
        schemas: Vec::new(),
    };
    for schema in &schemas {
        let mut session = live(target).await?;
        let m = migrations::migrator(
            &upto,
            session.history_table((*schema != main).then_some(schema.as_str())),
        );
        let r = session.baseline(&m, to).await;
        session.close().await;
        r.map_err(|e| migrations::explain(e, schema, &files, false))?;
        tracing::info!(target = %target.name, schema = %schema, to, "migrations recorded as applied (baseline); none was run");
        report.schemas.push((schema.clone(), versions.clone()));
    }
    Ok(report)
}

/// What one inventory has that the other lacks, as differences to name.
fn inventory_differences(migrations: &[String], live: &[String], prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in migrations.iter().filter(|m| !live.contains(m)) {
        out.push(format!("{prefix}{m} is missing"));
    }
    for l in live.iter().filter(|l| !migrations.contains(l)) {
        out.push(format!("{prefix}{l} is not in the migrations"));
    }
    out
}
