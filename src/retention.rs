//! The retention plan: which complete backups of one target on one storage to keep or
//! delete, each with its reason. A pure function of the listing, the policy and `now`.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Utc};

use crate::catalog::BackupId;
pub use crate::config::Policy;

/// One complete backup (all archives of one run share its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: BackupId,
    /// A local archive whose upload to a configured remote has not happened yet.
    pub pending_upload: bool,
    /// Why it is pinned (`dbkeep pin`): never deleted.
    pub pinned: Option<String>,
    /// Why it is suspect (and not accepted): not counted toward `min_keep` or the
    /// daily/weekly/monthly slots, and never the reason a good backup goes.
    pub suspect: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: BackupId,
    pub action: Action,
    pub reason: String,
}

/// Decide for every complete backup, newest first. Only complete backups may be passed in:
/// incomplete leftovers are not backups and are handled elsewhere.
pub fn plan(backups: &[Candidate], policy: &Policy, now: DateTime<Utc>) -> Vec<Decision> {
    let mut sorted: Vec<Candidate> = backups.to_vec();
    sorted.sort_by_key(|b| std::cmp::Reverse(b.id));
    sorted.dedup_by(|a, b| {
        if a.id == b.id {
            b.pending_upload |= a.pending_upload;
            if b.pinned.is_none() {
                b.pinned = a.pinned.take();
            }
            if b.suspect.is_none() {
                b.suspect = a.suspect.take();
            }
            true
        } else {
            false
        }
    });

    // Suspect backups fill no slot: the newest backups, days, weeks and months are
    // counted over the good ones, so a series of empty dumps pushes none of them out.
    let good: Vec<Candidate> = sorted
        .iter()
        .filter(|b| b.suspect.is_none())
        .cloned()
        .collect();
    let daily = gfs_keep(&good, policy.keep_daily, |t| (t.year(), t.ordinal(), 0));
    let weekly = gfs_keep(&good, policy.keep_weekly, |t| {
        let w = t.iso_week();
        (w.year(), w.week(), 0)
    });
    let monthly = gfs_keep(&good, policy.keep_monthly, |t| (t.year(), t.month(), 1));
    let max_age = chrono::Duration::days(i64::from(policy.keep_days));
    let newest_good = good.first().map(|b| b.id);
    let rank_among_good = |id: BackupId| good.iter().position(|b| b.id == id);

    sorted
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let age = now - b.id.time();
            let keep = |reason: String| Decision {
                id: b.id,
                action: Action::Keep,
                reason,
            };
            let rank = rank_among_good(b.id);
            if i == 0 {
                keep("newest complete backup (never deleted)".into())
            } else if Some(b.id) == newest_good {
                keep("newest backup that is not suspect (never deleted)".into())
            } else if let Some(why) = &b.pinned {
                keep(format!("pinned: {why}"))
            } else if rank.is_some_and(|r| (r as u64) < u64::from(policy.min_keep)) {
                keep(format!("one of the newest {} (min_keep)", policy.min_keep))
            } else if b.pending_upload {
                keep("not yet uploaded to remote storage".into())
            } else if daily.contains(&b.id) {
                keep(format!(
                    "newest of its day (keep_daily = {})",
                    policy.keep_daily
                ))
            } else if weekly.contains(&b.id) {
                keep(format!(
                    "newest of its week (keep_weekly = {})",
                    policy.keep_weekly
                ))
            } else if monthly.contains(&b.id) {
                keep(format!(
                    "newest of its month (keep_monthly = {})",
                    policy.keep_monthly
                ))
            } else if age <= max_age {
                keep(format!(
                    "{} old, within keep_days = {}",
                    fmt_age(age),
                    policy.keep_days
                ))
            } else {
                Decision {
                    id: b.id,
                    action: Action::Delete,
                    reason: format!(
                        "{} old, older than keep_days = {}",
                        fmt_age(age),
                        policy.keep_days
                    ),
                }
            }
        })
        .collect()
}

/// The newest backup of each of the newest `count` distinct periods.
fn gfs_keep(
    newest_first: &[Candidate],
    count: u32,
    period: impl Fn(DateTime<Utc>) -> (i32, u32, u32),
) -> HashSet<BackupId> {
    let mut seen = HashSet::new();
    let mut kept = HashSet::new();
    for b in newest_first {
        if seen.len() >= count as usize {
            break;
        }
        if seen.insert(period(b.id.time())) {
            kept.insert(b.id);
        }
    }
    kept
}

