//! Data safety: each test breaks one promise on purpose (a storage down, two runs at once,
//! junk and corrupt files, a full disk, a signal) and checks that no backup reported good
//! is lost and nothing partial is kept.

use std::time::Duration;

use chrono::Utc;

use crate::common::s3::TestS3;
use crate::common::{
    dbkeep, pg_config, slow_pg_dump, spawn_daemon, spawn_dbkeep, sqlite_target, wait_for,
    wrapped_pg_bin, Sandbox, TestPostgres, PG_PASSWORD,
};

const BUCKET: &str = "bkp";

fn listed(cfg: &std::path::Path) -> Vec<serde_json::Value> {
    let run = dbkeep(Some(cfg), &["list", "--json"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

fn temp_files(sb: &Sandbox, target: &str) -> Vec<String> {
    sb.files(target)
        .into_iter()
        .filter(|f| f.starts_with(".dbkeep-tmp"))
        .collect()
}

fn pg_with_rows(pg: &TestPostgres, db: &str, rows: u32) {
    pg.create_db(db);
    pg.psql(
        db,
        &format!(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {rows}) g"
        ),
    );
}

#[test]
fn s3_down_at_the_start_takes_the_local_backup_and_keeps_it_pending() {
    let pg = TestPostgres::start();
    pg_with_rows(&pg, "app", 2000);
    let mut s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    let token = sb.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    let cfg = sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n[storage.local]\npath = \"{}\"\n{}\
         [targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\nschedule = \"0 3 1 1 *\"\n",
        token.display(),
        sb.backups().display(),
        s3.config_section(BUCKET, "prod", ""),
        pg.url("app")
    ));
    s3.stop();

    // The backup is taken locally and marked pending, not refused.
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("NOT uploaded to s3"), "{}", run.stdout);
    let archive = sb
        .files("app")
        .into_iter()
        .find(|f| f.ends_with(".dump.zst"))
        .expect("a local archive");

    // Listing shows the local copy and says the remote is unavailable.
    let list = dbkeep(Some(&cfg), &["list", "--json"], &[]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let all: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["storage"], "local");
    assert!(
        list.stderr.contains("storage s3 is unavailable"),
        "{}",
        list.stderr
    );
    let only_s3 = dbkeep(Some(&cfg), &["list", "--storage", "s3"], &[]);
    assert_eq!(only_s3.code, 1, "{}", only_s3.stderr);

    // A restore of the local copy works.
    dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &pg.url("copy")],
        &[],
    )
    .ok();
    assert_eq!(pg.table_checksums("copy"), pg.table_checksums("app"));

    // status reports the storage, with the local copy counted.
    let st = dbkeep(Some(&cfg), &["status", "--json"], &[]);
    assert_eq!(st.code, 1, "{}", st.stdout);
    let body: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(body[0]["backups"], 1, "{body}");
    let problems = body[0]["problems"].to_string();
    assert!(problems.contains("storage s3 unavailable"), "{problems}");

    // The daemon: /health says so, the metric says so, the API lists the local copy.
    let d = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(60), "s3 reported down", || {
        d.metric(r#"dbkeep_storage_up{storage="s3"}"#) == Some(0.0)
    });
    let (code, health) = d.get("/health");
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("storage s3 unavailable"), "{health}");
    let api = crate::common::http_request(
        &d.addr,
        "GET",
        "/api/v1/admin/database/backups",
        &[("Authorization", "Bearer 0123456789abcdef0123456789abcdef")],
        None,
    );
    assert_eq!(api.status, 200, "{}", api.text());
    let entries = api.json();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["file"], archive.as_str());
    drop(d);

    // S3 back: the pending archive goes up.
    s3.restart();
    let up = dbkeep(Some(&cfg), &["backup", "--upload-pending"], &[]).ok();
    assert!(up.stdout.contains("uploaded 1 pending"), "{}", up.stdout);
    assert_eq!(
        s3.keys(BUCKET, "prod/app/"),
        [
            format!("prod/app/{archive}"),
            format!("prod/app/{archive}.manifest.json")
        ]
    );
}

