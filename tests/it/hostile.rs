//! Hostile inputs: each test plays someone who can write a config value, a file in the
//! storage folder, an archive, or a request, and checks that dbkeep leaks no secret,
//! writes nothing where it should not, and runs nothing it was handed. The module grows
//! with every finding (SECURITY.md says what is trusted and what is not).

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::s3::{TestS3, S3_ACCESS_KEY, S3_SECRET_KEY};
use crate::common::{
    dbkeep, http_request, pg_config, spawn_daemon, sqlite_target, wrapped_pg_bin, Run, Sandbox,
    TestPostgres, PG_PASSWORD,
};

/// A token long and random enough for the admin API.
const TOKEN: &str = "hostile-test-token-7d2e9a4c1b8f6e3a";

fn everything(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// The one archive of `target` whose name ends with `suffix`.
fn archive_ending(sb: &Sandbox, target: &str, suffix: &str) -> String {
    let found: Vec<String> = sb
        .files(target)
        .into_iter()
        .filter(|f| f.ends_with(suffix) && !f.starts_with('.'))
        .collect();
    assert_eq!(found.len(), 1, "{suffix}: {:?}", sb.files(target));
    found[0].clone()
}

/// Change a stored archive the way someone with write access to the storage can: new
/// bytes, and a manifest whose sha256 and sizes match them (the checksum proves integrity,
/// not origin).
fn tamper(dir: &Path, archive: &str, change: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let path = dir.join(archive);
    let bytes = change(std::fs::read(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let mpath = dir.join(format!("{archive}.manifest.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["sha256"] = hex::encode(Sha256::digest(&bytes)).into();
    m["stored_bytes"] = (bytes.len() as u64).into();
    m["raw_bytes"] = (bytes.len() as u64).into();
    std::fs::remove_file(&mpath).unwrap();
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Run the binary with a clean DBKEEP_/PG environment under `umask 000`.
fn dbkeep_umask_000(config: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_dbkeep"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("DBKEEP_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A pg_bin_dir whose pg_dump records its arguments and environment in `seen/`.
fn recording_pg_dump(sb: &Sandbox, pg: &TestPostgres) -> (PathBuf, PathBuf) {
    let seen = sb.path().join("seen");
    std::fs::create_dir_all(&seen).unwrap();
    let bin = wrapped_pg_bin(
        sb,
        pg,
        "pg_dump",
        &format!(
            "printf '%s\\n' \"$@\" >> {s}/argv\nenv >> {s}/env\nexec $REAL \"$@\"",
            s = seen.display()
        ),
    );
    (bin, seen)
}

// 1. A password anywhere in the URL: never shown, never on a command line.

#[test]
fn a_password_in_the_url_query_is_never_shown_and_reaches_pg_dump_only_by_its_environment() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g",
    );
    pg.create_db("other");
    let sb = Sandbox::new();
    let (bin, seen) = recording_pg_dump(&sb, &pg);
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/app?connect_timeout=10&password={PG_PASSWORD}&application_name=x",
        pg.port
    );
    let cfg = sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\n[storage.local]\npath = \"{}\"\n\
         [targets.app]\nkind = \"postgres\"\nurl = \"{url}\"\npg_bin_dir = \"{}\"\n",
        sb.backups().display(),
        bin.display()
    ));

    let mut shown = String::new();
    let check = dbkeep(Some(&cfg), &["config", "check"], &[]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    shown += &everything(&check);
    let backup = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(backup.code, 0, "{}", backup.stderr);
    shown += &everything(&backup);
    for args in [&["status", "--json"][..], &["list"][..]] {
        shown += &everything(&dbkeep(Some(&cfg), args, &[]));
    }
    // The restore prompt names where it restores to (and is refused without a terminal).
    let into = format!(
        "postgres://postgres@127.0.0.1:{}/other?password={PG_PASSWORD}",
        pg.port
    );
    let restore = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into],
        &[],
    );
    assert_eq!(restore.code, 0, "{}", restore.stderr);
    assert!(
        everything(&restore).contains(&format!("127.0.0.1:{}/other", pg.port)),
        "the restore names where it restores to: {}",
        everything(&restore)
    );
    assert_eq!(pg.psql("other", "SELECT count(*) FROM t"), "100");
    shown += &everything(&restore);

    let d = spawn_daemon(&cfg, &[]);
    let (status, health) = d.get("/health");
    assert_eq!(status, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let db = &health["targets"][0]["database"];
    assert_eq!(db["up"], true, "{health}");
    assert_eq!(
        db["location"],
        format!("127.0.0.1:{}/app", pg.port),
        "{health}"
    );
    shown += &health.to_string();
    shown += &d.get("/metrics").1;
    shown += &d.stderr();
    drop(d);
    shown += &std::fs::read_to_string(sb.backups().join(".dbkeep-state.json")).unwrap();

    assert!(
        !shown.contains(PG_PASSWORD),
        "the password is shown: {shown}"
    );
    assert!(!health.to_string().contains("application_name"), "{health}");
    let argv = std::fs::read_to_string(seen.join("argv")).unwrap();
    assert!(
        !argv.contains(PG_PASSWORD),
        "the password is on pg_dump's command line: {argv}"
    );
    let env = std::fs::read_to_string(seen.join("env")).unwrap();
    assert!(
        env.lines()
            .any(|l| l == format!("PGPASSWORD={PG_PASSWORD}")),
        "pg_dump got its password through the environment: {env}"
    );
}

#[test]
fn urls_that_give_a_password_twice_or_a_key_passphrase_are_refused_without_echoing_them() {
    let sb = Sandbox::new();
    for (url, key) in [
        (
            "postgres://app:hunter2-secret@db.example/app?password=hunter2-secret",
            "twice",
        ),
        (
            "postgres://app@db.example/app?sslpassword=hunter2-secret",
            "sslpassword",
        ),
        (
            "postgres://app@db.example/app?PassWord=hunter2-secret&password=hunter2-secret",
            "twice",
        ),
    ] {
        let cfg = sb.write_config(&format!(
            "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"{url}\"\n",
            sb.backups().display()
        ));
        let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
        assert_eq!(run.code, 2, "{url}: {}", run.stderr);
        assert!(run.stderr.contains("targets.app.url"), "{}", run.stderr);
        assert!(run.stderr.contains(key), "{url}: {}", run.stderr);
        assert!(!everything(&run).contains("hunter2"), "{}", run.stderr);
    }
}

// 2. Stored bytes never run psql meta-commands.

const RESTORE_GLOBALS: &[&str] = &[
    "restore",
    "app",
    "latest",
    "--globals",
    "--yes",
    "--no-safety-backup",
];

#[test]
fn a_planted_globals_archive_cannot_run_a_shell_command() {
    let pg = TestPostgres::start();
    pg.create_db("g");
    pg.psql("postgres", "CREATE ROLE reporting_ro NOLOGIN");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "g", "globals = true\ncompression = \"none\"");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let globals = archive_ending(&sb, "app", ".globals.sql");
    // The untouched archive restores (the role comes back).
    pg.psql("postgres", "DROP ROLE reporting_ro");
    let run = dbkeep(Some(&cfg), RESTORE_GLOBALS, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'reporting_ro'"
        ),
        "1"
    );
    let pwned = sb.path().join("pwned");
    let original = std::fs::read(sb.backups().join("app").join(&globals)).unwrap();
    let p = pwned.display();
    // What a red team slipped past a lexer in front of psql, and statements no globals
    // archive holds.
    for (payload, says) in [
        (format!("\\! id > {p}\n"), "psql command"),
        (
            format!("SELECT name'\\';\n\\! id > {p}\nSELECT 1; -- '\n"),
            "refused",
        ),
        (
            format!(
                "SET standard_conforming_strings = off;\nSELECT '\\'''';\n\\! id > {p}\n-- '\n"
            ),
            "refused",
        ),
        (
            format!("COPY nonexistent FROM stdin;\n\\! id > {p}\n\\.\n"),
            "refused",
        ),
        (
            format!("COPY (SELECT 1) TO PROGRAM 'id > {p}';\n"),
            "refused",
        ),
        ("DO $$ BEGIN PERFORM 1; END $$;\n".to_string(), "refused"),
    ] {
        let planted = original.clone();
        tamper(&sb.backups().join("app"), &globals, move |_| {
            let mut sql = planted;
            sql.extend_from_slice(format!("CREATE ROLE planted_role;\n{payload}").as_bytes());
            sql
        });
        let run = dbkeep(Some(&cfg), RESTORE_GLOBALS, &[]);
        assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(says), "{says}: {}", run.stderr);
        assert!(!pwned.exists(), "the planted command ran");
        // Nothing of the planted archive ran: the statement before it neither.
        assert_eq!(
            pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_roles WHERE rolname = 'planted_role'"
            ),
            "0"
        );
    }
}

