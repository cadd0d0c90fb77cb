//! Several remote destinations (issue 19, parts 3 and 5): `[storage.mirrors.NAME]` beside
//! `[storage.s3]`, written from one dump stream, each with its own pending uploads,
//! retention and rate limit; restores that pick a destination or fall back to the next.
//! Two real S3 servers on 127.0.0.1.

use crate::common::s3::TestS3;
use crate::common::{dbkeep, sqlite_target, wrapped_pg_bin, Sandbox, TestPostgres};
use crate::s3_storage::{gated_pg_dump, list, local, pg_target};

/// Two archives wait for `offsite`; once the server is back, `--upload-pending` sends
/// both.
fn two_pending_then_uploaded(cfg: &std::path::Path, offsite: &mut TestS3) {
    let (_, v) = status_json(cfg);
    assert_eq!(v["pending_by_storage"], serde_json::json!({"offsite": 2}));
    offsite.restart();
    let up = dbkeep(Some(cfg), &["backup", "--upload-pending"], &[]).ok();
    assert!(
        up.stdout.contains("uploaded 2 pending archive"),
        "{}\n{}",
        up.stdout,
        up.stderr
    );
}

/// `[storage.mirrors.NAME]` for the test server `s3`, bucket `bucket`.
fn mirror_section(s3: &TestS3, name: &str, bucket: &str, extra: &str) -> String {
    s3.config_section(bucket, "site2", extra)
        .replace("[storage.s3]", &format!("[storage.mirrors.{name}]"))
}

fn status_json(cfg: &std::path::Path) -> (i32, serde_json::Value) {
    let run = dbkeep(Some(cfg), &["status", "--json"], &[]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    (run.code, v[0].clone())
}

/// `restore app latest --into INTO`, from one storage when given.
fn restore_into(
    cfg: &std::path::Path,
    storage: Option<&str>,
    into: &std::path::Path,
) -> crate::common::Run {
    let mut args = vec!["restore", "app", "latest", "--into", into.to_str().unwrap()];
    if let Some(s) = storage {
        args.extend(["--storage", s]);
    }
    dbkeep(Some(cfg), &args, &[])
}

/// A SQLite target `app` (with `extra` keys) and these storage `sections`.
fn sqlite_with_sections(
    sb: &Sandbox,
    extra: &str,
    sections: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (db, cfg) = sqlite_target(sb, "app", extra);
    add_sections(&cfg, sections);
    (db, cfg)
}

/// Append `sections` to the config file `cfg`.
fn add_sections(cfg: &std::path::Path, sections: &str) {
    let toml = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, format!("{toml}\n{sections}")).unwrap();
}

/// No archive waits anywhere and the target is healthy.
fn assert_healthy(cfg: &std::path::Path) {
    let (code, v) = status_json(cfg);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["pending_uploads"], 0);
}