#[test]
fn sigterm_stops_a_one_shot_backup_aborts_its_upload_and_keeps_nothing() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    // About 14 MB, stored uncompressed: more than two 5 MiB parts go up before the end.
    pg.psql(
        "app",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v \
         FROM generate_series(1, 200000) g",
    );
    let s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    let slow = slow_pg_dump(&sb, &pg, 120);
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n{}[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\n\
         password = \"{PG_PASSWORD}\"\ncompression = \"none\"\npg_bin_dir = \"{}\"\n",
        sb.backups().display(),
        s3.config_section(BUCKET, "prod", "part_size = \"5MiB\""),
        pg.url("app"),
        slow.display()
    ));
    let child = spawn_dbkeep(&cfg, &["backup"]);
    wait_for(
        Duration::from_secs(60),
        "a multipart upload open and a local temp file",
        || !s3.open_uploads().is_empty() && !temp_files(&sb, "app").is_empty(),
    );
    child.signal(libc::SIGTERM);
    let run = child.finish(Duration::from_secs(90));
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("interrupted by SIGTERM"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
    assert!(
        s3.open_uploads().is_empty(),
        "multipart upload left open: {:?}",
        s3.open_uploads()
    );
    assert!(
        s3.keys(BUCKET, "prod/").is_empty(),
        "{:?}",
        s3.keys(BUCKET, "prod/")
    );
    assert!(sb.files("app").is_empty(), "{:?}", sb.files("app"));
}

#[test]
fn a_second_run_of_a_target_is_refused_while_the_first_goes() {
    let pg = TestPostgres::start();
    pg_with_rows(&pg, "app", 1000);
    let sb = Sandbox::new();
    let slow = slow_pg_dump(&sb, &pg, 4);
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!("pg_bin_dir = \"{}\"", slow.display()),
    );
    let first = spawn_dbkeep(&cfg, &["backup", "app"]);
    // The first holds the run lock once it writes its archive.
    wait_for(Duration::from_secs(60), "the first run writing", || {
        !temp_files(&sb, "app").is_empty()
    });
    let second = dbkeep(Some(&cfg), &["backup", "app"], &[]);
    assert_ne!(second.code, 0, "{}", second.stdout);
    assert!(
        second.stderr.contains("another run of target app is going"),
        "{}",
        second.stderr
    );
    let first = first.finish(Duration::from_secs(120));
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(listed(&cfg).len(), 1);
}

#[test]
fn runs_started_together_never_overwrite_each_other() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "keep_days = 30\nmin_keep = 100");
    let mut succeeded = 0;
    for _ in 0..5 {
        let a = spawn_dbkeep(&cfg, &["backup", "app"]);
        let b = spawn_dbkeep(&cfg, &["backup", "app"]);
        for run in [
            a.finish(Duration::from_secs(60)),
            b.finish(Duration::from_secs(60)),
        ] {
            if run.code == 0 {
                succeeded += 1;
            } else {
                assert!(
                    run.stderr.contains("another run of target app is going"),
                    "a failure other than the run lock: {}",
                    run.stderr
                );
            }
        }
    }
    // Every run reported good is a backup of its own.
    let all = listed(&cfg);
    assert!(succeeded >= 5, "{succeeded}");
    assert_eq!(all.len(), succeeded, "{all:?}");
    let mut ids: Vec<&str> = all.iter().map(|b| b["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), succeeded);
}

#[test]
fn junk_named_like_a_far_future_backup_does_not_steer_ids() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "keep_days = 30\nmin_keep = 100");
    std::fs::create_dir_all(sb.backups().join("app")).unwrap();
    std::fs::write(
        sb.backups().join("app").join("app_99991231_235959.x"),
        b"junk",
    )
    .unwrap();
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let all = listed(&cfg);
    assert_eq!(all.len(), 2, "{all:?}");
    let today = Utc::now().format("%Y%m%d").to_string();
    let yesterday = (Utc::now() - chrono::Duration::days(1))
        .format("%Y%m%d")
        .to_string();
    for b in &all {
        let id = b["id"].as_str().unwrap();
        assert!(
            id.starts_with(&today) || id.starts_with(&yesterday),
            "an id from the clock, not after the junk: {id}"
        );
    }
}

