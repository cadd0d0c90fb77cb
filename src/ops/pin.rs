//! Pins: a run retention never deletes until it is unpinned. The pin is a small object
//! beside the run's archives on every storage that holds them ([`catalog::Pin`]), so it
//! needs no manifest rewrite and survives a lost state file.

use chrono::Utc;

use super::restore::{list_everywhere, RestoreError};
use super::Context;
use crate::catalog::{self, BackupId, Pin};
use crate::config::Target;
use crate::storage::StorageError;

/// The longest reason kept.
const REASON_MAX: usize = 500;

/// Pin run `id` of `target` on every storage that holds it; pinning again replaces the
/// reason. Returns the storages.
pub async fn pin(
    ctx: &Context,
    target: &Target,
    id: BackupId,
    reason: Option<&str>,
) -> Result<Vec<&'static str>, RestoreError> {
    let reason = reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("pinned");
    if reason.chars().any(char::is_control) || reason.len() > REASON_MAX {
        return Err(RestoreError::Refused(format!(
            "a pin's reason is one line of at most {REASON_MAX} bytes"
        )));
    }
    let holders = holders(ctx, target, id).await?;
    let body = serde_json::to_vec_pretty(&Pin {
        id,
        reason: reason.to_string(),
        pinned_at: Utc::now(),
    })
    .map_err(|e| RestoreError::Refused(format!("cannot write the pin: {e}")))?;
    let file = catalog::pin_name(id);
    for s in &holders {
        let storage = ctx.storages.get(s).ok_or_else(|| gone(s))?;
        match storage.put_bytes(&target.name, &file, body.clone()).await {
            Ok(()) => {}
            // Pinned already: the new reason replaces the old.
            Err(StorageError::Exists { .. }) => {
                storage.delete(&target.name, &file).await?;
                storage.put_bytes(&target.name, &file, body.clone()).await?;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(target = %target.name, backup_id = %id, storage = s, reason, "backup pinned");
    }
    Ok(holders)
}

/// Remove the pin of run `id` from every storage; retention decides about it again.
pub async fn unpin(
    ctx: &Context,
    target: &Target,
    id: BackupId,
) -> Result<Vec<&'static str>, RestoreError> {
    let all = list_everywhere(ctx, target).await?;
    let pinned: Vec<&'static str> = {
        let mut v: Vec<&'static str> = all
            .iter()
            .filter(|(_, b)| b.id == id && b.pinned.is_some())
            .map(|(s, _)| *s)
            .collect();
        v.dedup();
        v
    };
    if pinned.is_empty() {
        return Err(RestoreError::NotFound(format!(
            "backup {id} of target {} is not pinned (`dbkeep list {}` shows the pins)",
            target.name, target.name
        )));
    }
    let file = catalog::pin_name(id);
    for s in &pinned {
        let storage = ctx.storages.get(s).ok_or_else(|| gone(s))?;
        storage.delete(&target.name, &file).await?;
        tracing::info!(target = %target.name, backup_id = %id, storage = s, "backup unpinned");
    }
    Ok(pinned)
}

/// The storages that hold a complete copy of run `id`.
async fn holders(
    ctx: &Context,
    target: &Target,
    id: BackupId,
) -> Result<Vec<&'static str>, RestoreError> {
    let all = list_everywhere(ctx, target).await?;
    let mut holders: Vec<&'static str> = all
        .iter()
        .filter(|(_, b)| b.id == id)
        .map(|(s, _)| *s)
        .collect();
    holders.dedup();
    if holders.is_empty() {
        return Err(RestoreError::NotFound(format!(
            "target {} has no complete backup {id} (`dbkeep list {}` shows them)",
            target.name, target.name
        )));
    }
    Ok(holders)
}

fn gone(s: &str) -> RestoreError {
    RestoreError::NotFound(format!("storage {s} is no longer configured"))
}
