//! The use cases, called the same way by the CLI, the daemon and the admin API: backup,
//! cleanup, restore, verify and drills, status. Each takes a [`Context`] and a target,
//! logs, counts and records its outcome itself, and returns a typed error.

pub mod backup;
pub mod cleanup;
pub mod doctor;
pub mod hooks;
pub mod list;
pub mod lock;
pub mod pin;
pub mod restore;
pub mod status;
pub mod suspect;
pub mod tables;
pub mod verify;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::notify::Notifiers;
use crate::scheduler::Clock;
use crate::state::StateFile;
use crate::storage::Storages;

/// The retention policy of `target` on `s`: the target's, with the destination's own
/// `keep_days` / `min_keep` where it sets them.
pub fn policy_on(
    target: &crate::config::Target,
    s: &dyn crate::storage::Storage,
) -> crate::config::Policy {
    let mut p = target.policy();
    let (keep_days, min_keep) = s.retention();
    if let Some(d) = keep_days {
        p.keep_days = d;
    }
    if let Some(m) = min_keep {
        p.min_keep = m;
    }
    p
}

/// The archives among `complete` (the primary's complete backups) that `mirror` should
/// hold: those of the runs its own retention keeps. `None` when the mirror has no
/// retention of its own, so it should hold all of them (until the primary's cleanup).
pub fn wanted_on(
    target: &crate::config::Target,
    mirror: &dyn crate::storage::Storage,
    complete: &[crate::catalog::Backup],
    now: DateTime<Utc>,
) -> Option<std::collections::HashSet<String>> {
    if mirror.retention() == (None, None) {
        return None;
    }
    let mut wanted = std::collections::HashSet::new();
    for (_, group) in by_database(complete) {
        let candidates: Vec<crate::retention::Candidate> = group
            .iter()
            .map(|b| crate::retention::Candidate {
                id: b.id,
                pending_upload: false,
                pinned: b.pinned.clone(),
                suspect: suspect::open_reason(b).cloned(),
            })
            .collect();
        let keep: std::collections::HashSet<crate::catalog::BackupId> =
            crate::retention::plan(&candidates, &policy_on(target, mirror), now)
                .into_iter()
                .filter(|d| d.action == crate::retention::Action::Keep)
                .map(|d| d.id)
                .collect();
        wanted.extend(
            group
                .iter()
                .filter(|b| keep.contains(&b.id))
                .map(|b| b.file.clone()),
        );
    }
    Some(wanted)
}

/// Backups grouped the way retention counts them: by database for a server target's
/// archives (its globals are the `None` group), else all in one group.
pub fn by_database<B: std::borrow::Borrow<crate::catalog::Backup>>(
    backups: impl IntoIterator<Item = B>,
) -> std::collections::BTreeMap<Option<String>, Vec<B>> {
    let mut groups: std::collections::BTreeMap<Option<String>, Vec<B>> = Default::default();
    for b in backups {
        groups
            .entry(b.borrow().database.clone())
            .or_default()
            .push(b);
    }
    groups
}

/// What every use case works with.
#[derive(Clone)]
pub struct Context {
    pub storages: Arc<Storages>,
    pub state: Arc<StateFile>,
    /// Cancelled when the work must stop (a signal, the end of a shutdown grace).
    pub cancel: CancellationToken,
    pub clock: Clock,
    /// Where events about runs are sent (none configured: nothing is sent).
    pub notify: Arc<Notifiers>,
    /// For an attempt that is tried again when it fails (the daemon's retries): how long
    /// after the failure. Such a failure is recorded with its retry time in the same state
    /// update, so `/health` never sees it without the retry, and it is not news yet.
    /// `None`: the final attempt.
    pub retry_after: Option<std::time::Duration>,
    /// What starts the runs of this context, recorded in their manifests: `manual` (a
    /// command, the admin API) or `scheduled`.
    pub trigger: &'static str,
    /// Declared schemas already built, kept across runs by the daemon.
    pub declared: Arc<DeclaredCache>,
    /// The age identity file given on the command line (`--identity`): it decrypts in
    /// place of the target's `identity_file`.
    pub identity: Option<std::path::PathBuf>,
}