#[test]
fn files_planted_at_the_next_names_are_skipped_and_never_removed() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "keep_days = 30\nmin_keep = 100");
    let dir = sb.backups().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    // Manifests (and one lone archive) someone else put at the ids of the next seconds.
    let now = Utc::now();
    let mut planted = Vec::new();
    for s in 0..6 {
        let id = (now + chrono::Duration::seconds(s)).format("%Y%m%d_%H%M%S");
        let name = if s == 3 {
            format!("app_{id}.sqlite.zst")
        } else {
            format!("app_{id}.sqlite.zst.manifest.json")
        };
        std::fs::write(dir.join(&name), format!("planted {s}")).unwrap();
        planted.push(name);
    }
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    for (s, name) in planted.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(dir.join(name)).unwrap(),
            format!("planted {s}"),
            "{name} was changed or removed"
        );
    }
    let all = listed(&cfg);
    assert_eq!(all.len(), 1, "{all:?}");
    let last = (now + chrono::Duration::seconds(5))
        .format("%Y%m%d_%H%M%S")
        .to_string();
    assert!(all[0]["id"].as_str().unwrap() > last.as_str(), "{all:?}");
}

#[test]
fn a_manifest_planted_at_a_running_backups_name_is_left_alone() {
    let pg = TestPostgres::start();
    pg_with_rows(&pg, "app", 1000);
    let sb = Sandbox::new();
    let slow = slow_pg_dump(&sb, &pg, 3);
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!("pg_bin_dir = \"{}\"", slow.display()),
    );
    let run = spawn_dbkeep(&cfg, &["backup", "app"]);
    // The running archive's temp name ends with its final name: plant a manifest there.
    let mut temp = Vec::new();
    wait_for(Duration::from_secs(60), "the run writing", || {
        temp = temp_files(&sb, "app");
        !temp.is_empty()
    });
    let archive = temp[0].split('.').skip(4).collect::<Vec<_>>().join(".");
    assert!(
        archive.starts_with("app_") && archive.ends_with(".dump.zst"),
        "{temp:?}"
    );
    let manifest = sb
        .backups()
        .join("app")
        .join(format!("{archive}.manifest.json"));
    std::fs::write(&manifest, "someone else's").unwrap();
    let run = run.finish(Duration::from_secs(120));
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("exists already"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(&manifest).unwrap(),
        "someone else's"
    );
}

#[test]
fn a_corrupt_newest_backup_never_lets_cleanup_delete_the_last_good_one() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "keep_days = 0\nmin_keep = 1");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    std::thread::sleep(Duration::from_millis(1100));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let names = archives(&sb, "app");
    assert_eq!(names.len(), 2, "{names:?}");
    // One byte of the newest archive flips; its size stays.
    let newest = sb.backups().join("app").join(&names[0]);
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&newest, &bytes).unwrap();

    let cleanup = dbkeep(Some(&cfg), &["cleanup"], &[]);
    assert_eq!(cleanup.code, 0, "{}\n{}", cleanup.stdout, cleanup.stderr);
    assert!(
        cleanup
            .stdout
            .contains(&format!("corrupt archive {}", names[0])),
        "{}",
        cleanup.stdout
    );
    for n in &names {
        assert!(sb.backups().join("app").join(n).exists(), "{n} deleted");
    }
    // A second cleanup knows it from the state file and keeps both still.
    dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert_eq!(archives(&sb, "app"), names);
    // `latest` skips the known-corrupt copy and restores the good one.
    let into = sb.path().join("restored.db");
    dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest",
            "--into",
            into.to_str().unwrap(),
            "--yes",
        ],
        &[],
    )
    .ok();
    let rows = std::process::Command::new("sqlite3")
        .arg(&into)
        .arg("SELECT count(*) FROM t")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "2");
    let status = dbkeep(Some(&cfg), &["status"], &[]);
    assert!(
        status.stdout.contains("no longer match their manifest"),
        "{}",
        status.stdout
    );
}

