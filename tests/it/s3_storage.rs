//! S3-compatible storage against a real S3 server (s3s-fs) on 127.0.0.1.

use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};

use crate::common::s3::{TestS3, S3_SECRET_KEY};
use crate::common::{dbkeep, sha256_file, Sandbox, TestPostgres, PG_PASSWORD};

const BUCKET: &str = "backups";

pub(crate) fn pg_target(pg: &TestPostgres, db: &str, extra: &str) -> String {
    format!(
        "[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\n{extra}\n",
        pg.url(db)
    )
}

pub(crate) fn local(sb: &Sandbox) -> String {
    format!("[storage.local]\npath = \"{}\"\n", sb.backups().display())
}

pub(crate) fn list(cfg: &std::path::Path, storage: &str) -> Vec<serde_json::Value> {
    let run = dbkeep(Some(cfg), &["list", "--storage", storage, "--json"], &[]).ok();
    serde_json::from_str(&run.stdout).unwrap()
}

fn small_db(pg: &TestPostgres, db: &str) {
    pg.create_db(db);
    pg.psql(
        db,
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
    );
}

#[test]
fn local_and_s3_get_the_same_bytes_from_one_dump() {
    let pg = TestPostgres::start();
    small_db(&pg, "app");
    let s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    let cfg = sb.write_config(&format!(
        "{}{}{}",
        local(&sb),
        s3.config_section(BUCKET, "prod", ""),
        pg_target(&pg, "app", "")
    ));
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(!run.stdout.contains("NOT uploaded"), "{}", run.stdout);

    let archive = sb
        .files("app")
        .into_iter()
        .find(|f| f.ends_with(".dump.zst"))
        .unwrap();
    let key = format!("prod/app/{archive}");
    assert_eq!(
        s3.keys(BUCKET, "prod/"),
        [key.clone(), format!("{key}.manifest.json")]
    );
    let local_path = sb.backups().join("app").join(&archive);
    let remote_path = s3.object_path(BUCKET, &key);
    assert_eq!(
        std::fs::read(&local_path).unwrap(),
        std::fs::read(&remote_path).unwrap()
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s3.object_path(BUCKET, &format!("{key}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["sha256"], sha256_file(&remote_path));
    assert_eq!(manifest["object_key"], key);

    let remote = list(&cfg, "s3");
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0]["storage"], "s3");
    assert_eq!(remote[0]["file"], archive);
    assert_eq!(list(&cfg, "local").len(), 1);
}

#[test]
fn s3_only_keeps_no_local_copy_and_multipart_streams_large_dumps() {
    let pg = TestPostgres::start();
    pg.create_db("big");
    // ~25 MB of incompressible-ish text, stored uncompressed: more than 3 parts of 5 MiB.
    pg.psql(
        "big",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g * 3)::text) || md5((g * 7)::text) AS v \
         FROM generate_series(1, 250000) g",
    );
    let s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    let work = sb.path().join("work");
    let cfg = sb.write_config(&format!(
        "[daemon]\nwork_dir = \"{}\"\n{}{}",
        work.display(),
        s3.config_section(
            BUCKET,
            "prod",
            "part_size = \"5MiB\"\nupload_concurrency = 2"
        ),
        pg_target(&pg, "big", "compression = \"none\"")
    ));
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let parts: usize = run
        .stderr
        .lines()
        .find(|l| l.contains("multipart upload completed"))
        .and_then(|l| l.split("parts=").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no multipart upload in the log: {}", run.stderr));
    assert!(parts >= 4, "{parts} parts");
    assert!(!sb.backups().exists(), "no local copy at all");

    let remote = list(&cfg, "s3");
    assert_eq!(remote.len(), 1);
    let key = format!("prod/app/{}", remote[0]["file"].as_str().unwrap());
    let path = s3.object_path(BUCKET, &key);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 3 * 5 * 1024 * 1024, "{size} bytes");
    assert_eq!(remote[0]["sha256"], sha256_file(&path));
    assert_eq!(remote[0]["bytes"], size);
    assert_eq!(&std::fs::read(&path).unwrap()[..5], b"PGDMP");
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());

    // The archive restores.
    let raw = sb.path().join("restore.dump");
    std::fs::copy(&path, &raw).unwrap();
    pg.create_db("restored");
    let out = pg.pg_restore("restored", &raw);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.table_checksums("big"), pg.table_checksums("restored"));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A fake complete backup: tiny archive plus a manifest that matches it (cleanup re-reads
/// the newest backup it keeps before deleting older ones).
fn plant(s3: &TestS3, prefix: &str, target: &str, id: &str) -> (String, String) {
    let file = format!("{target}_{id}.dump.zst");
    let body = format!("archive {id}");
    let manifest = serde_json::json!({
        "format_version": 1, "target": target, "id": id, "kind": "postgres", "contents": "database",
        "schema": null, "file": file, "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:00:01Z",
        "duration_seconds": 1.0, "raw_bytes": body.len(), "stored_bytes": body.len(), "codec": "zstd",
        "sha256": sha256_hex(body.as_bytes()), "tools": {"dbkeep": "test"}
    });
    let key = format!("{prefix}/{target}/{file}");
    s3.put(BUCKET, &key, body.as_bytes());
    s3.put(
        BUCKET,
        &format!("{key}.manifest.json"),
        manifest.to_string().as_bytes(),
    );
    (key.clone(), format!("{key}.manifest.json"))
}

#[test]
fn twelve_hundred_backups_are_listed_and_retention_deletes_exactly_the_planned_ones() {
    let s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    // 1,200 backups, one every hour back from now: 50 days.
    let now = Utc::now();
    let ids: Vec<String> = (0..1200)
        .map(|h| {
            (now - Duration::hours(h) - Duration::minutes(1))
                .format("%Y%m%d_%H%M%S")
                .to_string()
        })
        .collect();
    for id in &ids {
        plant(&s3, "prod", "app", id);
    }
    // Neighbours that must never be touched: a sibling prefix, another target, a nested key.
    let sibling = plant(&s3, "prod2", "app", &ids[1199]);
    let other = plant(&s3, "prod", "other", &ids[1199]);
    s3.put(
        BUCKET,
        &format!("prod/app/archive/app_{}.dump.zst", ids[1199]),
        b"nested",
    );
    let db = sb.path().join("unused.db");
    let cfg = sb.write_config(&format!(
        "[daemon]\nwork_dir = \"{}\"\n{}[targets.app]\nkind = \"sqlite\"\npath = \"{}\"\nkeep_days = 30\nmin_keep = 5\n\
         [targets.other]\nkind = \"sqlite\"\npath = \"{}\"\n",
        sb.path().display(),
        s3.config_section(BUCKET, "prod", ""),
        db.display(),
        db.display()
    ));

    let listed = list(&cfg, "s3");
    let app: Vec<&serde_json::Value> = listed.iter().filter(|b| b["target"] == "app").collect();
    assert_eq!(app.len(), 1200, "pagination: all 1,200 backups are listed");

    let cutoff = now - Duration::days(30);
    let expected_deleted: Vec<&String> = ids
        .iter()
        .filter(|id| {
            chrono::NaiveDateTime::parse_from_str(id, "%Y%m%d_%H%M%S")
                .unwrap()
                .and_utc()
                < cutoff
        })
        .collect();
    assert!(expected_deleted.len() > 400, "{}", expected_deleted.len());

    let dry = dbkeep(Some(&cfg), &["cleanup", "app", "--dry-run"], &[]).ok();
    assert!(
        dry.stdout.contains(&format!(
            "app on s3: 1200 backup(s), would delete {}",
            expected_deleted.len()
        )),
        "{}",
        dry.stdout.lines().next().unwrap_or("")
    );
    assert_eq!(
        s3.keys(BUCKET, "prod/app/").len(),
        2401,
        "a dry run deletes nothing"
    );

    dbkeep(Some(&cfg), &["cleanup", "app"], &[]).ok();
    let remaining = s3.keys(BUCKET, "prod/app/");
    assert_eq!(remaining.len(), (1200 - expected_deleted.len()) * 2 + 1);
    for id in &expected_deleted {
        assert!(
            !remaining
                .iter()
                .any(|k| k.contains(id.as_str()) && !k.contains("/archive/")),
            "{id} should be gone"
        );
    }
    assert!(
        remaining.contains(&format!("prod/app/archive/app_{}.dump.zst", ids[1199])),
        "nested key untouched"
    );
    for key in [&sibling.0, &sibling.1, &other.0, &other.1] {
        assert!(
            s3.object_path(BUCKET, key).exists(),
            "{key} must not be touched"
        );
    }
    assert_eq!(
        list(&cfg, "s3")
            .iter()
            .filter(|b| b["target"] == "app")
            .count(),
        1200 - expected_deleted.len()
    );
}

/// A pg_bin_dir whose pg_dump streams the real dump, then keeps its stdout open until
/// `gate` exists (at most 300 s, so a failed test does not leave it behind for long).
pub(crate) fn gated_pg_dump(sb: &Sandbox, pg: &TestPostgres, gate: &Path) -> PathBuf {
    let bin = sb.path().join("gated-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = pg.bin.join("pg_dump");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version) exec {real} --version;; esac\n\
         {{ {real} \"$@\"; i=0; while [ ! -e '{gate}' ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i + 1)); done; }}\n",
        real = real.display(),
        gate = gate.display()
    );
    let wrapper = bin.join("pg_dump");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    bin
}

#[test]
fn s3_down_mid_upload_keeps_the_local_backup_pending_then_uploads_it() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g * 3)::text) AS v FROM generate_series(1, 200000) g",
    );
    let mut s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    // The dump streams, then holds its stream open until the test opens the gate: the server
    // dies while the upload is open, however long it took to get there.
    let gate = sb.path().join("release-the-dump");
    let bin = gated_pg_dump(&sb, &pg, &gate);
    let cfg = sb.write_config(&format!(
        "{}{}{}",
        local(&sb),
        s3.config_section(BUCKET, "prod", "part_size = \"5MiB\""),
        pg_target(
            &pg,
            "app",
            &format!("compression = \"none\"\npg_bin_dir = \"{}\"", bin.display())
        )
    ));
    let cfg2 = cfg.clone();
    let backup = std::thread::spawn(move || dbkeep(Some(&cfg2), &["backup"], &[]));
    // A part on the server: dbkeep has the upload's id (stopping the server between its
    // creating the upload and dbkeep hearing of it would leave one no client can name).
    crate::common::wait_for(
        std::time::Duration::from_secs(60),
        "a multipart upload in progress with a part uploaded",
        || s3.uploaded_parts() > 0,
    );
    s3.stop();
    std::fs::write(&gate, b"").unwrap();
    let run = backup.join().unwrap().ok();
    assert!(
        run.stdout.contains("NOT uploaded to s3"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("retrying"),
        "transient errors are retried and logged: {}",
        run.stderr
    );

    // Locally complete and listed, nothing complete in the bucket, marked pending.
    assert_eq!(list(&cfg, "local").len(), 1);
    let archive = list(&cfg, "local")[0]["file"].as_str().unwrap().to_string();
    assert!(
        s3.keys(BUCKET, "prod/").is_empty(),
        "{:?}",
        s3.keys(BUCKET, "prod/")
    );
    let status = dbkeep(Some(&cfg), &["status", "--json"], &[]);
    assert_eq!(status.code, 1, "pending uploads make the target unhealthy");
    let v: Vec<serde_json::Value> = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v[0]["pending_uploads"], 1);
    // The order of the problems is not part of the contract: the pending upload is one.
    assert!(
        v[0]["problems"]
            .as_array()
            .unwrap_or_else(|| panic!("no problems list: {}", status.stdout))
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("not uploaded to s3"))),
        "{}",
        status.stdout
    );

    // Back up: the pending archive goes up and the abandoned multipart upload is aborted.
    s3.restart();
    let up = dbkeep(Some(&cfg), &["backup", "--upload-pending"], &[]).ok();
    assert!(
        up.stdout.contains("uploaded 1 pending archive"),
        "{}\n{}",
        up.stdout,
        up.stderr
    );
    assert!(
        s3.open_uploads().is_empty(),
        "dangling multipart upload: {:?}",
        s3.open_uploads()
    );
    let key = format!("prod/app/{archive}");
    assert_eq!(
        std::fs::read(s3.object_path(BUCKET, &key)).unwrap(),
        std::fs::read(sb.backups().join("app").join(&archive)).unwrap()
    );
    assert_eq!(list(&cfg, "s3").len(), 1);
    let status = dbkeep(Some(&cfg), &["status", "--json"], &[]).ok();
    let v: Vec<serde_json::Value> = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v[0]["pending_uploads"], 0);
}

