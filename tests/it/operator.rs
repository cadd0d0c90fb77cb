//! Operator experience: what a new user and a DBA meet first (issue 20), one test per
//! item.

use crate::common::{dbkeep, dbkeep_in, pg_config, sqlite_target, Sandbox, TestPostgres};

#[test]
fn without_any_config_the_error_says_where_it_looked() {
    let sb = Sandbox::new();
    let run = dbkeep_in(sb.path(), &["backup"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    for needle in [
        "no config file",
        "./dbkeep.toml",
        "/etc/dbkeep/dbkeep.toml",
        "--config",
        "DBKEEP_CONFIG",
    ] {
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }
    assert!(
        !run.stderr.contains("no storage configured"),
        "{}",
        run.stderr
    );
    // Configured by the environment alone, it still works without a file.
    let db = sb.path().join("env.db");
    std::fs::write(&db, b"").unwrap();
    let run = dbkeep_in(
        sb.path(),
        &["config", "check"],
        &[
            (
                "DBKEEP_STORAGE__LOCAL__PATH",
                sb.backups().to_str().unwrap(),
            ),
            ("DBKEEP_TARGETS__APP__KIND", "sqlite"),
            ("DBKEEP_TARGETS__APP__PATH", db.to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn cron_shorthands_are_accepted_and_one_field_is_singular() {
    let sb = Sandbox::new();
    for (expr, ok) in [
        ("@daily", true),
        ("@hourly", true),
        ("@weekly", true),
        ("@monthly", true),
        ("@yearly", true),
        ("@fortnightly", false),
        ("2", false),
    ] {
        let (_, cfg) = sqlite_target(
            &sb,
            &format!("t{}", expr.len()),
            &format!("schedule = \"{expr}\""),
        );
        let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
        assert_eq!(run.code == 0, ok, "{expr}: {}", run.stderr);
        if expr == "2" {
            assert!(run.stderr.contains("has 1 field:"), "{}", run.stderr);
        }
        if ok {
            assert!(
                run.stdout.contains(&format!("cron {expr}")),
                "{}",
                run.stdout
            );
        }
        std::fs::remove_file(sb.path().join(format!("t{}.db", expr.len()))).unwrap();
    }
}

#[test]
fn small_sizes_print_in_the_unit_that_fits() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "");
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    // A tiny SQLite archive is some hundred bytes: never "0.0 MiB".
    assert!(!run.stdout.contains("0.0 MiB"), "{}", run.stdout);
    assert!(run.stdout.contains(" B"), "{}", run.stdout);
    let list = dbkeep(Some(&cfg), &["list"], &[]).ok();
    assert!(!list.stdout.contains("0.0 MiB"), "{}", list.stdout);
}

#[test]
fn into_another_role_never_borrows_the_targets_password() {
    use crate::common::{pg_config, TestPostgres, PG_PASSWORD};
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql("app", "CREATE TABLE t AS SELECT 1 AS x");
    // Another role that happens to accept the same password: only a password meant for
    // it may be sent to it.
    pg.psql(
        "postgres",
        &format!("CREATE ROLE other_user LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'"),
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let into = format!("postgres://other_user@127.0.0.1:{}/copy", pg.port);
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into],
        &[],
    );
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("password"),
        "the missing password is named: {}",
        run.stderr
    );
    assert!(!run.stderr.contains(" at line "), "{}", run.stderr);
    // Given for that URL, it works.
    let file = sb.path().join("other.pw");
    std::fs::write(&file, format!("{PG_PASSWORD}\n")).unwrap();
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest",
            "--into",
            &into,
            "--into-password-file",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    assert_eq!(pg.psql("copy", "SELECT x FROM t"), "1");
    // A role that may not create the database: PostgreSQL's words, without the line of
    // its C source that reads like a line of the config.
    pg.psql(
        "postgres",
        &format!("CREATE ROLE plain_user LOGIN PASSWORD '{PG_PASSWORD}'"),
    );
    let plain = format!("postgres://plain_user@127.0.0.1:{}/copy2", pg.port);
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest",
            "--into",
            &plain,
            "--into-password-file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("permission denied to create database"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(" at line "), "{}", run.stderr);
}

#[test]
fn a_failed_scheduled_backup_is_tried_again_before_health_turns_red() {
    use crate::common::{spawn_daemon, wait_for};
    use std::time::Duration;
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(
        &sb,
        "app",
        "every = \"1h\"\nretries = 2\nretry_delay = \"2s\"\nverify_schedule = \"off\"",
    );
    // The database is away at the first (start-up) run, back before the first retry.
    let away = sb.path().join("away.db");
    std::fs::rename(&db, &away).unwrap();
    let d = spawn_daemon(&cfg, &[]);
    let failures = r#"dbkeep_backup_runs_total{status="failure",target="app"}"#;
    wait_for(Duration::from_secs(20), "the first attempt failed", || {
        d.metric(failures).unwrap_or(0.0) >= 1.0
    });
    // A retry is due: not a problem, and the health says when.
    let (code, body) = d.get("/health");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(h["targets"][0]["retry_at"].is_string(), "{body}");
    assert_eq!(
        d.metric(r#"dbkeep_backup_retry_pending{target="app"}"#),
        Some(1.0)
    );
    std::fs::rename(&away, &db).unwrap();
    wait_for(Duration::from_secs(20), "the retry succeeded", || {
        d.metric(r#"dbkeep_backup_runs_total{status="success",target="app"}"#)
            .unwrap_or(0.0)
            >= 1.0
    });
    assert_eq!(
        d.metric(r#"dbkeep_backup_retries_total{target="app"}"#),
        Some(1.0)
    );
    assert_eq!(
        d.metric(r#"dbkeep_backup_retry_pending{target="app"}"#),
        Some(0.0)
    );
    drop(d);

    // Away for good: after 1 + 2 attempts (2 s, then 4 s apart), /health is red.
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(
        &sb,
        "app",
        "every = \"1h\"\nretries = 2\nretry_delay = \"2s\"\nverify_schedule = \"off\"",
    );
    std::fs::remove_file(&db).unwrap();
    let d = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(30), "three failed attempts", || {
        d.metric(failures).unwrap_or(0.0) >= 3.0
    });
    wait_for(Duration::from_secs(10), "/health red", || {
        d.get("/health").0 == 503
    });
    assert_eq!(
        d.metric(r#"dbkeep_backup_retries_total{target="app"}"#),
        Some(2.0)
    );
    let (_, body) = d.get("/health");
    assert!(body.contains("last run failed"), "{body}");
}

#[test]
fn the_test_script_installs_python_tools_only_into_its_own_virtual_environment() {
    // A stock Debian 12 Python refuses `pip install` (PEP 668): every pip call of the
    // script must go through the virtual environment it creates with the system python3.
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test")).unwrap();
    assert!(
        script.contains("python3 -m venv \"$VENV\""),
        "the script creates its venv"
    );
    let pip_lines: Vec<&str> = script
        .lines()
        .filter(|l| {
            (l.contains("pip install") || l.contains("-m pip") || l.contains("pip3 "))
                && !l.trim_start().starts_with('#')
                && !l.contains("echo")
        })
        .collect();
    assert!(!pip_lines.is_empty());
    for l in &pip_lines {
        assert!(
            l.contains("\"$VENV/bin/python\" -m pip"),
            "pip outside the venv: {l}"
        );
    }
    let gitignore =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.gitignore")).unwrap();
    assert!(
        gitignore.lines().any(|l| l.trim() == ".venv-test"
            || l.trim() == "/.venv-test"
            || l.trim() == ".venv-test/"),
        "{gitignore}"
    );
}

#[test]
fn globals_with_a_role_that_cannot_read_passwords_leave_them_out_and_keep_the_run() {
    use crate::common::{TestPostgres, PG_PASSWORD};
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql("app", "CREATE TABLE t AS SELECT 1 AS x");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE backup LOGIN PASSWORD '{PG_PASSWORD}';
             CREATE ROLE reporting LOGIN PASSWORD 'reporting-secret'"
        ),
    );
    // Table rights only (what a least-privilege backup role has; pg_read_all_data would
    // also read pg_authid).
    pg.psql(
        "app",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO backup",
    );
    let sb = Sandbox::new();
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\n\
         url = \"postgres://backup@127.0.0.1:{}/app\"\npassword = \"{PG_PASSWORD}\"\nglobals = true\n\
         compression = \"none\"\n",
        sb.backups().display(),
        pg.port
    ));
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(run.stdout.contains("OK: 2 archive(s)"), "{}", run.stdout);
    assert!(
        run.stderr.contains("role passwords left out"),
        "{}",
        run.stderr
    );
    let dir = sb.backups().join("app");
    let globals = sb
        .files("app")
        .into_iter()
        .find(|f| f.ends_with(".globals.sql"))
        .expect("a globals archive");
    let sql = std::fs::read_to_string(dir.join(&globals)).unwrap();
    assert!(sql.contains("CREATE ROLE reporting"), "{sql}");
    assert!(!sql.contains("SCRAM-SHA-256"), "no password hashes: {sql}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{globals}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        manifest["note"].as_str().unwrap().contains("pg_authid"),
        "{manifest}"
    );
}

#[test]
fn a_restore_blocked_by_another_sessions_lock_stops_and_names_it() {
    use crate::common::{pg_config, wait_for, TestPostgres};
    use std::time::{Duration, Instant};
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE SCHEMA s1; CREATE TABLE s1.t AS SELECT g FROM generate_series(1, 10) g",
    );
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "lock_timeout = \"2s\"");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    pg.psql("app", "INSERT INTO s1.t VALUES (11)");
    // An application's open transaction holds a lock on the table.
    let mut holder = pg.session(
        "app",
        "the-app",
        "BEGIN; LOCK TABLE s1.t IN ACCESS SHARE MODE; SELECT pg_sleep(60);",
    );
    wait_for(Duration::from_secs(10), "the lock held", || {
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'the-app' AND wait_event = 'PgSleep'",
        ) == "1"
    });
    let id = {
        let run = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        v[0]["id"].as_str().unwrap().to_string()
    };
    let t0 = Instant::now();
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            &format!("{id}:s1"),
            "--yes",
            "--no-safety-backup",
        ],
        &[],
    );
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(run.stderr.contains("waited 2s"), "{}", run.stderr);
    assert!(
        run.stderr.contains("\"the-app\""),
        "names the holder: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("pg_terminate_backend("),
        "{}",
        run.stderr
    );
    // Nothing changed, and no pg_restore or psql of dbkeep is left behind.
    assert_eq!(pg.psql("app", "SELECT count(*) FROM s1.t"), "11");
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbkeep-restore'"
        ),
        "0"
    );
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'the-app'",
    );
    let _ = holder.wait();
}

