//! Progress of a running backup, restore or drill: bytes so far, rate and, when the size
//! is known (a restore) or estimated (a backup, from the database's size), percent and
//! ETA. On an interactive terminal it is a bar (indicatif); otherwise a log line every
//! 15 s. While it runs it is readable in this process (`/health`, the admin page) and,
//! through the reporter its owner gives, in the state file (`dbkeep status` elsewhere).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How often the reporter hears of progress, and how often a log line is written.
const REPORT_EVERY: Duration = Duration::from_secs(2);
const LOG_EVERY: Duration = Duration::from_secs(15);

/// "0 B", "512 KiB", "1.5 GiB".
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{n} B"),
        _ if v < 10.0 => format!("{v:.1} {}", UNITS[u]),
        _ => format!("{v:.0} {}", UNITS[u]),
    }
}

/// A running run's progress as shown to operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunProgress {
    pub target: String,
    /// `backup`, `restore` or `drill`.
    pub kind: String,
    pub started: DateTime<Utc>,
    /// Uncompressed bytes dumped (backup), or stored bytes read (restore, drill).
    pub bytes: u64,
    /// The size it heads for, when known or estimated.
    pub total: Option<u64>,
    /// Whether `total` is an estimate (a backup's, from the database's size).
    pub estimated: bool,
    pub percent: Option<f64>,
    pub bytes_per_second: u64,
    pub eta_seconds: Option<u64>,
    pub updated: DateTime<Utc>,
}

impl RunProgress {
    /// One line: `backup: 120 MiB of ~2.0 GiB (6%), 40 MiB/s, about 48s left`.
    pub fn line(&self) -> String {
        let size = human_size;
        let of = match self.total {
            Some(t) => format!(" of {}{}", if self.estimated { "~" } else { "" }, size(t)),
            None => String::new(),
        };
        let pct = self
            .percent
            .map(|p| format!(" ({p:.0}%)"))
            .unwrap_or_default();
        let eta = self
            .eta_seconds
            .map(|s| format!(", about {}s left", s))
            .unwrap_or_default();
        format!(
            "{}: {}{of}{pct}, {}/s{eta}",
            self.kind,
            size(self.bytes),
            size(self.bytes_per_second)
        )
    }
}

/// Whether this process draws bars (a one-shot command on a terminal); the daemon never.
static INTERACTIVE: AtomicBool = AtomicBool::new(false);

pub fn set_interactive(on: bool) {
    INTERACTIVE.store(on, Ordering::Relaxed);
}

/// The meters running in this process.
static ACTIVE: std::sync::LazyLock<Mutex<Vec<Weak<Meter>>>> =
    std::sync::LazyLock::new(|| Mutex::new(Vec::new()));

/// Told of progress every few seconds, then `None` when the run ends.
pub type Reporter = Box<dyn Fn(Option<&RunProgress>) + Send + Sync>;

/// Counts one run's bytes.
pub struct Meter {
    target: String,
    kind: &'static str,
    estimated: bool,
    started: DateTime<Utc>,
    t0: Instant,
    done: AtomicU64,
    /// 0: unknown.
    total: AtomicU64,
    bar: Option<indicatif::ProgressBar>,
    report: Option<Reporter>,
}

impl Meter {
    pub fn start(
        target: &str,
        kind: &'static str,
        total: Option<u64>,
        estimated: bool,
        report: Option<Reporter>,
    ) -> Arc<Meter> {
        let bar = INTERACTIVE.load(Ordering::Relaxed).then(|| {
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::no_length(),
            };
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            let template = match (total, estimated) {
                (Some(_), false) => "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} ({percent}%) {binary_bytes_per_sec}, ETA {eta}",
                (Some(_), true) => "{msg} [{wide_bar}] {binary_bytes} of ~{binary_total_bytes} {binary_bytes_per_sec}, ETA ~{eta}",
                (None, _) => "{msg} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("{kind} {target}"));
            bar
        });
        let meter = Arc::new(Meter {
            target: target.to_string(),
            kind,
            estimated,
            started: Utc::now(),
            t0: Instant::now(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(total.unwrap_or(0)),
            bar,
            report,
        });
        let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
        active.retain(|w| w.strong_count() > 0);
        active.push(Arc::downgrade(&meter));
        drop(active);
        // Reports go out on a clock, not on bytes: a run can stall (a slow codec working
        // through what it buffered) and still be running.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&meter);
            rt.spawn(async move {
                let mut since_log = Duration::ZERO;
                loop {
                    tokio::time::sleep(REPORT_EVERY).await;
                    let Some(m) = weak.upgrade() else {
                        return;
                    };
                    m.tick(&mut since_log);
                }
            });
        }
        meter
    }

    /// Tell the reporter, and every `LOG_EVERY` the log when no bar is drawn.
    fn tick(&self, since_log: &mut Duration) {
        let v = self.view();
        if let Some(r) = &self.report {
            r(Some(&v));
        }
        *since_log += REPORT_EVERY;
        if self.bar.is_none() && *since_log >= LOG_EVERY {
            *since_log = Duration::ZERO;
            tracing::info!(target = %self.target, bytes = v.bytes, total = ?v.total, "{}", v.line());
        }
    }

    /// `n` more bytes went through.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn view(&self) -> RunProgress {
        let bytes = self.done.load(Ordering::Relaxed);
        let total = match self.total.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        };
        let secs = self.t0.elapsed().as_secs_f64().max(0.001);
        let rate = (bytes as f64 / secs) as u64;
        // An estimate may be passed: then the percent stays below 100 and there is no ETA.
        let (percent, eta) = match total {
            Some(t) if bytes < t => (
                Some(100.0 * bytes as f64 / t as f64),
                (rate > 0).then(|| (t - bytes) / rate),
            ),
            Some(_) if self.estimated => (Some(99.0), None),
            Some(_) => (Some(100.0), Some(0)),
            None => (None, None),
        };
        RunProgress {
            target: self.target.clone(),
            kind: self.kind.to_string(),
            started: self.started,
            bytes,
            total,
            estimated: self.estimated,
            percent,
            bytes_per_second: rate,
            eta_seconds: eta,
            updated: Utc::now(),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some(r) = &self.report {
            r(None);
        }
    }
}

/// What runs in this process for `target` now.
pub fn current(target: &str) -> Vec<RunProgress> {
    let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
    active
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|m| m.target == target)
        .map(|m| m.view())
        .collect()
}

/// A reader that counts what passes through it on a meter.
pub struct Counted<R> {
    pub inner: R,
    pub meter: Arc<Meter>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_that_is_passed_stays_below_100_percent_without_an_eta() {
        let m = Meter::start("t", "backup", Some(100), true, None);
        m.add(50);
        let v = m.view();
        assert_eq!(v.percent, Some(50.0));
        m.add(100);
        let v = m.view();
        assert_eq!((v.percent, v.eta_seconds), (Some(99.0), None));
        assert!(v.line().contains("of ~100 B"), "{}", v.line());
        assert_eq!(current("t").len(), 1);
        drop(m);
        assert!(current("t").is_empty());
    }
}
