//! `schema sync`: create the tables the declared schema has and the live one lacks (with
//! their indexes and constraints), in one transaction, after a verified backup.

use serde::Serialize;

use super::{config, declared_model, diff, live, managed_schemas, on, SchemaError};
use crate::catalog::{self, BackupId};
use crate::config::Target;
use crate::ops::restore::verify_checksum;
use crate::ops::{backup, Context};

/// The tables `schema sync` would create, per schema.
#[derive(Debug, Clone, Serialize)]
pub struct SyncPlan {
    pub target: String,
    pub schemas: Vec<(String, Vec<String>)>,
}

impl SyncPlan {
    pub fn is_empty(&self) -> bool {
        self.schemas.iter().all(|(_, s)| s.is_empty())
    }
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (schema, stmts) in &self.schemas {
            if stmts.is_empty() {
                continue;
            }
            out.push_str(&format!("-- schema {schema}\n"));
            for s in stmts {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

pub async fn plan_sync(ctx: &Context, target: &Target) -> Result<SyncPlan, SchemaError> {
    let sc = config(target)?;
    let declared = declared_model(ctx, target).await?;
    let mut session = live(target).await?;
    let result = async {
        let mut schemas = Vec::new();
        for schema in managed_schemas(session.as_mut(), target, &sc.tenant_schemas).await? {
            let model = session.model(&schema).await.map_err(on(target))?;
            schemas.push((
                schema,
                diff::sync_statements(&declared, &model, session.dialect()),
            ));
        }
        Ok::<_, SchemaError>(schemas)
    }
    .await;
    session.close().await;
    Ok(SyncPlan {
        target: target.name.clone(),
        schemas: result?,
    })
}

/// Take the `pre-sync` backup, then run the plan in one transaction.
pub async fn apply_sync(
    ctx: &Context,
    target: &Target,
    plan: &SyncPlan,
) -> Result<BackupId, SchemaError> {
    let id = backup_first(ctx, target, "pre-sync").await?;
    let mut session = live(target).await?;
    let applied = session.apply_in_transaction(&plan.schemas).await;
    session.close().await;
    applied.map_err(on(target))?;
    Ok(id)
}

/// A fresh backup whose archives are re-read and checked against their sha256 before any
/// schema change; its id.
pub(crate) async fn backup_first(
    ctx: &Context,
    target: &Target,
    reason: &str,
) -> Result<BackupId, SchemaError> {
    let outcome = backup::run_queued(ctx, target, Some(reason))
        .await
        .map_err(|e| SchemaError::Backup(Box::new(e)))?;
    let now = ctx.now();
    let mut checked = 0;
    for s in ctx.storages.iter() {
        let listing = catalog::list(s, &target.name, target.crypto.verify.as_ref(), now).await?;
        for b in listing.complete.iter().filter(|b| b.id == outcome.id) {
            verify_checksum(s, b).await?;
            checked += 1;
        }
        if checked > 0 {
            break;
        }
    }
    if checked == 0 {
        return Err(SchemaError::Other(format!(
            "the {reason} backup {} is not listed after it was taken; nothing was changed",
            outcome.id
        )));
    }
    tracing::info!(target = %target.name, backup_id = %outcome.id, reason, archives = checked, "backup taken and verified before the schema change");
    Ok(outcome.id)
}