/// `list` says why each backup was taken (scheduled, manual, pre-restore) and when a
/// drill last proved it restores; `--json` carries the same.
#[test]
fn list_shows_why_each_backup_was_taken_and_when_it_was_verified() {
    use crate::common::{spawn_daemon, wait_for};
    use std::time::Duration;
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "every = \"1s\"");
    // One scheduled run by the daemon.
    {
        let d = spawn_daemon(&cfg, &[]);
        wait_for(Duration::from_secs(30), "a scheduled backup", || {
            d.metric(r#"dbkeep_backup_runs_total{status="success",target="app"}"#)
                .unwrap_or(0.0)
                >= 1.0
        });
    }
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]).ok();
    // A restore over the live file takes a pre-restore backup first.
    dbkeep(Some(&cfg), &["restore", "app", "latest", "--yes"], &[]).ok();
    let json = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
    let all: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).unwrap();
    let reasons: Vec<&str> = all
        .iter()
        .map(|b| b["reason"].as_str().unwrap_or("none"))
        .collect();
    for r in ["scheduled", "manual", "pre-restore"] {
        assert!(reasons.contains(&r), "{r} missing: {reasons:?}");
    }
    let verified: Vec<&serde_json::Value> = all
        .iter()
        .filter(|b| b["verified_at"].is_string())
        .collect();
    assert_eq!(verified.len(), 1, "the drilled backup: {}", json.stdout);
    assert_eq!(
        verified[0]["reason"], "manual",
        "the newest then was the manual one"
    );
    let table = dbkeep(Some(&cfg), &["list"], &[]).ok();
    let header = table.stdout.lines().next().unwrap_or_default();
    assert!(
        header.contains("REASON") && header.contains("VERIFIED"),
        "{header}"
    );
    // The word after the reason is the VERIFIED column.
    let verified_of = |reason: &str| -> String {
        let line = table
            .stdout
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == reason))
            .unwrap_or_else(|| panic!("no {reason} row: {}", table.stdout));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == reason).unwrap();
        words[at + 1].to_string()
    };
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(verified_of("manual"), today, "{}", table.stdout);
    assert_eq!(verified_of("pre-restore"), "-", "{}", table.stdout);
    assert_eq!(verified_of("scheduled"), "-", "{}", table.stdout);
}

