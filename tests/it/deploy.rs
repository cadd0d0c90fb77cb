//! deploy/: each artifact passes the validator of its ecosystem, a broken copy of each fails
//! it, and every metric the dashboard and the alerts use is one dbkeep serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::s3::TestS3;
use crate::common::{sqlite_target, wait_for, Sandbox};

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

/// A validator that must be installed (./scripts/test installs it): fail loudly otherwise.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run ./scripts/test, which installs the deploy validators")
    })
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run validator");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Copy `deploy/` into a temp dir so broken copies can be made beside the real files.
fn copy_of_deploy(sb: &Sandbox) -> PathBuf {
    let dest = sb.path().join("deploy");
    let st = Command::new("cp")
        .arg("-r")
        .arg(deploy(""))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    dest
}

fn break_file(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn dockerfile_is_clean_under_hadolint() {
    let hadolint = tool("hadolint");
    let (ok, out) = run(Command::new(&hadolint).arg(deploy("Dockerfile")));
    assert!(ok, "hadolint:\n{out}");
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    for needle in [
        "USER 10001",
        "HEALTHCHECK",
        "CMD [\"dbkeep\", \"healthcheck\"]",
        "ENTRYPOINT [\"dbkeep\", \"run\"]",
        "VOLUME",
        "postgresql-client-13",
        "postgresql-client-17",
        "AS build",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle}");
    }
    let sb = Sandbox::new();
    let d = copy_of_deploy(&sb);
    break_file(&d.join("Dockerfile"), "WORKDIR /src", "RUN cd /src");
    let (ok, out) = run(Command::new(&hadolint).arg(d.join("Dockerfile")));
    assert!(
        !ok && out.contains("DL3003"),
        "a broken Dockerfile must fail hadolint:\n{out}"
    );
}

#[test]
fn compose_file_is_valid() {
    let compose = tool("docker-compose");
    let (ok, out) = run(Command::new(&compose)
        .arg("-f")
        .arg(deploy("compose.yaml"))
        .args(["config", "-q"]));
    assert!(ok, "docker-compose config:\n{out}");
    let sb = Sandbox::new();
    let d = copy_of_deploy(&sb);
    break_file(
        &d.join("compose.yaml"),
        "    depends_on:\n      postgres:",
        "    depends_on: 5\n      postgres:",
    );
    let (ok, out) = run(Command::new(&compose)
        .arg("-f")
        .arg(d.join("compose.yaml"))
        .args(["config", "-q"]));
    assert!(!ok, "a broken compose file must fail:\n{out}");
}

#[test]
fn kubernetes_manifests_are_valid() {
    let validate = tool("kubernetes-validate");
    let files = ["secret.yaml", "statefulset.yaml", "service.yaml"];
    let mut cmd = Command::new(&validate);
    cmd.args(["--strict"]);
    for f in files.iter().chain(["replicas.yaml"].iter()) {
        cmd.arg(deploy(&format!("kubernetes/{f}")));
    }
    let (ok, out) = run(&mut cmd);
    assert!(ok, "kubernetes-validate:\n{out}");
    let kustomization = std::fs::read_to_string(deploy("kubernetes/kustomization.yaml")).unwrap();
    for f in files.iter().chain(["servicemonitor.yaml"].iter()) {
        assert!(kustomization.contains(f), "kustomization.yaml lacks {f}");
        assert!(deploy(&format!("kubernetes/{f}")).is_file());
    }
    let sb = Sandbox::new();
    let d = copy_of_deploy(&sb);
    break_file(
        &d.join("kubernetes/statefulset.yaml"),
        "containerPort: 9187",
        "containerPort: \"metrics\"",
    );
    let (ok, out) = run(Command::new(&validate)
        .arg("--strict")
        .arg(d.join("kubernetes/statefulset.yaml")));
    assert!(!ok, "a broken manifest must fail:\n{out}");
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tool("promtool");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(deploy("prometheus/alerts.yml")));
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(deploy("prometheus/alerts_test.yml")));
    assert!(ok, "promtool test rules:\n{out}");
    // prometheus.yml names the rules at their path inside the container; point it at ours.
    let cfg_dir = Sandbox::new();
    let prom = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
    assert!(prom.contains("/etc/prometheus/alerts.yml"));
    let local = cfg_dir.path().join("prometheus.yml");
    let ours = deploy("prometheus/alerts.yml");
    std::fs::write(
        &local,
        prom.replace("/etc/prometheus/alerts.yml", ours.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(&local));
    assert!(ok, "promtool check config:\n{out}");

    let sb = Sandbox::new();
    let d = copy_of_deploy(&sb);
    break_file(
        &d.join("prometheus/alerts.yml"),
        "expr: dbkeep_target_up == 0",
        "expr: dbkeep_target_up == == 0",
    );
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(d.join("prometheus/alerts.yml")));
    assert!(!ok, "a bad expression must fail promtool:\n{out}");
    let d2 = sb.path().join("deploy2");
    assert!(Command::new("cp")
        .arg("-r")
        .arg(deploy(""))
        .arg(&d2)
        .status()
        .unwrap()
        .success());
    break_file(&d2.join("prometheus/alerts.yml"), "for: 10m", "for: 50m");
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(d2.join("prometheus/alerts_test.yml")));
    assert!(!ok, "a changed rule must fail its unit test:\n{out}");
}

