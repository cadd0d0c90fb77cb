//! The admin API and page against the real daemon on a real port: authentication, path
//! traversal, backups started and downloaded over HTTP, restore confirmation, schema sync,
//! the OpenAPI document under schemathesis, and the page in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    dbkeep, http_request, pg_config, sha256_file, spawn_daemon, sqlite_target, wait_for, Daemon,
    HttpResponse, Sandbox, TestPostgres, PG_PASSWORD,
};

const TOKEN: &str = "test-admin-token-4f1c2b9a7e5d3c8b";
const API: &str = "/api/v1/admin/database";

/// Put `admin_token_file` (holding TOKEN) into the config's [daemon] section.
fn with_token(sb: &Sandbox, cfg: &Path) -> PathBuf {
    let file = sb.path().join("admin.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let toml = std::fs::read_to_string(cfg).unwrap().replacen(
        "[daemon]\n",
        &format!("[daemon]\nadmin_token_file = \"{}\"\n", file.display()),
        1,
    );
    sb.write_config(&toml)
}

fn call(d: &Daemon, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    let auth = format!("Bearer {TOKEN}");
    http_request(&d.addr, method, path, &[("Authorization", &auth)], body)
}

/// A SQLite target `app` with the token, whose schema is declared by one migration
/// (`up_sql`), and one backup taken.
fn declared_target(sb: &Sandbox, up_sql: &str) -> (PathBuf, PathBuf) {
    let dir = sb.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0001_t.up.sql"), up_sql).unwrap();
    let (db, cfg) = sqlite_target(
        sb,
        "app",
        &format!(
            "every = \"1h\"\n[targets.app.schema]\nmigrations = \"{}\"",
            dir.display()
        ),
    );
    let cfg = with_token(sb, &cfg);
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    (db, cfg)
}

/// Poll a job until it ends (bounded: 60 s).
fn wait_job(d: &Daemon, accepted: &HttpResponse) -> Value {
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let url = accepted.json()["status_url"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = call(d, "GET", &url, None).json();
        if j["state"] == "succeeded" || j["state"] == "failed" {
            return j;
        }
        assert!(Instant::now() < deadline, "job did not end: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (method, path, body) of every endpoint.
fn endpoints() -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        ("GET", format!("{API}/info"), None),
        ("GET", format!("{API}/schema/status"), None),
        (
            "POST",
            format!("{API}/schema/sync"),
            Some(r#"{"target":"app"}"#),
        ),
        ("POST", format!("{API}/backup"), Some("{}")),
        ("GET", format!("{API}/jobs/0123456789abcdef"), None),
        ("GET", format!("{API}/backups"), None),
        (
            "GET",
            format!("{API}/backups/app/app_20260101_000000.sqlite.zst"),
            None,
        ),
        (
            "POST",
            format!("{API}/restore"),
            Some(r#"{"target":"app","id":"latest","confirm":"app"}"#),
        ),
        (
            "POST",
            format!("{API}/pins"),
            Some(r#"{"target":"app","id":"20260101_000000"}"#),
        ),
        ("DELETE", format!("{API}/pins/app/20260101_000000"), None),
    ]
}

#[test]
fn every_endpoint_needs_the_token_and_the_api_is_off_without_one() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "every = \"1h\"");
    let cfg = with_token(&sb, &cfg);
    let d = spawn_daemon(&cfg, &[]);
    let denied = "dbkeep_admin_auth_failures_total";
    // What each endpoint answers with the token, in the order of `endpoints()`: the target
    // declares no schema (sync is a usage error), the job id and the file do not exist, and
    // the restore finds the backup the POST /backup before it took; the pins name a backup
    // that does not exist.
    let expected: [u16; 10] = [200, 200, 400, 202, 404, 200, 404, 202, 404, 404];
    assert_eq!(expected.len(), endpoints().len());
    for ((method, path, body), want) in endpoints().into_iter().zip(expected) {
        for auth in [
            None,
            Some("Bearer wrong-token-000000000000"),
            Some("Bearer "),
            Some(TOKEN),
            Some("Basic dGVzdDp0ZXN0"),
        ] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let r = http_request(&d.addr, method, &path, &headers, body);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text());
            assert_eq!(r.json(), serde_json::json!({"error": "unauthorized"}));
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        let r = call(&d, method, &path, body);
        assert_eq!(
            r.status,
            want,
            "{method} {path} with the token: {}",
            r.text()
        );
        if want == 202 {
            // Let the job end: the restore below needs the backup, and no restore is left
            // running when the daemon goes away.
            let job = wait_job(&d, &r);
            assert_eq!(job["state"], "succeeded", "{method} {path}: {job}");
        }
    }
    assert_eq!(d.metric(denied), Some(5.0 * endpoints().len() as f64));
    assert!(
        d.stderr()
            .contains("admin API call refused: missing or wrong token"),
        "refusals are logged"
    );
    assert!(
        d.stderr().contains("token:"),
        "calls are logged with a token id"
    );
    assert!(
        !d.stderr().contains(TOKEN),
        "the token never reaches the log"
    );
    drop(d);

    // Without a token file the whole API is off.
    let (_, plain) = sqlite_target(&sb, "other", "every = \"1h\"");
    let d = spawn_daemon(&plain, &[]);
    for (method, path, body) in endpoints() {
        let r = call(&d, method, &path.replace("/app", "/other"), body);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert!(r.json()["hint"]
            .as_str()
            .unwrap()
            .contains("admin_token_file"));
    }
}

#[test]
fn admin_settings_that_would_expose_the_api_badly_are_refused() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "");
    let toml = std::fs::read_to_string(&cfg).unwrap();
    let short = sb.path().join("short.token");
    std::fs::write(&short, "abc\n").unwrap();
    // 31 characters: one short of the minimum.
    let almost = sb.path().join("almost.token");
    std::fs::write(&almost, "0123456789abcdef0123456789abcde\n").unwrap();
    // Long enough, but not random.
    let plain = sb.path().join("plain.token");
    std::fs::write(&plain, "passwordpasswordpasswordpassword\n").unwrap();
    let listen = "listen = \"127.0.0.1:0\"\n";
    for daemon_keys in [
        "listen = \"0.0.0.0:0\"\nadmin_api = true\n".to_string(),
        format!("{listen}admin_token_file = \"{}\"\n", short.display()),
        format!("{listen}admin_token_file = \"{}\"\n", almost.display()),
        format!("{listen}admin_token_file = \"{}\"\n", plain.display()),
        format!(
            "{listen}admin_token_file = \"{}/missing\"\n",
            sb.path().display()
        ),
    ] {
        let bad = sb.write_config(&toml.replacen(listen, &daemon_keys, 1));
        for args in [&["config", "check"][..], &["run"][..]] {
            let run = dbkeep(Some(&bad), args, &[]);
            assert_eq!(run.code, 2, "{daemon_keys} {args:?}: {}", run.stderr);
            assert!(
                run.stderr.contains("daemon.admin_token_file"),
                "{}",
                run.stderr
            );
        }
    }
}

