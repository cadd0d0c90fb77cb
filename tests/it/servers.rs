//! Every database on a server (issue 19, part 1): a target with `databases = ["*"]`
//! against a real PostgreSQL cluster, with databases created and dropped between runs.

use std::path::PathBuf;

use crate::common::{
    dbkeep, spawn_daemon, wait_for, wrapped_pg_bin, Sandbox, TestPostgres, PG_PASSWORD,
};

/// A server target `cluster` on `pg`, connecting as `user` (password: the test's).
fn server_config(sb: &Sandbox, pg: &TestPostgres, user: &str, extra: &str) -> PathBuf {
    let url = pg.url("postgres").replace("postgres@", &format!("{user}@"));
    sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n\n[storage.local]\npath = \"{}\"\n\n\
         [targets.cluster]\nkind = \"postgres\"\nurl = \"{url}\"\npassword = \"{PG_PASSWORD}\"\n{extra}\n",
        sb.backups().display(),
    ))
}

/// The archives (not manifests) of the cluster target on disk.
fn archives(sb: &Sandbox) -> Vec<String> {
    sb.files("cluster")
        .into_iter()
        .filter(|f| !f.ends_with(".manifest.json") && !f.starts_with('.'))
        .collect()
}

/// Restore the latest backup of `db`: into `into`, or over its own live database. It
/// must succeed.
fn restore_db(cfg: &std::path::Path, db: &str, into: Option<&str>) {
    let mut args = vec!["restore", "cluster", "latest", "--database", db];
    match into {
        Some(url) => args.extend(["--into", url]),
        None => args.extend(["--yes", "--no-safety-backup"]),
    }
    dbkeep(Some(cfg), &args, &[]).ok();
}

/// The databases the status JSON reports for the cluster target: (name, gone).
fn status_databases(cfg: &std::path::Path) -> Vec<(String, bool)> {
    let out = dbkeep(Some(cfg), &["status", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!("status --json: {e}\n{}\n{}", out.stdout, out.stderr);
    });
    let t = v
        .as_array()
        .and_then(|a| a.iter().find(|t| t["target"] == "cluster"))
        .cloned()
        .unwrap_or_else(|| v["targets"][0].clone());
    assert_eq!(
        t["healthy"], true,
        "a dropped database is not a failure: {t}"
    );
    t["databases"]
        .as_array()
        .unwrap_or_else(|| panic!("no databases in {t}"))
        .iter()
        .map(|d| (d["name"].as_str().unwrap().to_string(), d["gone"] == true))
        .collect()
}

