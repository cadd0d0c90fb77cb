//! `cleanup [--dry-run]` on real files, and `status` without a daemon.

use chrono::{Duration, Utc};

use crate::common::{dbkeep, Sandbox};

/// A sqlite target with one real backup plus copies of it dated `days_ago`.
fn with_history(days_ago: &[i64], extra: &str) -> (Sandbox, std::path::PathBuf) {
    let sb = Sandbox::new();
    let db = sb.path().join("app.db");
    assert!(std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .status()
        .unwrap()
        .success());
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"sqlite\"\npath = \"{}\"\nkeep_days = 30\nmin_keep = 2\n{extra}",
        sb.backups().display(),
        db.display()
    ));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let dir = sb.backups().join("app");
    let real = sb
        .files("app")
        .into_iter()
        .find(|f| f.ends_with(".sqlite.zst"))
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{real}.manifest.json"))).unwrap())
            .unwrap();
    for d in days_ago {
        let id = (Utc::now() - Duration::days(*d))
            .format("%Y%m%d_%H%M%S")
            .to_string();
        let file = format!("app_{id}.sqlite.zst");
        std::fs::copy(dir.join(&real), dir.join(&file)).unwrap();
        let mut m = manifest.clone();
        m["id"] = id.clone().into();
        m["file"] = file.clone().into();
        std::fs::write(
            dir.join(format!("{file}.manifest.json")),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
    }
    (sb, cfg)
}

/// The ids `list --json` shows, oldest first.
fn sorted_ids(cfg: &std::path::Path) -> Vec<String> {
    let all = dbkeep(Some(cfg), &["list", "--json"], &[]).ok();
    let mut ids: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&all.stdout)
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn ids(cfg: &std::path::Path) -> usize {
    let run = dbkeep(Some(cfg), &["list", "--json"], &[]).ok();
    serde_json::from_str::<Vec<serde_json::Value>>(&run.stdout)
        .unwrap()
        .len()
}

#[test]
fn dry_run_shows_the_plan_and_deletes_nothing_then_cleanup_deletes_exactly_that() {
    let (sb, cfg) = with_history(&[40, 35, 20, 10, 1], "");
    let dir = sb.backups().join("app");
    // Not backups: an old archive without manifest, a manifest without archive, another
    // target's file, and a file outside the target's folder.
    std::fs::write(dir.join("app_20200101_000000.sqlite.zst"), b"half").unwrap();
    assert!(std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(dir.join("app_20200101_000000.sqlite.zst"))
        .status()
        .unwrap()
        .success());
    std::fs::write(
        dir.join("app_20200102_000000.sqlite.zst.manifest.json"),
        b"{}",
    )
    .unwrap();
    std::fs::write(dir.join("other_20200101_000000.sqlite.zst"), b"not ours").unwrap();
    std::fs::write(
        sb.backups().join("app_20200101_000000.sqlite.zst"),
        b"outside",
    )
    .unwrap();
    let before = sb.files("app");
    assert_eq!(ids(&cfg), 6);

    let dry = dbkeep(Some(&cfg), &["cleanup", "--dry-run"], &[]).ok();
    assert!(
        dry.stdout
            .contains("app on local: 6 backup(s), would delete 2, keeping 4 (dry run"),
        "{}",
        dry.stdout
    );
    let delete_rows = dry
        .stdout
        .lines()
        .filter(|l| l.contains("  delete  "))
        .count();
    assert_eq!(delete_rows, 2, "{}", dry.stdout);
    assert!(
        dry.stdout.contains("older than keep_days = 30"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("newest complete backup (never deleted)"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("would delete leftover app_20200101_000000.sqlite.zst"),
        "{}",
        dry.stdout
    );
    assert_eq!(sb.files("app"), before, "a dry run deletes nothing");

    let run = dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert!(
        run.stdout.contains("deleted 2, keeping 4"),
        "{}",
        run.stdout
    );
    assert_eq!(ids(&cfg), 4);
    let after = sb.files("app");
    let forty = (Utc::now() - Duration::days(40))
        .format("%Y%m%d")
        .to_string();
    assert!(after.iter().all(|f| !f.contains(&forty)), "{after:?}");
    assert!(
        !after.contains(&"app_20200101_000000.sqlite.zst".to_string()),
        "orphan removed"
    );
    // A manifest without its archive is broken: reported, never counted, and never
    // deleted automatically (it may be the only trace of a backup someone removed).
    assert!(
        after.contains(&"app_20200102_000000.sqlite.zst.manifest.json".to_string()),
        "broken manifest kept"
    );
    assert!(
        run.stdout
            .contains("broken manifest app_20200102_000000.sqlite.zst.manifest.json (its archive is missing): not counted, not deleted"),
        "{}",
        run.stdout
    );
    assert!(
        after.contains(&"other_20200101_000000.sqlite.zst".to_string()),
        "another target's file untouched"
    );
    assert!(
        sb.backups().join("app_20200101_000000.sqlite.zst").exists(),
        "outside the folder untouched"
    );
    // 4 backups (archive + manifest), the other target's file, the broken manifest.
    assert_eq!(after.len(), 4 * 2 + 2, "{after:?}");
}

#[test]
fn min_keep_keeps_the_newest_even_when_all_are_old() {
    let (sb, cfg) = with_history(&[400, 300, 200], "");
    // Remove today's real backup: only old ones remain.
    for f in sb.files("app") {
        if f.contains(&Utc::now().format("%Y%m%d").to_string()) {
            std::fs::remove_file(sb.backups().join("app").join(f)).unwrap();
        }
    }
    assert_eq!(ids(&cfg), 3);
    let run = dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert!(
        run.stdout.contains("deleted 1, keeping 2"),
        "{}",
        run.stdout
    );
    assert_eq!(ids(&cfg), 2);
}

#[test]
fn status_reports_each_target_without_a_daemon() {
    let (sb, cfg) = with_history(&[], "every = \"1h\"\n");
    let run = dbkeep(Some(&cfg), &["status", "--json"], &[]).ok();
    let v: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v[0]["target"], "app");
    assert_eq!(v[0]["healthy"], true);
    assert_eq!(v[0]["backups"], 1);
    assert_eq!(v[0]["last_run"]["status"], "success");
    assert_eq!(v[0]["database"]["up"], true);
    let table = dbkeep(Some(&cfg), &["status"], &[]).ok();
    assert!(
        table.stdout.contains("app") && table.stdout.contains(" ok "),
        "{}",
        table.stdout
    );

    std::fs::remove_file(sb.path().join("app.db")).unwrap();
    let failing = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(failing.code, 1);
    let run = dbkeep(Some(&cfg), &["status", "--json"], &[]);
    assert_eq!(run.code, 1, "a failing target makes status exit 1");
    let v: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v[0]["healthy"], false);
    assert_eq!(v[0]["database"]["up"], false);
    // The order of the problems is not part of the contract: the failure is one of them.
    assert!(
        v[0]["problems"]
            .as_array()
            .unwrap_or_else(|| panic!("no problems list: {}", run.stdout))
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.starts_with("last run failed"))),
        "{}",
        run.stdout
    );
}

