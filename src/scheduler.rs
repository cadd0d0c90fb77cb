//! When each job runs next (cron or interval, plus jitter), and the per-target loop that
//! starts runs without overlap.
//!
//! Built on croner (the cron engine tokio-cron-scheduler uses) and tokio timers rather than
//! tokio-cron-scheduler itself: that crate keeps its own job store and reads the wall clock
//! internally, so it can neither be driven by `tokio::time::pause()` in tests nor resume
//! from our persisted last-run times. `next_run` here is a pure function instead.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Schedule};

/// The next time a job with `schedule` is due, given when it last ran. A time in the past
/// means "due now"; computing from the last run makes a missed run happen once, not once
/// per missed slot. `None` when the schedule never fires again (a cron expression such as
/// `0 0 31 2 *`, which config validation refuses): there is no silent fallback.
pub fn next_run(
    schedule: &Schedule,
    last_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match schedule {
        Schedule::Every(d) => Some(match last_run {
            Some(last) => last + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX),
            None => now,
        }),
        Schedule::Cron(expr, tz) => {
            // Wall-clock time in the target's zone. Across DST changes (croner's rule): a
            // time in the skipped hour runs once when the gap ends (02:30 on the spring
            // day runs at 03:00), a time in the repeated hour runs once, at its first
            // occurrence.
            let from = last_run.unwrap_or(now).with_timezone(tz);
            config::parse_cron(expr)
                .ok()
                .and_then(|c| c.find_next_occurrence(&from, false).ok())
                // croner keeps the sub-second part of `from`; cron slots are whole seconds.
                // (Truncated in UTC: a local time in the repeated hour is ambiguous.)
                .map(|t| t.with_timezone(&Utc))
                .and_then(|t| t.with_nanosecond(0))
        }
    }
}

/// A random delay in `[0, jitter)`.
pub fn jitter_delay(jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::random_range(0..jitter.as_millis().max(1) as u64))
}

/// Wall-clock time that tests can drive with `tokio::time::pause()`.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    System,
    /// `base` at the tokio instant `start`, advancing with tokio's (possibly paused) time.
    #[cfg(test)]
    Tokio {
        base: DateTime<Utc>,
        start: tokio::time::Instant,
    },
}

impl Clock {
    #[cfg(test)]
    pub fn tokio_at(base: DateTime<Utc>) -> Self {
        Clock::Tokio {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            #[cfg(test)]
            Clock::Tokio { base, start } => {
                *base + chrono::Duration::from_std(start.elapsed()).unwrap_or_default()
            }
        }
    }

    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        let wait = (at - self.now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
    }
}

/// What the loop of one target's job needs from the daemon.
pub trait Runner: Send + Sync + 'static {
    /// Start one run; the handle tells the loop whether it is still going.
    fn start(&self) -> JoinHandle<()>;
    /// A due run was not started.
    fn skipped(&self, reason: &str);
    /// The next run is planned for `at`.
    fn planned(&self, at: DateTime<Utc>);
}

/// Run `runner` on `schedule` until `cancel`: never two runs of it at once.
pub async fn run_loop(
    schedule: Schedule,
    jitter: Duration,
    last_run: Option<DateTime<Utc>>,
    clock: Clock,
    runner: impl Runner,
    cancel: CancellationToken,
) {
    let mut last = last_run;
    let mut running: Option<JoinHandle<()>> = None;
    loop {
        let now = clock.now();
        let Some(due) = next_run(&schedule, last, now) else {
            tracing::error!(
                schedule = ?schedule,
                "the schedule never fires again; no more runs are started for it (fix the cron expression and reload)"
            );
            cancel.cancelled().await;
            return;
        };
        let due = due.max(now);
        let at = due + chrono::Duration::from_std(jitter_delay(jitter)).unwrap_or_default();
        runner.planned(at);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = clock.sleep_until(at) => {}
        }
        last = Some(clock.now());
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            runner.skipped("overlap");
            continue;
        }
        running = Some(runner.start());
    }
}

