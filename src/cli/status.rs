//! `status` (per-target health without a daemon) and `healthcheck` (ask the daemon).

use std::path::Path;
use std::time::Duration;

use super::{failed, load_config, print_json, usage, Failure};
use crate::config::Config;
use crate::ops::status::{self, TargetHealth};
use crate::ops::Context;
use crate::retention;
use crate::state;

pub(super) async fn status(ctx: &Context, cfg: &Config, json: bool) -> Result<(), Failure> {
    let all = status::report(ctx, cfg).await;
    if json {
        print_json(&all)?;
    } else {
        print_status(&all);
    }
    if all.iter().all(|h| h.healthy) {
        Ok(())
    } else {
        let failing: Vec<&str> = all
            .iter()
            .filter(|h| !h.healthy)
            .map(|h| h.target.as_str())
            .collect();
        Err(failed(format!("failing targets: {}", failing.join(", "))))
    }
}

fn print_status(all: &[TargetHealth]) {
    println!(
        "{:<12} {:<8} {:<7} {:<15} {:>8} {:>7} {:<8} {:<20}  DATABASE",
        "TARGET", "KIND", "HEALTH", "NEWEST", "AGE", "BACKUPS", "LAST RUN", "NEXT RUN"
    );
    for h in all {
        let (id, age) = match &h.newest_backup {
            Some(n) => (
                n.id.clone(),
                retention::fmt_age(chrono::Duration::seconds(n.age_seconds)),
            ),
            None => ("-".into(), "-".into()),
        };
        let last = match h.last_run.status {
            Some(state::RunStatus::Success) => "success",
            Some(state::RunStatus::Failure) => "failure",
            None => "-",
        };
        let db = match &h.database {
            Some(d) if d.up => "up".to_string(),
            Some(d) => format!("DOWN: {}", d.error.as_deref().unwrap_or("")),
            None => "-".into(),
        };
        let next = h
            .next_run
            .map(|n| n.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_default();
        let health = match (h.level, h.warnings.is_empty()) {
            ("red", _) => "FAILING",
            ("amber", _) => "AMBER",
            (_, true) => "ok",
            (_, false) => "warning",
        };
        println!(
            "{:<12} {:<8} {:<7} {:<15} {:>8} {:>7} {:<8} {:<20}  {db}",
            h.target, h.kind, health, id, age, h.backups, last, next
        );
        if let (Some(local), false) = (&h.next_run_local, h.timezone == "UTC") {
            println!("{:<12} next run in {}: {local}", "", h.timezone);
        }
        for p in &h.problems {
            println!("{:<12} problem: {p}", "");
        }
        for a in &h.attention {
            println!("{:<12} attention: {a}", "");
        }
        for w in &h.warnings {
            println!("{:<12} warning: {w}", "");
        }
        if let Some(p) = &h.last_proven_restore {
            let rows = match p.tables_proven {
                0 => format!("{} tables checked", p.tables),
                n => format!("{} rows in {n} tables proven", p.rows_proven),
            };
            println!(
                "{:<12} last proven restore: backup {}, {} in {:.1}s ({rows}), {}{}",
                "",
                p.backup_id,
                super::human_bytes(p.bytes),
                p.seconds,
                p.at.format("%Y-%m-%d %H:%MZ"),
                match h.rto_seconds {
                    Some(rto) => format!(
                        "; rto {}",
                        humantime::format_duration(std::time::Duration::from_secs(rto))
                    ),
                    None => String::new(),
                }
            );
        }
        for (id, why) in &h.pinned {
            println!("{:<12} pinned {id}: {}", "", why.escape_debug());
        }
        for d in &h.databases {
            println!(
                "{:<12} database {}: {}, {} backup(s){}",
                "",
                super::printable(&d.name),
                match (d.newest, d.newest_created) {
                    (Some(id), Some(at)) => format!(
                        "newest {id} ({} old)",
                        retention::fmt_age(chrono::Utc::now() - at)
                    ),
                    _ => "no backup yet".to_string(),
                },
                d.backups,
                match (&d.failing, d.gone) {
                    (Some(why), _) => format!("; FAILED in the last run: {why}"),
                    (None, true) => "; no longer backed up (dropped from the server, or excluded since): its backups are kept under retention".to_string(),
                    (None, false) => String::new(),
                }
            );
        }
        for r in &h.running {
            println!("{:<12} running {}", "", r.line());
        }
    }
}

pub(super) async fn healthcheck(config: Option<&Path>, url: Option<String>) -> Result<(), Failure> {
    let url = match url {
        Some(u) => u,
        None => {
            let cfg = load_config(config)?;
            let listen = cfg
                .daemon
                .listen
                .replace("0.0.0.0:", "127.0.0.1:")
                .replace("[::]:", "[::1]:");
            format!("http://{listen}/health")
        }
    };
    get_health(&url).await
}

/// GET `url` (plain HTTP, loopback) and succeed on 200.
async fn get_health(url: &str) -> Result<(), Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| usage(format!("{url}: only http:// URLs are supported")))?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/health".into()));
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(host).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&raw).into_owned())
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| failed(format!("{url}: no answer within 10 s")))?
        .map_err(|e| failed(format!("{url}: {e}")))?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    println!("{}", body.trim());
    if status == "200" {
        Ok(())
    } else {
        Err(failed(format!("{url} answered {status}")))
    }
}

/// `dbkeep doctor` (and `config check --connect`): every finding, then exit 1 when
/// something configured cannot work.
pub(super) async fn doctor(
    ctx: &Context,
    cfg: &Config,
    names: &[String],
    json: bool,
) -> Result<(), Failure> {
    use crate::engine::doctor::Verdict;
    let targets: Vec<&crate::config::Target> = match names.is_empty() {
        true => cfg.targets.iter().collect(),
        false => names.iter().filter_map(|n| cfg.target(n)).collect(),
    };
    let findings = crate::ops::doctor::run(ctx, cfg, &targets).await;
    if json {
        print_json(&findings)?;
    } else {
        for f in &findings {
            let verdict = match f.check.verdict {
                Verdict::Ok => "ok",
                Verdict::Limited => "LIMITED",
                Verdict::Cannot => "CANNOT",
            };
            println!(
                "{:<16} {:<24} {:<8} {}",
                crate::error::one_line(&f.scope),
                f.check.feature,
                verdict,
                crate::error::one_line(&f.check.detail)
            );
        }
    }
    let cannot: Vec<String> = findings
        .iter()
        .filter(|f| f.check.verdict == Verdict::Cannot)
        .map(|f| format!("{} {}", f.scope, f.check.feature))
        .collect();
    if cannot.is_empty() {
        return Ok(());
    }
    Err(failed(format!(
        "{} configured feature(s) cannot work: {}",
        cannot.len(),
        cannot.join(", ")
    )))
}