/// A stop reaches the compression stage: SIGTERM or Ctrl-C during a zstd level 19
/// backup that would take minutes ends the command in seconds, leaving no archive.
#[test]
fn a_stop_during_slow_compression_ends_in_seconds() {
    use crate::common::{spawn_dbkeep, wait_for};
    use std::time::{Duration, Instant};
    let sb = Sandbox::new();
    let cfg = slow_target(&sb, "");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let child = spawn_dbkeep(&cfg, &["backup"]);
        wait_for(Duration::from_secs(60), "compression under way", || {
            sb.files("app").iter().any(|f| f.starts_with(".dbkeep-tmp"))
        });
        std::thread::sleep(Duration::from_secs(2));
        let t0 = Instant::now();
        child.signal(sig);
        let run = child.finish(Duration::from_secs(120));
        let took = t0.elapsed();
        eprintln!("signal {sig}: exit after {took:?}");
        assert_ne!(run.code, 0, "{}", run.stderr);
        // Without the check between chunks this waited for the whole 24 MB (a minute or
        // more here); the bound leaves room for a loaded machine.
        assert!(took < Duration::from_secs(10), "signal {sig}: {took:?}");
        assert!(
            sb.files("app").is_empty(),
            "nothing left behind: {:?}",
            sb.files("app")
        );
    }
}

