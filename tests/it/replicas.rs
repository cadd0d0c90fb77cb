//! One active replica per target: two daemons with one config share the work through the
//! database's advisory lock (PostgreSQL) or a lock file (same host); the standby takes over
//! when the active one dies or loses its database connection, without a double run.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{
    dbkeep, spawn_daemon, sqlite_target, wait_for, Daemon, Sandbox, TestPostgres, PG_PASSWORD,
};

const ACTIVE: &str = r#"dbkeep_target_active{target="app"}"#;
const SUCCESS: &str = r#"dbkeep_backup_runs_total{status="success",target="app"}"#;

/// A replica's config: its own work folder (state, locks), the shared storage.
fn replica(sb: &Sandbox, pg: &TestPostgres, name: &str) -> PathBuf {
    let work = sb.path().join(name);
    std::fs::create_dir_all(&work).unwrap();
    let p = sb.path().join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\nwork_dir = \"{}\"\nlease = \"1s\"\n\
             [storage.local]\npath = \"{}\"\n\
             [targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\nevery = \"2s\"\n\
             keep_days = 30\nmin_keep = 1000\nverify_schedule = \"off\"\n",
            work.display(),
            sb.backups().display(),
            pg.url("app")
        ),
    )
    .unwrap();
    p
}

fn active(d: &Daemon) -> f64 {
    d.metric(ACTIVE).unwrap_or(-1.0)
}

/// Completion times (seconds) of the listed backups, oldest first.
fn created(cfg: &std::path::Path) -> Vec<f64> {
    let run = dbkeep(Some(cfg), &["list", "--json"], &[]).ok();
    let all: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let mut t: Vec<f64> = all
        .iter()
        .map(|b| {
            chrono::DateTime::parse_from_rfc3339(b["created"].as_str().unwrap())
                .unwrap()
                .timestamp_millis() as f64
                / 1000.0
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// A second run of the same 2 s slot would follow the first by about the length of a run
/// (a fraction of a second); a takeover may start up to 1 s early (backup ids, which the
/// standby's catch-up reads, have whole seconds).
fn assert_no_double_run(times: &[f64]) {
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= 0.9,
            "two backups {:.2}s apart on a 2s schedule: {times:?}",
            w[1] - w[0]
        );
    }
}

#[test]
fn one_of_two_postgres_replicas_backs_up_and_the_other_takes_over() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g",
    );
    let sb = Sandbox::new();
    let (cfg_a, cfg_b) = (replica(&sb, &pg, "a"), replica(&sb, &pg, "b"));

    let mut a = spawn_daemon(&cfg_a, &[]);
    wait_for(Duration::from_secs(20), "replica a active", || {
        active(&a) == 1.0
    });
    let b = spawn_daemon(&cfg_b, &[]);
    wait_for(Duration::from_secs(20), "3 backups by a", || {
        a.metric(SUCCESS).unwrap_or(0.0) >= 3.0
    });
    assert_eq!(active(&b), 0.0, "b is standby");
    assert_eq!(b.metric(SUCCESS), Some(0.0), "the standby never ran");
    // The standby's /health reads the shared storage: green, and says it stands by.
    wait_for(
        Duration::from_secs(15),
        "the standby's /health green",
        || b.get("/health").0 == 200,
    );
    let health: serde_json::Value = serde_json::from_str(&b.get("/health").1).unwrap();
    assert_eq!(health["targets"][0]["role"], "standby", "{health}");

    // kill -9 the active one: b takes over within the lease time and carries on.
    a.child.kill().unwrap();
    let _ = a.child.wait();
    wait_for(Duration::from_secs(15), "b active after a died", || {
        active(&b) == 1.0
    });
    wait_for(Duration::from_secs(20), "2 backups by b", || {
        b.metric(SUCCESS).unwrap_or(0.0) >= 2.0
    });
    assert_no_double_run(&created(&cfg_b));

    // a comes back as standby; b's lease connection is cut (a network loss): b stops
    // scheduling at once, and one of the two is active again.
    let a = spawn_daemon(&cfg_a, &[]);
    wait_for(Duration::from_secs(10), "a standing by", || {
        active(&a) == 0.0
    });
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dbkeep-lease'",
    );
    wait_for(Duration::from_secs(10), "b saw the lease lost", || {
        b.stderr().contains("lease lost")
    });
    wait_for(Duration::from_secs(15), "exactly one active again", || {
        active(&a) + active(&b) == 1.0
    });
    let before = a.metric(SUCCESS).unwrap_or(0.0) + b.metric(SUCCESS).unwrap_or(0.0);
    wait_for(Duration::from_secs(20), "the schedule goes on", || {
        a.metric(SUCCESS).unwrap_or(0.0) + b.metric(SUCCESS).unwrap_or(0.0) >= before + 2.0
    });
    assert_no_double_run(&created(&cfg_b));
}

#[test]
fn a_manual_backup_on_another_host_waits_for_no_one_but_never_overlaps_a_run() {
    // Two work folders (two hosts): the database's advisory run lock still keeps one run
    // of the target at a time.
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g",
    );
    let sb = Sandbox::new();
    let cfg = replica(&sb, &pg, "a");
    let other = replica(&sb, &pg, "b");
    // Hold the run lock the way a run on host a does, from psql.
    let key = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(b"dbkeep run app/app");
        i64::from_be_bytes(d[..8].try_into().unwrap())
    };
    let mut holder = pg.session(
        "app",
        "psql",
        &format!("SELECT pg_advisory_lock({key}); SELECT pg_sleep(30);"),
    );
    wait_for(Duration::from_secs(10), "the lock held", || {
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        ) == "1"
    });
    let run = dbkeep(Some(&other), &["backup", "app"], &[]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("another host"), "{}", run.stderr);
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
    );
    let _ = holder.wait();
    wait_for(Duration::from_secs(10), "the lock released", || {
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        ) == "0"
    });
    dbkeep(Some(&cfg), &["backup", "app"], &[]).ok();
}

#[test]
fn two_sqlite_daemons_on_one_host_share_the_work_by_a_lock_file() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "every = \"2s\"\nverify_schedule = \"off\"");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[daemon]\n", "[daemon]\nlease = \"1s\"\n");
    std::fs::write(&cfg, text).unwrap();
    let a = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(20), "a active", || active(&a) == 1.0);
    let mut b = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(20), "2 backups by a", || {
        a.metric(SUCCESS).unwrap_or(0.0) >= 2.0
    });
    assert_eq!(active(&b), 0.0);
    assert_eq!(b.metric(SUCCESS), Some(0.0));
    drop(a);
    wait_for(Duration::from_secs(15), "b takes over", || {
        active(&b) == 1.0
    });
    wait_for(Duration::from_secs(20), "a backup by b", || {
        b.metric(SUCCESS).unwrap_or(0.0) >= 1.0
    });
    assert_no_double_run(&created(&cfg));
    b.child.kill().unwrap();
}