/// Three databases on one server (one with a name that needs quoting), one created
/// between two runs and one dropped: each is its own archive with its own retention, the
/// new one is picked up and logged, the dropped one keeps its newest backup and is shown
/// as gone (not failing), and one database restores by name, into another database or
/// (dropped) back under its own name.
#[test]
fn every_database_on_a_server_is_backed_up_and_kept_on_its_own() {
    let pg = TestPostgres::start();
    for (db, rows) in [("app", 300), ("billing", 200), ("\"we ird.x\"", 7)] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        let name = db.trim_matches('"');
        pg.psql(
            name,
            &format!("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {rows}) g; ANALYZE;"),
        );
    }
    // Skipped: one that refuses connections, and one the config excludes.
    pg.psql("postgres", "CREATE DATABASE locked");
    pg.psql("postgres", "ALTER DATABASE locked ALLOW_CONNECTIONS false");
    pg.psql("postgres", "CREATE DATABASE scratch_1");
    let sb = Sandbox::new();
    let cfg = server_config(
        &sb,
        &pg,
        "postgres",
        "databases = [\"*\"]\nexclude_databases = [\"scratch_*\"]\nglobals = true\nkeep_days = 0\nmin_keep = 1",
    );

    let first = dbkeep(Some(&cfg), &["backup", "cluster"], &[]).ok();
    let files = archives(&sb);
    for want in [
        ".app.dump",
        ".billing.dump",
        ".we%20ird%2Ex.dump",
        ".postgres.dump",
        ".globals.sql",
    ] {
        assert!(
            files.iter().any(|f| f.contains(want)),
            "no {want} archive in {files:?}"
        );
    }
    for skipped in ["locked", "scratch_1", "template"] {
        assert!(
            !files.iter().any(|f| f.contains(skipped)),
            "{skipped} was backed up: {files:?}"
        );
    }
    assert_eq!(files.len(), 5, "{files:?}");
    assert!(
        first.stderr.contains("database found on the server"),
        "{}",
        first.stderr
    );
    // doctor names what a run backs up (the no-connect and excluded ones not).
    let doctor = dbkeep(Some(&cfg), &["doctor", "cluster"], &[]);
    let line = doctor
        .stdout
        .lines()
        .find(|l| l.contains("databases"))
        .unwrap_or_else(|| panic!("{}", doctor.stdout));
    assert!(
        line.contains("4 database(s) to back up: app, billing, postgres, we ird.x"),
        "{line}"
    );

    // Between runs: a database is created, another dropped.
    pg.psql("postgres", "CREATE DATABASE newdb");
    pg.psql("newdb", "CREATE TABLE n AS SELECT 1 AS id");
    pg.psql("postgres", "DROP DATABASE billing");
    let second = dbkeep(Some(&cfg), &["backup", "cluster"], &[]).ok();
    let new_line = second
        .stderr
        .lines()
        .find(|l| l.contains("database found on the server"))
        .unwrap_or_else(|| panic!("the new database is not logged:\n{}", second.stderr));
    assert!(new_line.contains("newdb"), "{new_line}");
    let gone_line = second
        .stderr
        .lines()
        .find(|l| l.contains("no longer on the server"))
        .unwrap_or_else(|| panic!("the dropped database is not logged:\n{}", second.stderr));
    assert!(gone_line.contains("billing"), "{gone_line}");
    assert!(archives(&sb).iter().any(|f| f.contains(".newdb.dump")));

    // `list` and `status` show the dropped database as gone, and the target healthy.
    let list = dbkeep(Some(&cfg), &["list", "cluster"], &[]).ok();
    let billing: Vec<&str> = list
        .stdout
        .lines()
        .filter(|l| l.contains("billing"))
        .collect();
    assert_eq!(billing.len(), 1, "{}", list.stdout);
    assert!(billing[0].contains("(gone)"), "{}", list.stdout);
    assert!(!list
        .stdout
        .lines()
        .any(|l| l.contains("db app") && l.contains("gone")));
    let dbs = status_databases(&cfg);
    assert!(dbs.contains(&("billing".into(), true)), "{dbs:?}");
    assert!(dbs.contains(&("app".into(), false)), "{dbs:?}");
    assert!(dbs.contains(&("newdb".into(), false)), "{dbs:?}");

    // Retention per database: keep_days = 0, min_keep = 1 deletes app's first archive
    // but keeps billing's, the newest (and only) backup of that database.
    let dry = dbkeep(Some(&cfg), &["cleanup", "cluster", "--dry-run"], &[]).ok();
    assert!(
        dry.stdout
            .contains("database billing: newest complete backup"),
        "{}",
        dry.stdout
    );
    dbkeep(Some(&cfg), &["cleanup", "cluster"], &[]).ok();
    let left = archives(&sb);
    assert_eq!(
        left.iter().filter(|f| f.contains(".app.dump")).count(),
        1,
        "{left:?}"
    );
    assert_eq!(
        left.iter().filter(|f| f.contains(".billing.dump")).count(),
        1,
        "{left:?}"
    );
    assert_eq!(
        left.iter().filter(|f| f.contains(".globals.sql")).count(),
        1,
        "{left:?}"
    );

    // Restore addresses one database.
    let no_db = dbkeep(
        Some(&cfg),
        &["restore", "cluster", "latest", "--into", &pg.url("x")],
        &[],
    );
    assert_ne!(no_db.code, 0);
    assert!(
        no_db.stderr.contains("--database")
            && no_db.stderr.contains("app")
            && no_db.stderr.contains("newdb"),
        "{}",
        no_db.stderr
    );
    let unknown = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "cluster",
            "--database",
            "nosuch",
            "--into",
            &pg.url("x"),
        ],
        &[],
    );
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("nosuch") && unknown.stderr.contains("billing"),
        "{}",
        unknown.stderr
    );
    restore_db(&cfg, "app", Some(&pg.url("app_copy")));
    assert_eq!(pg.table_checksums("app_copy"), pg.table_checksums("app"));
    // Into that copy again, now not empty: refused without --yes, restored over with it.
    pg.psql("app_copy", "DELETE FROM t WHERE id > 10");
    let copy = pg.url("app_copy");
    let again = [
        "restore",
        "cluster",
        "latest",
        "--database",
        "app",
        "--into",
        &copy,
    ];
    let refused = dbkeep(Some(&cfg), &again, &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(pg.psql("app_copy", "SELECT count(*) FROM t"), "10");
    let mut with_yes = again.to_vec();
    with_yes.push("--yes");
    dbkeep(Some(&cfg), &with_yes, &[]).ok();
    assert_eq!(pg.table_checksums("app_copy"), pg.table_checksums("app"));
    // A dropped database cannot be restored "over itself"; --into recreates it.
    let own = dbkeep(
        Some(&cfg),
        &["restore", "cluster", "--database", "billing", "--yes"],
        &[],
    );
    assert_eq!(own.code, 2, "{}", own.stderr);
    assert!(
        own.stderr.contains("no longer on the server") && own.stderr.contains("--into"),
        "{}",
        own.stderr
    );
    restore_db(&cfg, "billing", Some(&pg.url("billing")));
    assert_eq!(pg.psql("billing", "SELECT count(*) FROM t"), "200");
    // Over its own live database: the restore goes to that database, not `url`'s.
    pg.psql("app", "DELETE FROM t WHERE id > 100");
    restore_db(&cfg, "app", None);
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "300");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
        ),
        "0"
    );
    // With its safety backup: a copy of that database alone, which makes no other
    // database look gone.
    let before = archives(&sb);
    let args = ["restore", "cluster", "latest", "--database", "app", "--yes"];
    dbkeep(Some(&cfg), &args, &[]).ok();
    let safety: Vec<String> = archives(&sb)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(safety.len(), 1, "{safety:?}");
    assert!(safety[0].contains(".app.dump"), "{safety:?}");
    let dbs = status_databases(&cfg);
    assert!(dbs.contains(&("newdb".into(), false)), "{dbs:?}");
    assert!(dbs.contains(&("postgres".into(), false)), "{dbs:?}");
    assert!(dbs.contains(&("app".into(), false)), "{dbs:?}");
    // `--into` the database's own URL is a restore over it: with its safety backup too.
    let before = archives(&sb);
    let own_url = pg.url("app");
    let args = [
        "restore",
        "cluster",
        "latest",
        "--database",
        "app",
        "--into",
        &own_url,
        "--yes",
    ];
    let run = dbkeep(Some(&cfg), &args, &[]).ok();
    assert!(run.stderr.contains("own database"), "{}", run.stderr);
    let safety: Vec<String> = archives(&sb)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(safety.len(), 1, "no safety backup: {safety:?}");

    // A drill restores each database of the newest run into its own scratch database.
    let drill = dbkeep(Some(&cfg), &["verify", "cluster", "--drill"], &[]).ok();
    assert!(drill.stdout.contains("cluster"), "{}", drill.stdout);

    // The daemon publishes each database with its own labels.
    let mut d = spawn_daemon(&cfg, &[]);
    wait_for(
        std::time::Duration::from_secs(20),
        "database metrics",
        || {
            d.metric("dbkeep_database_gone{database=\"billing\",target=\"cluster\"}") == Some(1.0)
                && d.metric("dbkeep_database_gone{database=\"app\",target=\"cluster\"}")
                    == Some(0.0)
        },
    );
    assert!(d
        .metric(
            "dbkeep_database_last_success_timestamp_seconds{database=\"newdb\",target=\"cluster\"}"
        )
        .is_some_and(|t| t > 0.0));
    assert!(d
        .metric("dbkeep_database_backup_size_bytes{database=\"app\",target=\"cluster\"}")
        .is_some_and(|b| b > 0.0));
    d.signal(libc::SIGTERM);
    d.wait_exit(std::time::Duration::from_secs(10));
}