/// The least-privilege role of the README (pg_read_all_data, no CREATEDB): a drill or a
/// schema check it may not do is a warning in `status` and `/health`, which stays 200,
/// said once; nothing is tried on the server.
#[test]
fn checks_the_role_may_not_do_are_warnings_not_failures() {
    use crate::common::{spawn_daemon, wait_for, TestPostgres, PG_PASSWORD};
    use std::time::Duration;
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql("app", "CREATE TABLE t AS SELECT 1 AS x");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE backup LOGIN PASSWORD '{PG_PASSWORD}'; GRANT pg_read_all_data TO backup"
        ),
    );
    let sb = Sandbox::new();
    let dir = sb.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0001_t.up.sql"), "CREATE TABLE t (x int);").unwrap();
    let cfg = sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[storage.local]\npath = \"{}\"\n\
         [targets.app]\nkind = \"postgres\"\nurl = \"postgres://backup@127.0.0.1:{}/app\"\n\
         password = \"{PG_PASSWORD}\"\nevery = \"1s\"\nhealth_grace = \"1h\"\n\
         [targets.app.schema]\nmigrations = \"{}\"\n",
        sb.backups().display(),
        pg.port,
        dir.display()
    ));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let drill = dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]);
    assert_ne!(drill.code, 0, "{}", drill.stderr);
    for needle in [
        "drill NOT POSSIBLE",
        "may not create databases",
        "ALTER ROLE backup CREATEDB",
        "drill_url",
    ] {
        assert!(drill.stdout.contains(needle), "{needle}: {}", drill.stdout);
    }
    // No drill ran: none is recorded as if it had.
    let st = dbkeep(Some(&cfg), &["status", "--json"], &[]).ok();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert!(st[0]["last_drill"]["started"].is_null(), "{st}");
    let d = spawn_daemon(&cfg, &[]);
    let runs = r#"dbkeep_backup_runs_total{status="success",target="app"}"#;
    wait_for(Duration::from_secs(40), "4 scheduled backups", || {
        d.metric(runs).unwrap_or(0.0) >= 4.0
    });
    let (code, body) = d.get("/health");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["targets_with_warnings"][0], "app", "{body}");
    let warnings = health["targets"][0]["warnings"].to_string();
    assert!(
        warnings.contains("drill: role backup may not create"),
        "{warnings}"
    );
    assert!(
        warnings.contains("schema: role backup may not create"),
        "{warnings}"
    );
    assert_eq!(health["targets"][0]["healthy"], true, "{body}");
    // Said once, not after every backup.
    let skipped = d
        .stderr()
        .matches("schema drift checks are skipped")
        .count();
    assert_eq!(skipped, 1, "{}", d.stderr());
    drop(d);
    let status = dbkeep(Some(&cfg), &["status"], &[]).ok();
    assert!(status.stdout.contains(" warning "), "{}", status.stdout);
    assert!(!status.stdout.contains("FAILING"), "{}", status.stdout);
    assert!(
        status.stdout.contains("warning: drill:"),
        "{}",
        status.stdout
    );
    // Granted: the next drill works and the warning is gone.
    pg.psql("postgres", "ALTER ROLE backup CREATEDB");
    dbkeep(Some(&cfg), &["verify", "app", "--drill"], &[]).ok();
    let status = dbkeep(Some(&cfg), &["status", "--json"], &[]).ok();
    assert!(!status.stdout.contains("\"drill: "), "{}", status.stdout);
}