/// Archive and manifest names of the listed backups of `target`, newest first.
fn archives(sb: &Sandbox, target: &str) -> Vec<String> {
    let mut v: Vec<String> = sb
        .files(target)
        .into_iter()
        .filter(|f| f.ends_with(".sqlite.zst"))
        .collect();
    v.sort();
    v.reverse();
    v
}

#[test]
fn a_broken_newest_manifest_is_not_counted_and_the_good_backups_survive() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "keep_days = 0\nmin_keep = 2");
    for _ in 0..3 {
        dbkeep(Some(&cfg), &["backup"], &[]).ok();
    }
    let names = archives(&sb, "app");
    assert_eq!(names.len(), 3, "{names:?}");
    let dir = sb.backups().join("app");
    // The newest manifest is corrupt.
    std::fs::write(
        dir.join(format!("{}.manifest.json", names[0])),
        b"{not json",
    )
    .unwrap();
    // A manifest far too big to read, beside an archive of its own.
    let huge = "app_20200101_000000.sqlite.zst";
    std::fs::write(dir.join(huge), b"tiny").unwrap();
    std::fs::write(
        dir.join(format!("{huge}.manifest.json")),
        vec![b' '; 5 * 1024 * 1024],
    )
    .unwrap();
    // A manifest copied under another id: it names another archive.
    let moved = "app_20200102_000000.sqlite.zst";
    std::fs::copy(dir.join(&names[2]), dir.join(moved)).unwrap();
    std::fs::copy(
        dir.join(format!("{}.manifest.json", names[2])),
        dir.join(format!("{moved}.manifest.json")),
    )
    .unwrap();

    let list = dbkeep(Some(&cfg), &["list", "--json"], &[]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(all.len(), 2, "only the two good backups count: {all:?}");
    for broken in [&names[0], &huge.to_string(), &moved.to_string()] {
        assert!(
            list.stderr.contains(&format!("{broken}.manifest.json")),
            "{broken} reported: {}",
            list.stderr
        );
    }
    assert!(list.stderr.contains("more than"), "{}", list.stderr);

    // Two days later, min_keep = 2 keeps both good backups; nothing broken is deleted.
    let cleanup = dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert!(
        cleanup.stdout.contains("broken manifest"),
        "{}",
        cleanup.stdout
    );
    let after = sb.files("app");
    for f in [
        &names[0],
        &names[1],
        &names[2],
        &huge.to_string(),
        &moved.to_string(),
    ] {
        assert!(after.contains(f), "{f} deleted: {after:?}");
        assert!(
            after.contains(&format!("{f}.manifest.json")),
            "manifest of {f} deleted: {after:?}"
        );
    }

    let verify = dbkeep(Some(&cfg), &["verify"], &[]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert!(
        verify
            .stdout
            .contains(&format!("PROBLEM  {}.manifest.json", names[0])),
        "{}",
        verify.stdout
    );
    let status = dbkeep(Some(&cfg), &["status", "--json"], &[]);
    let body: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(body[0]["broken_manifests"], 3, "{body}");
    assert_eq!(body[0]["backups"], 2, "{body}");
}

/// A tmpfs of `size` mounted on `dir` (root only), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test mounts a tmpfs to fill a disk for real: run the suite as root (./scripts/test does in CI)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_reported_as_the_storage_error_not_as_a_dying_pg_dump() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    // About 6 MB that does not compress, into a 2 MiB filesystem.
    pg.psql(
        "app",
        "CREATE TABLE r AS SELECT g, md5(random()::text) || md5(random()::text) AS t \
         FROM generate_series(1, 80000) g",
    );
    let sb = Sandbox::new();
    let _disk = Tmpfs::mount(&sb.backups(), "2m");
    let cfg = pg_config(&sb, &pg, "app", "compression = \"none\"");
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&sb.backups().display().to_string()),
        "the error names the path: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("free on the filesystem"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("signal"), "{}", run.stderr);
    assert!(temp_files(&sb, "app").is_empty(), "{:?}", sb.files("app"));
}

