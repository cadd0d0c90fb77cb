//! The metrics contract: the README's table equals what `/metrics` serves, every
//! per-target series exists from start-up, a flood of probes cannot exhaust the
//! database's connections, and GFS retention on its own schedule runs in the daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{Datelike, Utc};

use crate::common::s3::TestS3;
use crate::common::{
    dbkeep, http_get, http_request, spawn_daemon, sqlite_target, wait_for, Sandbox, TestPostgres,
    PG_PASSWORD,
};

/// (type, label names) of each family in the README's metrics reference.
fn readme_table() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("### Metrics reference")
        .expect("README has a metrics reference");
    let mut out = BTreeMap::new();
    for line in readme[start..].lines().skip(1) {
        if line.starts_with('#') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`dbkeep_") {
            continue;
        }
        let labels = cells[3]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        out.insert(
            cells[1].trim_matches('`').to_string(),
            (cells[2].to_string(), labels),
        );
    }
    out
}

/// (type, label names) of each family `/metrics` serves.
fn served(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split_whitespace();
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            out.insert(name.to_string(), (kind.to_string(), BTreeSet::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let family = out
            .keys()
            .find(|f| {
                sample == f.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample == format!("{f}{s}"))
            })
            .cloned();
        let (Some(family), Some(open)) = (family, line.find('{')) else {
            continue;
        };
        let close = line.rfind('}').unwrap();
        for pair in line[open + 1..close].split("\",") {
            let key = pair.split('=').next().unwrap().trim();
            if !key.is_empty() && key != "le" {
                out.get_mut(&family).unwrap().1.insert(key.to_string());
            }
        }
    }
    out
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn every_per_target_series_exists_from_start_up_and_the_readme_lists_them_all() {
    let s3 = TestS3::start("bkp");
    let sb = Sandbox::new();
    std::fs::write(
        sb.path().join("schema.sql"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    std::fs::write(sb.path().join("token"), TOKEN).unwrap();
    let (_db, cfg) = sqlite_target(
        &sb,
        "app",
        &format!(
            "schedule = \"0 3 1 1 *\"\nverify_schedule = \"1d\"\n[targets.app.schema]\ndesired = \"{}\"\n[targets.app.hooks]\nafter = [\"/bin/true\"]",
            sb.path().join("schema.sql").display()
        ),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[daemon]\n",
        &format!(
            "[daemon]\nadmin_token_file = \"{}\"\n",
            sb.path().join("token").display()
        ),
    );
    std::fs::write(
        &cfg,
        format!(
            "{text}{}[notify.ops]\nkind = \"ping\"\nurl = \"http://127.0.0.1:9/never\"\n",
            s3.config_section("bkp", "prod", "")
        ),
    )
    .unwrap();
    let d = spawn_daemon(&cfg, &[]);

    // Right after start-up, before any backup or drill: every per-target family has its
    // series for the target (and per storage where it has that label).
    let (_, metrics) = d.get("/metrics");
    let table = readme_table();
    assert!(table.len() >= 25, "{table:?}");
    for (name, (kind, labels)) in &table {
        // Per-database families exist only for a server target's databases (their
        // start-up series are checked in servers.rs).
        if !labels.contains("target") || labels.contains("database") {
            continue;
        }
        let sample = if kind == "histogram" {
            format!("{name}_count{{")
        } else {
            format!("{name}{{")
        };
        let series: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with(&sample) && l.contains("target=\"app\""))
            .collect();
        assert!(
            !series.is_empty(),
            "{name} has no series for app at start-up:\n{metrics}"
        );
        // Upload series are per mirror: the primary (local) has none.
        let mirrors_only = ["dbkeep_upload_duration_seconds", "dbkeep_uploads_pending"];
        if labels.contains("storage") && !mirrors_only.contains(&name.as_str()) {
            for storage in ["local", "s3"] {
                assert!(
                    series
                        .iter()
                        .any(|l| l.contains(&format!("storage=\"{storage}\""))),
                    "{name} has no series for storage {storage}: {series:?}"
                );
            }
        }
    }
    // Never drilled: last success 0 ("never"), and a deadline an alert can use.
    assert_eq!(
        d.metric(r#"dbkeep_verify_last_success_timestamp_seconds{target="app"}"#),
        Some(0.0)
    );
    let deadline = d
        .metric(r#"dbkeep_verify_stale_after_timestamp_seconds{target="app"}"#)
        .unwrap();
    let now = Utc::now().timestamp() as f64;
    assert!(
        deadline > now && deadline < now + 3.0 * 86400.0,
        "{deadline}"
    );

    // Exercise the families that only count events, then compare everything.
    let ok = http_request(
        &d.addr,
        "GET",
        "/api/v1/admin/database/backups",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        None,
    );
    assert_eq!(ok.status, 200);
    let denied = http_request(&d.addr, "GET", "/api/v1/admin/database/backups", &[], None);
    assert_eq!(denied.status, 401);
    d.signal(libc::SIGHUP);
    wait_for(
        Duration::from_secs(60),
        "a reload and both storages seen",
        || {
            d.metric(r#"dbkeep_config_reload_total{status="success"}"#) == Some(1.0)
                && d.metric(r#"dbkeep_storage_up{storage="s3"}"#).is_some()
        },
    );
    let (_, metrics) = d.get("/metrics");
    let served = served(&metrics);
    let only_served: Vec<_> = served.keys().filter(|k| !table.contains_key(*k)).collect();
    // Per-database families have series only with a server target (servers.rs checks them).
    let only_readme: Vec<_> = table
        .iter()
        .filter(|(k, (_, labels))| !served.contains_key(*k) && !labels.contains("database"))
        .map(|(k, _)| k)
        .collect();
    assert!(
        only_served.is_empty(),
        "served but not in the README: {only_served:?}"
    );
    assert!(
        only_readme.is_empty(),
        "in the README but not served: {only_readme:?}"
    );
    for (name, want) in &table {
        if let Some(got) = served.get(name) {
            assert_eq!(got, want, "{name}: served vs README");
        }
    }
}

#[test]
fn a_flood_of_probes_opens_at_most_one_connection_per_target() {
    let pg = TestPostgres::start();
    pg.create_db("app");
    // The target's role may hold two connections: the replica lease's, and one more; a
    // third at the same time fails.
    pg.psql(
        "postgres",
        &format!("CREATE ROLE limited LOGIN PASSWORD '{PG_PASSWORD}' CONNECTION LIMIT 2"),
    );
    let sb = Sandbox::new();
    let cfg = sb.write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\n[storage.local]\npath = \"{}\"\n[targets.app]\nkind = \"postgres\"\n\
         url = \"postgres://limited@127.0.0.1:{}/app\"\npassword = \"{PG_PASSWORD}\"\n\
         schedule = \"0 3 1 1 *\"\nverify_schedule = \"off\"\n",
        sb.backups().display(),
        pg.port
    ));
    let d = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(20), "the lease taken", || {
        d.metric(r#"dbkeep_target_active{target="app"}"#) == Some(1.0)
    });
    let addr = d.addr.clone();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..150)
            .map(|i| {
                let addr = addr.clone();
                s.spawn(move || http_get(&addr, if i % 2 == 0 { "/metrics" } else { "/health" }))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (code, body)) in answers.iter().enumerate() {
        assert_eq!(*code, 200, "request {i}: {body}");
        if i % 2 == 1 {
            let h: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(
                h["targets"][0]["database"]["up"], true,
                "request {i}: the database check failed under the flood: {h}"
            );
        }
    }
    assert_eq!(d.metric(r#"dbkeep_target_up{target="app"}"#), Some(1.0));
}

/// Copy the newest real backup of `app` under ids `days_ago` back in time.
fn plant(sb: &Sandbox, days_ago: &[i64]) {
    let dir = sb.backups().join("app");
    let real = sb
        .files("app")
        .into_iter()
        .find(|f| f.ends_with(".sqlite.zst"))
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{real}.manifest.json"))).unwrap())
            .unwrap();
    let real_id = manifest["id"].as_str().unwrap().to_string();
    let real_time = chrono::NaiveDateTime::parse_from_str(&real_id, "%Y%m%d_%H%M%S")
        .unwrap()
        .and_utc();
    for d in days_ago {
        let id = (real_time - chrono::Duration::days(*d))
            .format("%Y%m%d_%H%M%S")
            .to_string();
        let file = format!("app_{id}.sqlite.zst");
        std::fs::copy(dir.join(&real), dir.join(&file)).unwrap();
        let mut m = manifest.clone();
        m["id"] = id.clone().into();
        m["file"] = file.clone().into();
        std::fs::write(
            dir.join(format!("{file}.manifest.json")),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
    }
}

/// The newest of each of the newest `n` distinct periods (an oracle of its own, written
/// from the README's rules).
fn newest_per_period(
    ids: &[chrono::NaiveDateTime],
    n: usize,
    period: impl Fn(&chrono::NaiveDateTime) -> (i32, u32),
) -> BTreeSet<chrono::NaiveDateTime> {
    let mut seen = Vec::new();
    let mut kept = BTreeSet::new();
    for id in ids {
        let p = period(id);
        if !seen.contains(&p) {
            if seen.len() == n {
                break;
            }
            seen.push(p);
            kept.insert(*id);
        }
    }
    kept
}

#[test]
fn gfs_retention_on_its_own_schedule_runs_in_the_daemon() {
    let sb = Sandbox::new();
    let (_db, cfg) = sqlite_target(
        &sb,
        "app",
        "schedule = \"0 3 1 1 *\"\nverify_schedule = \"off\"\ncleanup_schedule = \"1s\"\n\
         keep_days = 0\nmin_keep = 1\nkeep_daily = 2\nkeep_weekly = 2\nkeep_monthly = 3",
    );
    dbkeep(Some(&cfg), &["backup"], &[]).ok();
    let offsets = [3, 10, 40, 71, 102, 133];
    plant(&sb, &offsets);
    let listed = |cfg: &std::path::Path| -> Vec<chrono::NaiveDateTime> {
        let run = dbkeep(Some(cfg), &["list", "--json"], &[]).ok();
        let all: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
        all.iter()
            .map(|b| {
                chrono::NaiveDateTime::parse_from_str(b["id"].as_str().unwrap(), "%Y%m%d_%H%M%S")
                    .unwrap()
            })
            .collect()
    };
    let ids = listed(&cfg);
    assert_eq!(ids.len(), 7);
    let mut keep = BTreeSet::from([ids[0]]);
    keep.extend(newest_per_period(&ids, 2, |t| (t.year(), t.ordinal())));
    keep.extend(newest_per_period(&ids, 2, |t| {
        (t.iso_week().year(), t.iso_week().week())
    }));
    keep.extend(newest_per_period(&ids, 3, |t| (t.year(), t.month())));
    let deleting = ids.len() - keep.len();
    assert!(deleting >= 2, "the setup must delete something: {keep:?}");

    let d = spawn_daemon(&cfg, &[]);
    wait_for(Duration::from_secs(60), "the scheduled cleanup", || {
        d.metric(r#"dbkeep_retention_deleted_total{storage="local",target="app"}"#)
            .unwrap_or(0.0)
            >= deleting as f64
    });
    let left: BTreeSet<_> = listed(&cfg).into_iter().collect();
    assert_eq!(left, keep);
    assert_eq!(
        d.metric(r#"dbkeep_retention_deleted_total{storage="local",target="app"}"#),
        Some(deleting as f64)
    );
}