/// The declared schema is built in a scratch database once, not after every backup, at
/// every reload or start; a changed migrations folder builds it again.
#[test]
fn the_declared_schema_is_built_once_until_its_files_change() {
    use crate::common::{pg_config, spawn_daemon, wait_for, TestPostgres};
    use std::time::Duration;
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql("app", "CREATE TABLE t (x int)");
    let sb = Sandbox::new();
    let dir = sb.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0001_t.up.sql"), "CREATE TABLE t (x int);").unwrap();
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!(
            "every = \"1s\"\n[targets.app.schema]\nmigrations = \"{}\"\n",
            dir.display()
        ),
    );
    let d = spawn_daemon(&cfg, &[]);
    let runs = r#"dbkeep_backup_runs_total{status="success",target="app"}"#;
    let after = |n: f64| {
        wait_for(Duration::from_secs(40), "scheduled backups", || {
            d.metric(runs).unwrap_or(0.0) >= n
        })
    };
    let builds = || {
        d.stderr()
            .lines()
            .filter(|l| l.contains("created database") && l.contains("dbkeep_schema_app_"))
            .count()
    };
    after(4.0);
    assert_eq!(builds(), 1, "{}", d.stderr());
    d.signal(libc::SIGHUP);
    let seen = d.metric(runs).unwrap_or(0.0);
    after(seen + 2.0);
    assert_eq!(builds(), 1, "not rebuilt by a reload: {}", d.stderr());
    std::fs::write(dir.join("0002_u.up.sql"), "CREATE TABLE u (y int);").unwrap();
    let seen = d.metric(runs).unwrap_or(0.0);
    after(seen + 2.0);
    assert_eq!(builds(), 2, "rebuilt once for the new file: {}", d.stderr());
    // The new migration is pending in the live database: the drift gauge says so.
    assert_eq!(
        d.metric(r#"dbkeep_schema_drift{target="app"}"#),
        Some(1.0),
        "{}",
        d.stderr()
    );
}