/// Metric names in PromQL text: words starting with dbkeep_.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("dbkeep_") {
        let start = i + pos;
        let prev_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if prev_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The base names a running dbkeep serves (histograms also as _bucket/_sum/_count).
fn served_names(metrics: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split_whitespace();
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            out.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

fn unknown_metrics(used: &BTreeSet<String>, served: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|n| !served.contains(*n))
        .cloned()
        .collect()
}

#[test]
fn dashboard_and_alerts_use_only_metrics_dbkeep_serves() {
    // A daemon with S3, after a backup and a drill, serves every family.
    let s3 = TestS3::start("bkp");
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "every = \"1h\"\nverify_schedule = \"1s\"");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}{}", s3.config_section("bkp", "prod", "")),
    )
    .unwrap();
    let d = crate::common::spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(30), "a backup and a drill", || {
        d.metric(r#"dbkeep_verify_runs_total{status="success",target="app"}"#)
            .unwrap_or(0.0)
            >= 1.0
    });
    let (_, metrics) = d.get("/metrics");
    let served = served_names(&metrics);

    let dashboard = std::fs::read_to_string(deploy("grafana/dbkeep.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    let dash_used = metric_names(&exprs.join("\n"));
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let alert_exprs: String = alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let alert_used = metric_names(&alert_exprs);
    assert!(dash_used.len() >= 15, "{dash_used:?}");
    assert!(alert_used.len() >= 7, "{alert_used:?}");
    assert_eq!(
        unknown_metrics(&dash_used, &served),
        Vec::<String>::new(),
        "dashboard uses unknown metrics; served: {served:?}"
    );
    assert_eq!(
        unknown_metrics(&alert_used, &served),
        Vec::<String>::new(),
        "alerts use unknown metrics; served: {served:?}"
    );

    // The check bites: an unknown name in a broken copy is reported.
    let broken = dashboard.replace("dbkeep_backup_size_bytes", "dbkeep_backup_bytes_total");
    let used = metric_names(&broken);
    assert_eq!(
        unknown_metrics(&used, &served),
        vec!["dbkeep_backup_bytes_total".to_string()]
    );
}

#[test]
fn the_healthcheck_command_follows_health() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(&sb, "app", "every = \"1h\"");
    let d = crate::common::spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(30), "first backup", || {
        d.metric(r#"dbkeep_backup_runs_total{status="success",target="app"}"#) == Some(1.0)
    });
    let ok = crate::common::dbkeep(
        None,
        &["healthcheck", "--url", &format!("http://{}/health", d.addr)],
        &[],
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("\"status\":\"ok\""), "{}", ok.stdout);
    // Default URL from the config (daemon.listen), as the container HEALTHCHECK uses it.
    let from_cfg = crate::common::dbkeep(
        None,
        &["healthcheck"],
        &[
            ("DBKEEP_CONFIG", cfg.to_str().unwrap()),
            ("DBKEEP_DAEMON__LISTEN", d.addr.as_str()),
        ],
    );
    assert_eq!(from_cfg.code, 0, "{}", from_cfg.stderr);

    // A daemon whose only target cannot be backed up: /health 503, healthcheck exit 1.
    let sb2 = Sandbox::new();
    // (No retries: a failure that a retry is due to repair keeps /health green.)
    let (db2, cfg2) = sqlite_target(&sb2, "gone", "every = \"1h\"\nretries = 0");
    std::fs::remove_file(db2).unwrap();
    let d2 = crate::common::spawn_daemon(&cfg2, &[]);
    wait_for(Duration::from_secs(30), "the failed first backup", || {
        d2.get("/health").0 == 503
    });
    let bad = crate::common::dbkeep(
        None,
        &[
            "healthcheck",
            "--url",
            &format!("http://{}/health", d2.addr),
        ],
        &[],
    );
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("answered 503"), "{}", bad.stderr);
    let none = crate::common::dbkeep(
        None,
        &["healthcheck", "--url", "http://127.0.0.1:9/health"],
        &[],
    );
    assert_eq!(none.code, 1, "nothing listening is unhealthy");
}