/// A SQLite restore into a full filesystem says so and what to do, and leaves nothing
/// there: no partial file, no temp file.
#[test]
fn a_sqlite_restore_into_a_full_disk_leaves_nothing_and_says_what_to_do() {
    let sb = Sandbox::new();
    let (db, cfg) = crate::common::sqlite_target(&sb, "app", "");
    crate::common::sqlite_query(
        &db,
        "CREATE TABLE big AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
         WHERE i < 50000) SELECT i, hex(randomblob(64)) AS v FROM n;",
    );
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let small = sb.path().join("small");
    let _disk = Tmpfs::mount(&small, "1m");
    let into = small.join("copy.db");
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest",
            "--into",
            &into.display().to_string(),
        ],
        &[],
    );
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("No space left on device") && run.stderr.contains("free space"),
        "{}",
        run.stderr
    );
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_hung_dump_is_stopped_at_the_target_timeout() {
    let pg = TestPostgres::start();
    pg_with_rows(&pg, "app", 100);
    let sb = Sandbox::new();
    let hung = wrapped_pg_bin(&sb, &pg, "pg_dump", "sleep 600");
    let cfg = pg_config(
        &sb,
        &pg,
        "app",
        &format!("timeout = \"2s\"\npg_bin_dir = \"{}\"", hung.display()),
    );
    let run = spawn_dbkeep(&cfg, &["backup"]).finish(Duration::from_secs(120));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("did not finish within 2s"),
        "{}",
        run.stderr
    );
    assert!(
        sb.files("app").iter().all(|f| !f.contains(".dump")),
        "{:?}",
        sb.files("app")
    );
}

#[test]
fn a_cron_expression_that_never_fires_is_a_config_error() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "schedule = \"0 0 31 2 *\"");
    let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("never fires"), "{}", run.stderr);
    assert!(
        run.stderr.contains("targets.app.schedule"),
        "{}",
        run.stderr
    );
}

#[test]
fn local_archives_not_yet_on_the_mirror_survive_cleanup_without_the_state_file() {
    let mut s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "keep_days = 0\nmin_keep = 1");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}{}", s3.config_section(BUCKET, "prod", "")),
    )
    .unwrap();
    s3.stop();
    for _ in 0..2 {
        let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
        assert!(run.stdout.contains("NOT uploaded"), "{}", run.stdout);
    }
    std::fs::remove_file(sb.backups().join(".dbkeep-state.json")).unwrap();
    // The mirror is still down: nothing on it is known, nothing local is deleted, and the
    // mirror is reported as not cleaned (exit 1).
    let run = dbkeep(Some(&cfg), &["cleanup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stdout.contains("local: 2 backup(s), deleted 0"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("app on s3: not cleaned now"),
        "{}",
        run.stdout
    );
    assert_eq!(listed(&cfg).len(), 2);
    // Back up, and without any record of what is pending: the mirror's own listing says
    // neither archive is there, so both stay.
    s3.restart();
    let run = dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert!(run.stdout.contains("not yet uploaded"), "{}", run.stdout);
    assert!(
        run.stdout.contains("local: 2 backup(s), deleted 0"),
        "{}",
        run.stdout
    );
    assert_eq!(listed(&cfg).len(), 2);
    // And they are not stranded: the listings say what is missing, so they go up.
    let run = dbkeep(Some(&cfg), &["backup", "--upload-pending"], &[]).ok();
    assert!(run.stdout.contains("uploaded 2"), "{}", run.stdout);
    let on_s3: Vec<_> = listed(&cfg)
        .into_iter()
        .filter(|b| b["storage"] == "s3")
        .collect();
    assert_eq!(on_s3.len(), 2, "{on_s3:?}");
    // Now uploaded, the older one may go.
    let run = dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert!(
        run.stdout
            .contains("app on local: 2 backup(s), deleted 1, keeping 1"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_mirror_that_accepts_connections_and_never_answers_makes_the_backup_pending() {
    // Never accepted: the kernel completes the handshakes, nobody ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text}[storage.s3]\nbucket = \"bkp\"\nprefix = \"prod\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
             region = \"us-east-1\"\nforce_path_style = true\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\n\
             max_attempts = 10\nretry_base_delay = \"100ms\"\nread_timeout = \"1s\"\n"
        ),
    )
    .unwrap();
    // Ten attempts of a silent request would take minutes; the run is bounded well below.
    let run = spawn_dbkeep(&cfg, &["backup"]).finish(Duration::from_secs(90));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("NOT uploaded"), "{}", run.stdout);
    assert_eq!(archives(&sb, "app").len(), 1);
    drop(silent);
}

