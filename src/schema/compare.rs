//! `schema diff`: the live schema against the declared one, or against the schema inside
//! a past backup (its definitions restored, without rows, into a scratch database).

use std::collections::BTreeMap;

use serde::Serialize;

use super::diff::Difference;
use super::{declared_model, diff as pure, live, managed_schemas, on, SchemaError};
use crate::catalog::BackupId;
use crate::config::Target;
use crate::engine::{self, Purpose, RestoreMode, SchemaModel};
use crate::ops::restore::{choose, Selector};
use crate::ops::Context;

#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub target: String,
    /// `declared` or `backup <id>`.
    pub reference: String,
    pub schemas: Vec<SchemaDiff>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchemaDiff {
    pub schema: String,
    pub differences: Vec<Difference>,
    /// A proposed migration: additive statements, destructive ones commented out.
    pub sql: Vec<String>,
}

/// Live against declared, or against the schema inside a past backup (restored, without
/// rows, into a scratch database on PostgreSQL; unpacked into a scratch file on SQLite).
pub async fn diff(
    ctx: &Context,
    target: &Target,
    against: Option<&Selector>,
) -> Result<DiffReport, SchemaError> {
    let tenants: &[String] = target
        .schema
        .as_ref()
        .map(|s| s.tenant_schemas.as_slice())
        .unwrap_or(&[]);
    let mut session = live(target).await?;
    let dialect = session.dialect();
    let lived = async {
        let mut models = Vec::new();
        for schema in managed_schemas(session.as_mut(), target, tenants).await? {
            let m = session.model(&schema).await.map_err(on(target))?;
            models.push((schema, m));
        }
        Ok::<_, SchemaError>(models)
    }
    .await;
    session.close().await;
    let live_models = lived?;

    // Tables the backup left out on purpose (`exclude_tables`) are no difference.
    let (reference, refs, excluded): (String, BTreeMap<String, SchemaModel>, Vec<String>) =
        match against {
            None => {
                let declared = declared_model(ctx, target).await?;
                let refs = live_models
                    .iter()
                    .map(|(s, _)| (s.clone(), declared.clone()))
                    .collect();
                ("declared".into(), refs, Vec::new())
            }
            Some(sel) => {
                let (id, refs, excluded) = backup_models(ctx, target, sel, &live_models).await?;
                (format!("backup {id}"), refs, excluded)
            }
        };
    let schemas = live_models
        .iter()
        .map(|(schema, model)| {
            let empty = SchemaModel::default();
            let r = refs.get(schema).unwrap_or(&empty);
            let mut differences = pure::diff(r, model, &reference);
            differences.retain(|d| {
                let full = format!("{schema}.{}", d.table);
                !excluded.iter().any(|p| engine::glob_match(p, &full))
            });
            let sql = pure::proposal(r, &differences, dialect);
            SchemaDiff {
                schema: schema.clone(),
                differences,
                sql,
            }
        })
        .collect();
    Ok(DiffReport {
        target: target.name.clone(),
        reference,
        schemas,
    })
}

async fn backup_models(
    ctx: &Context,
    target: &Target,
    sel: &Selector,
    live_models: &[(String, SchemaModel)],
) -> Result<(BackupId, BTreeMap<String, SchemaModel>, Vec<String>), SchemaError> {
    let mut chosen = choose(ctx, target, sel, false).await?;
    let excluded = chosen.backup.manifest.excluded_tables.clone();
    // Proven first, and the proven version is the one read.
    chosen.prove(ctx, target).await?;
    let archive = chosen.archive(ctx)?;
    let dir = crate::ops::scratch_dir(ctx, target);
    let scratch = engine::build(target)
        .scratch(Purpose::Diff, &dir)
        .await
        .map_err(on(target))?;
    let read = async {
        scratch
            .restore(archive, &RestoreMode::Definitions, &ctx.cancel)
            .await
            .map_err(on(target))?;
        let mut session = scratch.connect().await.map_err(on(target))?;
        let mut out = BTreeMap::new();
        let models = async {
            for (schema, _) in live_models {
                out.insert(
                    schema.clone(),
                    session.model(schema).await.map_err(on(target))?,
                );
            }
            Ok::<_, SchemaError>(())
        }
        .await;
        session.close().await;
        models.map(|()| out)
    }
    .await;
    let dropped = scratch.discard().await.map_err(on(target));
    let out = read?;
    dropped?;
    Ok((chosen.backup.id, out, excluded))
}