#[test]
fn a_meta_command_planted_in_a_database_archive_is_refused_and_nothing_commits() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    let filler = "x".repeat(160);
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1); COMMENT ON TABLE t IS '{filler}'"
        ),
    );
    pg.create_db("fresh");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "compression = \"none\"");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let dump = archive_ending(&sb, "app", ".dump");
    let pwned = sb.path().join("pwned");
    // The comment's text sits raw in the archive's table of contents: replace it, at the
    // same length, so that pg_restore prints a meta-command line.
    let payload = format!("';\n\\! id > {}\n-- ", pwned.display());
    assert!(payload.len() < filler.len());
    let payload = format!("{payload}{}", "x".repeat(filler.len() - payload.len()));
    tamper(&sb.backups().join("app"), &dump, |mut bytes| {
        let at = bytes
            .windows(filler.len())
            .position(|w| w == filler.as_bytes())
            .expect("the comment in the archive");
        bytes[at..at + filler.len()].copy_from_slice(payload.as_bytes());
        bytes
    });
    // A schema restore goes pg_restore -> dbkeep -> psql (one transaction dbkeep
    // commits): the line is refused before psql sees it, and the schema is unchanged.
    let run = dbkeep(
        Some(&cfg),
        &[
            "restore",
            "app",
            "latest:public",
            "--yes",
            "--no-safety-backup",
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("meta-command"), "{}", run.stderr);
    assert!(!pwned.exists(), "the planted command ran");
    assert_eq!(
        pg.psql("app", "SELECT obj_description('t'::regclass)"),
        filler
    );
    // A whole restore sends the SQL to the server by pg_restore itself, where a
    // backslash line is only a syntax error; nothing is committed either.
    let into = format!("postgres://postgres@127.0.0.1:{}/fresh", pg.port);
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into, "--yes"],
        &[],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(!pwned.exists(), "the planted command ran");
    assert_eq!(
        pg.psql("fresh", "SELECT count(*) FROM pg_class WHERE relname = 't'"),
        "0",
        "part of the planted archive was committed"
    );
}

