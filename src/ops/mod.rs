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
pub mod verify;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::notify::Notifiers;
use crate::scheduler::Clock;
use crate::state::StateFile;
use crate::storage::Storages;

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
    /// False for an attempt that a retry follows when it fails: its failure is not news.
    pub final_attempt: bool,
    /// What starts the runs of this context, recorded in their manifests: `manual` (a
    /// command, the admin API) or `scheduled`.
    pub trigger: &'static str,
    /// Declared schemas already built, kept across runs by the daemon.
    pub declared: Arc<DeclaredCache>,
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
            final_attempt: true,
            trigger: "manual",
            declared: Arc::default(),
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