#[test]
fn traversal_payloads_never_return_a_file_outside_the_catalog() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "every = \"1h\"");
    let cfg = with_token(&sb, &cfg);
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let folder = sb.backups().join("app");
    let real = sb
        .files("app")
        .into_iter()
        .find(|f| f.ends_with(".zst"))
        .unwrap();
    let manifest = std::fs::read_to_string(folder.join(format!("{real}.manifest.json"))).unwrap();

    // Things an attacker would like to read, and links planted in the backup folder.
    let secret = "TOP-SECRET-CONTENT";
    std::fs::write(sb.path().join("secret.txt"), secret).unwrap();
    std::fs::write(sb.backups().join("secret.txt"), secret).unwrap();
    std::fs::write(folder.join(".hidden"), secret).unwrap();
    let planted = "app_20990101_000000.sqlite.zst";
    std::os::unix::fs::symlink(sb.path().join("secret.txt"), folder.join(planted)).unwrap();
    std::fs::write(
        folder.join(format!("{planted}.manifest.json")),
        manifest.replace(&real, planted),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", folder.join("passwd")).unwrap();

    let d = spawn_daemon(&cfg, &[]);
    let base = format!("{API}/backups");
    let payloads = [
        format!("{base}/app/..%2f..%2fsecret.txt"),
        format!("{base}/app/..%2F..%2F..%2F..%2Fetc%2Fpasswd"),
        format!("{base}/app/%2e%2e%2fsecret.txt"),
        format!("{base}/app/%2e%2e/secret.txt"),
        format!("{base}/app/..%252f..%252fsecret.txt"),
        format!("{base}/app/%252e%252e%252fsecret.txt"),
        format!("{base}/app/%2fetc%2fpasswd"),
        format!("{base}/app//etc/passwd"),
        format!("{base}/../../../../etc/passwd"),
        format!("{base}/app/../../secret.txt"),
        format!("{base}/%2e%2e/secret.txt"),
        format!("{base}/..%2f..%2f/secret.txt"),
        format!("{base}/app/secret.txt"),
        format!("{base}/app/.hidden"),
        format!("{base}/app/passwd"),
        format!("{base}/app/{planted}"),
        format!("{base}/app/{planted}.manifest.json"),
        format!("{base}/app/{real}%00.txt"),
        format!("{base}/app/{real}%2f..%2f..%2fsecret.txt"),
        format!("{base}/app/..%5c..%5csecret.txt"),
        format!("{base}/app/%c0%ae%c0%ae%c0%afsecret.txt"),
        format!("{base}/app/....//....//secret.txt"),
        format!("{base}/%2fetc/passwd"),
    ];
    assert!(payloads.len() >= 15);
    for p in &payloads {
        let r = call(&d, "GET", p, None);
        let body = r.text();
        // The token is valid, so never 401. Only the overlong UTF-8 encoding is refused
        // before the handler (the path extractor rejects invalid UTF-8 with 400); everything
        // else is not a file of the catalog, or matches no route: 404.
        let want = if p.contains("%c0%ae") { 400 } else { 404 };
        assert_eq!(r.status, want, "{p} answered {}: {body}", r.status);
        assert!(
            !body.contains(secret) && !body.contains("root:"),
            "{p} leaked: {body}"
        );
    }
    // A forged link without the header is refused.
    let forged = format!("{base}/app/{real}?expires=99999999999&sig=00");
    assert_eq!(http_request(&d.addr, "GET", &forged, &[], None).status, 401);
    // The catalog's own file still downloads (the guard is not just "refuse everything").
    let ok = call(&d, "GET", &format!("{base}/app/{real}"), None);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, std::fs::read(folder.join(&real)).unwrap());
    // `GET /backups` does not list the planted link.
    let list = call(&d, "GET", &base, None).json();
    assert!(!list.to_string().contains(planted), "{list}");
}

