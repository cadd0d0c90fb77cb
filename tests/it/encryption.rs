//! Encryption at rest (age) and signed manifests: a stolen storage reveals nothing, and a
//! writable one cannot plant a backup that is restored or that pushes good ones out.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::s3::TestS3;
use crate::common::{all_files, dbkeep, Sandbox, TestPostgres, PG_PASSWORD};

const MARKER: &str = "MARKER-7d1f3a9c-no-plaintext";

/// A new age identity in `sb`, made by `dbkeep key new`: (file, recipient).
fn age_key(sb: &Sandbox, name: &str) -> (PathBuf, String) {
    let path = sb.path().join(name);
    let run = dbkeep(None, &["key", "new", "--out", path.to_str().unwrap()], &[]).ok();
    let recipient = run.stdout.trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    (path, recipient)
}

/// A new signing key in `sb`: (file, verify key).
fn signing_key(sb: &Sandbox, name: &str) -> (PathBuf, String) {
    let path = sb.path().join(name);
    let run = dbkeep(
        None,
        &["key", "new", "--signing", "--out", path.to_str().unwrap()],
        &[],
    )
    .ok();
    (path, run.stdout.trim().to_string())
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_containing(&p, needle));
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                out.push(p);
            }
        }
    }
    out
}

/// `age -d -i identity file`: the decrypted bytes (the Debian `age` tool, not dbkeep).
fn age_decrypt(identity: &Path, file: &Path) -> Vec<u8> {
    let out = Command::new("age")
        .args(["-d", "-i"])
        .arg(identity)
        .arg(file)
        .output()
        .expect("the age tool (installed by ./scripts/test)");
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn secret_db(sb: &Sandbox) -> PathBuf {
    secret_db_of(sb, 2000, 500)
}

/// `cache.db`: the marker in one row, and `rows` random blobs of `bytes` each.
fn secret_db_of(sb: &Sandbox, rows: u32, bytes: u32) -> PathBuf {
    let db = sb.path().join("cache.db");
    sqlite(
        &db,
        &format!(
            "CREATE TABLE secrets (v TEXT); INSERT INTO secrets VALUES ('{MARKER}');\
             CREATE TABLE bulk (b BLOB); WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rows}) INSERT INTO bulk SELECT randomblob({bytes}) FROM g;"
        ),
    );
    db
}

/// A config of its own (`<name>.toml`) for the SQLite target `cache` with `keys`.
fn sqlite_config(sb: &Sandbox, name: &str, db: &Path, keys: &str) -> PathBuf {
    let path = sb.path().join(format!("{name}.toml"));
    std::fs::write(&path, format!(
        "[daemon]\nwork_dir = \"{}\"\n[storage.local]\npath = \"{}\"\n[targets.cache]\nkind = \"sqlite\"\npath = \"{}\"\ncompression = \"none\"\n{keys}\n",
        sb.path().join("work").display(),
        sb.backups().display(),
        db.display()
    ))
    .unwrap();
    path
}

#[test]
fn an_encrypted_sqlite_backup_holds_no_plaintext_and_restores_only_with_its_key() {
    let sb = Sandbox::new();
    let db = secret_db(&sb);

    // Control: unencrypted (and uncompressed), the marker is in the archive, so the search
    // below can find it.
    let plain = sqlite_config(&sb, "plain", &db, "");
    dbkeep(Some(&plain), &["backup"], &[]).ok();
    assert!(
        !files_containing(&sb.backups(), MARKER.as_bytes()).is_empty(),
        "the control archive should hold the marker"
    );
    std::fs::remove_dir_all(sb.backups()).unwrap();
    std::fs::remove_dir_all(sb.path().join("work")).unwrap();

    let (identity, recipient) = age_key(&sb, "identity.txt");
    let cfg = sqlite_config(
        &sb,
        "cfg",
        &db,
        &format!(
            "encrypt_to = [\"{recipient}\"]\nidentity_file = \"{}\"\n",
            identity.display()
        ),
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let written: Vec<PathBuf> = all_files(&sb.backups())
        .into_iter()
        .chain(all_files(&sb.path().join("work")))
        .collect();
    assert!(written.len() >= 3, "{written:?}");
    assert_eq!(
        files_containing(&sb.backups(), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        files_containing(&sb.path().join("work"), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
    // The snapshot went to the private folder (0700, outside the storage) and is gone.
    let private = sb.path().join("work/private/cache");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(all_files(&private), Vec::<PathBuf>::new());

    let archive = sb
        .files("cache")
        .into_iter()
        .find(|f| f.ends_with(".sqlite.age"))
        .expect("an .age archive");
    let path = sb.backups().join("cache").join(&archive);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            sb.backups()
                .join("cache")
                .join(format!("{archive}.manifest.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["encrypted_to"], serde_json::json!([recipient]));
    // The stored bytes are an age file the standard tool decrypts to the archive.
    let decrypted = age_decrypt(&identity, &path);
    assert!(decrypted.starts_with(b"SQLite format 3\0"));
    assert!(decrypted
        .windows(MARKER.len())
        .any(|w| w == MARKER.as_bytes()));

    // Checking the stored bytes needs no secret.
    let no_key = sqlite_config(
        &sb,
        "no_key",
        &db,
        &format!("encrypt_to = [\"{recipient}\"]\n"),
    );
    dbkeep(Some(&no_key), &["verify", "cache"], &[]).ok();

    // A wrong identity: a clear error naming the recipient; the database is untouched and
    // no safety backup was taken.
    sqlite(&db, "INSERT INTO secrets VALUES ('changed');");
    let before = std::fs::read(&db).unwrap();
    let (other, other_recipient) = age_key(&sb, "other.txt");
    let count = sb.files("cache").len();
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "cache",
            "--yes",
            "--identity",
            other.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains(&recipient), "{}", run.stderr);
    assert!(run.stderr.contains(&other_recipient), "{}", run.stderr);
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert_eq!(sb.files("cache").len(), count);
    // An identity "file" that never ends is refused, not read into memory.
    let run = dbkeep(
        Some(&cfg),
        &["restore", "cache", "--yes", "--identity", "/dev/zero"],
        &[],
    );
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
    assert_eq!(std::fs::read(&db).unwrap(), before);
    // No key at all: the same.
    let run = dbkeep(Some(&no_key), &["restore", "cache", "--yes"], &[]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("identity_file"), "{}", run.stderr);
    assert_eq!(std::fs::read(&db).unwrap(), before);

    // The right key restores.
    dbkeep(Some(&cfg), &["restore", "cache", "--yes"], &[]).ok();
    assert_eq!(sqlite(&db, "SELECT v FROM secrets"), format!("{MARKER}\n"));
    assert_eq!(
        files_containing(&sb.path().join("work"), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );

    // A drill proves the key decrypts; with the key lost, the drill fails and says why.
    dbkeep(Some(&cfg), &["verify", "cache", "--drill"], &[]).ok();
    let lost = sqlite_config(
        &sb,
        "lost",
        &db,
        &format!(
            "encrypt_to = [\"{recipient}\"]\nidentity_file = \"{}\"\n",
            sb.path().join("gone.txt").display()
        ),
    );
    let run = dbkeep(Some(&lost), &["verify", "cache", "--drill"], &[]);
    assert_ne!(run.code, 0);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("gone.txt"), "{said}");
    let status = dbkeep(Some(&lost), &["status", "--json"], &[]);
    assert_eq!(
        status.code, 1,
        "a failed drill is unhealthy: {}",
        status.stdout
    );
}

#[test]
fn a_killed_encrypted_backup_leaves_no_plaintext_in_the_storage_and_the_next_run_clears_it() {
    let sb = Sandbox::new();
    // Big enough that zstd 19 is still at work when the kill comes.
    let db = secret_db_of(&sb, 25000, 2000);
    let (_, recipient) = age_key(&sb, "identity.txt");
    let cfg = sqlite_config(
        &sb,
        "cfg",
        &db,
        &format!("encrypt_to = [\"{recipient}\"]\ncompression_level = 19\n"),
    );
    let private = sb.path().join("work/private/cache");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbkeep"))
        .arg("--config")
        .arg(&cfg)
        .arg("backup")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The snapshot holds the secret (its pages are written over time: a file that is
    // there may not hold it yet), and the encrypted archive is on its way.
    crate::common::wait_for(
        std::time::Duration::from_secs(60),
        "a snapshot holding the secret in the private folder and a temp archive in the storage",
        || {
            !files_containing(&private, MARKER.as_bytes()).is_empty()
                && !all_files(&sb.backups()).is_empty()
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The plaintext snapshot is only in the owner-only private folder, never in the
    // storage, where the killed run's partial archive is encrypted.
    assert!(!files_containing(&private, MARKER.as_bytes()).is_empty());
    assert_eq!(
        files_containing(&sb.backups(), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );

    // The next run removes the dead run's snapshot, and leaves none of its own.
    let small = sqlite_config(
        &sb,
        "small",
        &db,
        &format!("encrypt_to = [\"{recipient}\"]\n"),
    );
    dbkeep(Some(&small), &["backup"], &[]).ok();
    assert_eq!(all_files(&private), Vec::<PathBuf>::new());
    assert_eq!(
        files_containing(&sb.path().join("work"), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        files_containing(&sb.backups(), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn an_encrypted_postgres_backup_in_s3_decrypts_with_age_and_restores() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('{MARKER}');\
             CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g"
        ),
    );
    let s3 = TestS3::start("vault");
    let sb = Sandbox::new();
    let (identity, recipient) = age_key(&sb, "identity.txt");
    let target = |identity: &Path| {
        format!(
            "[daemon]\nwork_dir = \"{}\"\n{}[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\ncompression = \"none\"\nencrypt_to = [\"{recipient}\"]\nidentity_file = \"{}\"\n",
            sb.path().join("work").display(),
            s3.config_section("vault", "prod", ""),
            pg.url("app"),
            identity.display()
        )
    };
    let cfg = sb.write_config(&target(&identity));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let keys = s3.keys("vault", "prod/");
    assert_eq!(keys.len(), 2, "{keys:?}");
    let archive_key = keys.iter().find(|k| k.ends_with(".dump.age")).unwrap();
    for k in &keys {
        let bytes = std::fs::read(s3.object_path("vault", k)).unwrap();
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{k} holds plaintext"
        );
    }
    assert_eq!(
        files_containing(&sb.path().join("work"), MARKER.as_bytes()),
        Vec::<PathBuf>::new()
    );
    let decrypted = age_decrypt(&identity, &s3.object_path("vault", archive_key));
    assert!(decrypted.starts_with(b"PGDMP"));

    // Restored into a new database: the same rows.
    let into = pg.url("copy");
    dbkeep(
        Some(&cfg),
        &["restore", "app", "--into", &into, "--yes"],
        &[("PGPASSWORD", PG_PASSWORD)],
    )
    .ok();
    assert_eq!(pg.table_checksums("copy"), pg.table_checksums("app"));

    // The wrong key over the live database: refused, nothing changed.
    pg.psql("app", "INSERT INTO secrets VALUES ('after')");
    let before = pg.table_checksums("app");
    let (other, _) = age_key(&sb, "other.txt");
    let wrong = sb.write_config(&target(&other));
    let run = dbkeep(Some(&wrong), &["restore", "app", "--yes"], &[]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains(&recipient), "{}", run.stderr);
    assert_eq!(pg.table_checksums("app"), before);
    assert_eq!(
        s3.keys("vault", "prod/").len(),
        2,
        "no safety backup was taken"
    );
}

/// A manifest for `file` (a copy of `good`'s archive under a new id), from `good`'s.
fn forged(good: &serde_json::Value, id: &str, file: &str) -> dbkeep::catalog::Manifest {
    let mut m: dbkeep::catalog::Manifest = serde_json::from_value(good.clone()).unwrap();
    m.id = id.parse().unwrap();
    m.file = file.to_string();
    m.signature = None;
    m
}

#[test]
fn forged_manifests_are_neither_restored_nor_counted_by_retention() {
    let sb = Sandbox::new();
    let db = secret_db(&sb);
    let (key, verify) = signing_key(&sb, "signing.key");
    let cfg = sqlite_config(
        &sb,
        "cfg",
        &db,
        &format!(
            "signing_key_file = \"{}\"\nkeep_days = 0\nmin_keep = 2\ncleanup_schedule = \"1h\"\n",
            key.display()
        ),
    );
    let mut good = Vec::new();
    for _ in 0..3 {
        dbkeep(Some(&cfg), &["backup"], &[]).ok();
        let run = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        good.push(v[0]["id"].as_str().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let dir = sb.backups().join("cache");
    let newest_file = sb
        .files("cache")
        .into_iter()
        .find(|f| f.contains(&good[2]) && f.ends_with(".sqlite"))
        .unwrap();
    let good_manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("{newest_file}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(good_manifest["signature"]["key"], verify);

    // Three newer backups planted by someone who can write to the storage: the archive
    // is a copy of a real one (so size and sha256 match); one manifest is unsigned, one is
    // signed by another key, one is a good manifest with a changed field.
    let (other_path, _) = signing_key(&sb, "attacker.key");
    let other =
        dbkeep::crypt::SigningKey::parse(&std::fs::read_to_string(other_path).unwrap()).unwrap();
    let ids = ["20990101_000001", "20990101_000002", "20990101_000003"];
    for (i, id) in ids.iter().enumerate() {
        let file = format!("cache_{id}.sqlite");
        std::fs::copy(dir.join(&newest_file), dir.join(&file)).unwrap();
        let mut m = forged(&good_manifest, id, &file);
        match i {
            0 => {}
            1 => dbkeep::catalog::sign(&mut m, &other),
            _ => {
                // Signed by the real key, then altered.
                let real =
                    dbkeep::crypt::SigningKey::parse(&std::fs::read_to_string(&key).unwrap())
                        .unwrap();
                dbkeep::catalog::sign(&mut m, &real);
                m.tables.clear();
            }
        }
        std::fs::write(
            dir.join(format!("{file}.manifest.json")),
            serde_json::to_vec_pretty(&m).unwrap(),
        )
        .unwrap();
    }

    // Control: a host that does not check signatures takes the planted backups for real.
    let unchecked = sqlite_config(&sb, "unchecked", &db, "");
    let run = dbkeep(Some(&unchecked), &["list", "--json"], &[]).ok();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.len(), 6);

    let run = dbkeep(Some(&cfg), &["list", "--json"], &[]).ok();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let listed_ids: Vec<&str> = listed.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids, vec![&good[2], &good[1], &good[0]]);
    assert!(run.stderr.contains("not trusted"), "{}", run.stderr);

    // Restore takes the newest signed backup, never a planted one.
    sqlite(&db, "INSERT INTO secrets VALUES ('changed');");
    let run = dbkeep(Some(&cfg), &["restore", "cache", "latest", "--yes"], &[]).ok();
    assert!(run.stdout.contains(&good[2]), "{}", run.stdout);
    for id in ids {
        let run = dbkeep(Some(&cfg), &["restore", "cache", id, "--yes"], &[]);
        assert_ne!(run.code, 0, "{id} was restored: {}", run.stdout);
    }

    // Retention counts the signed backups only: the planted ones cannot push them out.
    dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    let left = sb.files("cache");
    // The pre-restore safety backup is the newest now; min_keep = 2 keeps it and good[2].
    assert!(
        left.iter()
            .any(|f| f.contains(&good[2]) && f.ends_with(".sqlite")),
        "{left:?}"
    );
    assert!(!left.iter().any(|f| f.contains(&good[0])), "{left:?}");
    for id in ids {
        assert!(
            left.iter().any(|f| f.contains(id)),
            "untrusted files are left for the operator: {left:?}"
        );
    }

    // After a key rotation the old manifests no longer verify here; a commit marker
    // planted for a finished run must still not get it deleted as an interrupted one.
    let (new_key, _) = signing_key(&sb, "rotated.key");
    let rotated = sqlite_config(
        &sb,
        "rotated",
        &db,
        &format!("signing_key_file = \"{}\"\n", new_key.display()),
    );
    let victim = &good[2];
    std::fs::write(dir.join(format!(".dbkeep-commit.{victim}.json")), "{}").unwrap();
    dbkeep(Some(&rotated), &["backup"], &[]).ok();
    let left = sb.files("cache");
    assert!(
        left.iter()
            .any(|f| f.contains(victim.as_str()) && f.ends_with(".sqlite")),
        "{left:?}"
    );
    assert!(
        left.iter()
            .any(|f| f.contains(victim.as_str()) && f.ends_with(".manifest.json")),
        "{left:?}"
    );

    // A host that verifies but cannot sign refuses to back up, before dumping.
    let verify_only = sqlite_config(
        &sb,
        "verify_only",
        &db,
        &format!("verify_key = \"{verify}\"\n"),
    );
    let before = sb.files("cache");
    let run = dbkeep(Some(&verify_only), &["backup"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("signing_key_file"), "{}", run.stderr);
    assert_eq!(sb.files("cache"), before);
}

#[test]
fn bad_keys_in_the_config_are_named_and_stop_the_load() {
    let sb = Sandbox::new();
    let db = secret_db(&sb);
    let check = |keys: &str, want: &[&str]| {
        let cfg = sqlite_config(&sb, "check", &db, keys);
        let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
        assert_eq!(run.code, 2, "{keys}: {}", run.stderr);
        for w in want {
            assert!(run.stderr.contains(w), "{keys}: {}", run.stderr);
        }
    };
    check(
        "encrypt_to = [\"age1notarecipient\"]",
        &["targets.cache.encrypt_to", "age1notarecipient"],
    );
    check(
        "encrypt_to = []",
        &["targets.cache.encrypt_to", "at least one"],
    );
    // A private key pasted where a recipient goes is refused and never echoed.
    let (id_file, _) = age_key(&sb, "pasted.txt");
    let secret = std::fs::read_to_string(&id_file)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let cfg = sqlite_config(&sb, "pasted", &db, &format!("encrypt_to = [\"{secret}\"]"));
    let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("private key"), "{}", run.stderr);
    assert!(!run.stderr.contains(&secret[20..]), "{}", run.stderr);
    check(
        &format!(
            "encrypt_to_file = \"{}\"",
            sb.path().join("missing.txt").display()
        ),
        &["targets.cache.encrypt_to_file"],
    );
    check(
        &format!(
            "signing_key_file = \"{}\"",
            sb.path().join("missing.key").display()
        ),
        &["targets.cache.signing_key_file"],
    );
    let (key, _) = signing_key(&sb, "a.key");
    let (_, other_verify) = signing_key(&sb, "b.key");
    check(
        &format!(
            "signing_key_file = \"{}\"\nverify_key = \"{other_verify}\"",
            key.display()
        ),
        &["targets.cache.verify_key"],
    );
    check(
        "verify_key = \"dbkeep-verify-zz\"",
        &["targets.cache.verify_key"],
    );
    // A key file is never overwritten.
    let run = dbkeep(None, &["key", "new", "--out", key.to_str().unwrap()], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("exists already"), "{}", run.stderr);
}

/// How many versions and delete markers of keys under `prefix` the bucket holds.
fn versions(moto: &crate::common::moto::TestMoto, bucket: &str, prefix: &str) -> usize {
    let xml = moto.get(&format!("/{bucket}?versions&prefix={prefix}"));
    xml.matches("<Version>").count() + xml.matches("<DeleteMarker>").count()
}

#[test]
fn object_lock_keeps_backups_until_their_date_and_nothing_rewrites_an_object() {
    let moto = crate::common::moto::TestMoto::start("unlocked");
    moto.bucket("locked", true);
    let sb = Sandbox::new();
    let db = secret_db(&sb);
    let config = |bucket: &str| {
        let path = sb.path().join(format!("{bucket}.toml"));
        std::fs::write(
            &path,
            format!(
                "[daemon]\nwork_dir = \"{}\"\n{}[targets.cache]\nkind = \"sqlite\"\npath = \"{}\"\nkeep_days = 0\nmin_keep = 1\ncleanup_schedule = \"1h\"\n",
                sb.path().join("work").display(),
                moto.config_section(
                    bucket,
                    "prod",
                    "object_lock = { mode = \"governance\", period = \"8s\" }"
                ),
                db.display()
            ),
        )
        .unwrap();
        path
    };

    // A bucket without Object Lock: refused before anything is written.
    let run = dbkeep(Some(&config("unlocked")), &["backup"], &[]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("has no Object Lock"), "{}", run.stderr);
    assert_eq!(versions(&moto, "unlocked", "prod/cache/"), 0);

    let cfg = config("locked");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let listed = |cfg: &Path| -> Vec<String> {
        let run = dbkeep(Some(cfg), &["list", "--json"], &[]).ok();
        let v: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
        v.iter()
            .map(|b| b["file"].as_str().unwrap().to_string())
            .collect()
    };
    let files = listed(&cfg);
    assert_eq!(files.len(), 2);
    let (newer, older) = (&files[0], &files[1]);
    // Each archive and manifest is locked: deleting its version is refused by the store.
    for key in [older.clone(), format!("{older}.manifest.json")] {
        let key = format!("prod/cache/{key}");
        let ids = moto.version_ids("locked", &key);
        assert_eq!(ids.len(), 1, "{key}");
        assert_eq!(moto.delete_version("locked", &key, &ids[0]), 403, "{key}");
    }

    // Due for deletion (keep_days = 0, min_keep = 1) but locked: kept, and said so.
    let run = dbkeep(Some(&cfg), &["cleanup", "--dry-run"], &[]).ok();
    assert!(
        run.stdout.contains("locked (S3 Object Lock) until"),
        "{}",
        run.stdout
    );
    dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
    assert_eq!(listed(&cfg), files);

    // A drill and a verify write nothing to the bucket.
    let before = versions(&moto, "locked", "prod/cache/");
    dbkeep(Some(&cfg), &["verify", "cache", "--drill"], &[]).ok();
    dbkeep(Some(&cfg), &["verify", "cache"], &[]).ok();
    assert_eq!(versions(&moto, "locked", "prod/cache/"), before);

    // Once the date passes, a cleanup deletes the older run: every version, no delete
    // marker left. Each cleanup before then keeps it (and must not fail).
    crate::common::wait_for(
        std::time::Duration::from_secs(30),
        "a cleanup after the lock's date deleting the older run",
        || {
            dbkeep(Some(&cfg), &["cleanup"], &[]).ok();
            listed(&cfg).len() == 1
        },
    );
    assert_eq!(listed(&cfg), vec![newer.clone()]);
    assert_eq!(versions(&moto, "locked", &format!("prod/cache/{older}")), 0);
}