/// One database failing is that database's failure: a database the role may not connect
/// to, or whose pg_dump fails midway, is named (with what to do), the others are stored
/// and stay the newest backups, and the failing one is shown failing, not dropped. Only
/// when every database fails is nothing kept. Mistakes in the keys are config errors.
#[test]
fn one_failing_database_fails_alone_and_the_others_are_kept() {
    let pg = TestPostgres::start();
    pg.psql(
        "postgres",
        &format!("CREATE ROLE backup LOGIN PASSWORD '{PG_PASSWORD}' IN ROLE pg_read_all_data"),
    );
    for db in ["app", "broken", "secret"] {
        pg.create_db(db);
        pg.psql(db, "CREATE TABLE t AS SELECT 1 AS id");
    }
    pg.psql("postgres", "REVOKE CONNECT ON DATABASE secret FROM PUBLIC");
    let sb = Sandbox::new();
    // pg_dump fails for `broken` only, midway through the run.
    let bin = wrapped_pg_bin(
        &sb,
        &pg,
        "pg_dump",
        "case \"$*\" in *dbname=broken*) echo 'disk on fire' >&2; exit 1;; esac\nexec $REAL \"$@\"",
    );
    let healthy = server_config(&sb, &pg, "backup", "databases = [\"app\", \"broken\"]");
    dbkeep(Some(&healthy), &["backup", "cluster"], &[]).ok();
    let first = archives(&sb);
    assert_eq!(first.len(), 2, "{first:?}");

    let cfg = server_config(
        &sb,
        &pg,
        "backup",
        &format!("databases = [\"*\"]\npg_bin_dir = \"{}\"", bin.display()),
    );
    let run = dbkeep(Some(&cfg), &["backup", "cluster"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    for want in [
        "\"secret\"",
        "CONNECT",
        "exclude_databases",
        "\"broken\"",
        "disk on fire",
    ] {
        assert!(run.stderr.contains(want), "{want}: {}", run.stderr);
    }
    let now: Vec<String> = archives(&sb)
        .into_iter()
        .filter(|f| !first.contains(f))
        .collect();
    assert!(now.iter().any(|f| f.contains(".app.dump")), "{now:?}");
    assert!(now.iter().any(|f| f.contains(".postgres.dump")), "{now:?}");
    assert!(
        !now.iter()
            .any(|f| f.contains("broken") || f.contains("secret")),
        "{now:?}"
    );
    assert!(
        !sb.files("cluster").iter().any(|f| f.starts_with('.')),
        "{:?}",
        sb.files("cluster")
    );
    // `broken` is failing, not dropped: status says so, and list does not call it gone.
    // Exit 1: a target is unhealthy.
    let status = dbkeep(Some(&cfg), &["status", "--json"], &[]);
    assert_eq!(status.code, 1, "{}", status.stderr);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let t = &v
        .as_array()
        .map(|a| a[0].clone())
        .unwrap_or_else(|| v["targets"][0].clone());
    assert_eq!(t["healthy"], false, "{t}");
    let entry = |name: &str| {
        t["databases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {t}"))
    };
    let broken = entry("broken");
    assert_eq!(broken["gone"], false, "{broken}");
    assert!(
        broken["failing"].as_str().unwrap().contains("disk on fire"),
        "{broken}"
    );
    // `secret` never had a backup: it is listed all the same, failing, with none.
    let secret = entry("secret");
    assert!(secret["newest"].is_null(), "{secret}");
    assert!(
        secret["failing"].as_str().unwrap().contains("CONNECT"),
        "{secret}"
    );
    let text = dbkeep(Some(&cfg), &["status"], &[]);
    assert!(
        text.stdout.contains("database secret: no backup yet"),
        "{}",
        text.stdout
    );
    let list = dbkeep(Some(&cfg), &["list", "cluster"], &[]).ok();
    assert!(!list.stdout.contains("(gone)"), "{}", list.stdout);
    let doctor = dbkeep(Some(&cfg), &["doctor", "cluster"], &[]);
    assert!(
        doctor
            .stdout
            .contains("GRANT CONNECT ON DATABASE secret TO backup"),
        "{}",
        doctor.stdout
    );
    // Every database failing keeps nothing, not even the globals.
    let all_bad = server_config(
        &sb,
        &pg,
        "backup",
        "databases = [\"secret\"]\nglobals = true",
    );
    let before = sb.files("cluster");
    let none = dbkeep(Some(&all_bad), &["backup", "cluster"], &[]);
    assert_eq!(none.code, 1, "{}", none.stderr);
    assert!(none.stderr.contains("no database"), "{}", none.stderr);
    assert_eq!(sb.files("cluster"), before);
}

/// What a server target refuses: `databases` that match nothing fail naming what the
/// server has, and `schemas` or `exclude_databases` alone are config errors.
#[test]
fn server_target_mistakes_are_named() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    let sb = Sandbox::new();
    let cfg = server_config(&sb, &pg, "postgres", "databases = [\"nomatch_*\"]");
    let none = dbkeep(Some(&cfg), &["backup", "cluster"], &[]);
    assert_eq!(none.code, 1, "{}", none.stderr);
    assert!(
        none.stderr.contains("matches") && none.stderr.contains("app"),
        "{}",
        none.stderr
    );

    for (extra, key) in [
        ("databases = [\"*\"]\nschemas = [\"public\"]", "schemas"),
        ("exclude_databases = [\"x\"]", "exclude_databases"),
        ("databases = [\"\"]", "databases"),
    ] {
        let cfg = server_config(&sb, &pg, "postgres", extra);
        let r = dbkeep(Some(&cfg), &["config", "check"], &[]);
        assert_eq!(r.code, 2, "{extra}: {}", r.stderr);
        assert!(r.stderr.contains(key), "{extra}: {}", r.stderr);
    }
}

