//! `stale` and `recovered` notifications, from the same rule as `/health` (a target with
//! no complete backup by its deadline), checked on a timer of their own: they fire even
//! when the scheduler is stuck or every run hangs. Each fires once per change.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::config::Event;
use crate::notify::Message;

/// How often the deadlines are looked at.
pub const STALE_CHECK: Duration = Duration::from_secs(5);

impl Daemon {
    /// Watch every target's deadline until `cancel` (a reload starts a new watch, which
    /// begins from what `/health` says then).
    pub(super) fn start_stale_watch(self: &Arc<Self>, cancel: &CancellationToken) {
        let d = self.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(STALE_CHECK) => {}
                }
                let now = d.clock.now();
                let notify = d.context().notify;
                for h in d.health().await {
                    let is_stale = now > h.stale_after;
                    // Kept by the daemon, not this watch: a reload starts a new watch that
                    // must not tell again what the last one told.
                    let was = d
                        .stale
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(h.target.clone(), is_stale);
                    match (was, is_stale) {
                        (Some(false) | None, true) => {
                            let overdue = (now - h.stale_after).num_seconds();
                            tracing::warn!(target = %h.target, overdue_seconds = overdue, "no complete backup by the deadline");
                            notify.send(
                                Event::Stale,
                                Message::new(Event::Stale, &h.target, now).with_error(format!(
                                    "the newest complete backup is {}; the deadline was {}",
                                    h.newest_backup
                                        .as_ref()
                                        .map(|b| format!("{} ({}s old)", b.id, b.age_seconds))
                                        .unwrap_or_else(|| "none".into()),
                                    h.stale_after.to_rfc3339()
                                )),
                            );
                        }
                        (Some(true), false) => {
                            notify.send(
                                Event::Recovered,
                                Message::new(Event::Recovered, &h.target, now),
                            );
                        }
                        _ => {}
                    }
                }
            }
        });
    }
}