/// `pin`: a backup retention would delete is kept, with its reason in `cleanup --dry-run`,
/// `list` and `status`, also after the state file is lost; a pin file that cannot be read
/// still pins; `unpin` hands it back to retention.
#[test]
fn a_pinned_backup_outlives_retention_until_unpinned() {
    let (sb, cfg) = with_history(&[40, 35, 20], "");
    let dir = sb.backups().join("app");
    let listed = sorted_ids(&cfg);
    let (oldest, second) = (listed[0].clone(), listed[1].clone());

    // Mistakes are refused and change nothing.
    for (args, code, says) in [
        (vec!["pin", "app", "2020"], 2, "not a backup id"),
        (
            vec!["pin", "app", "20200101_000000"],
            1,
            "no complete backup 20200101_000000",
        ),
        (
            vec!["pin", "app", &oldest, "--reason", "two\nlines"],
            2,
            "one line",
        ),
        (vec!["pin", "nope", &oldest], 2, "unknown target"),
        (vec!["unpin", "app", &oldest], 1, "is not pinned"),
    ] {
        let run = dbkeep(Some(&cfg), &args, &[]);
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    assert!(!sb.files("app").iter().any(|f| f.starts_with(".dbkeep-pin")));

    let run = dbkeep(
        Some(&cfg),
        &["pin", "app", &oldest, "--reason", "legal hold: case 42"],
        &[],
    )
    .ok();
    assert!(run.stdout.contains("pinned on local"), "{}", run.stdout);
    let pins_of = |id: &str| -> Vec<String> {
        sb.files("app")
            .into_iter()
            .filter(|f| f.starts_with(&format!(".dbkeep-pin.{id}.")))
            .collect()
    };
    assert_eq!(pins_of(&oldest).len(), 1, "{:?}", sb.files("app"));
    let dry = dbkeep(Some(&cfg), &["cleanup", "--dry-run"], &[]).ok();
    assert!(
        dry.stdout.contains("pinned: legal hold: case 42"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("would delete 1"), "{}", dry.stdout);
    let table = dbkeep(Some(&cfg), &["list"], &[]).ok();
    assert!(
        table.stdout.contains("pinned: legal hold: case 42"),
        "{}",
        table.stdout
    );
    let status = dbkeep(Some(&cfg), &["status"], &[]).ok();
    assert!(
        status
            .stdout
            .contains(&format!("pinned {oldest}: legal hold: case 42")),
        "{}",
        status.stdout
    );

    // The pin lives beside the backups: a lost state file changes nothing.
    std::fs::remove_file(sb.backups().join(".dbkeep-state.json")).ok();
    dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    let left = sb.files("app");
    assert!(left.iter().any(|f| f.contains(&oldest)), "{left:?}");
    assert!(!left.iter().any(|f| f.contains(&second)), "{left:?}");

    // Pinning again replaces the reason.
    dbkeep(
        Some(&cfg),
        &["pin", "app", &oldest, "--reason", "audit"],
        &[],
    )
    .ok();
    let json = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
    assert!(
        json.stdout.contains("\"pinned\": \"audit\""),
        "{}",
        json.stdout
    );
    assert_eq!(pins_of(&oldest).len(), 1, "{:?}", sb.files("app"));
    // Invisible text-reordering characters are refused like control characters.
    let run = dbkeep(
        Some(&cfg),
        &["pin", "app", &oldest, "--reason", "ok\u{202e}kcah"],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);

    // Unpinned, retention takes it; but a pin file that cannot be read still pins.
    dbkeep(Some(&cfg), &["unpin", "app", &oldest], &[]).ok();
    std::fs::write(
        dir.join(format!(".dbkeep-pin.{oldest}.json")),
        b"{ not json",
    )
    .unwrap();
    dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert!(sb.files("app").iter().any(|f| f.contains(&oldest)));
    std::fs::remove_file(dir.join(format!(".dbkeep-pin.{oldest}.json"))).unwrap();
    dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert!(
        !sb.files("app").iter().any(|f| f.contains(&oldest)),
        "{:?}",
        sb.files("app")
    );
}

/// A probe object left by an interrupted `dbkeep doctor` is removed by cleanup once it is
/// old enough that no doctor still owns it; a fresh one stays.
#[test]
fn probe_objects_of_an_interrupted_doctor_are_cleaned_up() {
    let (sb, cfg) = with_history(&[], "");
    let dir = sb.backups().join("app");
    let old = dir.join(".dbkeep-probe-0badf00d");
    let fresh = dir.join(".dbkeep-probe-00c0ffee");
    std::fs::write(&old, b"dbkeep doctor probe").unwrap();
    std::fs::write(&fresh, b"dbkeep doctor probe").unwrap();
    assert!(std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&old)
        .status()
        .unwrap()
        .success());
    let run = dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert!(
        run.stdout.contains("interrupted `dbkeep doctor`"),
        "{}",
        run.stdout
    );
    assert!(!old.exists());
    assert!(fresh.exists(), "a doctor may still be using it");
}

/// Pins that cannot be read (too large, a symlink) and one whose reason would forge a
/// line still pin, stop nothing else, and print escaped.
#[test]
fn odd_pin_files_still_pin_and_stop_nothing() {
    let (sb, cfg) = with_history(&[40, 41, 42], "");
    let dir = sb.backups().join("app");
    let ids = sorted_ids(&cfg);
    // 5 MB of zeros, a symlink to a valid pin, and a reason that would forge a line.
    std::fs::write(
        dir.join(format!(".dbkeep-pin.{}.json", ids[0])),
        vec![0u8; 5_000_000],
    )
    .unwrap();
    let valid = sb.path().join("valid.json");
    std::fs::write(
        &valid,
        format!(
            r#"{{"id":"{}","reason":"linked","pinned_at":"2026-11-21T00:00:00Z"}}"#,
            ids[1]
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(&valid, dir.join(format!(".dbkeep-pin.{}.json", ids[1]))).unwrap();
    std::fs::write(
        dir.join(format!(".dbkeep-pin.{}.json", ids[2])),
        format!(
            r#"{{"id":"{}","reason":"ok\n  20261122_000000        1s  delete  FORGED\u001b[2J","pinned_at":"2026-11-21T00:00:00Z"}}"#,
            ids[2]
        ),
    )
    .unwrap();
    // A new backup still works, and cleanup keeps all three.
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let run = dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    for id in &ids[..3] {
        assert!(
            sb.files("app")
                .iter()
                .any(|f| f.starts_with(&format!("app_{id}"))),
            "{id}: {}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("is unreadable"), "{}", run.stdout);
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("20261122_000000")),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains('\u{1b}'), "{}", run.stdout);
}

/// A pin taken while a cleanup runs is never lost to it: the pin waits for the cleanup
/// (both hold the target's retention lock), and once `pin` says so, the backup is kept.
#[test]
fn a_pin_taken_during_a_cleanup_is_never_deleted_by_it() {
    use std::time::Duration;
    let days: Vec<i64> = (40..190).collect();
    let (sb, cfg) = with_history(&days, "");
    let ids = sorted_ids(&cfg);
    // Each round pins the newest of the old backups while a cleanup deletes them all.
    let newest_old = ids[ids.len() - 2].clone();
    let cleanup = crate::common::spawn_dbkeep(&cfg, &["cleanup"]);
    std::thread::sleep(Duration::from_millis(30));
    let pin = dbkeep(
        Some(&cfg),
        &["pin", "app", &newest_old, "--reason", "hold"],
        &[],
    );
    cleanup.finish(Duration::from_secs(60));
    let kept = sb
        .files("app")
        .iter()
        .any(|f| f.starts_with(&format!("app_{newest_old}")));
    match pin.code {
        0 => assert!(kept, "pin said yes and the cleanup deleted {newest_old}"),
        // The cleanup came first and took it: pin says there is no such backup.
        _ => assert!(
            !kept && pin.stderr.contains("no complete backup"),
            "{}",
            pin.stderr
        ),
    }
}