#[test]
fn backslashes_in_data_names_and_function_bodies_restore_unharmed() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        r#"CREATE TABLE "\! t" (id int, v text);
           INSERT INTO "\! t" VALUES (1, E'\\! id\n\\copy x'), (2, '\q'), (3, E'line\n\\! rm -rf /');
           CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$ SELECT '\! not a command' $body$;
           COMMENT ON TABLE "\! t" IS E'a\n\\! comment';"#,
    );
    pg.create_db("copy");
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let into = format!("postgres://postgres@127.0.0.1:{}/copy", pg.port);
    dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into, "--yes"],
        &[],
    )
    .ok();
    assert_eq!(pg.table_checksums("app"), pg.table_checksums("copy"));
    assert_eq!(pg.psql("copy", "SELECT f()"), "\\! not a command");
}

// 3. Files are never written through a planted link.

#[test]
fn links_planted_at_the_names_dbkeep_writes_redirect_nothing() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "");
    std::fs::create_dir_all(sb.backups()).unwrap();
    let victim = sb.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    // The state file's temp name used to be `.dbkeep-state.tmp-<pid>`: plant one for the
    // pids the next processes will get.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last + 1..=last + 400 {
        std::os::unix::fs::symlink(
            &victim,
            sb.backups().join(format!(".dbkeep-state.tmp-{pid}")),
        )
        .unwrap();
    }
    // The state file itself as a link to another file.
    let victim2 = sb.path().join("victim2.txt");
    std::fs::write(&victim2, "also precious").unwrap();
    std::os::unix::fs::symlink(&victim2, sb.backups().join(".dbkeep-state.json")).unwrap();

    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(&victim2).unwrap(), "also precious");
    let state = std::fs::symlink_metadata(sb.backups().join(".dbkeep-state.json")).unwrap();
    assert!(state.is_file(), "the state file is a file of its own again");
    assert!(
        std::fs::read_to_string(sb.backups().join(".dbkeep-state.json"))
            .unwrap()
            .contains("last_run")
    );
}