/// Database names a URL would rewrite (`..`, `.`, `x/../app`, a tab), one too long to
/// encode whole into a file name, and a name like dbkeep's own scratch databases: each
/// name is backed up as itself and restores into itself, never into the database the
/// URL parser would have made of it; the scratch lookalike is left out.
#[test]
fn database_names_a_url_would_rewrite_back_up_and_restore_as_themselves() {
    let pg = TestPostgres::start();
    let long = "😀".repeat(15);
    let names = ["..", ".", "x/../app", "tab\there", long.as_str(), "app"];
    for n in names {
        let q = n.replace('"', "\"\"");
        pg.psql("postgres", &format!("CREATE DATABASE \"{q}\""));
        // Each holds its own name, so a restore into the wrong one shows.
        pg.psql(
            n,
            &format!(
                "CREATE TABLE who AS SELECT '{}'::text AS name",
                n.replace('\'', "''")
            ),
        );
    }
    pg.psql("postgres", "CREATE DATABASE dbkeep_drill_other_0000abcd");
    pg.psql(
        "postgres",
        "CREATE TABLE marker AS SELECT 'postgres'::text AS name",
    );
    let sb = Sandbox::new();
    let cfg = server_config(&sb, &pg, "postgres", "databases = [\"*\"]");
    dbkeep(Some(&cfg), &["backup", "cluster"], &[]).ok();
    let files = archives(&sb);
    // postgres and the six above; the scratch lookalike is not backed up.
    assert_eq!(files.len(), 7, "{files:?}");
    assert!(files.iter().all(|f| f.len() < 200), "{files:?}");
    for (i, n) in names.iter().enumerate() {
        let into = format!("copy_{i}");
        restore_db(&cfg, n, Some(&pg.url(&into)));
        assert_eq!(pg.psql(&into, "SELECT name FROM who"), *n, "restored {n:?}");
    }
    // Over its own database: `..` goes to `..`, and `postgres` is left alone.
    pg.psql("..", "INSERT INTO who VALUES ('added')");
    restore_db(&cfg, "..", None);
    assert_eq!(pg.psql("..", "SELECT string_agg(name, ',') FROM who"), "..");
    assert_eq!(pg.psql("postgres", "SELECT name FROM marker"), "postgres");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'who'"
        ),
        "0"
    );
}