/// Where `target`'s scratch files go (a SQLite snapshot, a drill's or a diff's copy):
/// beside the local backups, else in the work folder. A target that encrypts (or holds a
/// key to decrypt) never has plaintext there: its scratch files go to
/// `<work_dir>/private/<target>`, owner-only (0700), outside every storage, removed when
/// done (a killed run's by the next).
pub fn scratch_dir(ctx: &Context, target: &crate::config::Target) -> std::path::PathBuf {
    let c = &target.crypto;
    let secret = !c.recipients.is_empty() || c.identity_file.is_some() || ctx.identity.is_some();
    if secret {
        let base = ctx.state.work_dir().join("private");
        match crate::storage::local::private_dir(&base, &target.name) {
            Ok(dir) => return dir,
            Err(e) => {
                // Refuse to fall back to a storage folder: the scratch file then fails in a
                // folder that does not exist, with this said first.
                tracing::error!(target = %target.name, folder = %base.display(), error = %e, "cannot make the private scratch folder");
                return base.join(&target.name);
            }
        }
    }
    ctx.storages.scratch_dir(&target.name, ctx.state.work_dir())
}

/// The private keys that open `backups` of `target`: none when none is encrypted. A key
/// that cannot be read, or no key at all for an encrypted archive, is an error before
/// anything is touched.
pub fn keys_for<'b>(
    ctx: &Context,
    target: &crate::config::Target,
    backups: impl Iterator<Item = &'b crate::catalog::Backup>,
) -> Result<Option<Arc<crate::crypt::Identities>>, crate::engine::EngineError> {
    let encrypted: Vec<&crate::catalog::Backup> = backups
        .filter(|b| !b.manifest.encrypted_to.is_empty())
        .collect();
    let Some(b) = encrypted.first() else {
        return Ok(None);
    };
    let decrypt = |b: &crate::catalog::Backup, m: String| {
        crate::engine::EngineError::Decrypt(format!("{}: {m}", b.file))
    };
    let ids = match target.crypto.identities(ctx.identity.as_deref()) {
        Ok(Some(ids)) => ids,
        Ok(None) => return Err(decrypt(b, crate::crypt::no_key(&b.manifest.encrypted_to))),
        Err(m) => return Err(decrypt(b, m)),
    };
    // Said before anything is touched, rather than by the restore's consumer choking on
    // an empty stream.
    let mine = ids.recipients();
    for b in &encrypted {
        if !b.manifest.encrypted_to.iter().any(|r| mine.contains(r)) {
            return Err(decrypt(
                b,
                crate::crypt::wrong_key(&b.manifest.encrypted_to, &ids),
            ));
        }
    }
    Ok(Some(Arc::new(ids)))
}

/// Declared schemas built in a scratch database, by target: the key of the files they
/// were built from, and what they hold. Built again only when the files change; held
/// while building, so two checks at once build once.
pub type DeclaredCache =
    tokio::sync::Mutex<std::collections::HashMap<String, (String, crate::engine::SchemaModel)>>;

/// A meter for a run of `kind` on `target`, its progress kept in the state file while it
/// runs (for `dbkeep status` in another process) and removed when it ends.
pub fn meter(
    ctx: &Context,
    target: &str,
    kind: &'static str,
    total: Option<u64>,
    estimated: bool,
) -> Arc<crate::progress::Meter> {
    let state = ctx.state.clone();
    let name = target.to_string();
    crate::progress::Meter::start(
        target,
        kind,
        total,
        estimated,
        Some(Box::new(move |view| {
            state.update(&name, |s| s.running = view.cloned());
        })),
    )
}

impl Context {
    pub fn new(storages: Arc<Storages>, state: Arc<StateFile>, cancel: CancellationToken) -> Self {
        Context {
            storages,
            state,
            cancel,
            clock: Clock::System,
            notify: Notifiers::none(),
            retry_after: None,
            trigger: "manual",
            declared: Arc::default(),
            identity: None,
        }
    }

    /// The same context, sending events to `notify`.
    pub fn with_notifiers(mut self, notify: Arc<Notifiers>) -> Self {
        self.notify = notify;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}
