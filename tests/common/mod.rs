//! Shared test helpers: a throwaway PostgreSQL cluster, an S3 server, the real dbkeep binary.
#![allow(dead_code)]

pub mod moto;
pub mod receiver;
pub mod s3;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const PG_PASSWORD: &str = "test-secret-pw";

/// A PostgreSQL cluster of our own on a free 127.0.0.1 port, stopped and removed on drop.
/// TCP connections need a password (scram); the unix socket in the temp dir trusts.
pub struct TestPostgres {
    pub dir: PathBuf,
    pub port: u16,
    pub bin: PathBuf,
    owner: Option<(u32, u32)>,
}

/// The newest installed PostgreSQL server binaries. Fails loudly when there are none.
pub fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: \
             run ./scripts/test, which installs them, or `apt-get install postgresql`"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("id");
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| {
        panic!("tests run as root need the `postgres` user to run the server: apt-get install postgresql")
    });
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .expect("id");
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

fn run_checked(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl TestPostgres {
    pub fn start() -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("dbkeep-pg-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let owner = is_root().then(postgres_ids);
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{PG_PASSWORD}\n")).unwrap();
        if let Some((uid, gid)) = owner {
            for p in [&dir, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let pg = TestPostgres {
            dir,
            port,
            bin,
            owner,
        };
        let mut initdb = pg.server_cmd("initdb");
        initdb
            .arg("-D")
            .arg(pg.data())
            .args([
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]);
        run_checked(initdb, "initdb");
        pg.pg_ctl_start();
        pg
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn server_cmd(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Start (or restart) the server.
    pub fn pg_ctl_start(&self) {
        let mut start = self.server_cmd("pg_ctl");
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                self.port,
                self.dir.display()
            ))
            .arg("start");
        run_checked(start, "pg_ctl start");
    }

    /// Stop the server (fast), keeping its data.
    pub fn pg_ctl_stop(&self) {
        let mut stop = self.server_cmd("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"]);
        run_checked(stop, "pg_ctl stop");
    }

    /// URL without password (the password goes in the config's `password`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Run SQL with psql over TCP; returns unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.env("PGPASSWORD", PG_PASSWORD)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-c", sql]);
        let out = run_checked(cmd, &format!("psql {sql}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A psql session running `sql` in the background as application `app` (a session
    /// that holds a lock while the test acts); the test kills it when done.
    pub fn session(&self, db: &str, app: &str, sql: &str) -> std::process::Child {
        Command::new(self.bin.join("psql"))
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGAPPNAME", app)
            .args(["-X", "-q", "-h", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql")
    }

    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
    }

    /// pg_restore a raw (uncompressed) custom-format archive into `db`.
    pub fn pg_restore(&self, db: &str, archive: &Path) -> Output {
        Command::new(self.bin.join("pg_restore"))
            .env("PGPASSWORD", PG_PASSWORD)
            .args(["--no-owner", "--exit-on-error", "-h", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db])
            .arg(archive)
            .output()
            .expect("pg_restore")
    }

    /// md5 over every row of every user table, per table, to compare databases.
    pub fn table_checksums(&self, db: &str) -> Vec<(String, String)> {
        let tables = self.psql(
            db,
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        );
        tables
            .lines()
            .filter(|l| !l.is_empty())
            .map(|t| {
                let sum = self.psql(
                    db,
                    &format!("SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x"),
                );
                (t.to_string(), sum)
            })
            .collect()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let mut stop = self.server_cmd("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A temp folder for one test, with helpers to write a config and run the binary.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("dbkeep-test-")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn backups(&self) -> PathBuf {
        self.path().join("backups")
    }
    pub fn write_config(&self, toml: &str) -> PathBuf {
        let p = self.path().join("dbkeep.toml");
        std::fs::write(&p, toml).unwrap();
        p
    }
    /// Files in a target's backup folder, including hidden temp files, sorted.
    pub fn files(&self, target: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.backups().join(target))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Run the real binary with a clean `DBKEEP_*`/`PG*` environment plus `env`.
pub fn dbkeep(config: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_binary(None, config, args, env)
}

/// Run the binary in `cwd` with no `--config` (so no ./dbkeep.toml is found by accident).
pub fn dbkeep_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_binary(Some(cwd), None, args, env)
}

fn run_binary(
    cwd: Option<&Path>,
    config: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbkeep"));
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("DBKEEP_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run dbkeep");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Decompress a zstd/gzip archive into `dest`.
pub fn decompress(archive: &Path, dest: &Path) {
    let input = std::fs::File::open(archive).unwrap();
    let mut out = std::fs::File::create(dest).unwrap();
    let name = archive.to_string_lossy();
    if name.ends_with(".zst") {
        zstd::stream::copy_decode(input, &mut out).unwrap();
    } else if name.ends_with(".gz") {
        std::io::copy(&mut flate2::read::MultiGzDecoder::new(input), &mut out).unwrap();
    } else {
        std::io::copy(&mut std::io::BufReader::new(input), &mut out).unwrap();
    }
}

pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(p).unwrap();
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A running `dbkeep run` on 127.0.0.1:0; killed on drop if still running.
pub struct Daemon {
    pub child: std::process::Child,
    pub addr: String,
    pub stderr_log: PathBuf,
}

/// Start `dbkeep --config CONFIG run` and wait (≤ 30 s) until it says where it listens.
pub fn spawn_daemon(config: &Path, env: &[(&str, &str)]) -> Daemon {
    let log = config.with_extension(format!("stderr.{}.log", rand_suffix()));
    start_daemon(
        Some(config),
        config.parent().unwrap_or(Path::new("/tmp")),
        log,
        env,
    )
}

/// Start `dbkeep run` with no config file, from `cwd`, configured by `env` alone.
pub fn spawn_daemon_env(cwd: &Path, env: &[(&str, &str)]) -> Daemon {
    let log = cwd.join(format!("daemon.stderr.{}.log", rand_suffix()));
    start_daemon(None, cwd, log, env)
}

fn start_daemon(
    config: Option<&Path>,
    cwd: &Path,
    stderr_log: PathBuf,
    env: &[(&str, &str)],
) -> Daemon {
    use std::io::BufRead;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbkeep"));
    cmd.current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("DBKEEP_") || k.starts_with("PG") || k == "NOTIFY_SOCKET" {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn dbkeep run");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("dbkeep listening on http://") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "daemon did not start: {}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            );
        }
    };
    Daemon {
        child,
        addr,
        stderr_log,
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

impl Daemon {
    /// GET a path; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    /// The value of a metric sample, e.g. `dbkeep_backups{storage="local",target="app"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        metric_value(&body, sample)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

/// A minimal HTTP/1.1 GET over loopback.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to daemon");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Find `sample` (name with its labels as printed) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Poll `cond` every 100 ms until it holds or `limit` passes; panics with `what`.
pub fn wait_for(limit: std::time::Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// A SQLite database `<name>.db` with one row, and a config with one sqlite target `name`
/// (plus `extra` target keys) whose daemon listens on 127.0.0.1:0.
pub fn sqlite_target(sb: &Sandbox, name: &str, extra: &str) -> (PathBuf, PathBuf) {
    let db = sb.path().join(format!("{name}.db"));
    let st = Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('a'), ('b');")
        .status()
        .expect("sqlite3 CLI (installed by ./scripts/test)");
    assert!(st.success());
    let cfg = sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\n[storage.local]\npath = \"{}\"\n[targets.{name}]\nkind = \"sqlite\"\npath = \"{}\"\n{extra}\n",
        sb.backups().display(),
        db.display()
    ));
    (db, cfg)
}

/// A pg_bin_dir whose pg_dump streams the real dump, then keeps its stdout open for
/// `secs` seconds: a backup that is still running when the test acts.
pub fn slow_pg_dump(sb: &Sandbox, pg: &TestPostgres, secs: u32) -> PathBuf {
    let bin = sb.path().join(format!("slow-bin-{secs}"));
    std::fs::create_dir_all(&bin).unwrap();
    let real = pg.bin.join("pg_dump");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version) exec {real} --version;; esac\n{{ {real} \"$@\"; sleep {secs}; }}\n",
        real = real.display()
    );
    std::fs::write(bin.join("pg_dump"), script).unwrap();
    std::fs::set_permissions(bin.join("pg_dump"), std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A config with one postgres target `app` on `db` of `pg` (password in the file), local
/// storage in the sandbox, and a daemon section for `run` (port 0, 1 s shutdown grace).
pub fn pg_config(sb: &Sandbox, pg: &TestPostgres, db: &str, extra: &str) -> PathBuf {
    sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n\n[storage.local]\npath = \"{}\"\n\n\
         [targets.app]\nkind = \"postgres\"\nurl = \"{}\"\npassword = \"{PG_PASSWORD}\"\n{extra}\n",
        sb.backups().display(),
        pg.url(db)
    ))
}

/// An HTTP response read whole (the tests' requests ask for `Connection: close`).
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Send one request with the path exactly as given (no normalization, no re-encoding).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to daemon");
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// A running one-shot `dbkeep` command (for signals and races); its stderr goes to a file.
pub struct Child {
    pub child: std::process::Child,
    pub stderr_log: PathBuf,
}

impl Child {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit, at most `limit`; None when it is still running.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Wait for exit (at most `limit`, else kill and panic) and collect what it printed.
    pub fn finish(mut self, limit: std::time::Duration) -> Run {
        let status = match self.wait_exit(limit) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                panic!("dbkeep did not exit within {limit:?}: {}", self.stderr());
            }
        };
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            use std::io::Read;
            let _ = out.read_to_string(&mut stdout);
        }
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: self.stderr(),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start `dbkeep --config CONFIG ARGS...` without waiting (clean DBKEEP_/PG environment).
pub fn spawn_dbkeep(config: &Path, args: &[&str]) -> Child {
    let log = config.with_extension(format!("cmd.{}.log", rand_suffix()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbkeep"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DBKEEP_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    Child {
        child: cmd.spawn().expect("spawn dbkeep"),
        stderr_log: log,
    }
}

/// A pg_bin_dir of the cluster's client tools where `tool` is replaced by a shell script
/// `body` (which can call the real tool as `$REAL`); the other tools are links.
pub fn wrapped_pg_bin(sb: &Sandbox, pg: &TestPostgres, tool: &str, body: &str) -> PathBuf {
    let bin = sb.path().join(format!("bin-{tool}-{}", rand_suffix()));
    std::fs::create_dir_all(&bin).unwrap();
    for t in ["pg_dump", "pg_dumpall", "pg_restore", "psql"] {
        if t != tool {
            std::os::unix::fs::symlink(pg.bin.join(t), bin.join(t)).unwrap();
        }
    }
    let script = format!(
        "#!/bin/sh\nREAL={real}\ncase \"$1\" in --version) exec $REAL --version;; esac\n{body}\n",
        real = pg.bin.join(tool).display()
    );
    std::fs::write(bin.join(tool), script).unwrap();
    std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Run `sql` on the SQLite file `db` with the sqlite3 CLI and return what it printed.
pub fn sqlite_query(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Another process holding a lock on the SQLite file `db`, taken with `begin` (`BEGIN
/// EXCLUSIVE` stops readers of a rollback-journal database, `BEGIN IMMEDIATE` writers);
/// held from return (the holder said so) until drop, and for at most 60 s.
pub struct SqliteLock(std::process::Child);

impl SqliteLock {
    pub fn take(db: &Path, begin: &str) -> SqliteLock {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys, time\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute(sys.argv[2])\n\
                 print('locked', flush=True)\n\
                 time.sleep(60)\n",
            )
            .arg(db)
            .arg(begin)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked", "{begin} on {}", db.display());
        SqliteLock(child)
    }
}

impl Drop for SqliteLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every file under `dir`, recursively (none when it does not exist).
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Whether process `pid` is gone (or a zombie waiting for its reaper).
pub fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')),
    }
}
