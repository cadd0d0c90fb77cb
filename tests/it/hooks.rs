//! Hooks: real scripts before, after and on failure of a backup; a failing `before`
//! leaves no archive; a hanging hook is stopped (with its children) at its timeout; a
//! SIGTERM during a hook stops it too.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{dbkeep, process_gone as gone, spawn_dbkeep, sqlite_target, wait_for, Sandbox};

/// An executable shell script in the sandbox.
fn script(sb: &Sandbox, name: &str, body: &str) -> PathBuf {
    let p = sb.path().join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn archives(sb: &Sandbox) -> Vec<String> {
    sb.files("app")
        .into_iter()
        .filter(|f| f.ends_with(".sqlite.zst"))
        .collect()
}

/// The SQLite target `app` (database made once per sandbox) with these hook keys.
fn hooks_config(sb: &Sandbox, hooks: &str) -> PathBuf {
    let db = sb.path().join("app.db");
    if !db.exists() {
        sqlite_target(sb, "app", "");
    }
    sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\n[storage.local]\npath = \"{}\"\n\
         [targets.app]\nkind = \"sqlite\"\npath = \"{}\"\n[targets.app.hooks]\n{hooks}",
        sb.backups().display(),
        db.display()
    ))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn before_after_and_on_failure_hooks_see_the_run() {
    let sb = Sandbox::new();
    let log = sb.path().join("hooks.log");
    let before = script(
        &sb,
        "before.sh",
        &format!(
            "echo \"before $DBKEEP_TARGET $DBKEEP_HOOK $DBKEEP_KIND\" >> {l}\necho 'application paused'",
            l = log.display()
        ),
    );
    let after = script(
        &sb,
        "after.sh",
        &format!(
            "echo \"after $DBKEEP_STATUS $DBKEEP_BACKUP_ID $1\" >> {l}\ncat \"$DBKEEP_ARCHIVES\" > {a}\necho \"$DBKEEP_ARCHIVES\" > {a}.path",
            l = log.display(),
            a = sb.path().join("archives.json").display()
        ),
    );
    let failure = script(
        &sb,
        "failure.sh",
        &format!("echo \"on_failure $DBKEEP_ERROR\" >> {}", log.display()),
    );
    let cfg = hooks_config(
        &sb,
        &format!(
            "before = [\"{}\"]\nafter = [\"{}\", \"an argument\"]\non_failure = [\"{}\"]\n",
            before.display(),
            after.display(),
            failure.display()
        ),
    );
    let run = dbkeep(Some(&cfg), &["backup"], &[]).ok();
    // What a hook prints is in dbkeep's log, under its name.
    assert!(run.stderr.contains("application paused"), "{}", run.stderr);
    assert!(run.stderr.contains("app.before"), "{}", run.stderr);
    let id = archives(&sb)[0]
        .trim_start_matches("app_")
        .trim_end_matches(".sqlite.zst")
        .to_string();
    assert_eq!(
        read(&log),
        format!("before app before sqlite\nafter success {id} an argument\n")
    );
    let listed: serde_json::Value =
        serde_json::from_str(&read(&sb.path().join("archives.json"))).unwrap();
    assert_eq!(listed[0]["file"], archives(&sb)[0].as_str(), "{listed}");
    // The archive list was a temporary file.
    let path = read(&sb.path().join("archives.json.path"));
    assert!(!Path::new(path.trim()).exists(), "{path}");

    // A run that fails: on_failure and after both run, with the error.
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_file(sb.path().join("app.db")).unwrap();
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines = read(&log);
    assert!(
        lines.starts_with("before app before sqlite\non_failure "),
        "{lines}"
    );
    assert!(
        lines.contains("app.db"),
        "the error names the file: {lines}"
    );
    assert!(lines.ends_with("after failure  an argument\n"), "{lines}");
}