fn problems(v: &serde_json::Value) -> Vec<String> {
    v["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One dump goes to the local folder and both buckets. The second destination dies in the
/// middle of its upload: the run succeeds, the local copy and the first bucket are
/// complete and byte-identical, only the dead one is pending (its own problem, its own
/// count); back up, the next run copies the missed archive there.
#[test]
fn a_destination_stopped_mid_run_blocks_neither_the_other_nor_the_local_copy() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g * 3)::text) AS v FROM generate_series(1, 200000) g",
    );
    let first = TestS3::start("one");
    let mut second = TestS3::start("two");
    let sb = Sandbox::new();
    let gate = sb.path().join("release-the-dump");
    let bin = gated_pg_dump(&sb, &pg, &gate);
    let cfg = sb.write_config(&format!(
        "{}{}{}{}",
        local(&sb),
        first.config_section("one", "site1", "part_size = \"5MiB\""),
        mirror_section(&second, "offsite", "two", "part_size = \"5MiB\""),
        pg_target(
            &pg,
            "app",
            &format!("compression = \"none\"\npg_bin_dir = \"{}\"", bin.display())
        )
    ));
    let cfg2 = cfg.clone();
    let backup = std::thread::spawn(move || dbkeep(Some(&cfg2), &["backup"], &[]));
    crate::common::wait_for(
        std::time::Duration::from_secs(60),
        "a part uploaded to the second destination",
        || second.uploaded_parts() > 0,
    );
    second.stop();
    std::fs::write(&gate, b"").unwrap();
    let run = backup.join().unwrap().ok();
    assert!(
        run.stdout.contains("NOT uploaded to offsite") && !run.stdout.contains("to s3"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let archive = list(&cfg, "local")[0]["file"].as_str().unwrap().to_string();
    let local_bytes = std::fs::read(sb.backups().join("app").join(&archive)).unwrap();
    assert_eq!(
        std::fs::read(first.object_path("one", &format!("site1/app/{archive}"))).unwrap(),
        local_bytes,
        "the live destination got every byte"
    );
    assert_eq!(list(&cfg, "s3").len(), 1);
    assert!(second.keys("two", "site2/").is_empty());

    let (code, v) = status_json(&cfg);
    assert_eq!(code, 1, "a destination that missed an archive is a problem");
    assert_eq!(v["pending_by_storage"], serde_json::json!({"offsite": 1}));
    let p = problems(&v);
    assert!(
        p.iter().any(|p| p.contains("not uploaded to offsite")),
        "{p:?}"
    );
    assert!(!p.iter().any(|p| p.contains("not uploaded to s3")), "{p:?}");
    assert!(!p.iter().any(|p| p.contains("not uploaded to local")));
    // verify checks what answers and reports the destination that does not.
    let verify = dbkeep(Some(&cfg), &["verify"], &[]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert!(verify.stdout.contains("app local  OK"), "{}", verify.stdout);
    assert!(verify.stdout.contains("app s3     OK"), "{}", verify.stdout);
    assert!(
        verify.stdout.contains("offsite") && verify.stdout.contains("storage unavailable"),
        "{}",
        verify.stdout
    );

    // A second run while the destination is still down: pending there grows, the other
    // still gets everything, and the run does not fail.
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(
        run.stdout.contains("NOT uploaded to offsite"),
        "{}",
        run.stdout
    );
    assert_eq!(list(&cfg, "s3").len(), 2);
    // Back up: both missed archives go there, from the local copies.
    two_pending_then_uploaded(&cfg, &mut second);
    assert_eq!(
        std::fs::read(second.object_path("two", &format!("site2/app/{archive}"))).unwrap(),
        local_bytes
    );
    assert_eq!(list(&cfg, "offsite").len(), 2);
    assert!(
        second.open_uploads().is_empty(),
        "{:?}",
        second.open_uploads()
    );
    assert_healthy(&cfg);
}

/// Three copies of one backup. The local one is damaged: a restore proves the checksum on
/// it, finds the damage, and restores the next destination's copy instead, saying so.
/// `--storage` picks one copy and never falls back; an unknown name is refused.
#[test]
fn a_restore_falls_back_to_the_next_destination_and_storage_picks_one() {
    let first = TestS3::start("one");
    let mut second = TestS3::start("two");
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_with_sections(
        &sb,
        "",
        &format!(
            "{}{}",
            first.config_section("one", "site1", ""),
            mirror_section(&second, "offsite", "two", "")
        ),
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    for s in ["local", "s3", "offsite"] {
        assert_eq!(list(&cfg, s).len(), 1, "{s}");
    }
    let archive = list(&cfg, "local")[0]["file"].as_str().unwrap().to_string();
    // Damage the local copy (same size, one byte changed).
    let path = sb.backups().join("app").join(&archive);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let into = sb.path().join("restored.db");
    let run = restore_into(&cfg, None, &into).ok();
    assert!(
        run.stderr.contains("read from s3") && run.stderr.contains("next"),
        "{}",
        run.stderr
    );
    let rows = |p: &std::path::Path| {
        let out = std::process::Command::new("sqlite3")
            .arg(p)
            .arg("SELECT group_concat(v) FROM t")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(rows(&into), rows(&db));

    // --storage: only that copy. The damaged one fails with the checksum error, and
    // nothing is written.
    let bad_into = sb.path().join("never.db");
    let run = restore_into(&cfg, Some("local"), &bad_into);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("corrupt"), "{}", run.stderr);
    assert!(!bad_into.exists());

    // The first bucket gone: the mirror's copy, by name.
    drop(first);
    let by_name = sb.path().join("by-name.db");
    let run = restore_into(&cfg, Some("offsite"), &by_name).ok();
    assert!(run.stderr.contains("read from offsite"), "{}", run.stderr);
    assert_eq!(rows(&by_name), rows(&db));

    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest",
            "--storage",
            "nowhere",
            "--into",
            "/tmp/x.db",
        ],
        &[],
    );
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("no storage named \"nowhere\"") && run.stderr.contains("offsite"),
        "{}",
        run.stderr
    );
    second.stop();
}