#[test]
fn a_target_folder_planted_as_a_link_is_refused() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "");
    let elsewhere = sb.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(sb.backups()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, sb.backups().join("app")).unwrap();
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "written through the link"
    );
}

// 4. Modes do not follow the umask; a restored SQLite file keeps its mode and owner.

#[test]
fn under_umask_000_everything_dbkeep_creates_is_private() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(&sb, "app", "");
    let run = dbkeep_umask_000(&cfg, &["backup"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(mode(&sb.backups()), 0o750, "storage root");
    assert_eq!(mode(&sb.backups().join("app")), 0o750, "target folder");
    assert_eq!(mode(&sb.backups().join(".dbkeep-state.json")), 0o640);
    let files = sb.files("app");
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        assert_eq!(mode(&sb.backups().join("app").join(&f)), 0o640, "{f}");
    }

    // The live database is private and owned by another user; the restored one stays so.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&db, Some(65534), Some(65534)).unwrap();
    let run = dbkeep_umask_000(&cfg, &["restore", "app", "latest", "--yes"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let meta = std::fs::metadata(&db).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    // And the safety copy of the replaced database is private too.
    for f in sb.files("app") {
        assert_eq!(mode(&sb.backups().join("app").join(&f)), 0o640, "{f}");
    }
}

// 5. The admin surface.

fn admin_config(sb: &Sandbox, token: &str) -> PathBuf {
    let (_, cfg) = sqlite_target(sb, "app", "");
    let file = sb.path().join("admin.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let toml = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[daemon]\n",
        &format!("[daemon]\nadmin_token_file = \"{}\"\n", file.display()),
        1,
    );
    sb.write_config(&toml)
}

#[test]
fn with_the_admin_api_off_no_admin_path_answers() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "");
    let d = spawn_daemon(&cfg, &[]);
    for path in [
        "/admin",
        "/admin/",
        "/admin/app.js",
        "/admin/app.css",
        "/api/v1/openapi.json",
        "/api/v1/admin/database/backups",
    ] {
        for method in ["GET", "POST", "PUT", "DELETE", "HEAD"] {
            let r = http_request(&d.addr, method, path, &[], None);
            assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
            assert!(!r.text().contains("<html"), "{path}");
            assert!(!r.text().contains("openapi\":"), "{path}");
        }
    }
}

#[test]
fn the_admin_page_allows_no_inline_code_and_sends_the_security_headers() {
    let sb = Sandbox::new();
    let cfg = admin_config(&sb, TOKEN);
    let d = spawn_daemon(&cfg, &[]);
    let page = http_request(&d.addr, "GET", "/admin", &[], None);
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text();
    for tag in html.match_indices("<script").map(|(i, _)| &html[i..]) {
        let head = &tag[..tag.find('>').unwrap()];
        assert!(head.contains("src="), "inline script: {head}");
    }
    assert!(!html.contains("<style"), "inline style");
    assert!(!html.contains(" onclick="), "inline handler");
    let api = http_request(
        &d.addr,
        "GET",
        "/api/v1/admin/database/backups",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        None,
    );
    assert_eq!(api.status, 200, "{}", api.text());
    let denied = http_request(&d.addr, "GET", "/api/v1/admin/database/backups", &[], None);
    assert_eq!(denied.status, 401);
    for r in [&page, &api, &denied] {
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
    }
    for asset in ["/admin/app.js", "/admin/app.css"] {
        let r = http_request(&d.addr, "GET", asset, &[], None);
        assert_eq!(r.status, 200, "{asset}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
}

#[test]
fn headers_trickled_one_line_a_second_are_cut_off() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "");
    let d = spawn_daemon(&cfg, &[]);
    let mut s = std::net::TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut closed_after = None;
    // At most 40 lines, one a second: well past the 10 s limit, bounded either way.
    for i in 0..40 {
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(_) => {
                // 0 bytes (closed) or an error response: the server gave up on us.
                closed_after = Some(t0.elapsed());
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed_after = Some(t0.elapsed());
                break;
            }
        }
        if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .is_err()
        {
            closed_after = Some(t0.elapsed());
            break;
        }
    }
    let after = closed_after.expect("the connection was still open after 40 s of trickled headers");
    assert!(after < Duration::from_secs(20), "{after:?}");
    // The daemon still answers others.
    assert_eq!(d.get("/health").0, 200);
}