#[cfg(test)]
mod tests {

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_in_a_zone_follows_its_wall_clock_across_both_dst_changes() {
        let berlin: crate::config::Tz = "Europe/Berlin".parse().unwrap();
        let nightly = Schedule::Cron("30 2 * * *".into(), berlin);
        let walk = |from: &str, n: usize| {
            let mut t = utc(from);
            let mut out = Vec::new();
            for _ in 0..n {
                t = next_run(&nightly, Some(t), t).unwrap();
                out.push(t.to_rfc3339());
            }
            out
        };
        // Spring: 02:30 does not exist on 29 March; it runs once, when the gap ends (03:00
        // CEST), and at 02:30 CEST after.
        assert_eq!(
            walk("2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:30:00+00:00",
                "2026-03-29T01:00:00+00:00",
                "2026-03-30T00:30:00+00:00"
            ]
        );
        // Autumn: 02:30 happens twice on 25 October; it runs once, at the first.
        assert_eq!(
            walk("2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T00:30:00+00:00",
                "2026-10-25T00:30:00+00:00",
                "2026-10-26T01:30:00+00:00"
            ]
        );
        // The same expression in UTC ignores both.
        let plain = Schedule::cron("30 2 * * *");
        let t = next_run(
            &plain,
            Some(utc("2026-03-28T03:00:00Z")),
            utc("2026-03-28T03:00:00Z"),
        );
        assert_eq!(t.unwrap().to_rfc3339(), "2026-03-29T02:30:00+00:00");
    }