/// `dbkeep doctor` (and `config check --connect`) says per feature whether the role,
/// the tools and the storages allow it, and what to grant; exit 1 when something
/// configured cannot work. Against a real server and a real S3-compatible store.
#[test]
fn doctor_names_what_the_role_may_not_do_and_the_grant_that_fixes_it() {
    use crate::common::s3::TestS3;
    use crate::common::{TestPostgres, PG_PASSWORD};
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE secret_t (x int); CREATE TABLE open_t (x int)",
    );
    pg.psql(
        "postgres",
        &format!("CREATE ROLE weak LOGIN PASSWORD '{PG_PASSWORD}'"),
    );
    pg.psql("app", "GRANT SELECT ON open_t TO weak");
    let s3 = TestS3::start("doctor");
    let sb = Sandbox::new();
    let config = |user: &str, extra: &str, s3_extra: &str| {
        sb.write_config(&format!(
            "[storage.local]\npath = \"{}\"\n{}\n[targets.app]\nkind = \"postgres\"\n\
             url = \"postgres://{user}@127.0.0.1:{}/app\"\npassword = \"{PG_PASSWORD}\"\nglobals = true\n{extra}\n",
            sb.backups().display(),
            s3.config_section("doctor", "p", s3_extra),
            pg.port,
        ))
    };
    let verdict = |out: &str, scope: &str, feature: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(scope) && l[16..].trim_start().starts_with(feature))
            .unwrap_or_else(|| panic!("no {scope} {feature} line:\n{out}"))
            .to_string()
    };
    // The cluster's superuser: everything can work.
    let su = "postgres";
    let good = config(su, "", "");
    let run = dbkeep(Some(&good), &["doctor"], &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for (scope, feature) in [
        ("target app", "connect"),
        ("target app", "pg_dump"),
        ("target app", "dump"),
        ("target app", "globals"),
        ("target app", "drills"),
        ("storage local", "write"),
        ("storage local", "free space"),
        ("storage s3", "write"),
        ("storage s3", "list"),
        ("storage s3", "read"),
        ("storage s3", "delete"),
        ("storage s3", "start multipart upload"),
        ("storage s3", "abort multipart upload"),
    ] {
        let line = verdict(&run.stdout, scope, feature);
        assert!(line.contains(" ok "), "{line}");
    }
    // Nothing is left behind by the probes.
    assert!(
        s3.keys("doctor", "p/").is_empty(),
        "{:?}",
        s3.keys("doctor", "p/")
    );
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());

    // A role that may read one table of two, create no database, read no pg_authid; an
    // S3 key that is wrong.
    let weak = config("weak", "", "");
    let bad_s3 = std::fs::read_to_string(&weak)
        .unwrap()
        .replace("secret_access_key = \"", "secret_access_key = \"wrong");
    std::fs::write(&weak, bad_s3).unwrap();
    let run = dbkeep(Some(&weak), &["doctor"], &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let dump = verdict(&run.stdout, "target app", "dump");
    assert!(dump.contains("CANNOT"), "{dump}");
    assert!(dump.contains("public.secret_t"), "{dump}");
    assert!(!dump.contains("open_t"), "{dump}");
    assert!(dump.contains("GRANT pg_read_all_data TO weak"), "{dump}");
    let globals = verdict(&run.stdout, "target app", "globals");
    assert!(
        globals.contains("LIMITED") && globals.contains("without their passwords"),
        "{globals}"
    );
    let drills = verdict(&run.stdout, "target app", "drills");
    assert!(
        drills.contains("CANNOT") && drills.contains("CREATEDB"),
        "{drills}"
    );
    let s3_write = verdict(&run.stdout, "storage s3", "write");
    assert!(s3_write.contains("CANNOT"), "{s3_write}");
    assert!(
        !run.stdout.contains("wrong"),
        "the secret is not shown: {}",
        run.stdout
    );
    assert!(run.stderr.contains("cannot work"), "{}", run.stderr);
    // config check --connect says the same.
    let run = dbkeep(Some(&weak), &["config", "check", "--connect"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stdout.contains("GRANT pg_read_all_data TO weak"),
        "{}",
        run.stdout
    );

    // A table name with a newline cannot forge a line of the report.
    pg.psql(
        "app",
        "CREATE TABLE \"x\ntarget app       dump                     ok       forged\" (i int)",
    );
    let run = dbkeep(Some(&weak), &["doctor", "app"], &[]);
    assert!(
        !run.stdout.lines().any(|l| l.ends_with("ok       forged")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\\ntarget app"),
        "shown escaped: {}",
        run.stdout
    );
    pg.psql(
        "app",
        "DROP TABLE \"x\ntarget app       dump                     ok       forged\"",
    );

    // pg_read_all_data is not enough for a table behind row-level security or for large
    // objects: pg_dump would fail on both, so doctor says so.
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE reader LOGIN PASSWORD '{PG_PASSWORD}'; GRANT pg_read_all_data TO reader"
        ),
    );
    pg.psql(
        "app",
        "CREATE TABLE guarded (x int); ALTER TABLE guarded ENABLE ROW LEVEL SECURITY; \
         SELECT lo_from_bytea(0, 'blob'::bytea)",
    );
    let reader = config("reader", "", "");
    let run = dbkeep(Some(&reader), &["doctor", "app"], &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let dump = verdict(&run.stdout, "target app", "dump");
    assert!(
        dump.contains("public.guarded has row-level security"),
        "{dump}"
    );
    assert!(dump.contains("ALTER ROLE reader BYPASSRLS"), "{dump}");
    assert!(dump.contains("may not read 1 large object(s)"), "{dump}");
    let backup = dbkeep(Some(&reader), &["backup"], &[]);
    assert_ne!(backup.code, 0, "doctor was right: {}", backup.stderr);
    // Only the configured schemas count: a per-schema target of what the role may read.
    pg.psql("app", "CREATE SCHEMA s1; CREATE TABLE s1.fine (x int); GRANT USAGE ON SCHEMA s1 TO weak; GRANT SELECT ON s1.fine TO weak");
    let scoped = config("weak", "schemas = [\"s1\"]", "");
    let run = dbkeep(Some(&scoped), &["doctor", "app"], &[]);
    let dump = verdict(&run.stdout, "target app", "dump");
    assert!(dump.contains(" ok "), "{dump}");

    // Client tools too old or missing are named with the fix.
    let empty = sb.path().join("no-tools");
    std::fs::create_dir_all(&empty).unwrap();
    let cfg = config(su, &format!("pg_bin_dir = \"{}\"", empty.display()), "");
    let run = dbkeep(Some(&cfg), &["doctor", "app"], &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let tools = verdict(&run.stdout, "target app", "pg_dump");
    assert!(
        tools.contains("CANNOT") && tools.contains("postgresql-client-"),
        "{tools}"
    );
}

/// A SQLite target of 24 MB of hex noise at zstd level 19: a backup that takes half a
/// minute or more on this machine (zstd -19 works through it at well under 1 MB/s).
fn slow_target(sb: &Sandbox, extra: &str) -> std::path::PathBuf {
    let (db, cfg) = sqlite_target(sb, "app", &format!("compression_level = 19\n{extra}"));
    let st = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(
            "CREATE TABLE noise AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
             WHERE i < 12000) SELECT i, hex(randomblob(1000)) AS v FROM n;",
        )
        .status()
        .unwrap();
    assert!(st.success());
    cfg
}

/// A running backup shows its progress: `status` in another process (from the state
/// file), the daemon's `/health` and job API (live); on a terminal, a bar.
#[test]
fn a_running_backup_shows_bytes_rate_and_an_estimated_percent() {
    use crate::common::{spawn_daemon, spawn_dbkeep, wait_for};
    use std::time::Duration;
    let sb = Sandbox::new();
    let cfg = slow_target(&sb, "");
    let running = |cfg: &std::path::Path| -> Option<serde_json::Value> {
        let st = dbkeep(Some(cfg), &["status", "--json"], &[]);
        let v: serde_json::Value = serde_json::from_str(&st.stdout).ok()?;
        let r = v[0]["running"][0].clone();
        (r["bytes"].as_u64()? > 0).then_some(r)
    };
    let child = spawn_dbkeep(&cfg, &["backup"]);
    let mut first = None;
    wait_for(
        Duration::from_secs(60),
        "status showing the running backup",
        || {
            first = running(&cfg);
            first.is_some()
        },
    );
    let first = first.unwrap();
    assert_eq!(first["kind"], "backup", "{first}");
    assert_eq!(first["estimated"], true, "{first}");
    let total = first["total"]
        .as_u64()
        .expect("an estimate from the file's size");
    assert!(total > 20_000_000, "{first}");
    assert!(first["percent"].as_f64().unwrap() < 100.0, "{first}");
    // It is reported again while it runs.
    wait_for(Duration::from_secs(60), "a later report", || {
        running(&cfg).is_some_and(|r| r["updated"] != first["updated"])
    });
    let text = dbkeep(Some(&cfg), &["status"], &[]);
    assert!(text.stdout.contains("running backup: "), "{}", text.stdout);
    assert!(text.stdout.contains("/s"), "{}", text.stdout);
    child.signal(libc::SIGTERM);
    child.finish(Duration::from_secs(60));
    // Ended (cancelled here, so status also says the run failed): no longer shown.
    let st = dbkeep(Some(&cfg), &["status", "--json"], &[]);
    assert!(st.stdout.contains("\"running\": []"), "{}", st.stdout);

    // The daemon's /health has it live, and so does the job of an API backup.
    let with_daemon = sb.write_config(&std::fs::read_to_string(&cfg).unwrap().replace(
        "compression_level = 19",
        "compression_level = 19\nevery = \"1s\"",
    ));
    let d = spawn_daemon(&with_daemon, &[]);
    wait_for(
        Duration::from_secs(60),
        "/health showing the running backup",
        || {
            let (_, body) = d.get("/health");
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["targets"][0]["running"][0]["bytes"].as_u64())
                .is_some_and(|b| b > 0)
        },
    );
    drop(d);

    // On a terminal (a pseudo-terminal from script(1)), a bar with bytes and rate.
    let bin = env!("CARGO_BIN_EXE_dbkeep");
    let out = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "timeout -s INT 6 {bin} --config {} backup",
            cfg.display()
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("backup app ["), "{shown}");
    assert!(
        shown.contains("MiB/s") || shown.contains("KiB/s"),
        "{shown}"
    );
    assert!(shown.contains("ETA"), "{shown}");
}