#[test]
fn failed_logins_are_limited_per_peer_and_logged_once_a_minute() {
    let sb = Sandbox::new();
    let cfg = admin_config(&sb, TOKEN);
    let d = spawn_daemon(&cfg, &[]);
    let mut statuses = Vec::new();
    for i in 0..75 {
        let r = http_request(
            &d.addr,
            "GET",
            "/api/v1/admin/database/backups",
            &[("Authorization", &format!("Bearer wrong-{i}"))],
            None,
        );
        statuses.push(r.status);
    }
    assert!(statuses[..60].iter().all(|&s| s == 401), "{statuses:?}");
    assert!(statuses[60..].iter().all(|&s| s == 429), "{statuses:?}");
    // While blocked, even the right token waits out the minute.
    let right = http_request(
        &d.addr,
        "GET",
        "/api/v1/admin/database/backups",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        None,
    );
    assert_eq!(right.status, 429);
    assert_eq!(right.header("retry-after"), Some("60"));
    let refused_lines = d
        .stderr()
        .lines()
        .filter(|l| l.contains("admin API call refused"))
        .count();
    assert_eq!(refused_lines, 1, "{}", d.stderr());
    assert_eq!(
        d.metric("dbkeep_admin_auth_failures_total"),
        Some(76.0),
        "every refusal is counted"
    );
}

fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(msg);
    hex::encode(m.finalize().into_bytes())
}

