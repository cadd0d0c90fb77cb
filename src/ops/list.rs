//! What is stored, across storages: the complete backups of each target, the manifests
//! that cannot be trusted, and the storages that did not answer (they hide nothing that
//! another storage holds).

use super::Context;
use crate::catalog::{self, Backup};
use crate::config::Target;
use crate::error::chain;
use crate::metrics;

/// A manifest that is not counted as a backup, and why.
#[derive(Debug, Clone)]
pub struct Broken {
    pub target: String,
    pub storage: &'static str,
    pub file: String,
    pub why: String,
}

#[derive(Debug, Default)]
pub struct Inventory {
    /// Complete backups, newest first; one entry per copy (storage).
    pub backups: Vec<Backup>,
    pub broken: Vec<Broken>,
    /// Storages that could not be listed, with the error.
    pub unavailable: Vec<(&'static str, String)>,
}

/// List `targets` on every storage (or only on `only`). A storage that fails is reported
/// in `unavailable` (and logged once), and the others are listed all the same.
pub async fn inventory(ctx: &Context, targets: &[&Target], only: Option<&str>) -> Inventory {
    let now = ctx.now();
    let mut inv = Inventory::default();
    for s in ctx.storages.iter() {
        if only.is_some_and(|o| o != s.name()) {
            continue;
        }
        for target in targets {
            let t = &target.name;
            match catalog::list(s, t, target.crypto.verify.as_ref(), now).await {
                Ok(listing) => {
                    for (file, why) in listing.broken {
                        metrics::broken_manifest(t, s.name(), &file, &why);
                        inv.broken.push(Broken {
                            target: t.clone(),
                            storage: s.name(),
                            file,
                            why,
                        });
                    }
                    inv.backups.extend(listing.complete);
                }
                Err(e) => {
                    let error = chain(&e);
                    tracing::warn!(storage = s.name(), target = %t, error = %error, "storage unavailable; its copies are not listed");
                    inv.unavailable.push((s.name(), error));
                    break;
                }
            }
        }
    }
    super::verify::annotate(ctx, &mut inv.backups);
    inv.backups.sort_by(|a, b| {
        b.id.cmp(&a.id)
            .then_with(|| a.target.cmp(&b.target))
            .then_with(|| a.storage.cmp(&b.storage))
            .then_with(|| a.file.cmp(&b.file))
    });
    inv
}
