//! `list`: only complete backups, newest first, the JSON contract; leftovers cleaned.

use crate::common::{dbkeep, sha256_file, sqlite_target, Sandbox};

fn sqlite_sandbox() -> (Sandbox, std::path::PathBuf) {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "cache", "");
    (sb, cfg)
}

#[test]
fn list_json_is_newest_first_with_contract_fields() {
    let (sb, cfg) = sqlite_sandbox();
    for _ in 0..3 {
        dbkeep(Some(&cfg), &["backup"], &[]).ok();
    }
    let run = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
    let arr: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(arr.len(), 3, "{}", run.stdout);
    let ids: Vec<&str> = arr.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(ids, sorted, "distinct ids, newest first");
    for b in &arr {
        let id = b["id"].as_str().unwrap();
        assert_eq!(id.len(), 15);
        assert_eq!(&id[8..9], "_");
        assert_eq!(b["target"], "cache");
        assert!(b["schema"].is_null());
        assert_eq!(b["storage"], "local");
        let file = b["file"].as_str().unwrap();
        assert_eq!(file, format!("cache_{id}.sqlite.zst"));
        let path = sb.backups().join("cache").join(file);
        assert_eq!(b["bytes"], std::fs::metadata(&path).unwrap().len());
        assert_eq!(b["sha256"], sha256_file(&path));
        chrono::DateTime::parse_from_rfc3339(b["created"].as_str().unwrap())
            .expect("created is RFC 3339");
    }
    let table = dbkeep(Some(&cfg), &["list"], &[]).ok();
    assert!(table.stdout.starts_with("ID"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 4, "{}", table.stdout);
}

#[test]
fn incomplete_and_foreign_files_are_never_listed_and_temp_leftovers_are_removed() {
    let (sb, cfg) = sqlite_sandbox();
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let dir = sb.backups().join("cache");
    // An archive without manifest (interrupted before commit), a manifest without archive,
    // another target's file, a temp file of a dead writer (pid 2147483646 cannot exist).
    std::fs::write(dir.join("cache_20200101_000000.sqlite.zst"), b"half").unwrap();
    std::fs::write(
        dir.join("cache_20200102_000000.sqlite.zst.manifest.json"),
        b"{}",
    )
    .unwrap();
    std::fs::write(dir.join("other_20200103_000000.sqlite.zst"), b"x").unwrap();
    let leftover = ".dbkeep-tmp.2147483646.00000000000000aa.cache_20200104_000000.sqlite.zst";
    std::fs::write(dir.join(leftover), b"partial").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("cache_20200105_000000.sqlite.zst"))
        .unwrap();

    let list = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
    let arr: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(arr.len(), 1, "{}", list.stdout);

    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert!(
        run.stdout.contains("removed 1 leftover temp file"),
        "{}",
        run.stdout
    );
    assert!(!dir.join(leftover).exists());
    let list = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
    let arr: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(arr.len(), 2, "{}", list.stdout);
    assert!(arr
        .iter()
        .all(|b| !b["file"].as_str().unwrap().starts_with("cache_2020")));
}

#[test]
fn unknown_target_or_storage_is_a_usage_error() {
    let (_sb, cfg) = sqlite_sandbox();
    let run = dbkeep(Some(&cfg), &["backup", "nope"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("unknown target `nope`: the config defines cache"),
        "{}",
        run.stderr
    );
    let run = dbkeep(Some(&cfg), &["list", "--storage", "s3"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("storage `s3` is not configured"),
        "{}",
        run.stderr
    );
    let run = dbkeep(Some(&cfg), &["frobnicate"], &[]);
    assert_eq!(run.code, 2);
}

#[test]
fn report_commands_end_quietly_when_the_reader_goes_away() {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} config keys | head -1",
            env!("CARGO_BIN_EXE_dbkeep")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "DBKEEP_CONFIG");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