#[test]
fn download_links_are_short_lived_and_not_signed_with_the_token() {
    let sb = Sandbox::new();
    let cfg = admin_config(&sb, TOKEN);
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let d = spawn_daemon(&cfg, &[]);
    let auth = format!("Bearer {TOKEN}");
    let list = http_request(
        &d.addr,
        "GET",
        "/api/v1/admin/database/backups",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(list.status, 200, "{}", list.text());
    let body = list.json();
    let link = body[0]["download_url"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string();
    // The link dbkeep hands out works, and lives an hour at most.
    assert_eq!(http_request(&d.addr, "GET", &link, &[], None).status, 200);
    let (path, query) = link.split_once('?').unwrap();
    let expires: i64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(expires <= now + 3600 && expires > now, "{expires}");

    let far = 1i64 << 62;
    // Signed with the token as the key (what a token holder could mint for ever).
    let with_token = hmac_hex(TOKEN.as_bytes(), format!("GET\n{path}\n{far}").as_bytes());
    // Signed with the right derived key, but valid far beyond an hour.
    let key = {
        use hmac::{Hmac, Mac};
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(TOKEN.as_bytes()).unwrap();
        m.update(b"dbkeep signed download links v1");
        m.finalize().into_bytes().to_vec()
    };
    let long = now + 30 * 86400;
    let too_long = hmac_hex(&key, format!("GET\n{path}\n{long}").as_bytes());
    for forged in [
        format!("{path}?expires={far}&sig={with_token}"),
        format!("{path}?expires={long}&sig={too_long}"),
        format!("{path}?expires={expires}&sig="),
        format!("{path}?expires={expires}"),
    ] {
        let r = http_request(&d.addr, "GET", &forged, &[], None);
        assert_eq!(r.status, 401, "{forged}: {}", r.text());
    }
}

#[test]
fn weak_and_world_readable_token_files() {
    let sb = Sandbox::new();
    let cfg = admin_config(&sb, TOKEN);
    let file = sb.path().join("admin.token");
    // Private: no warning.
    let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("other users"), "{}", run.stderr);
    // Readable by every local user: accepted, with a warning that names the file.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("other users"), "{}", run.stderr);
    assert!(run.stderr.contains("admin.token"), "{}", run.stderr);
    assert!(!run.stderr.contains(TOKEN));
}

// 6. Downloads and restores read only regular files with one link.

#[test]
fn a_hard_link_in_the_storage_folder_is_neither_served_nor_restored() {
    let sb = Sandbox::new();
    let cfg = admin_config(&sb, TOKEN);
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let dir = sb.backups().join("app");
    let archive = archive_ending(&sb, "app", ".sqlite.zst");
    // The same bytes, but the name in the storage folder is a second link to a file
    // elsewhere (which a write to the folder is enough to plant).
    let outside = sb.path().join("outside-secret");
    std::fs::rename(dir.join(&archive), &outside).unwrap();
    std::fs::hard_link(&outside, dir.join(&archive)).unwrap();

    let d = spawn_daemon(&cfg, &[]);
    let r = http_request(
        &d.addr,
        "GET",
        &format!("/api/v1/admin/database/backups/app/{archive}"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("not a plain file"), "{}", r.text());
    drop(d);

    let into = sb.path().join("restored.db");
    let run = dbkeep(
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
    );
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("hard link"), "{}", run.stderr);
    assert!(!into.exists());
}

// 7. Smaller leaks: SDK debug logs, children's environment.

#[test]
fn at_debug_level_the_s3_sdk_logs_no_credentials() {
    let s3 = TestS3::start("bkp");
    let sb = Sandbox::new();
    let (db, _) = sqlite_target(&sb, "app", "");
    let cfg = sb.write_config(&format!(
        "{}[targets.app]\nkind = \"sqlite\"\npath = \"{}\"\n",
        s3.config_section("bkp", "p", ""),
        db.display()
    ));
    let run = dbkeep(Some(&cfg), &["backup"], &[("RUST_LOG", "debug")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("DEBUG"),
        "debug logging was on: {}",
        run.stderr
    );
    assert!(!run.stderr.contains(S3_ACCESS_KEY), "{}", run.stderr);
    assert!(!run.stderr.contains(S3_SECRET_KEY));
}

#[test]
fn children_get_the_password_but_no_other_secret_from_the_environment() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    let sb = Sandbox::new();
    let (bin, seen) = recording_pg_dump(&sb, &pg);
    let cfg = sb.write_config(&format!(
        "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npg_bin_dir = \"{}\"\n",
        sb.backups().display(),
        pg.url("app"),
        bin.display()
    ));
    let run = dbkeep(
        Some(&cfg),
        &["backup"],
        &[
            ("DBKEEP_TARGETS__APP__PASSWORD", PG_PASSWORD),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-for-the-test"),
            ("GITHUB_TOKEN", "gh-secret-for-the-test"),
            ("PGSSLMODE", "disable"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let env = std::fs::read_to_string(seen.join("env")).unwrap();
    assert!(env.contains(&format!("PGPASSWORD={PG_PASSWORD}")), "{env}");
    assert!(
        env.contains("PGSSLMODE=disable"),
        "libpq settings pass: {env}"
    );
    for secret in ["DBKEEP_", "aws-secret", "gh-secret"] {
        assert!(!env.contains(secret), "{secret} reached pg_dump: {env}");
    }
}

// 8. Unsafe storage locations.

#[test]
fn storage_at_the_root_or_a_system_folder_is_refused() {
    let sb = Sandbox::new();
    let to_etc = sb.path().join("etc-link");
    std::os::unix::fs::symlink("/etc", &to_etc).unwrap();
    let via_link = to_etc.join("dbkeep");
    for (path, cwd) in [
        ("/", "/tmp"),
        ("/etc", "/tmp"),
        ("/var/../", "/tmp"),
        ("//usr", "/tmp"),
        ("/usr/local/backups", "/tmp"),
        // Relative paths are the working directory's.
        (".", "/"),
        ("etc", "/"),
        // Links are followed for the check.
        (to_etc.to_str().unwrap(), "/tmp"),
        (via_link.to_str().unwrap(), "/tmp"),
    ] {
        let cfg = sb.write_config(&format!(
            "[storage.local]\npath = \"{path}\"\n[targets.app]\nkind = \"sqlite\"\npath = \"{}/a.db\"\n",
            sb.path().display()
        ));
        let out = Command::new(env!("CARGO_BIN_EXE_dbkeep"))
            .current_dir(cwd)
            .arg("--config")
            .arg(&cfg)
            .args(["config", "check"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path} from {cwd}: {stderr}");
        assert!(stderr.contains("storage.local.path"), "{stderr}");
    }
}

#[test]
fn storage_inside_the_servers_data_directory_is_refused_before_anything_is_written() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    let sb = Sandbox::new();
    // Straight inside, and through a link from elsewhere; the state file and run lock
    // would go there too (work_dir defaults to the storage folder).
    let link = sb.path().join("data-link");
    std::os::unix::fs::symlink(pg.data(), &link).unwrap();
    for (i, storage) in [pg.data().join("bk"), link.join("bk2")]
        .into_iter()
        .enumerate()
    {
        let cfg = sb.write_config(&format!(
            "[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\n",
            storage.display(),
            pg.url("app")
        ));
        let run = dbkeep(Some(&cfg), &["backup"], &[]);
        assert_eq!(run.code, 2, "{i}: {}\n{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("data directory"), "{}", run.stderr);
        let made: Vec<_> = std::fs::read_dir(&storage)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            !storage.exists(),
            "{} was created inside PGDATA, with {made:?}; {}",
            storage.display(),
            run.stderr
        );
    }
}

// Odd names and broken manifests.

#[test]
fn odd_table_names_round_trip_through_postgres_and_sqlite() {
    let names = [
        "it's",
        "say \"hi\"",
        "new\nline",
        "../../etc/passwd",
        "ünï 名前",
        "semi;colon -- x",
    ];
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.create_db("copy");
    let mut sql = String::new();
    for (i, n) in names.iter().enumerate() {
        let q = n.replace('"', "\"\"");
        sql += &format!(
            "CREATE TABLE \"{q}\" (id int, v text); INSERT INTO \"{q}\" VALUES ({i}, $v${n}$v$);\n"
        );
    }
    pg.psql("app", &sql);
    let sb = Sandbox::new();
    let cfg = pg_config(&sb, &pg, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let into = format!("postgres://postgres@127.0.0.1:{}/copy", pg.port);
    dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--into", &into, "--yes"],
        &[],
    )
    .ok();
    for (i, n) in names.iter().enumerate() {
        let q = n.replace('"', "\"\"");
        let sql = format!("SELECT id || '/' || v FROM \"{q}\"");
        assert_eq!(pg.psql("copy", &sql), format!("{i}/{n}"), "{n:?}");
    }
    assert_eq!(
        pg.psql(
            "copy",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        names.len().to_string()
    );

    let sb2 = Sandbox::new();
    let (db, scfg) = sqlite_target(&sb2, "lite", "");
    assert!(sqlite_tables(&db, &names), "tables created");
    dbkeep(Some(&scfg), &["backup"], &[]).ok();
    let copy = sb2.path().join("copy.db");
    dbkeep(
        Some(&scfg),
        &[
            "restore",
            "lite",
            "latest",
            "--into",
            copy.to_str().unwrap(),
            "--yes",
        ],
        &[],
    )
    .ok();
    assert_eq!(sqlite_dump(&db), sqlite_dump(&copy));
}

/// Create one table per name in a SQLite file with the sqlite3 CLI (SQL on stdin).
fn sqlite_tables(db: &Path, names: &[&str]) -> bool {
    let mut sql = String::new();
    for (i, n) in names.iter().enumerate() {
        let q = n.replace('"', "\"\"");
        let v = n.replace('\'', "''");
        sql += &format!(
            "CREATE TABLE \"{q}\" (id int, v text); INSERT INTO \"{q}\" VALUES ({i}, '{v}');\n"
        );
    }
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

fn sqlite_dump(db: &Path) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(".dump")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn deep_invalid_and_lying_manifests_are_reported_broken_and_never_crash_or_delete() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let dir = sb.backups().join("app");
    let good = archive_ending(&sb, "app", ".sqlite.zst");
    let plant = |id: &str, manifest: &[u8]| {
        let archive = format!("app_{id}.sqlite.zst");
        std::fs::write(dir.join(&archive), b"junk").unwrap();
        std::fs::write(dir.join(format!("{archive}.manifest.json")), manifest).unwrap();
        archive
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut lying: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{good}.manifest.json"))).unwrap())
            .unwrap();
    lying["file"] = "../../../etc/passwd".into();
    let planted = [
        plant("20200101_000001", deep.as_bytes()),
        plant("20200101_000002", b"{\"target\": \"app\xff\xfe\"}"),
        plant("20200101_000003", &serde_json::to_vec(&lying).unwrap()),
        plant("20200101_000004", b"\0\0\0\0"),
    ];
    let list = dbkeep(Some(&cfg), &["list", "--json"], &[]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["file"], good.as_str());
    for p in &planted {
        assert!(
            list.stderr.contains(p.as_str()),
            "{p} not reported: {}",
            list.stderr
        );
    }
    // The planted ids are years old: counted as backups, cleanup would delete them. It
    // deletes none of them (someone must look at them first), nor the good one.
    let cleanup = dbkeep(Some(&cfg), &["cleanup"], &[]);
    assert!(cleanup.code == 0 || cleanup.code == 1, "{}", cleanup.stderr);
    for p in planted.iter().chain([&good]) {
        assert!(dir.join(p).exists(), "{p} deleted");
    }
}

#[test]
fn a_sqlite_database_path_that_is_a_link_is_not_restored_over() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(&sb, "app", "");
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    // The database name now leads elsewhere (a link the folder's owner put there).
    let victim = sb.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&db, sb.path().join("moved.db")).unwrap();
    std::os::unix::fs::symlink(&victim, &db).unwrap();
    let run = dbkeep(
        Some(&cfg),
        &["restore", "app", "latest", "--yes", "--no-safety-backup"],
        &[],
    );
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(mode(&victim), 0o600);
}

#[test]
fn swapping_the_restored_file_for_a_link_mid_restore_changes_no_other_file() {
    let sb = Sandbox::new();
    let (db, cfg) = sqlite_target(&sb, "app", "");
    // A database worth a few milliseconds of checking, owned by the application's user.
    let fill = Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE big AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) SELECT i, hex(randomblob(32)) AS v FROM n;")
        .status()
        .unwrap();
    assert!(fill.success());
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&db, Some(65534), Some(65534)).unwrap();
    let victim = sb.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A valid database for the check to read while the name leads to it.
    let decoy = sb.path().join("decoy.db");
    std::fs::copy(&db, &decoy).unwrap();

    for _ in 0..3 {
        // The folder's owner swaps dbkeep's temp file for a link to the victim as soon as
        // it appears (bounded: 4,000 looks, 1 ms apart).
        // First to the decoy (the check passes), a moment later to the victim (where the
        // mode and owner would go if they were set by name).
        let dir = sb.path().to_path_buf();
        let target = victim.clone();
        let decoy = decoy.clone();
        let swapper = std::thread::spawn(move || {
            for _ in 0..4000 {
                let found = std::fs::read_dir(&dir).unwrap().flatten().find(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(".dbkeep-tmp") && n.ends_with("restore.sqlite")
                });
                if let Some(e) = found {
                    let _ = std::fs::rename(e.path(), dir.join("stolen"));
                    let _ = std::os::unix::fs::symlink(&decoy, e.path());
                    std::thread::sleep(Duration::from_millis(3));
                    let next = dir.join("next-link");
                    let _ = std::os::unix::fs::symlink(&target, &next);
                    let _ = std::fs::rename(&next, e.path());
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        });
        let run = dbkeep(
            Some(&cfg),
            &["restore", "app", "latest", "--yes", "--no-safety-backup"],
            &[],
        );
        let swapped = swapper.join().unwrap();
        assert!(
            run.code == 0 || run.stderr.contains("was replaced"),
            "{}\n{}",
            run.stdout,
            run.stderr
        );
        let meta = std::fs::metadata(&victim).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "swapped: {swapped}"
        );
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "swapped: {swapped}");
        let _ = std::fs::remove_file(sb.path().join("stolen"));
    }
}