#[test]
fn wrong_credentials_name_bucket_and_endpoint_but_not_the_secret() {
    let pg = TestPostgres::start();
    small_db(&pg, "app");
    let s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    let section = s3
        .config_section(BUCKET, "prod", "")
        .replace(S3_SECRET_KEY, "wrong-secret-value-123");
    let cfg: PathBuf = sb.write_config(&format!(
        "[daemon]\nwork_dir = \"{}\"\n{section}{}",
        sb.path().display(),
        pg_target(&pg, "app", "")
    ));
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("bucket `{BUCKET}` at {}", s3.endpoint())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("SignatureDoesNotMatch") || run.stderr.contains("InvalidAccessKeyId"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("check access_key_id"), "{}", run.stderr);
    assert!(!run.stderr.contains("wrong-secret-value-123"));
    assert!(s3.keys(BUCKET, "").is_empty());
}

#[test]
fn the_daemon_reports_the_remote_side_in_metrics_and_health() {
    let s3 = TestS3::start(BUCKET);
    let sb = Sandbox::new();
    let (_db, cfg) = crate::common::sqlite_target(&sb, "m", "every = \"1h\"");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}{}", s3.config_section(BUCKET, "prod", "")),
    )
    .unwrap();
    let d = crate::common::spawn_daemon(&cfg, &[]);
    crate::common::wait_for(std::time::Duration::from_secs(30), "first backup", || {
        d.metric(r#"dbkeep_backup_runs_total{status="success",target="m"}"#) == Some(1.0)
    });
    crate::common::wait_for(std::time::Duration::from_secs(60), "remote count", || {
        d.metric(r#"dbkeep_backups{storage="s3",target="m"}"#) == Some(1.0)
    });
    assert_eq!(
        d.metric(r#"dbkeep_backups{storage="local",target="m"}"#),
        Some(1.0)
    );
    assert_eq!(
        d.metric(r#"dbkeep_upload_duration_seconds_count{storage="s3",target="m"}"#),
        Some(1.0)
    );
    assert_eq!(
        d.metric(r#"dbkeep_uploads_pending{storage="s3",target="m"}"#),
        Some(0.0)
    );
    assert_eq!(d.metric(r#"dbkeep_storage_up{storage="s3"}"#), Some(1.0));
    let (status, body) = d.get("/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"pending_uploads\":0"), "{body}");
}

/// A pin reaches every storage that holds the backup, as its own object beside the
/// archive (no manifest is rewritten), S3's listing reads it back, and `unpin` removes it
/// everywhere. (Retention's use of pins is shown on local files in cleanup_status.rs:
/// the plan is the same for every storage.)
#[test]
fn a_pin_is_an_object_on_s3_too_and_the_s3_listing_reads_it() {
    let sb = Sandbox::new();
    let db = sb.path().join("app.db");
    assert!(std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .status()
        .unwrap()
        .success());
    let s3 = TestS3::start(BUCKET);
    let cfg = sb.write_config(&format!(
        "{}{}[targets.app]\nkind = \"sqlite\"\npath = \"{}\"\nkeep_days = 1\nmin_keep = 1\n",
        local(&sb),
        s3.config_section(BUCKET, "pins", ""),
        db.display()
    ));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let first = list(&cfg, "s3")[0]["id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let run = dbkeep(Some(&cfg), &["pin", "app", &first, "--reason", "keep"], &[]).ok();
    assert!(run.stdout.contains("pinned on local, s3"), "{}", run.stdout);
    let pin_dir = s3.object_path(BUCKET, "pins/app");
    let pin_files = || -> Vec<String> {
        std::fs::read_dir(&pin_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!(".dbkeep-pin.{first}.")))
            .collect()
    };
    assert_eq!(pin_files().len(), 1, "{:?}", pin_files());
    let pinned = list(&cfg, "s3");
    assert!(
        pinned
            .iter()
            .any(|b| b["id"] == first.as_str() && b["pinned"] == "keep"),
        "{pinned:?}"
    );
    dbkeep(Some(&cfg), &["unpin", "app", &first], &[]).ok();
    assert!(pin_files().is_empty(), "{:?}", pin_files());
}
