//! Pins: a run retention never deletes until it is unpinned. The pin is a small object
//! beside the run's archives on every storage that holds them ([`catalog::Pin`]), so it
//! needs no manifest rewrite and survives a lost state file.

use chrono::Utc;

use super::restore::{list_everywhere, RestoreError};
use super::Context;
use crate::catalog::{self, Accept, BackupId, Pin};
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
    // Control characters, and the invisible ones that reorder or hide text, would let a
    // reason disguise itself where it is shown.
    let sneaky = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if reason.chars().any(sneaky) || reason.len() > REASON_MAX {
        return Err(RestoreError::Refused(format!(
            "a pin's reason is one line of at most {REASON_MAX} bytes, without control or invisible formatting characters"
        )));
    }
    let _retention = retention_lock(ctx, target).await?;
    let holders = holders(ctx, target, id).await?;
    let body = serde_json::to_vec_pretty(&Pin {
        id,
        reason: reason.to_string(),
        pinned_at: Utc::now(),
    })
    .map_err(|e| RestoreError::Refused(format!("cannot write the pin: {e}")))?;
    for s in &holders {
        let storage = ctx.storages.get(s).ok_or_else(|| gone(s))?;
        // The new pin first, then the old ones: the run is never without a pin between.
        let before = pin_files(storage, &target.name, id).await?;
        storage
            .put_bytes(&target.name, &catalog::pin_name(id), body.clone())
            .await?;
        for old in before {
            storage.delete(&target.name, &old).await?;
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
    let _retention = retention_lock(ctx, target).await?;
    // Every pin file of the run goes, on every storage, also one without its backup.
    let mut pinned = Vec::new();
    for storage in ctx.storages.iter() {
        let files = pin_files(storage, &target.name, id).await?;
        if files.is_empty() {
            continue;
        }
        for f in &files {
            storage.delete(&target.name, f).await?;
        }
        tracing::info!(target = %target.name, backup_id = %id, storage = storage.name(), "backup unpinned");
        pinned.push(storage.name());
    }
    if pinned.is_empty() {
        return Err(RestoreError::NotFound(format!(
            "backup {id} of target {} is not pinned (`dbkeep list {}` shows the pins)",
            target.name, target.name
        )));
    }
    Ok(pinned)
}

/// Clear the suspect mark of run `id` (`dbkeep accept`): the drop of rows or bytes was
/// intended. An accept file beside the run on every storage that holds it; from then on
/// the run counts for retention like any other. Returns the storages and the reason that
/// was accepted.
pub async fn accept(
    ctx: &Context,
    target: &Target,
    id: BackupId,
) -> Result<(Vec<&'static str>, String), RestoreError> {
    let _retention = retention_lock(ctx, target).await?;
    let all = list_everywhere(ctx, target).await?;
    let run: Vec<&(&'static str, crate::catalog::Backup)> =
        all.iter().filter(|(_, b)| b.id == id).collect();
    if run.is_empty() {
        return Err(RestoreError::NotFound(format!(
            "target {} has no complete backup {id} (`dbkeep list {}` shows them)",
            target.name, target.name
        )));
    }
    let Some(reason) = run.iter().find_map(|(_, b)| b.suspect.clone()) else {
        return Err(RestoreError::Refused(format!(
            "backup {id} of target {} is not suspect: there is nothing to accept",
            target.name
        )));
    };
    let body = serde_json::to_vec_pretty(&Accept {
        id,
        reason: reason.clone(),
        accepted_at: Utc::now(),
    })
    .map_err(|e| RestoreError::Refused(format!("cannot write the accept file: {e}")))?;
    let mut holders: Vec<&'static str> = run.iter().map(|(s, _)| *s).collect();
    holders.dedup();
    for s in &holders {
        let storage = ctx.storages.get(s).ok_or_else(|| gone(s))?;
        let done = run.iter().any(|(h, b)| h == s && b.accepted.is_some());
        if !done {
            storage
                .put_bytes(&target.name, &catalog::accept_name(id), body.clone())
                .await?;
        }
        tracing::info!(target = %target.name, backup_id = %id, storage = s, reason = %reason, "suspect backup accepted");
    }
    Ok((holders, reason))
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

/// The pin files of run `id` on one storage.
async fn pin_files(
    storage: &dyn crate::storage::Storage,
    target: &str,
    id: BackupId,
) -> Result<Vec<String>, StorageError> {
    Ok(storage
        .list(target)
        .await?
        .into_iter()
        .filter(|o| catalog::pin_id(&o.file) == Some(id))
        .map(|o| o.file)
        .collect())
}

async fn retention_lock(
    ctx: &Context,
    target: &Target,
) -> Result<super::lock::RunLock, RestoreError> {
    super::lock::acquire_retention(ctx.state.work_dir(), &target.name, &ctx.clock, &ctx.cancel)
        .await
        .map_err(|e| RestoreError::Refused(e.to_string()))
}

fn gone(s: &str) -> RestoreError {
    RestoreError::NotFound(format!("storage {s} is no longer configured"))
}
