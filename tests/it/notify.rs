//! Notifications against real receivers on 127.0.0.1: a webhook that records what arrives
//! (body and signature checked), a healthchecks-style ping endpoint, a real SMTP server;
//! failing receivers (500, refused, silent) never delay or fail a run; `stale` and
//! `recovered` from the daemon's own timer.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::common::receiver::{Answer, Receiver};
use crate::common::{dbkeep, spawn_daemon, sqlite_target, wait_for, Sandbox};

const SECRET: &str = "webhook-signing-secret-for-tests";

fn hmac_hex(secret: &str, body: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// The SQLite target `app` plus `notify` sections (database made once per sandbox).
fn config(sb: &Sandbox, extra_target: &str, notify: &str) -> PathBuf {
    let db = sb.path().join("app.db");
    if !db.exists() {
        sqlite_target(sb, "app", "");
    }
    sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[storage.local]\npath = \"{}\"\n\
         [targets.app]\nkind = \"sqlite\"\npath = \"{}\"\n{extra_target}\n{notify}",
        sb.backups().display(),
        db.display()
    ))
}

fn secret_file(sb: &Sandbox) -> PathBuf {
    let p = sb.path().join("webhook.secret");
    std::fs::write(&p, SECRET).unwrap();
    p
}

#[test]
fn webhook_and_ping_hear_success_failure_and_recovery() {
    let hook = Receiver::start(Answer::Status(200));
    let ping = Receiver::start(Answer::Status(200));
    let sb = Sandbox::new();
    let cfg = config(
        &sb,
        "",
        &format!(
            "[notify.ops]\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"{}\"\n\
             events = [\"succeeded\", \"failed\", \"recovered\"]\n\
             [notify.hc]\nkind = \"ping\"\nurl = \"{}\"\nevents = [\"succeeded\", \"failed\"]\n",
            hook.url("/hooks/dbkeep"),
            secret_file(&sb).display(),
            ping.url("/ping/0f4c")
        ),
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    // A one-shot command waits for its deliveries before it exits.
    let got = hook.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/hooks/dbkeep")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-dbkeep-signature"),
        Some(format!("sha256={}", hmac_hex(SECRET, &r.body)).as_str()),
        "the signature covers the body"
    );
    let body = r.json();
    assert_eq!(body["event"], "succeeded");
    assert_eq!(body["target"], "app");
    let id = body["backup_id"].as_str().unwrap().to_string();
    assert!(sb.files("app").iter().any(|f| f.contains(&id)), "{id}");
    assert!(body["stored_bytes"].as_u64().unwrap() > 0, "{body}");
    assert!(body["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert_eq!(body["dbkeep_version"], env!("CARGO_PKG_VERSION"));
    let pings: Vec<String> = ping.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(pings, ["/ping/0f4c/start", "/ping/0f4c"], "{pings:?}");

    // The database goes away: failed, to both.
    let db = sb.path().join("app.db");
    std::fs::rename(&db, sb.path().join("away.db")).unwrap();
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let failed = hook.received()[1].json();
    assert_eq!(failed["event"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("app.db"),
        "{failed}"
    );
    assert!(
        failed["summary"].as_str().unwrap().contains("FAILED"),
        "{failed}"
    );
    assert_eq!(ping.received().last().unwrap().path, "/ping/0f4c/fail");
    assert!(ping.received().last().unwrap().body.contains("FAILED"));

    // Back: succeeded, and recovered once.
    std::fs::rename(sb.path().join("away.db"), &db).unwrap();
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let events: Vec<String> = hook
        .received()
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    let mut tail = events[2..].to_vec();
    tail.sort();
    assert_eq!(tail, ["recovered", "succeeded"], "{events:?}");
}

#[test]
fn a_template_shapes_the_body_for_chat_services() {
    let hook = Receiver::start(Answer::Status(200));
    let sb = Sandbox::new();
    let cfg = config(
        &sb,
        "",
        &format!(
            "[notify.chat]\nkind = \"webhook\"\nurl = \"{}\"\nevents = [\"succeeded\"]\n\
             template = '{{\"text\": \"{{summary}}\", \"target\": \"{{target}}\"}}'\n",
            hook.url("/slack")
        ),
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let body = hook.received()[0].json();
    assert_eq!(body["target"], "app");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .starts_with("dbkeep: backup of app on "),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
}

#[test]
fn failing_receivers_never_delay_or_fail_a_run() {
    let broken = Receiver::start(Answer::Status(500));
    let silent = Receiver::start(Answer::Never);
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/x")
    };
    let sb = Sandbox::new();
    let notify = format!(
        "[notify.broken]\nkind = \"webhook\"\nurl = \"{}\"\nevents = [\"succeeded\"]\n\
         [notify.refused]\nkind = \"ping\"\nurl = \"{refused}\"\n\
         [notify.silent]\nkind = \"webhook\"\nurl = \"{}\"\nevents = [\"succeeded\"]\n",
        broken.url("/x"),
        silent.url("/x")
    );
    // The daemon backs up on schedule while every delivery fails or hangs.
    let cfg = config(&sb, "every = \"1s\"", &notify);
    let d = spawn_daemon(&cfg, &[]);
    let t0 = Instant::now();
    let success = r#"dbkeep_backup_runs_total{status="success",target="app"}"#;
    wait_for(Duration::from_secs(30), "4 scheduled backups", || {
        d.metric(success).unwrap_or(0.0) >= 4.0
    });
    // Four runs a second apart: the silent receiver (10 s per try) held none of them up.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    // The failures are counted once their retries are spent (about 7 s).
    for n in ["broken", "refused"] {
        let failed = format!(
            r#"dbkeep_notifications_total{{event="succeeded",notifier="{n}",result="failure"}}"#
        );
        wait_for(Duration::from_secs(40), "failed deliveries counted", || {
            d.metric(&failed).unwrap_or(0.0) >= 1.0
        });
    }
    assert!(broken.received().len() >= 4, "retried");
    drop(d);
    // A one-shot backup still exits 0 when its notifications fail.
    let quick = config(
        &sb,
        "",
        &format!(
            "[notify.broken]\nkind = \"webhook\"\nurl = \"{}\"\nevents = [\"succeeded\"]\n",
            broken.url("/x")
        ),
    );
    let run = dbkeep(Some(&quick), &["backup"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("notification not delivered"),
        "{}",
        run.stderr
    );
    // A 4xx is final: one request, no retries.
    let gone = Receiver::start(Answer::Status(404));
    let once = config(
        &sb,
        "",
        &format!(
            "[notify.gone]\nkind = \"webhook\"\nurl = \"{}\"\nevents = [\"succeeded\"]\n",
            gone.url("/x")
        ),
    );
    dbkeep(Some(&once), &["backup"], &[]).ok();
    assert_eq!(gone.received().len(), 1);
}

#[test]
fn the_daemon_says_stale_once_and_recovered_once_the_backups_are_back() {
    let hook = Receiver::start(Answer::Status(200));
    let sb = Sandbox::new();
    let cfg = config(
        &sb,
        "every = \"2s\"\nhealth_grace = \"1s\"",
        &format!(
            "[notify.ops]\nkind = \"webhook\"\nurl = \"{}\"\nevents = [\"stale\", \"recovered\"]\n",
            hook.url("/ops")
        ),
    );
    // No database: every run fails, and the deadline passes.
    let db = sb.path().join("app.db");
    std::fs::rename(&db, sb.path().join("away.db")).unwrap();
    let d = spawn_daemon(&cfg, &[]);
    let events = || -> Vec<String> {
        hook.received()
            .iter()
            .map(|r| r.json()["event"].as_str().unwrap().to_string())
            .collect()
    };
    wait_for(Duration::from_secs(40), "a stale notification", || {
        events().contains(&"stale".to_string())
    });
    let body = hook.received()[0].json();
    assert!(body["error"].as_str().unwrap().contains("none"), "{body}");
    // Still stale ten seconds later, across a config reload: no repeat.
    std::thread::sleep(Duration::from_secs(3));
    d.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        events(),
        ["stale"],
        "stale fires once per change, reload or not"
    );
    // The database is back: the next run succeeds and the target recovers.
    std::fs::rename(sb.path().join("away.db"), &db).unwrap();
    wait_for(Duration::from_secs(40), "a recovered notification", || {
        events().contains(&"recovered".to_string())
    });
    // Failing and stale, it recovers from both at once: one message (give the stale
    // check a few rounds to have a say too).
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(events(), ["stale", "recovered"]);
    drop(d);
}

/// aiosmtpd on 127.0.0.1 (installed by ./scripts/test), requiring AUTH.
struct Smtp {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Smtp {
    fn start(sb: &Sandbox) -> Smtp {
        let dir = sb.path().join("mail");
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&dir)
            .arg(port.to_string())
            .args(["dbkeep", "smtp-test-password"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the test SMTP server did not start: run ./scripts/test, which installs aiosmtpd"
        );
        Smtp { child, port, dir }
    }

    fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[test]
fn email_reaches_a_real_smtp_server_with_authentication() {
    let sb = Sandbox::new();
    let smtp = Smtp::start(&sb);
    let pw = sb.path().join("smtp.password");
    std::fs::write(&pw, "smtp-test-password\n").unwrap();
    let cfg = config(
        &sb,
        "",
        &format!(
            "[notify.mail]\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\ntls = \"none\"\n\
             username = \"dbkeep\"\npassword_file = \"{}\"\nfrom = \"dbkeep@example.test\"\n\
             to = [\"ops@example.test\", \"dba@example.test\"]\n",
            smtp.port,
            pw.display()
        ),
    );
    let run = dbkeep(Some(&cfg), &["notify", "test", "mail"], &[]).ok();
    assert!(
        run.stdout.contains("mail: test message delivered"),
        "{}",
        run.stdout
    );
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        mails[0].contains("X-Test-Auth-User: dbkeep"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("X-Test-Rcpt: ops@example.test,dba@example.test"));
    assert!(
        mails[0].contains("Subject: [dbkeep] dbkeep-test: succeeded"),
        "{}",
        mails[0]
    );

    // A failed backup is mailed with its error.
    std::fs::rename(sb.path().join("app.db"), sb.path().join("away.db")).unwrap();
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1);
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(
        mails[1].contains("Subject: [dbkeep] app: failed"),
        "{}",
        mails[1]
    );
    assert!(mails[1].contains("app.db"), "{}", mails[1]);

    // A wrong password: the test says so, exit 1, and nothing is delivered.
    std::fs::write(&pw, "wrong").unwrap();
    let run = dbkeep(Some(&cfg), &["notify", "test", "mail"], &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("not delivered"), "{}", run.stderr);
    assert!(!run.stderr.contains("wrong"), "{}", run.stderr);
    assert_eq!(smtp.messages().len(), 2);
}

#[test]
fn notifier_mistakes_are_config_errors_naming_the_key() {
    let sb = Sandbox::new();
    for (notify, key) in [
        ("[notify.x]\nkind = \"pager\"\n", "notify.x.kind"),
        ("[notify.x]\nkind = \"webhook\"\n", "notify.x.url"),
        ("[notify.x]\nkind = \"webhook\"\nurl = \"ftp://h/x\"\n", "notify.x.url"),
        ("[notify.x]\nkind = \"webhook\"\nurl = \"http://127.0.0.1/x\"\nevents = [\"exploded\"]\n", "notify.x.events"),
        ("[notify.x]\nkind = \"webhook\"\nurl = \"http://127.0.0.1/x\"\ntargets = [\"nope\"]\n", "notify.x.targets"),
        ("[notify.x]\nkind = \"ping\"\nurl = \"http://127.0.0.1/x\"\ntemplate = \"{}\"\n", "notify.x.template"),
        ("[notify.x]\nkind = \"email\"\nsmtp_host = \"mail.example.test\"\nfrom = \"a@b\"\n", "notify.x.to"),
    ] {
        let cfg = config(&sb, "", notify);
        let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
        assert_eq!(run.code, 2, "{notify}: {}", run.stderr);
        assert!(run.stderr.contains(key), "{notify}: {}", run.stderr);
    }
    // A password in clear text to another host is refused; to a local relay it is allowed.
    let pw = sb.path().join("pw");
    std::fs::write(&pw, "x").unwrap();
    let mail = |host: &str| {
        format!(
            "[notify.x]\nkind = \"email\"\nsmtp_host = \"{host}\"\ntls = \"none\"\nusername = \"u\"\n\
             password_file = \"{}\"\nfrom = \"a@b.test\"\nto = [\"c@d.test\"]\n",
            pw.display()
        )
    };
    let run = dbkeep(
        Some(&config(&sb, "", &mail("mail.example.test"))),
        &["config", "check"],
        &[],
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("clear text"), "{}", run.stderr);
    dbkeep(
        Some(&config(&sb, "", &mail("127.0.0.1"))),
        &["config", "check"],
        &[],
    )
    .ok();
}

/// A receiver that redirects would get the signed body resent wherever it points: the
/// redirect is not followed, the test says why, and nothing reaches the other address.
#[test]
fn a_redirecting_webhook_is_not_followed() {
    let elsewhere = Receiver::start(Answer::Status(200));
    let port: u16 = elsewhere.addr.rsplit(':').next().unwrap().parse().unwrap();
    let redirecting = Receiver::start(Answer::RedirectTo(port));
    let sb = Sandbox::new();
    let cfg = config(
        &sb,
        "",
        &format!(
            "[notify.hook]\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"{}\"\n",
            redirecting.url("/hook?token=abc"),
            secret_file(&sb).display()
        ),
    );
    let run = dbkeep(Some(&cfg), &["notify", "test", "hook"], &[]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("follows no redirect"), "{}", run.stderr);
    assert!(!run.stderr.contains("token=abc"), "{}", run.stderr);
    assert_eq!(
        redirecting.received().len(),
        1,
        "a redirect is final: no retries"
    );
    assert!(
        elsewhere.received().is_empty(),
        "{:?}",
        elsewhere.received().len()
    );
}