/// "3d 4h", "5h 12m", "42s".
pub fn fmt_age(age: chrono::Duration) -> String {
    let s = age.num_seconds();
    if s < 0 {
        return "in the future".into();
    }
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: &str) -> DateTime<Utc> {
        Utc.from_utc_datetime(
            &chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap(),
        )
    }
    fn c(s: &str) -> Candidate {
        Candidate {
            id: BackupId::from_time(t(s)),
            pending_upload: false,
            pinned: None,
            suspect: None,
        }
    }
    fn pending(s: &str) -> Candidate {
        Candidate {
            pending_upload: true,
            ..c(s)
        }
    }
    fn pol(keep_days: u32, min_keep: u32) -> Policy {
        Policy {
            keep_days,
            min_keep,
            ..Policy::default()
        }
    }
    /// Daily backups at 02:00 on days 1..=n of November 2026.
    fn daily(n: u32) -> Vec<Candidate> {
        (1..=n)
            .map(|d| c(&format!("2026-11-{d:02} 02:00:00")))
            .collect()
    }
    /// The ids deleted, as "MMDD_HH" strings for short expectations.
    fn deleted(backups: &[Candidate], p: Policy, now: &str) -> Vec<String> {
        plan(backups, &p, t(now))
            .into_iter()
            .filter(|d| d.action == Action::Delete)
            .map(|d| d.id.to_string()[4..11].to_string())
            .collect()
    }

    #[test]
    fn table() {
        let now = "2026-11-30 12:00:00";
        type Case<'a> = (&'a str, Vec<Candidate>, Policy, &'a str, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            ("empty", vec![], pol(30, 5), now, vec![]),
            (
                "one backup, very old",
                vec![c("2020-01-01 00:00:00")],
                pol(1, 0),
                now,
                vec![],
            ),
            ("all young", daily(20), pol(30, 5), now, vec![]),
            (
                "all old: min_keep keeps the newest 5",
                daily(10),
                pol(1, 5),
                "2027-06-01 00:00:00",
                vec!["1105_02", "1104_02", "1103_02", "1102_02", "1101_02"],
            ),
            (
                "min_keep = 0 still keeps the newest",
                daily(3),
                pol(1, 0),
                "2027-06-01 00:00:00",
                vec!["1102_02", "1101_02"],
            ),
            (
                "keep_days = 0 deletes all beyond min_keep",
                daily(6),
                pol(0, 3),
                now,
                vec!["1103_02", "1102_02", "1101_02"],
            ),
            (
                "age cut: older than 7 days goes",
                daily(30),
                pol(7, 2),
                now,
                vec![
                    "1123_02", "1122_02", "1121_02", "1120_02", "1119_02", "1118_02", "1117_02",
                    "1116_02", "1115_02", "1114_02", "1113_02", "1112_02", "1111_02", "1110_02",
                    "1109_02", "1108_02", "1107_02", "1106_02", "1105_02", "1104_02", "1103_02",
                    "1102_02", "1101_02",
                ],
            ),
            (
                "exactly keep_days old is kept (boundary)",
                vec![c("2026-11-23 12:00:00"), c("2026-11-30 11:00:00")],
                pol(7, 1),
                now,
                vec![],
            ),
            (
                "one second past keep_days is deleted (boundary)",
                vec![c("2026-11-23 11:59:59"), c("2026-11-30 11:00:00")],
                pol(7, 1),
                now,
                vec!["1123_11"],
            ),
            (
                "min_keep larger than the count keeps all",
                daily(3),
                pol(0, 10),
                "2027-01-01 00:00:00",
                vec![],
            ),
            (
                "pending upload is never deleted",
                vec![
                    pending("2026-01-01 00:00:00"),
                    c("2026-01-02 00:00:00"),
                    c("2026-11-30 00:00:00"),
                ],
                pol(1, 1),
                now,
                vec!["0102_00"],
            ),
            (
                "keep_daily keeps the newest of each of the last 3 days",
                vec![
                    c("2026-11-01 01:00:00"),
                    c("2026-11-01 13:00:00"),
                    c("2026-11-02 01:00:00"),
                    c("2026-11-02 13:00:00"),
                    c("2026-11-03 01:00:00"),
                    c("2026-11-03 13:00:00"),
                ],
                Policy {
                    keep_daily: 3,
                    ..pol(0, 1)
                },
                now,
                vec!["1103_01", "1102_01", "1101_01"],
            ),
            (
                "keep_weekly keeps one per ISO week",
                (0..21)
                    .map(|i| c(&format!("2026-10-{:02} 02:00:00", i + 1)))
                    .collect(),
                Policy {
                    keep_weekly: 2,
                    ..pol(0, 1)
                },
                now,
                // Oct 21 (Wed) is newest overall; week 43 (Oct 19-25) newest = 21, week 42 (12-18) newest = 18.
                vec![
                    "1020_02", "1019_02", "1017_02", "1016_02", "1015_02", "1014_02", "1013_02",
                    "1012_02", "1011_02", "1010_02", "1009_02", "1008_02", "1007_02", "1006_02",
                    "1005_02", "1004_02", "1003_02", "1002_02", "1001_02",
                ],
            ),
            (
                "keep_monthly keeps the newest of each of the last 3 months",
                vec![
                    c("2026-07-15 00:00:00"),
                    c("2026-08-01 00:00:00"),
                    c("2026-08-31 00:00:00"),
                    c("2026-09-10 00:00:00"),
                    c("2026-09-20 00:00:00"),
                    c("2026-10-05 00:00:00"),
                ],
                Policy {
                    keep_monthly: 3,
                    ..pol(0, 1)
                },
                now,
                vec!["0910_00", "0801_00", "0715_00"],
            ),
            (
                "GFS never keeps fewer than age does",
                daily(10),
                Policy {
                    keep_daily: 1,
                    ..pol(30, 1)
                },
                now,
                vec![],
            ),
            (
                "unsorted input is sorted",
                vec![
                    c("2026-11-01 00:00:00"),
                    c("2026-11-29 00:00:00"),
                    c("2026-11-02 00:00:00"),
                ],
                pol(7, 1),
                now,
                vec!["1102_00", "1101_00"],
            ),
            (
                "duplicate ids count once",
                vec![
                    c("2026-11-01 00:00:00"),
                    c("2026-11-01 00:00:00"),
                    c("2026-11-29 00:00:00"),
                ],
                pol(7, 1),
                now,
                vec!["1101_00"],
            ),
            (
                "a backup from the future (clock skew) is kept",
                vec![c("2026-12-05 00:00:00"), c("2026-11-29 00:00:00")],
                pol(0, 1),
                now,
                vec!["1129_00"],
            ),
            (
                "newest is kept even when everything is old and min_keep = 0",
                vec![c("2020-01-01 00:00:00"), c("2020-01-02 00:00:00")],
                pol(0, 0),
                now,
                vec!["0101_00"],
            ),
            (
                "min_keep counts complete backups only: two young and three old",
                vec![
                    c("2026-11-30 01:00:00"),
                    c("2026-11-30 02:00:00"),
                    c("2026-10-01 00:00:00"),
                    c("2026-10-02 00:00:00"),
                    c("2026-10-03 00:00:00"),
                ],
                pol(7, 3),
                now,
                vec!["1002_00", "1001_00"],
            ),
            (
                "pending upload inside min_keep is simply kept",
                vec![pending("2026-11-30 01:00:00"), c("2026-01-01 00:00:00")],
                pol(0, 2),
                now,
                vec![],
            ),
        ];
        assert!(cases.len() >= 20);
        for (name, backups, policy, now, want) in cases {
            assert_eq!(deleted(&backups, policy, now), want, "case: {name}");
        }
    }

    #[test]
    fn a_pinned_backup_is_kept_whatever_its_age_with_the_pin_as_its_reason() {
        let policy = Policy {
            keep_days: 1,
            min_keep: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
        };
        let old = Candidate {
            pinned: Some("before the 2026 migration".into()),
            ..c("2025-01-01 02:00:00")
        };
        let p = plan(
            &[c("2026-11-21 02:00:00"), old, c("2025-01-02 02:00:00")],
            &policy,
            t("2026-11-21 12:00:00"),
        );
        assert_eq!(p[1].action, Action::Delete, "{p:?}");
        assert_eq!(p[2].action, Action::Keep, "{p:?}");
        assert_eq!(p[2].reason, "pinned: before the 2026 migration");
    }

    #[test]
    fn suspect_backups_fill_no_slot_and_never_push_the_last_good_one_out() {
        // Three good days, then three suspect (empty) dumps; keep_days 0 and min_keep 2.
        let mut backups = daily(6);
        for b in backups.iter_mut().skip(3) {
            b.suspect = Some("table public.orders is empty (it had 5000 rows)".into());
        }
        let p = plan(&backups, &pol(0, 2), t("2026-11-30 12:00:00"));
        let kept: Vec<String> = p
            .iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| d.id.to_string()[4..11].to_string())
            .collect();
        // The newest (suspect) is kept as the newest; the two newest good ones by
        // min_keep, the newest good one also as such; the two older suspects go.
        assert_eq!(kept, ["1106_02", "1103_02", "1102_02"], "{p:?}");
        let d3 = p.iter().find(|d| d.id == backups[2].id).unwrap();
        assert_eq!(
            d3.reason,
            "newest backup that is not suspect (never deleted)"
        );
        // Without the marks, the suspects would have pushed every good one out.
        let unmarked = plan(&daily(6), &pol(0, 2), t("2026-11-30 12:00:00"));
        assert_eq!(
            unmarked.iter().filter(|d| d.action == Action::Keep).count(),
            2
        );
    }

    #[test]
    fn every_decision_has_a_reason_and_the_plan_covers_every_backup() {
        let backups = daily(12);
        let p = plan(&backups, &pol(5, 3), t("2026-11-30 12:00:00"));
        assert_eq!(p.len(), 12);
        assert!(p.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert_eq!(p[0].reason, "newest complete backup (never deleted)");
        assert_eq!(p[1].reason, "one of the newest 3 (min_keep)");
        assert_eq!(p[11].reason, "29d 10h old, older than keep_days = 5");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(fmt_age(chrono::Duration::seconds(42)), "42s");
        assert_eq!(fmt_age(chrono::Duration::seconds(3 * 60 + 5)), "3m 5s");
        assert_eq!(
            fmt_age(chrono::Duration::seconds(5 * 3600 + 12 * 60)),
            "5h 12m"
        );
        assert_eq!(
            fmt_age(chrono::Duration::seconds(3 * 86400 + 4 * 3600)),
            "3d 4h"
        );
    }
}