#[test]
fn a_failing_before_hook_stops_the_run_unless_told_to_continue() {
    let sb = Sandbox::new();
    let fails = script(
        &sb,
        "fails.sh",
        "echo 'cannot pause the application' >&2\nexit 3",
    );
    let cfg = hooks_config(&sb, &format!("before = [\"{}\"]\n", fails.display()));
    let run = dbkeep(Some(&cfg), &["backup"], &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("before hook of app")
            && run.stderr.contains("exit code 3")
            && run.stderr.contains("cannot pause the application"),
        "{}",
        run.stderr
    );
    assert!(archives(&sb).is_empty(), "{:?}", sb.files("app"));
    let status = dbkeep(Some(&cfg), &["status", "--json"], &[]);
    let health: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(health[0]["last_run"]["status"], "failure", "{health}");

    let cfg = hooks_config(
        &sb,
        &format!(
            "before = [\"{}\"]\nbefore_failure = \"continue\"\n",
            fails.display()
        ),
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    assert_eq!(archives(&sb).len(), 1);
}

#[test]
fn a_hanging_hook_is_stopped_with_its_children_at_its_timeout() {
    let sb = Sandbox::new();
    let pids = sb.path().join("pids");
    let hangs = script(
        &sb,
        "hangs.sh",
        &format!("sleep 300 &\necho \"$$ $!\" > {}\nwait", pids.display()),
    );
    let cfg = hooks_config(
        &sb,
        &format!("before = [\"{}\"]\ntimeout = \"2s\"\n", hangs.display()),
    );
    let t0 = Instant::now();
    let run = spawn_dbkeep(&cfg, &["backup"]).finish(Duration::from_secs(60));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("did not finish within 2s"),
        "{}",
        run.stderr
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let both = read(&pids);
    for pid in both.split_whitespace() {
        wait_for(
            Duration::from_secs(10),
            "the hook and its child gone",
            || gone(pid),
        );
    }
    assert!(archives(&sb).is_empty());
}

#[test]
fn sigterm_during_a_hook_stops_it_and_the_run() {
    let sb = Sandbox::new();
    let pids = sb.path().join("pids");
    let slow = script(
        &sb,
        "slow.sh",
        &format!("sleep 300 &\necho \"$$ $!\" > {}\nwait", pids.display()),
    );
    let cfg = hooks_config(&sb, &format!("before = [\"{}\"]\n", slow.display()));
    let child = spawn_dbkeep(&cfg, &["backup"]);
    wait_for(Duration::from_secs(30), "the hook running", || {
        read(&pids).split_whitespace().count() == 2
    });
    child.signal(libc::SIGTERM);
    let run = child.finish(Duration::from_secs(30));
    assert_ne!(run.code, 0, "{}", run.stderr);
    for pid in read(&pids).split_whitespace() {
        wait_for(
            Duration::from_secs(10),
            "the hook and its child gone",
            || gone(pid),
        );
    }
    assert!(archives(&sb).is_empty(), "{:?}", sb.files("app"));
}

#[test]
fn hook_mistakes_are_config_errors_naming_the_key() {
    let sb = Sandbox::new();
    for (hooks, key) in [
        ("before = []\n", "targets.app.hooks.before"),
        (
            "after = [\"/nonexistent/pause\"]\n",
            "targets.app.hooks.after",
        ),
        (
            "before_failure = \"maybe\"\n",
            "targets.app.hooks.before_failure",
        ),
        ("timeout = \"soon\"\n", "targets.app.hooks.timeout"),
        ("timeout = \"0s\"\n", "targets.app.hooks.timeout"),
        ("befor = [\"/bin/true\"]\n", "befor"),
    ] {
        let cfg = hooks_config(&sb, hooks);
        let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
        assert_eq!(run.code, 2, "{hooks}: {}", run.stderr);
        assert!(run.stderr.contains(key), "{hooks}: {}", run.stderr);
    }
}

#[test]
fn a_hook_that_is_not_executable_is_refused_with_the_fix() {
    let sb = Sandbox::new();
    let plain = sb.path().join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\ntrue\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = hooks_config(&sb, &format!("before = [\"{}\"]\n", plain.display()));
    let run = dbkeep(Some(&cfg), &["config", "check"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("targets.app.hooks.before"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("not executable"), "{}", run.stderr);
    assert!(run.stderr.contains("chmod +x"), "{}", run.stderr);
}

/// A hook that prints bytes that are not UTF-8, one endless line and a huge error
/// environment does not fail the run or flood the log; a child it leaves behind is ended.
#[test]
fn hostile_hook_output_and_leftover_children_do_not_hurt_the_run() {
    let sb = Sandbox::new();
    let pids = sb.path().join("pids");
    let noisy = script(
        &sb,
        "noisy.sh",
        &format!(
            "printf 'caf\\351 paused\\n'\n\
             head -c 1000000 /dev/zero | tr '\\0' x\necho\n\
             printf 'on stderr \\377\\n' >&2\n\
             sleep 300 &\necho $! > {}\nexit 0",
            pids.display()
        ),
    );
    let cfg = hooks_config(&sb, &format!("before = [\"{}\"]\n", noisy.display()));
    let run = spawn_dbkeep(&cfg, &["backup"]).finish(Duration::from_secs(60));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(archives(&sb).len(), 1);
    assert!(run.stderr.contains("caf\u{fffd} paused"), "{}", run.stderr);
    assert!(run.stderr.contains("more bytes)"), "the long line is cut");
    assert!(run.stderr.contains("on stderr \u{fffd}"), "{}", run.stderr);
    assert!(
        run.stderr.len() < 100_000,
        "the log holds {} bytes for a 1 MB line",
        run.stderr.len()
    );
    let left = read(&pids);
    let pid = left.trim();
    assert!(!pid.is_empty());
    wait_for(
        Duration::from_secs(10),
        "the hook's leftover child gone",
        || gone(pid),
    );
}

/// An error message bigger than the environment allows still reaches `on_failure`, cut.
#[test]
fn on_failure_gets_a_huge_error_cut_to_fit() {
    let sb = Sandbox::new();
    let seen = sb.path().join("seen");
    // One line far past any limit, then twelve long lines: more than the 16 KiB kept.
    let huge = "x".repeat(300_000);
    let long = "y".repeat(1900);
    let fails = script(
        &sb,
        "fails.sh",
        &format!("echo {huge} >&2\nfor i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo {long} >&2; done\nexit 3"),
    );
    let record = script(
        &sb,
        "record.sh",
        &format!("printf '%s' \"$DBKEEP_ERROR\" | wc -c > {}", seen.display()),
    );
    let cfg = hooks_config(
        &sb,
        &format!(
            "before = [\"{}\"]\non_failure = [\"{}\"]\n",
            fails.display(),
            record.display()
        ),
    );
    let run = spawn_dbkeep(&cfg, &["backup"]).finish(Duration::from_secs(60));
    assert_eq!(run.code, 1, "{}", run.stderr);
    let n: usize = read(&seen)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("on_failure did not run: {}", run.stderr));
    assert!(
        (16 * 1024..17 * 1024).contains(&n),
        "DBKEEP_ERROR was {n} bytes, not cut to 16 KiB"
    );
}