#[test]
fn a_backup_started_over_the_api_is_listed_and_downloads_byte_identical() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "every = \"1h\"");
    let cfg = with_token(&sb, &cfg);
    let d = spawn_daemon(&cfg, &[]);
    let bad = call(
        &d,
        "POST",
        &format!("{API}/backup"),
        Some(r#"{"target":"nope"}"#),
    );
    assert_eq!(bad.status, 404);
    assert!(bad.json()["hint"].as_str().unwrap().contains("app"));
    let garbage = call(&d, "POST", &format!("{API}/backup"), Some("{not json"));
    assert_eq!(garbage.status, 400);
    assert!(garbage.json()["error"].as_str().is_some());

    let job = wait_job(
        &d,
        &call(
            &d,
            "POST",
            &format!("{API}/backup"),
            Some(r#"{"target":"app"}"#),
        ),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        (job["done"].as_u64(), job["total"].as_u64()),
        (Some(1), Some(1))
    );
    let id = job["steps"][0]["backup_id"].as_str().unwrap().to_string();

    let list = call(&d, "GET", &format!("{API}/backups"), None).json();
    let b = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {list}"))
        .clone();
    let file = b["file"].as_str().unwrap();
    let on_disk = sb.backups().join("app").join(file);
    assert_eq!(
        b["bytes"].as_u64(),
        Some(std::fs::metadata(&on_disk).unwrap().len())
    );
    assert_eq!(b["sha256"].as_str().unwrap(), sha256_file(&on_disk));

    // With the header, by name.
    let r = call(&d, "GET", &format!("{API}/backups/app/{file}"), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, std::fs::read(&on_disk).unwrap(), "byte-identical");
    assert_eq!(r.header("content-type"), Some("application/zstd"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    // By the signed link, without the header; a tampered link is refused.
    let link = b["download_url"].as_str().unwrap();
    let r = http_request(&d.addr, "GET", link, &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, std::fs::read(&on_disk).unwrap());
    let tampered = link.replace(&format!("/{file}?"), &format!("/{file}.manifest.json?"));
    assert_eq!(
        http_request(&d.addr, "GET", &tampered, &[], None).status,
        401
    );
    let m = http_request(
        &d.addr,
        "GET",
        b["manifest_url"].as_str().unwrap(),
        &[],
        None,
    );
    assert_eq!(m.header("content-type"), Some("application/json"));
    assert_eq!(m.json()["sha256"], b["sha256"]);
    assert!(
        d.stderr().contains("who=\"signed link from 127.0.0.1"),
        "{}",
        d.stderr()
    );
}

#[test]
fn restore_over_the_api_needs_the_typed_target_name() {
    let sb = Sandbox::new();
    let (db, cfg) = declared_target(
        &sb,
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT);\nCREATE TABLE notes (id INTEGER PRIMARY KEY);",
    );
    let sqlite = |sql: &str| {
        let out = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sqlite("INSERT INTO t (v) VALUES ('after the backup');");
    let d = spawn_daemon(&cfg, &[]);

    for body in [
        r#"{"target":"app","id":"latest"}"#,
        r#"{"target":"app","id":"latest","confirm":"ap"}"#,
        r#"{"target":"app","id":"latest","confirm":"APP"}"#,
    ] {
        let r = call(&d, "POST", &format!("{API}/restore"), Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.json();
        assert!(
            e["error"].as_str().unwrap().contains("not confirmed"),
            "{e}"
        );
        assert!(e["hint"].as_str().unwrap().contains("confirm"), "{e}");
    }
    assert_eq!(
        sqlite("SELECT count(*) FROM t"),
        "3",
        "nothing restored yet"
    );
    let r = call(
        &d,
        "POST",
        &format!("{API}/restore"),
        Some(r#"{"target":"app","id":"20000101_000000","confirm":"app"}"#),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // One table beside the live data needs no confirmation: nothing is replaced.
    let job = wait_job(
        &d,
        &call(
            &d,
            "POST",
            &format!("{API}/restore"),
            Some(r#"{"target":"app","id":"latest","tables":["t"],"as":"t_old"}"#),
        ),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["steps"][0]["tables"][0]["copy"], "t_old", "{job}");
    assert_eq!(job["steps"][0]["tables"][0]["rows"], 2, "{job}");
    assert_eq!(
        sqlite("SELECT count(*) FROM t"),
        "3",
        "the original is unchanged"
    );
    assert_eq!(sqlite("SELECT count(*) FROM t_old"), "2");
    let r = call(
        &d,
        "POST",
        &format!("{API}/restore"),
        Some(r#"{"target":"app","id":"latest","tables":["nope"]}"#),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    let job = wait_job(
        &d,
        &call(
            &d,
            "POST",
            &format!("{API}/restore"),
            Some(r#"{"target":"app","id":"latest","confirm":"app"}"#),
        ),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        sqlite("SELECT count(*) FROM t"),
        "2",
        "the backup's rows are back"
    );
    let list = call(&d, "GET", &format!("{API}/backups"), None).json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|b| b["reason"] == "pre-restore"),
        "a safety backup was taken: {list}"
    );

    // Schema status and sync over the API: the missing table is created after a backup.
    let st = call(&d, "GET", &format!("{API}/schema/status"), None).json();
    assert_eq!(st[0]["in_sync"], false, "{st}");
    let sync = call(
        &d,
        "POST",
        &format!("{API}/schema/sync"),
        Some(r#"{"target":"app"}"#),
    );
    assert_eq!(sync.status, 200, "{}", sync.text());
    let sync = sync.json();
    assert_eq!(sync["created_tables"], 1, "{sync}");
    assert!(sync["backup_id"].is_string());
    assert!(sqlite("SELECT name FROM sqlite_schema WHERE type = 'table'").contains("notes"));
}

#[test]
fn info_shows_the_database_and_never_the_password() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    pg.psql("app", "CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts SELECT generate_series(1, 100); ANALYZE accounts;");
    let sb = Sandbox::new();
    let cfg = with_token(&sb, &pg_config(&sb, &pg, "app", "every = \"1h\""));
    let d = spawn_daemon(&cfg, &[]);
    let r = call(&d, "GET", &format!("{API}/info"), None);
    assert_eq!(r.status, 200);
    let info = r.json();
    let t = &info[0];
    assert_eq!(t["target"], "app");
    assert_eq!(t["connected"], true, "{info}");
    assert!(t["server_version"]
        .as_str()
        .unwrap()
        .starts_with(char::is_numeric));
    assert!(t["size_bytes"].as_i64().unwrap() > 0);
    assert_eq!(t["table_count"], 1);
    assert_eq!(t["tables"][0]["name"], "accounts");
    assert_eq!(t["tables"][0]["rows"], 100);
    for path in ["/info", "/schema/status", "/backups"] {
        let body = call(&d, "GET", &format!("{API}{path}"), None).text();
        assert!(
            !body.contains(PG_PASSWORD),
            "{path} shows the password: {body}"
        );
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let sb = Sandbox::new();
    let (_, cfg) = declared_target(
        &sb,
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT);",
    );
    let d = spawn_daemon(&cfg, &[]);
    let doc = crate::common::http_get(&d.addr, "/api/v1/openapi.json");
    assert_eq!(doc.0, 200);
    let url = format!("http://{}/api/v1/openapi.json", d.addr);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let out = Command::new("timeout")
        .args(["300", "schemathesis", "run", &url, "-H", &auth])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
            "--max-examples",
            "25",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(sb.path())
        .output()
        .expect("schemathesis (installed by ./scripts/test with pip)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    assert!(
        text.contains("Tested: 10"),
        "every operation was exercised:\n{text}"
    );
    assert!(text.contains("passed"), "{text}");
}

#[test]
fn the_admin_page_backs_up_and_downloads_in_headless_chromium() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "every = \"1h\"");
    let cfg = with_token(&sb, &cfg);
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let d = spawn_daemon(&cfg, &[]);
    let page = crate::common::http_get(&d.addr, "/admin");
    assert_eq!(page.0, 200);
    assert!(
        !page.1.contains("http://") && !page.1.contains("https://"),
        "no assets from the internet"
    );

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("admin-page.png");
    let _ = std::fs::remove_file(&shot);
    let saved = sb.path().join("downloaded.bin");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/admin_page.mjs");
    let out = Command::new("timeout")
        .arg("120")
        .arg("node")
        .arg(&script)
        .arg(format!("http://{}", d.addr))
        .arg(TOKEN)
        .arg(&shot)
        .arg(&saved)
        .output()
        .expect("node (installed by ./scripts/test)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(
        seen["rowsAfter"].as_u64(),
        seen["rowsBefore"].as_u64().map(|n| n + 1),
        "{seen}"
    );
    assert!(
        seen["progress"].as_str().unwrap().contains("succeeded"),
        "{seen}"
    );
    assert_eq!(seen["tokenKeptInSession"], true);
    assert_eq!(
        seen["localStorageKeys"], 0,
        "the token is not kept beyond the session"
    );
    assert_eq!(seen["problems"], serde_json::json!([]), "{seen}");
    let file = seen["file"].as_str().unwrap();
    assert_eq!(seen["suggested"], file);
    let on_disk = sb.backups().join("app").join(file);
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&on_disk).unwrap(),
        "the page's download link gives the archive"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "screenshot saved"
    );
    wait_for(Duration::from_secs(60), "the call log", || {
        d.stderr().contains("admin API call")
    });
}

/// Pins over the API: the same as `dbkeep pin`/`unpin`, shown in GET /backups.
#[test]
fn a_backup_is_pinned_and_unpinned_over_the_api() {
    let sb = Sandbox::new();
    let (_, cfg) = sqlite_target(&sb, "app", "every = \"1h\"");
    let cfg = with_token(&sb, &cfg);
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let d = spawn_daemon(&cfg, &[]);
    let id = call(&d, "GET", &format!("{API}/backups"), None).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = format!(r#"{{"target":"app","id":"{id}","reason":"quarter close"}}"#);
    let pinned = call(&d, "POST", &format!("{API}/pins"), Some(&body));
    assert_eq!(pinned.status, 200, "{}", pinned.text());
    assert_eq!(pinned.json()["storages"][0], "local");
    let listed = call(&d, "GET", &format!("{API}/backups"), None).json();
    assert_eq!(listed[0]["pinned"], "quarter close", "{listed}");
    for (method, path, body, status) in [
        (
            "POST",
            format!("{API}/pins"),
            Some(r#"{"target":"app","id":"soon"}"#),
            400,
        ),
        (
            "POST",
            format!("{API}/pins"),
            Some(r#"{"target":"nope","id":"20260101_000000"}"#),
            404,
        ),
        (
            "POST",
            format!("{API}/pins"),
            Some(r#"{"target":"app","id":"20200101_000000"}"#),
            404,
        ),
        (
            "DELETE",
            format!("{API}/pins/app/20200101_000000"),
            None,
            404,
        ),
    ] {
        let r = call(&d, method, &path, body);
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.text());
    }
    let unpinned = call(&d, "DELETE", &format!("{API}/pins/app/{id}"), None);
    assert_eq!(unpinned.status, 200, "{}", unpinned.text());
    let listed = call(&d, "GET", &format!("{API}/backups"), None).json();
    assert!(listed[0]["pinned"].is_null(), "{listed}");
}