/// On a stock Debian 12 Python (PEP 668), pip refuses to install into the system; the
/// virtual environment scripts/test makes with that same interpreter takes packages. Run
/// with the system interpreter itself, whatever python3 is first on PATH.
#[test]
fn the_system_python_refuses_pip_but_the_scripts_venv_takes_packages() {
    let system = std::path::Path::new("/usr/bin/python3");
    assert!(system.exists(), "a Debian machine has /usr/bin/python3");
    let refused = std::process::Command::new(system)
        .args([
            "-m",
            "pip",
            "install",
            "--no-index",
            "dbkeep-no-such-package",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(said.contains("externally-managed-environment"), "{said}");
    let sb = Sandbox::new();
    let venv = sb.path().join("venv");
    // What scripts/test runs: `python3 -m venv "$VENV"`, then "$VENV/bin/python" -m pip.
    let made = std::process::Command::new(system)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success());
    let inside = std::process::Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--no-index",
            "dbkeep-no-such-package",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&inside.stderr);
    assert!(!said.contains("externally-managed"), "{said}");
    assert!(
        said.contains("No matching distribution"),
        "pip runs there: {said}"
    );
}

/// `doctor` on a fresh host leaves it as it found it: the folders its probe needed are
/// gone again, no probe file stays, and a SQLite target's checks pass.
#[test]
fn doctor_leaves_nothing_behind_on_a_fresh_host() {
    let sb = Sandbox::new();
    let db = sb.path().join("app.db");
    std::fs::write(&db, b"").unwrap();
    let store = sb.path().join("not-yet/backups");
    let work = sb.path().join("not-yet-work/dbkeep");
    let cfg = sb.write_config(&format!(
        "[daemon]\nwork_dir = \"{}\"\n[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"sqlite\"\npath = \"{}\"\n",
        work.display(),
        store.display(),
        db.display()
    ));
    let run = dbkeep(Some(&cfg), &["doctor"], &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for line in [
        "target app       dump",
        "storage local    write",
        "work_dir         write",
    ] {
        assert!(run.stdout.contains(line), "{line}: {}", run.stdout);
    }
    assert!(
        !sb.path().join("not-yet").exists(),
        "{} was left",
        store.display()
    );
    assert!(!work.exists(), "{} was left", work.display());
    let leftovers: Vec<_> = walk_names(sb.path())
        .into_iter()
        .filter(|n| n.contains("dbkeep-probe"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.path().is_dir() {
            out.extend(walk_names(&e.path()));
        }
    }
    out
}

/// A scratch database a killed drill left behind (it holds a restored copy of the data)
/// is named by the doctor, with the statement that drops it; a user's database of a like
/// name is not.
#[test]
fn the_doctor_names_the_scratch_databases_a_killed_run_left() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.create_db("dbkeep_drill_app_0badc0de");
    pg.create_db("dbkeep_app");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    let doctor = dbkeep(Some(&cfg), &["doctor", "app"], &[]);
    assert!(
        doctor
            .stdout
            .contains("DROP DATABASE dbkeep_drill_app_0badc0de")
            && !doctor.stdout.contains("DROP DATABASE dbkeep_app"),
        "{}",
        doctor.stdout
    );
    pg.psql("postgres", "DROP DATABASE dbkeep_drill_app_0badc0de");
    let doctor = dbkeep(Some(&cfg), &["doctor", "app"], &[]);
    assert!(
        doctor
            .stdout
            .contains("none left behind by an interrupted run"),
        "{}",
        doctor.stdout
    );
}