/// A run interrupted while it wrote its manifests (killed between two) leaves its commit
/// marker: none of its archives lists as a backup, `status` and drills do not count it,
/// cleanup does not take its old archives for leftovers, and the next run removes what it
/// left before it backs up again; a marker left after a run was whole removes nothing.
#[test]
fn a_run_interrupted_between_its_manifests_never_counts_and_the_next_run_removes_it() {
    let pg = TestPostgres::start();
    for db in ["a", "b", "c"] {
        pg.create_db(db);
        pg.psql(db, "CREATE TABLE t AS SELECT 1 AS id");
    }
    let sb = Sandbox::new();
    let cfg = server_config(&sb, &pg, "postgres", "databases = [\"a\", \"b\", \"c\"]");
    dbkeep(Some(&cfg), &["backup", "cluster"], &[]).ok();
    let good: Vec<String> = sb.files("cluster");
    let first_id = good[0]["cluster_".len().."cluster_".len() + 15].to_string();
    // The state a kill between two manifests leaves: a second run's archives, the
    // manifest of one of them, and its commit marker.
    dbkeep(Some(&cfg), &["backup", "cluster"], &[]).ok();
    let dir = sb.backups().join("cluster");
    let second: Vec<String> = sb
        .files("cluster")
        .into_iter()
        .filter(|f| !good.contains(f))
        .collect();
    let second_id = second[0]["cluster_".len().."cluster_".len() + 15].to_string();
    let manifests: Vec<&String> = second
        .iter()
        .filter(|f| f.ends_with(".manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 3, "{second:?}");
    for m in &manifests[1..] {
        std::fs::remove_file(dir.join(m)).unwrap();
    }
    std::fs::write(dir.join(format!(".dbkeep-commit.{second_id}.json")), b"[]").unwrap();
    let list = dbkeep(Some(&cfg), &["list", "cluster", "--json"], &[]).ok();
    assert!(!list.stdout.contains(&second_id), "{}", list.stdout);
    assert!(list.stdout.contains(&first_id), "{}", list.stdout);
    let status = dbkeep(Some(&cfg), &["status", "--json"], &[]).ok();
    assert!(!status.stdout.contains(&second_id), "{}", status.stdout);
    let drill = dbkeep(Some(&cfg), &["verify", "cluster", "--drill"], &[]).ok();
    assert!(drill.stdout.contains(&first_id), "{}", drill.stdout);
    // Cleanup leaves it alone, however old its archives (a run that takes hours has
    // archives without manifests that long) ...
    for f in &second {
        let touched = std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(dir.join(f))
            .status()
            .unwrap();
        assert!(touched.success());
    }
    dbkeep(Some(&cfg), &["cleanup", "cluster"], &[]).ok();
    for f in second
        .iter()
        .filter(|f| f.ends_with(".dump.zst"))
        .chain([manifests[0]])
    {
        assert!(
            dir.join(f).exists(),
            "cleanup removed {f} of a run not finished"
        );
    }
    // A marker left by a run killed after its last manifest: that run is whole and kept.
    std::fs::write(dir.join(format!(".dbkeep-commit.{first_id}.json")), b"{}").unwrap();
    // ... and the next run removes it, then backs up.
    let next = dbkeep(Some(&cfg), &["backup", "cluster"], &[]).ok();
    assert!(
        next.stderr
            .contains("removing what an interrupted run left"),
        "{}",
        next.stderr
    );
    let removal = next
        .stderr
        .lines()
        .find(|l| l.contains("removing what an interrupted run left"))
        .unwrap();
    assert!(removal.contains(&second_id), "{removal}");
    // The new run may take the freed id again (same second): every archive left has its
    // manifest, and two whole runs list.
    let left = sb.files("cluster");
    for f in left.iter().filter(|f| f.ends_with(".dump.zst")) {
        assert!(
            left.contains(&format!("{f}.manifest.json")),
            "{f} lost its manifest: {left:?}"
        );
    }
    assert!(!dir
        .join(format!(".dbkeep-commit.{second_id}.json"))
        .exists());
    assert_eq!(
        left.iter()
            .filter(|f| f.ends_with(".manifest.json"))
            .count(),
        6,
        "{left:?}"
    );
    for f in &good {
        assert!(left.contains(f), "the whole run lost {f}: {left:?}");
    }
    assert!(!dir.join(format!(".dbkeep-commit.{first_id}.json")).exists());
}

/// A server target with a remote copy: every database's archive goes to S3 as well, a
/// restore of one database reads it from there, and the message that asks for
/// `--database` names each database once, however many storages hold it.
#[test]
fn a_server_targets_databases_are_copied_and_restored_from_s3() {
    let pg = TestPostgres::start();
    for db in ["alpha", "beta"] {
        pg.create_db(db);
        pg.psql(
            db,
            &format!("CREATE TABLE who AS SELECT '{db}'::text AS name"),
        );
    }
    let s3 = crate::common::s3::TestS3::start("bkt");
    let sb = Sandbox::new();
    let cfg = server_config(
        &sb,
        &pg,
        "postgres",
        &format!(
            "databases = [\"alpha\", \"beta\"]\n{}",
            s3.config_section("bkt", "srv", "")
        ),
    );
    dbkeep(Some(&cfg), &["backup", "cluster"], &[]).ok();
    let remote = dbkeep(
        Some(&cfg),
        &["list", "cluster", "--storage", "s3", "--json"],
        &[],
    )
    .ok();
    let remote: Vec<serde_json::Value> = serde_json::from_str(&remote.stdout).unwrap();
    let mut dbs: Vec<&str> = remote
        .iter()
        .filter_map(|b| b["database"].as_str())
        .collect();
    dbs.sort();
    assert_eq!(dbs, ["alpha", "beta"], "{remote:?}");

    let ask = dbkeep(
        Some(&cfg),
        &["restore", "cluster", "latest", "--into", &pg.url("x")],
        &[],
    );
    assert_ne!(ask.code, 0);
    assert!(
        ask.stderr.contains("(databases: alpha, beta)"),
        "{}",
        ask.stderr
    );
    let into = pg.url("beta_copy");
    let args = [
        "restore",
        "cluster",
        "latest",
        "--database",
        "beta",
        "--storage",
        "s3",
        "--into",
        &into,
    ];
    let run = dbkeep(Some(&cfg), &args, &[]).ok();
    assert!(run.stderr.contains("read from s3"), "{}", run.stderr);
    assert_eq!(pg.psql("beta_copy", "SELECT name FROM who"), "beta");
}