/// A destination that dies after it stored one archive of a run, while the run still
/// dumps the next: at commit its manifest cannot be written there. That is the
/// destination's failure only: the run succeeds, the local backup is whole, both archives
/// are pending there, and `--upload-pending` completes the copy after it is back.
#[test]
fn a_destination_lost_before_the_manifests_fails_only_itself() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE SCHEMA a; CREATE TABLE a.t AS SELECT g AS id FROM generate_series(1, 1000) g; \
         CREATE SCHEMA b; CREATE TABLE b.t AS SELECT g AS id FROM generate_series(1, 1000) g;",
    );
    let mut second = TestS3::start("two");
    let sb = Sandbox::new();
    let gate = sb.path().join("release-b");
    // Schema b's dump waits for the gate; a's runs through (and its upload completes).
    let bin = wrapped_pg_bin(
        &sb,
        &pg,
        "pg_dump",
        &format!(
            "case \"$*\" in *schema=*b*) $REAL \"$@\"; i=0; while [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done; exit 0;; esac\nexec $REAL \"$@\"",
            gate.display()
        ),
    );
    let cfg = sb.write_config(&format!(
        "{}{}{}",
        local(&sb),
        mirror_section(&second, "offsite", "two", ""),
        pg_target(
            &pg,
            "app",
            &format!(
                "schemas = [\"a\", \"b\"]\njobs = 1\npg_bin_dir = \"{}\"",
                bin.display()
            )
        )
    ));
    let cfg2 = cfg.clone();
    let backup = std::thread::spawn(move || dbkeep(Some(&cfg2), &["backup"], &[]));
    crate::common::wait_for(
        std::time::Duration::from_secs(60),
        "schema a's archive stored on the destination",
        || {
            second
                .keys("two", "site2/app/")
                .iter()
                .any(|k| k.contains(".a.dump"))
        },
    );
    second.stop();
    std::fs::write(&gate, b"").unwrap();
    let run = backup.join().unwrap().ok();
    assert!(
        run.stdout.contains("NOT uploaded to offsite"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let local_backups = list(&cfg, "local");
    assert_eq!(
        local_backups.len(),
        2,
        "the local backup is whole: {local_backups:?}"
    );
    two_pending_then_uploaded(&cfg, &mut second);
    assert_eq!(list(&cfg, "offsite").len(), 2);
    for b in &local_backups {
        let file = b["file"].as_str().unwrap();
        assert_eq!(
            std::fs::read(second.object_path("two", &format!("site2/app/{file}"))).unwrap(),
            std::fs::read(sb.backups().join("app").join(file)).unwrap()
        );
    }
}

/// A destination with its own retention keeps fewer backups than the local folder: cleanup
/// deletes there by its own rule, the local copies it no longer wants are not held back
/// as "not uploaded", and the next run does not send them again.
#[test]
fn a_destination_keeps_its_own_retention() {
    let second = TestS3::start("two");
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_with_sections(
        &sb,
        "keep_days = 0\nmin_keep = 3",
        &mirror_section(&second, "offsite", "two", "keep_days = 0\nmin_keep = 1"),
    );
    for _ in 0..4 {
        dbkeep(Some(&cfg), &["backup"], &[]).ok();
    }
    assert_eq!(list(&cfg, "offsite").len(), 4);
    // Every backup older than keep_days = 0 (ages are whole seconds). Runs within one
    // second take the next seconds as ids, so the newest may be ahead of the clock: wait
    // (at most 5 s) until it is a second in the past.
    let newest = list(&cfg, "local")[0]["id"].as_str().unwrap().to_string();
    let newest = chrono::NaiveDateTime::parse_from_str(&newest, "%Y%m%d_%H%M%S")
        .unwrap()
        .and_utc();
    for _ in 0..50 {
        if chrono::Utc::now() - newest > chrono::Duration::milliseconds(1100) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let dry = dbkeep(Some(&cfg), &["cleanup", "--dry-run"], &[]).ok();
    dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert_eq!(list(&cfg, "local").len(), 3, "{}", dry.stdout);
    let remote = list(&cfg, "offsite");
    assert_eq!(remote.len(), 1, "{}", dry.stdout);
    let newest = list(&cfg, "local")[0]["id"].clone();
    assert_eq!(remote[0]["id"], newest, "the mirror keeps the newest");
    // The next run does not send the two local backups the mirror let go.
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(
        !run.stderr.contains("missing from a mirror"),
        "{}",
        run.stderr
    );
    assert_eq!(list(&cfg, "offsite").len(), 2);
    assert_healthy(&cfg);
}

/// A destination that is down collects pending uploads; the local folder holds back only
/// the ones that destination's own retention would keep, and only those go up when it is
/// back.
#[test]
fn a_down_destination_holds_back_only_what_its_retention_keeps() {
    let mut second = TestS3::start("two");
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_with_sections(
        &sb,
        "keep_days = 0\nmin_keep = 1",
        &mirror_section(&second, "offsite", "two", "keep_days = 0\nmin_keep = 2"),
    );
    second.stop();
    for _ in 0..3 {
        dbkeep(Some(&cfg), &["backup"], &[]).ok();
    }
    let (_, v) = status_json(&cfg);
    assert_eq!(v["pending_by_storage"], serde_json::json!({"offsite": 3}));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let ids = |cfg: &std::path::Path, s: &str| -> Vec<String> {
        list(cfg, s)
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    let before = ids(&cfg, "local");
    let clean = dbkeep(Some(&cfg), &["cleanup"], &[]);
    assert_eq!(
        ids(&cfg, "local"),
        before[..2].to_vec(),
        "the newest two wait for the mirror, the oldest it would not keep goes: {}",
        clean.stdout
    );
    second.restart();
    let up = dbkeep(Some(&cfg), &["backup", "--upload-pending"], &[]).ok();
    assert!(
        up.stdout.contains("uploaded 2 pending archive"),
        "{}\n{}",
        up.stdout,
        up.stderr
    );
    assert_eq!(ids(&cfg, "offsite"), before[..2].to_vec());
    assert_healthy(&cfg);
}

/// The state file is not the truth: an archive gone from a destination while its manifest
/// stayed is found and sent again; an object of the right size but other bytes at the
/// archive's name is not taken for the archive.
#[test]
fn a_destination_missing_an_archive_gets_it_again_and_a_lookalike_is_refused() {
    let second = TestS3::start("two");
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_with_sections(&sb, "", &mirror_section(&second, "offsite", "two", ""));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let archive = list(&cfg, "local")[0]["file"].as_str().unwrap().to_string();
    let local_bytes = std::fs::read(sb.backups().join("app").join(&archive)).unwrap();
    let key = format!("site2/app/{archive}");
    std::fs::remove_file(second.object_path("two", &key)).unwrap();
    let up = dbkeep(Some(&cfg), &["backup", "--upload-pending"], &[]).ok();
    assert!(
        up.stdout.contains("uploaded 1 pending archive"),
        "{}\n{}",
        up.stdout,
        up.stderr
    );
    assert_eq!(
        std::fs::read(second.object_path("two", &key)).unwrap(),
        local_bytes
    );

    // Archive and manifest gone, other bytes of the same size in the archive's place.
    std::fs::remove_file(second.object_path("two", &format!("{key}.manifest.json"))).unwrap();
    let lookalike: Vec<u8> = local_bytes.iter().map(|b| b ^ 0x5a).collect();
    second.put("two", &key, &lookalike);
    let up = dbkeep(Some(&cfg), &["backup", "--upload-pending"], &[]);
    assert_ne!(up.code, 0, "{}", up.stdout);
    assert!(up.stderr.contains("exists already"), "{}", up.stderr);
    assert!(
        list(&cfg, "offsite").is_empty(),
        "the lookalike is no backup"
    );
    assert_eq!(
        std::fs::read(second.object_path("two", &key)).unwrap(),
        lookalike
    );
}

/// A rate-limited destination is left out of the dump's stream: the backup is complete
/// locally and on the unlimited destination before the limited one has its copy, which
/// follows from the local archive at no more than the rate, byte-identical. The pending
/// copy during the run is not a problem.
#[test]
fn a_rate_limited_destination_catches_up_from_the_local_archive() {
    let first = TestS3::start("one");
    let second = TestS3::start("two");
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(&sb, "app", "compression = \"none\"");
    // About 3 MiB that does not compress.
    let st = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE blob AS SELECT randomblob(1024) AS b FROM generate_series(1, 3000);")
        .status()
        .unwrap();
    assert!(st.success());
    add_sections(
        &cfg,
        &format!(
            "{}{}",
            first.config_section("one", "site1", ""),
            mirror_section(&second, "slow", "two", "max_upload_rate = \"1MiB\"")
        ),
    );
    let t0 = std::time::Instant::now();
    let cfg2 = cfg.clone();
    let backup = std::thread::spawn(move || dbkeep(Some(&cfg2), &["backup"], &[]));
    // While the copy goes: no manifest on the limited destination without its archive,
    // the target healthy, and `--upload-pending` refused (the run holds the lock; it
    // must not abort the run's own upload).
    let (mut seen_copying, mut refused) = (false, false);
    for _ in 0..1200 {
        if backup.is_finished() {
            break;
        }
        let keys = second.keys("two", "site2/");
        for k in keys.iter().filter(|k| k.ends_with(".manifest.json")) {
            let archive = k.trim_end_matches(".manifest.json");
            assert!(
                keys.iter().any(|a| a == archive),
                "manifest before archive: {keys:?}"
            );
        }
        let committed = sb
            .files("app")
            .iter()
            .any(|f| f.ends_with(".manifest.json"));
        if !seen_copying && committed && keys.is_empty() {
            seen_copying = true;
            let (code, v) = status_json(&cfg);
            assert_eq!(
                code, 0,
                "a rate-limited copy under way is not a problem: {v}"
            );
            assert_eq!(v["pending_by_storage"], serde_json::json!({"slow": 1}));
            let other = dbkeep(Some(&cfg), &["backup", "--upload-pending"], &[]);
            assert_ne!(other.code, 0, "{}\n{}", other.stdout, other.stderr);
            assert!(
                other.stderr.contains("another run of target app is going"),
                "{}",
                other.stderr
            );
            refused = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(seen_copying && refused, "the copy was never seen under way");
    let run = backup.join().unwrap().ok();
    let took = t0.elapsed().as_secs_f64();
    let archive = list(&cfg, "local")[0]["file"].as_str().unwrap().to_string();
    let local_bytes = std::fs::read(sb.backups().join("app").join(&archive)).unwrap();
    assert!(local_bytes.len() > 3_000_000, "{}", local_bytes.len());
    // The limiter holds the copy to the rate: it cannot have taken less than the size
    // over the rate (a lower bound only; the rate's precision is in bench/).
    let floor = local_bytes.len() as f64 / (1024.0 * 1024.0);
    assert!(
        took >= floor * 0.95,
        "{took:.2}s for {} bytes at 1MiB/s",
        local_bytes.len()
    );
    // The run's manifests were written before the limited copy was done.
    let committed = run
        .stderr
        .find("backup stored")
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let caught_up = run
        .stderr
        .find("pending upload done")
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(committed < caught_up, "{}", run.stderr);
    assert!(!run.stdout.contains("NOT uploaded"), "{}", run.stdout);
    for (s3, bucket, prefix) in [(&first, "one", "site1"), (&second, "two", "site2")] {
        assert_eq!(
            std::fs::read(s3.object_path(bucket, &format!("{prefix}/app/{archive}"))).unwrap(),
            local_bytes
        );
    }
    assert_healthy(&cfg);
}

/// A rate-limited copy left over from an earlier run (its destination was down) is made
/// after the next run's dump, not before it: the dump is never delayed by it.
#[test]
fn a_left_over_rate_limited_copy_waits_for_the_next_dump() {
    let mut second = TestS3::start("two");
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_with_sections(
        &sb,
        "",
        &mirror_section(&second, "slow", "two", "max_upload_rate = \"1MiB\""),
    );
    second.stop();
    let first = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(
        first.stdout.contains("NOT uploaded to slow"),
        "{}",
        first.stdout
    );
    second.restart();
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let stored = run
        .stderr
        .find("backup stored")
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let copied = run
        .stderr
        .find("pending upload done")
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(stored < copied, "{}", run.stderr);
    assert_eq!(
        list(&cfg, "slow").len(),
        2,
        "both copies made after the dump"
    );
    assert_healthy(&cfg);
}

/// Mirror names and rates are checked at load: each error names its key.
#[test]
fn mirror_settings_are_checked() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "");
    let base = std::fs::read_to_string(&cfg).unwrap();
    let section = "bucket = \"b\"\nprefix = \"p\"\nendpoint = \"http://127.0.0.1:9\"\n";
    for (extra, key, says) in [
        (
            format!("[storage.mirrors.s3]\n{section}"),
            "storage.mirrors.s3",
            "built-in",
        ),
        (
            format!("[storage.mirrors.\"Off Site\"]\n{section}"),
            "storage.mirrors.Off Site",
            "lowercase",
        ),
        (
            format!("[storage.mirrors.offsite]\n{section}max_upload_rate = \"fast\"\n"),
            "storage.mirrors.offsite.max_upload_rate",
            "not a rate",
        ),
        (
            format!("[storage.mirrors.offsite]\n{section}max_upload_rate = \"1KiB\"\n"),
            "storage.mirrors.offsite.max_upload_rate",
            "64KiB",
        ),
        (
            "[storage.mirrors.offsite]\nprefix = \"p\"\n".to_string(),
            "storage.mirrors.offsite.bucket",
            "missing",
        ),
        (
            format!(
                "[storage.s3]\n{section}[storage.mirrors.offsite]\n{}",
                section
                    .replace("\"p\"", "\"p/sub/\"")
                    .replace(":9\"", ":9/\"")
            ),
            "storage.mirrors.offsite.prefix",
            "the other's backups",
        ),
    ] {
        std::fs::write(&cfg, format!("{base}\n{extra}")).unwrap();
        let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
        assert_eq!(run.code, 2, "{extra}: {}", run.stderr);
        assert!(
            run.stderr.contains(key) && run.stderr.contains(says),
            "{extra}: {}",
            run.stderr
        );
    }
    // From the environment, like any other key.
    std::fs::write(&cfg, &base).unwrap();
    let run = dbkeep(
        Some(&cfg),
        &["config", "check"],
        &[
            ("DBKEEP_STORAGE__MIRRORS__OFFSITE__BUCKET", "b"),
            ("DBKEEP_STORAGE__MIRRORS__OFFSITE__PREFIX", "p"),
            ("DBKEEP_STORAGE__MIRRORS__OFFSITE__MAX_UPLOAD_RATE", "50MiB"),
        ],
    )
    .ok();
    assert!(
        run.stdout.contains("\"name\": \"offsite\""),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("52428800"), "{}", run.stdout);
}

/// A multipart upload remembered as abandoned that the store no longer has (a late abort
/// went through, or the store expired it) is done with: forgotten, not warned about at
/// every run.
#[test]
fn an_abandoned_upload_the_store_no_longer_has_is_forgotten() {
    // moto answers NoSuchUpload for an upload it does not have (s3s-fs: AccessDenied).
    let store = crate::common::moto::TestMoto::start("one");
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_with_sections(&sb, "", &store.config_section("one", "site1", ""));
    let record = sb.backups().join(".dbkeep-s3-abandoned.json");
    std::fs::create_dir_all(sb.backups()).unwrap();
    std::fs::write(
        &record,
        r#"{"6f1c2a4e-0b7d-4c39-9a51-3d2e8f0b7c11": "site1/app/gone.sqlite.zst"}"#,
    )
    .unwrap();
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(
        !run.stderr.contains("still cannot be aborted"),
        "{}",
        run.stderr
    );
    let left = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(!left.contains("6f1c2a4e"), "{left}");
}