#[test]
fn env_only_daemon_backs_up_postgres_to_local_and_s3() {
    let pg = crate::common::TestPostgres::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    let s3 = TestS3::start("bkp");
    let sb = Sandbox::new();
    let backups = sb.path().join("backups");
    let port = pg.port.to_string();
    let endpoint = s3.endpoint();
    let env = [
        ("DBKEEP_DAEMON__LISTEN", "127.0.0.1:0"),
        ("DBKEEP_STORAGE__LOCAL__PATH", backups.to_str().unwrap()),
        ("DBKEEP_STORAGE__S3__BUCKET", "bkp"),
        ("DBKEEP_STORAGE__S3__PREFIX", "sidecar"),
        ("DBKEEP_STORAGE__S3__ENDPOINT", endpoint.as_str()),
        ("DBKEEP_STORAGE__S3__FORCE_PATH_STYLE", "true"),
        (
            "DBKEEP_STORAGE__S3__ACCESS_KEY_ID",
            crate::common::s3::S3_ACCESS_KEY,
        ),
        (
            "DBKEEP_STORAGE__S3__SECRET_ACCESS_KEY",
            crate::common::s3::S3_SECRET_KEY,
        ),
        ("DBKEEP_DEFAULTS__EVERY", "1h"),
        ("DBKEEP_TARGETS__APP__KIND", "postgres"),
        // No url: libpq's own variables.
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGUSER", "postgres"),
        ("PGDATABASE", "app"),
        ("PGPASSWORD", crate::common::PG_PASSWORD),
    ];
    let d = crate::common::spawn_daemon_env(sb.path(), &env);
    wait_for(Duration::from_secs(60), "a backup in both storages", || {
        d.metric(r#"dbkeep_backups{storage="s3",target="app"}"#) == Some(1.0)
            && d.metric(r#"dbkeep_backups{storage="local",target="app"}"#) == Some(1.0)
    });
    let keys = s3.keys("bkp", "sidecar/app/");
    assert_eq!(keys.len(), 2, "archive and manifest: {keys:?}");
    assert!(d.stderr().contains("daemon started"), "{}", d.stderr());
    assert!(
        !sb.path().join("dbkeep.toml").exists(),
        "no config file anywhere"
    );
}

#[test]
fn the_readme_lists_every_environment_variable() {
    let run = crate::common::dbkeep(None, &["config", "keys"], &[]).ok();
    let keys: Vec<&str> = run.stdout.lines().collect();
    assert!(
        keys.contains(&"DBKEEP_STORAGE__S3__PREFIX")
            && keys.contains(&"DBKEEP_TARGETS__<NAME>__URL")
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("<!-- env-keys:start -->")
        .nth(1)
        .and_then(|r| r.split("<!-- env-keys:end -->").next())
        .expect("README has the env-keys block");
    let listed: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("```"))
        .collect();
    assert_eq!(
        listed, keys,
        "README's list differs from `dbkeep config keys`: regenerate it"
    );
    // Every DBKEEP_ key the list names is accepted by the loader.
    for k in keys
        .iter()
        .filter(|k| k.starts_with("DBKEEP_") && k.contains("__"))
    {
        let key = k.replace("<NAME>", "APP");
        let value = if key.ends_with("__KIND") {
            "sqlite"
        } else {
            "x"
        };
        let out = crate::common::dbkeep(
            None,
            &["config", "check"],
            &[
                ("DBKEEP_STORAGE__LOCAL__PATH", "/tmp/b"),
                ("DBKEEP_TARGETS__APP__KIND", "sqlite"),
                (&key, value),
            ],
        );
        assert!(
            !out.stderr.contains("unknown field"),
            "{key} rejected as unknown: {}",
            out.stderr
        );
    }
}