#[test]
fn the_daemons_own_failed_drill_turns_health_red() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(
        &sb,
        "app",
        "every = \"1h\"\nverify_schedule = \"2s\"\nhealth_grace = \"1h\"",
    );
    let d = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(60), "the first backup", || {
        d.metric(r#"dbkeep_backups{storage="local",target="app"}"#) == Some(1.0)
    });
    wait_for(Duration::from_secs(60), "a good drill", || {
        d.metric(r#"dbkeep_verify_runs_total{status="success",target="app"}"#)
            .unwrap_or(0.0)
            >= 1.0
    });
    assert_eq!(d.get("/health").0, 200, "{}", d.get("/health").1);
    // Flip one byte of the archive: its checksum no longer matches.
    let archive = sb.backups().join("app").join(&archives(&sb, "app")[0]);
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    wait_for(Duration::from_secs(60), "health red from the drill", || {
        let (code, body) = d.get("/health");
        code == 503 && body.contains("last restore drill failed")
    });
    assert_eq!(
        d.metric(r#"dbkeep_verify_last_run_failed{target="app"}"#),
        Some(1.0)
    );
}

#[test]
fn sigterm_aborts_the_upload_on_a_store_that_lists_open_uploads() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v \
         FROM generate_series(1, 200000) g",
    );
    let moto = crate::common::moto::TestMoto::start(BUCKET);
    let sb = Sandbox::new();
    let slow = slow_pg_dump(&sb, &pg, 120);
    let section = moto.config_section(BUCKET, "prod", "part_size = \"5MiB\"");
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n{section}[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\n\
         password = \"{PG_PASSWORD}\"\ncompression = \"none\"\npg_bin_dir = \"{}\"\n",
        sb.backups().display(),
        pg.url("app"),
        slow.display()
    ));
    // The store's own view of open uploads, through ListMultipartUploads.
    let s3cfg = dbkeep::config::load_from(
        Some(&format!(
            "[storage.local]\npath = \"{}\"\n{section}[targets.x]\nkind = \"sqlite\"\npath = \"/x.db\"\n",
            sb.backups().display()
        )),
        std::collections::HashMap::new(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(dbkeep::storage::s3::S3Storage::new(
        s3cfg.storage.s3.clone().unwrap(),
        sb.path().to_path_buf(),
    ));
    let open = || rt.block_on(store.open_multipart_uploads()).unwrap();

    let child = spawn_dbkeep(&cfg, &["backup"]);
    wait_for(Duration::from_secs(60), "an open multipart upload", || {
        !open().is_empty()
    });
    child.signal(libc::SIGTERM);
    let run = child.finish(Duration::from_secs(90));
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert_eq!(open(), Vec::<String>::new(), "{}", run.stderr);
    assert!(sb.files("app").is_empty(), "{:?}", sb.files("app"));
}
