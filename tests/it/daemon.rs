//! `dbkeep run`: scheduled backups and cleanup, metrics, health, signals, systemd.

use std::time::{Duration, Instant};

use crate::common::{
    dbkeep, pg_config, process_gone, slow_pg_dump, spawn_daemon, sqlite_target, wait_for, Sandbox,
    TestPostgres,
};

fn temp_files(sb: &Sandbox) -> Vec<String> {
    sb.files("app")
        .into_iter()
        .filter(|f| f.starts_with(".dbkeep-tmp."))
        .collect()
}

fn listed(cfg: &std::path::Path) -> Vec<String> {
    let run = dbkeep(Some(cfg), &["list", "--json"], &[]).ok();
    let arr: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    arr.iter()
        .map(|b| b["file"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn scheduled_backups_cleanup_metrics_and_health_follow_the_database() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        "every = \"2s\"\nhealth_grace = \"2s\"\nkeep_days = 0\nmin_keep = 2",
    );
    // One daemon, no replicas: without the lease, a database that goes away makes runs
    // fail (with the lease, the daemon would stand by until it can take it again).
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[daemon]\n",
        "[daemon]\nlease = \"off\"\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let d = spawn_daemon(&cfg, &[]);
    assert_eq!(d.get("/ready").0, 200);

    let success = r#"dbkeep_backup_runs_total{status="success",target="app"}"#;
    wait_for(
        Duration::from_secs(60),
        "3 successful scheduled backups",
        || d.metric(success).unwrap_or(0.0) >= 3.0,
    );
    // Cleanup follows each backup: keep_days = 0 leaves exactly min_keep.
    // (Two backups and no deletion yet is also "2": wait for a deletion too.)
    wait_for(Duration::from_secs(60), "cleanup down to min_keep", || {
        d.metric(r#"dbkeep_backups{storage="local",target="app"}"#) == Some(2.0)
            && d.metric(r#"dbkeep_retention_deleted_total{storage="local",target="app"}"#)
                .unwrap_or(0.0)
                >= 1.0
    });
    assert_eq!(d.metric(r#"dbkeep_target_up{target="app"}"#), Some(1.0));
    // The stale deadline the alerts use follows the successful runs (interval + grace ahead).
    let deadline = d
        .metric(r#"dbkeep_backup_stale_after_timestamp_seconds{target="app"}"#)
        .unwrap();
    assert!(
        deadline > chrono::Utc::now().timestamp() as f64,
        "stale deadline {deadline} is in the past"
    );
    let (status, body) = d.get("/health");
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let app = &h["targets"][0];
    assert_eq!(app["target"], "app");
    assert_eq!(app["healthy"], true);
    assert_eq!(app["database"]["up"], true);
    assert_eq!(app["last_run"]["status"], "success");
    assert!(app["newest_backup"]["id"].as_str().unwrap().len() == 15);
    assert!(app["next_run"].is_string());

    // The database goes away: the next run fails and /health turns 503 naming the target.
    // Waited for as an event (how fast it turns red depends on the machine's load).
    pg.pg_ctl_stop();
    wait_for(
        Duration::from_secs(60),
        "/health 503 after the database stopped",
        || d.get("/health").0 == 503,
    );
    let (_, body) = d.get("/health");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["unhealthy_targets"], serde_json::json!(["app"]));
    assert_eq!(h["targets"][0]["database"]["up"], false, "{body}");
    // The order of the problems is not part of the contract: the failure is one of them.
    assert!(
        h["targets"][0]["problems"]
            .as_array()
            .unwrap_or_else(|| panic!("no problems list: {body}"))
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("last run failed"))),
        "{body}"
    );
    assert!(
        d.metric(r#"dbkeep_backup_runs_total{status="failure",target="app"}"#)
            .unwrap()
            >= 1.0
    );
    // Cleanup never ran after the failures: the two good backups are still there.
    assert_eq!(listed(&cfg).len(), 2);

    pg.pg_ctl_start();
    wait_for(
        Duration::from_secs(60),
        "/health 200 after the database came back",
        || d.get("/health").0 == 200,
    );
}

#[test]
fn metric_names_match_the_design_contract() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "m", "every = \"1h\"\n");
    let d = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(30), "first backup", || {
        d.metric(r#"dbkeep_backup_runs_total{status="success",target="m"}"#) == Some(1.0)
    });
    let (_, text) = d.get("/metrics");
    let declared: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut p = l.split_whitespace();
            (p.next().unwrap().to_string(), p.next().unwrap().to_string())
        })
        .collect();
    for (name, kind) in [
        ("dbkeep_backup_last_success_timestamp_seconds", "gauge"),
        ("dbkeep_backup_last_attempt_timestamp_seconds", "gauge"),
        ("dbkeep_backup_duration_seconds", "histogram"),
        ("dbkeep_backup_size_bytes", "gauge"),
        ("dbkeep_backup_runs_total", "counter"),
        ("dbkeep_backups", "gauge"),
        ("dbkeep_backup_oldest_timestamp_seconds", "gauge"),
        ("dbkeep_retention_deleted_total", "counter"),
        ("dbkeep_runs_skipped_total", "counter"),
        ("dbkeep_target_up", "gauge"),
        ("dbkeep_build_info", "gauge"),
        ("dbkeep_verify_runs_total", "counter"),
    ] {
        assert!(
            declared.contains(&(name.to_string(), kind.to_string())),
            "{name} ({kind}) missing from /metrics:\n{text}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("dbkeep_build_info{{version=\"{version}\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(r#"dbkeep_runs_skipped_total{reason="overlap",target="m"} 0"#),
        "{text}"
    );
}

#[test]
fn sigterm_during_a_long_backup_exits_0_within_the_grace_and_leaves_nothing() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g",
    );
    let sb = Sandbox::new();
    // One complete backup first, with the real pg_dump.
    let cfg = pg_config(&sb, &pg, "app", "every = \"2s\"");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let before = listed(&cfg);
    assert_eq!(before.len(), 1);

    // The dump holds its stream open for 600 s: far longer than the exit bound below, so an
    // exit within it means the dump was stopped, not waited out.
    let slow = slow_pg_dump(&sb, &pg, 600);
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!("every = \"2s\"\npg_bin_dir = \"{}\"", slow.display()),
    );
    let mut d = spawn_daemon(&cfg, &[]);
    wait_for(
        Duration::from_secs(30),
        "a backup in progress (temp file)",
        || !temp_files(&sb).is_empty(),
    );
    // The 2 s schedule fires again while the backup runs: an overlap, skipped and counted.
    wait_for(Duration::from_secs(60), "an overlap skip", || {
        d.metric(r#"dbkeep_runs_skipped_total{reason="overlap",target="app"}"#)
            .unwrap_or(0.0)
            >= 1.0
    });

    d.signal(libc::SIGTERM);
    // The bound is the guarantee under test: grace 1 s, then the dump is stopped (SIGTERM to
    // its process group, at most 5 s to die). 60 s is generous for a loaded machine and still
    // far below the 600 s the dump would hold its stream open if it were waited out.
    let status = d
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no exit within 60 s of SIGTERM (grace 1 s): {}", d.stderr()));
    assert!(status.success(), "exit {status:?}: {}", d.stderr());
    assert!(
        temp_files(&sb).is_empty(),
        "temp files left: {:?}",
        sb.files("app")
    );
    assert_eq!(listed(&cfg), before, "the listing is unchanged");
    assert_eq!(
        sb.files("app").len(),
        2,
        "only the earlier archive and its manifest: {:?}",
        sb.files("app")
    );
    assert!(
        d.stderr().contains("cancelling running jobs"),
        "{}",
        d.stderr()
    );
}

#[test]
fn kill_9_during_a_backup_then_restart_removes_the_leftover_and_backs_up() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 5000) g",
    );
    let sb = Sandbox::new();
    let slow = slow_pg_dump(&sb, &pg, 60);
    let slow_cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!("every = \"1h\"\npg_bin_dir = \"{}\"", slow.display()),
    );
    let mut d = spawn_daemon(&slow_cfg, &[]);
    wait_for(
        Duration::from_secs(30),
        "a backup in progress (temp file)",
        || !temp_files(&sb).is_empty(),
    );
    // The pg_dump it runs (a wrapper script here) dies with it: no child outlives dbkeep.
    let children = children_of(d.child.id());
    assert!(!children.is_empty(), "a dump is running");
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(60)).expect("killed");
    wait_for(
        Duration::from_secs(10),
        "the killed daemon's children to be gone",
        || children.iter().all(|p| process_gone(&p.to_string())),
    );
    let leftover = temp_files(&sb);
    assert_eq!(
        leftover.len(),
        1,
        "the killed run left its temp file: {:?}",
        sb.files("app")
    );
    assert!(
        listed(&slow_cfg).is_empty(),
        "an incomplete archive is never listed"
    );

    // Restart with the real pg_dump and every = 2s: the next run is due at once, and it
    // removes the temp file of the dead process before dumping.
    let cfg = pg_config(&sb, &pg, "app", "every = \"2s\"");
    let d2 = spawn_daemon(&cfg, &[]);
    wait_for(
        Duration::from_secs(30),
        "a successful backup after restart",
        || {
            d2.metric(r#"dbkeep_backup_runs_total{status="success",target="app"}"#)
                .unwrap_or(0.0)
                >= 1.0
        },
    );
    assert!(
        !sb.files("app").contains(&leftover[0]),
        "leftover still there: {:?}",
        sb.files("app")
    );
    assert!(
        d2.stderr()
            .contains("removed leftover of an interrupted run"),
        "{}",
        d2.stderr()
    );
    let files = listed(&cfg);
    assert!(!files.is_empty());
    for f in files {
        assert!(sb
            .backups()
            .join("app")
            .join(format!("{f}.manifest.json"))
            .exists());
    }
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_running_on_an_invalid_one() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(&sb, "one", "every = \"1h\"");
    let base = std::fs::read_to_string(&cfg).unwrap();
    let d = spawn_daemon(&cfg, &[]);
    let targets = |d: &crate::common::Daemon| -> Vec<String> {
        let (_, body) = d.get("/health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        h["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["target"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(targets(&d), ["one"]);

    std::fs::write(
        &cfg,
        format!(
            "{base}[targets.two]\nkind = \"sqlite\"\npath = \"{}\"\nevery = \"1h\"\n",
            db.display()
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(60), "reload success", || {
        d.metric(r#"dbkeep_config_reload_total{status="success"}"#) == Some(1.0)
    });
    assert_eq!(targets(&d), ["one", "two"]);
    wait_for(
        Duration::from_secs(60),
        "the new target's first backup",
        || d.metric(r#"dbkeep_backup_runs_total{status="success",target="two"}"#) == Some(1.0),
    );

    std::fs::write(
        &cfg,
        format!(
            "{base}[targets.two]\nkind = \"sqlite\"\npath = \"{}\"\ncompression = \"lz5\"\n",
            db.display()
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(60), "reload failure", || {
        d.metric(r#"dbkeep_config_reload_total{status="failure"}"#) == Some(1.0)
    });
    assert_eq!(
        targets(&d),
        ["one", "two"],
        "the previous config keeps running"
    );
    assert_eq!(d.get("/ready").0, 200);
    assert!(
        d.stderr().contains("targets.two.compression"),
        "{}",
        d.stderr()
    );
}

#[test]
fn systemd_is_told_ready_and_stopping() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "one", "");
    let sock_path = sb.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut d = spawn_daemon(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && !(got.iter().any(|m: &String| m.contains("READY=1"))
            && got.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = sock.recv(&mut buf).expect("notification");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(got.iter().any(|m| m.contains("WATCHDOG=1")), "{got:?}");
    d.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !got.iter().any(|m| m.contains("STOPPING=1")) {
        let n = sock.recv(&mut buf).expect("notification");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    let status = d
        .wait_exit(Duration::from_secs(60))
        .expect("exit after STOPPING=1");
    assert!(status.success(), "exit {status:?}: {}", d.stderr());
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze missing: ./scripts/test installs the systemd package"
    );
    let sb = Sandbox::new();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/dbkeep.service"
    ))
    .unwrap();
    for directive in [
        "Type=notify",
        "EnvironmentFile=-/etc/dbkeep/dbkeep.env",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/dbkeep",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "Nice=10",
        "IOSchedulingClass=idle",
        "TimeoutStopSec=6min",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == directive),
            "{directive} missing from the unit"
        );
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let verify = |text: &str, name: &str| {
        let path = sb.path().join(name);
        std::fs::write(
            &path,
            text.replace("/usr/local/bin/dbkeep", env!("CARGO_BIN_EXE_dbkeep")),
        )
        .unwrap();
        let out = std::process::Command::new(analyze)
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    };
    let report = verify(&unit, "dbkeep.service");
    assert!(
        report.trim().is_empty(),
        "systemd-analyze verify complained:\n{report}"
    );
    // The check bites: a broken copy is reported.
    let broken = verify(
        &unit
            .replace("Type=notify", "Type=notifyy")
            .replace("Nice=10", "Nicee=10"),
        "broken.service",
    );
    assert!(
        broken.contains("notifyy") && broken.contains("Nicee"),
        "{broken}"
    );
    // TimeoutStopSec stays above the default shutdown grace (5m).
    assert!(unit.contains("TimeoutStopSec=6min"));
}

#[test]
fn a_lost_state_file_falls_back_to_the_newest_backup_instead_of_running_at_once() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "one", "every = \"1h\"\n");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    std::fs::remove_file(sb.backups().join(".dbkeep-state.json")).unwrap();
    let d = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(60), "next run planned", || {
        let (_, body) = d.get("/health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        h["targets"][0]["next_run"].is_string()
    });
    let (_, body) = d.get("/health");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(h["targets"][0]["next_run"].as_str().unwrap())
        .unwrap();
    let until = next.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        until > chrono::Duration::minutes(55),
        "next run in {until}: it should follow the existing backup by 1h"
    );
    assert_eq!(
        d.metric(r#"dbkeep_backup_runs_total{status="success",target="one"}"#),
        Some(0.0)
    );
}

/// The pids of `pid`'s children, over all its threads.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}