    #[test]
    fn an_hourly_cron_in_a_zone_never_runs_twice_in_the_repeated_hour() {
        let berlin: crate::config::Tz = "Europe/Berlin".parse().unwrap();
        let hourly = Schedule::Cron("15 * * * *".into(), berlin);
        let mut t = utc("2026-10-24T22:30:00Z");
        let mut seen = Vec::new();
        for _ in 0..5 {
            t = next_run(&hourly, Some(t), t).unwrap();
            seen.push(t);
        }
        let mut dedup = seen.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), seen.len());
        // 02:15 CEST, then 03:15 CET: the second 02:15 (CET) is not a second run.
        assert!(seen.contains(&utc("2026-10-25T00:15:00Z")));
        assert!(!seen.contains(&utc("2026-10-25T01:15:00Z")));
        assert!(seen.contains(&utc("2026-10-25T02:15:00Z")));
    }
    use super::*;
    use chrono::TimeZone;
    use std::sync::{Arc, Mutex};

    fn t(s: &str) -> DateTime<Utc> {
        Utc.from_utc_datetime(
            &chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap(),
        )
    }

    #[test]
    fn next_run_table() {
        let every = Schedule::Every(Duration::from_secs(6 * 3600));
        let nightly = Schedule::cron("0 2 * * *");
        let with_secs = Schedule::cron("*/15 * * * * *");
        let now = t("2026-11-21 14:30:00");
        for (name, schedule, last, want) in [
            (
                "interval, never ran: now",
                &every,
                None,
                t("2026-11-21 14:30:00"),
            ),
            (
                "interval after last",
                &every,
                Some(t("2026-11-21 12:00:00")),
                t("2026-11-21 18:00:00"),
            ),
            (
                "interval missed: due in the past (once)",
                &every,
                Some(t("2026-11-20 00:00:00")),
                t("2026-11-20 06:00:00"),
            ),
            (
                "cron, never ran: next slot",
                &nightly,
                None,
                t("2026-11-22 02:00:00"),
            ),
            (
                "cron after last",
                &nightly,
                Some(t("2026-11-21 02:00:05")),
                t("2026-11-22 02:00:00"),
            ),
            (
                "cron missed while down",
                &nightly,
                Some(t("2026-11-19 02:00:00")),
                t("2026-11-20 02:00:00"),
            ),
            (
                "cron with seconds",
                &with_secs,
                Some(t("2026-11-21 14:29:50")),
                t("2026-11-21 14:30:00"),
            ),
            (
                "cron after a run that started mid-second: on the whole second",
                &nightly,
                Some(t("2026-11-21 02:00:05") + chrono::Duration::milliseconds(545)),
                t("2026-11-22 02:00:00"),
            ),
        ] {
            assert_eq!(next_run(schedule, last, now), Some(want), "{name}");
        }
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let j = Duration::from_secs(30);
        for _ in 0..1000 {
            assert!(jitter_delay(j) < j);
        }
        assert_eq!(jitter_delay(Duration::ZERO), Duration::ZERO);
    }

    /// Records start times (by the test clock); each run takes `work`.
    #[derive(Clone)]
    struct Recorder {
        clock: Clock,
        work: Duration,
        starts: Arc<Mutex<Vec<DateTime<Utc>>>>,
        skips: Arc<Mutex<Vec<DateTime<Utc>>>>,
    }

    impl Runner for Recorder {
        fn start(&self) -> JoinHandle<()> {
            self.starts.lock().unwrap().push(self.clock.now());
            let work = self.work;
            tokio::spawn(async move { tokio::time::sleep(work).await })
        }
        fn skipped(&self, _reason: &str) {
            self.skips.lock().unwrap().push(self.clock.now());
        }
        fn planned(&self, _at: DateTime<Utc>) {}
    }

    async fn run_for(
        schedule: Schedule,
        jitter: Duration,
        last: Option<DateTime<Utc>>,
        work: Duration,
        total: Duration,
    ) -> Recorder {
        let clock = Clock::tokio_at(t("2026-11-21 00:00:00"));
        let rec = Recorder {
            clock,
            work,
            starts: Default::default(),
            skips: Default::default(),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_loop(
            schedule,
            jitter,
            last,
            clock,
            rec.clone(),
            cancel.clone(),
        ));
        tokio::time::sleep(total).await;
        cancel.cancel();
        task.await.unwrap();
        rec
    }

    fn secs_after_start(v: &[DateTime<Utc>]) -> Vec<i64> {
        v.iter()
            .map(|d| (*d - t("2026-11-21 00:00:00")).num_seconds())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn interval_runs_at_start_then_every_period() {
        let rec = run_for(
            Schedule::Every(Duration::from_secs(10)),
            Duration::ZERO,
            None,
            Duration::from_secs(1),
            Duration::from_secs(35),
        )
        .await;
        assert_eq!(
            secs_after_start(&rec.starts.lock().unwrap()),
            [0, 10, 20, 30]
        );
        assert!(rec.skips.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cron_with_seconds_runs_on_its_slots() {
        let rec = run_for(
            Schedule::cron("*/15 * * * * *"),
            Duration::ZERO,
            None,
            Duration::from_secs(1),
            Duration::from_secs(50),
        )
        .await;
        assert_eq!(secs_after_start(&rec.starts.lock().unwrap()), [15, 30, 45]);
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_run_is_skipped() {
        let rec = run_for(
            Schedule::Every(Duration::from_secs(10)),
            Duration::ZERO,
            None,
            Duration::from_secs(25),
            Duration::from_secs(45),
        )
        .await;
        assert_eq!(secs_after_start(&rec.starts.lock().unwrap()), [0, 30]);
        assert_eq!(secs_after_start(&rec.skips.lock().unwrap()), [10, 20, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_runs_start_within_the_jitter_window() {
        let rec = run_for(
            Schedule::cron("0 * * * * *"),
            Duration::from_secs(20),
            None,
            Duration::from_secs(1),
            Duration::from_secs(10 * 60 + 30),
        )
        .await;
        let origin = t("2026-11-21 00:00:00");
        let starts_ms: Vec<i64> = rec
            .starts
            .lock()
            .unwrap()
            .iter()
            .map(|d| (*d - origin).num_milliseconds())
            .collect();
        assert_eq!(starts_ms.len(), 10, "{starts_ms:?}");
        let mut spread = std::collections::BTreeSet::new();
        for (i, ms) in starts_ms.iter().enumerate() {
            let slot = 60_000 * (i as i64 + 1);
            // Jitter is below 20 s; tokio rounds a timer up to the next millisecond.
            assert!(
                (slot..=slot + 20_000).contains(ms),
                "run {i} at {ms} ms, slot {slot} ms"
            );
            spread.insert((ms - slot) / 1000);
        }
        assert!(
            spread.len() > 1,
            "jitter must vary between runs: {starts_ms:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_missed_while_down_is_taken_once_at_start() {
        // Last ran 1 h before start with a 10 min interval: six slots were missed.
        let last = t("2026-11-20 23:00:00");
        let rec = run_for(
            Schedule::Every(Duration::from_secs(600)),
            Duration::ZERO,
            Some(last),
            Duration::from_secs(1),
            Duration::from_secs(25 * 60),
        )
        .await;
        assert_eq!(
            secs_after_start(&rec.starts.lock().unwrap()),
            [0, 600, 1200]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_before_the_next_slot_does_not_run_early() {
        let last = t("2026-11-20 23:55:00");
        let rec = run_for(
            Schedule::Every(Duration::from_secs(600)),
            Duration::ZERO,
            Some(last),
            Duration::from_secs(1),
            Duration::from_secs(12 * 60),
        )
        .await;
        assert_eq!(secs_after_start(&rec.starts.lock().unwrap()), [300]);
    }
}
