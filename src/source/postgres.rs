//! PostgreSQL: `pg_dump -Fc -Z0` (and `pg_dumpall --globals-only`) streamed from the
//! client binaries that match the server's major version.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use super::{glob_match, Dump, Part, Prepared, Source, SourceError};
use crate::catalog::{Contents, TableInfo, ToolVersions};
use crate::config::PostgresConfig;
use crate::process::{self, Spec};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
const CUSTOM_FORMAT_MAGIC: &[u8] = b"PGDMP";
const SQL_MAGIC: &[u8] = b"--";

pub struct PostgresSource {
    target: String,
    cfg: PostgresConfig,
    timeout: Duration,
}

impl PostgresSource {
    pub fn new(target: &str, cfg: PostgresConfig, timeout: Duration) -> Self {
        PostgresSource {
            target: target.to_string(),
            cfg,
            timeout,
        }
    }

    fn connect_options(&self) -> Result<PgConnectOptions, SourceError> {
        let mut opts =
            PgConnectOptions::from_str(&self.cfg.url).map_err(|e| SourceError::Connect {
                what: format!("target {}", self.target),
                message: format!("bad url: {e}"),
            })?;
        if let Some(pw) = &self.cfg.password {
            opts = opts.password(pw.expose());
        }
        Ok(opts.application_name("dbkeep"))
    }

    /// Where the server is, for messages (no credentials).
    fn describe(&self) -> String {
        format!("PostgreSQL of target {} ({})", self.target, self.cfg.url)
    }

    fn spec(&self, program: PathBuf) -> Spec {
        Spec::new(program)
            .env("PGAPPNAME", "dbkeep")
            .env("PGCONNECT_TIMEOUT", "15")
            .secret_env("PGPASSWORD", self.cfg.password.as_ref())
    }
}

/// The major version from `pg_dump --version` output: "pg_dump (PostgreSQL) 15.18 (Debian ...)".
pub fn parse_tool_major(version_output: &str) -> Option<u32> {
    let after = version_output.split(')').nth(1)?.trim_start();
    let number = after.split_whitespace().next()?;
    number.split('.').next()?.parse().ok()
}

/// Candidate folders for the client binaries of `major`, most specific first.
fn candidate_dirs(major: u32) -> Vec<PathBuf> {
    vec![
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        PathBuf::from(format!("/usr/pgsql-{major}/bin")),
        PathBuf::from(format!("/usr/libexec/postgresql{major}")),
    ]
}

/// Installed versioned folders (Debian layout) newer than `major`, oldest first.
fn newer_debian_dirs(major: u32) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            (v > major).then(|| (v, e.path().join("bin")))
        })
        .collect();
    found.sort();
    found
}

fn path_lookup(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

async fn tool_version(program: &Path) -> Option<(u32, String)> {
    let out = process::run_capture(Spec::new(program).arg("--version"), Duration::from_secs(10))
        .await
        .ok()?;
    let line = out.lines().next()?.trim().to_string();
    Some((parse_tool_major(&line)?, line))
}

/// Pick the folder whose `tool` can dump a server of `major`: the exact version first,
/// then the oldest newer one, then `tool` on PATH.
pub(crate) async fn find_tool_dir(
    tool: &str,
    major: u32,
    pg_bin_dir: Option<&Path>,
    target: &str,
) -> Result<(PathBuf, String), SourceError> {
    let advice = format!(
        "install postgresql-client-{major} (Debian/Ubuntu; postgresql{major} on RHEL/Alpine) or set `targets.{target}.pg_bin_dir`"
    );
    if let Some(dir) = pg_bin_dir {
        let program = dir.join(tool);
        return match tool_version(&program).await {
            Some((v, line)) if v >= major => Ok((dir.to_path_buf(), line)),
            Some((v, _)) => Err(SourceError::ToolMissing(format!(
                "{tool} {v} in {} cannot dump a server of version {major}: {advice}",
                dir.display()
            ))),
            None => Err(SourceError::ToolMissing(format!(
                "no working {tool} in pg_bin_dir {}: {advice}",
                dir.display()
            ))),
        };
    }
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = candidate_dirs(major);
    candidates.extend(newer_debian_dirs(major).into_iter().map(|(_, d)| d));
    for dir in candidates {
        let program = dir.join(tool);
        if !program.is_file() {
            looked.push(dir.display().to_string());
            continue;
        }
        match tool_version(&program).await {
            Some((v, line)) if v >= major => return Ok((dir, line)),
            Some((v, _)) => looked.push(format!("{} (version {v})", dir.display())),
            None => looked.push(format!("{} (does not run)", dir.display())),
        }
    }
    if let Some(program) = path_lookup(tool) {
        match tool_version(&program).await {
            Some((v, line)) if v >= major => {
                let dir = program.parent().map(Path::to_path_buf).unwrap_or_default();
                return Ok((dir, line));
            }
            Some((v, _)) => looked.push(format!("PATH: {} (version {v})", program.display())),
            None => looked.push(format!("PATH: {} (does not run)", program.display())),
        }
    } else {
        looked.push("PATH".into());
    }
    Err(SourceError::ToolMissing(format!(
        "no {tool} that can dump PostgreSQL {major} (looked in {}): {advice}",
        looked.join(", ")
    )))
}

/// Quote a schema name so pg_dump's `-n` matches exactly it (no case folding, no wildcards).
fn exact_pattern(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl Source for PostgresSource {
    async fn ping(&self) -> Result<(), SourceError> {
        let opts = self.connect_options()?;
        let err = |message: String| SourceError::Connect {
            what: self.describe(),
            message,
        };
        let mut conn = tokio::time::timeout(PING_TIMEOUT, PgConnection::connect_with(&opts))
            .await
            .map_err(|_| err(format!("no answer within {}s", PING_TIMEOUT.as_secs())))?
            .map_err(|e| err(explain_connect_error(&e)))?;
        sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(|e| err(e.to_string()))?;
        let _ = conn.close().await;
        Ok(())
    }

    async fn prepare(&self) -> Result<Prepared, SourceError> {
        let opts = self.connect_options()?;
        let connect_err = |e: sqlx::Error| SourceError::Connect {
            what: self.describe(),
            message: explain_connect_error(&e),
        };
        let mut conn: PgConnection =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
                .await
                .map_err(|_| SourceError::Connect {
                    what: self.describe(),
                    message: format!(
                        "no answer within {}s; check host, port and firewall",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                })?
                .map_err(connect_err)?;
        let (version_num, version): (String, String) = sqlx::query_as(
            "SELECT current_setting('server_version_num'), current_setting('server_version')",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(connect_err)?;
        let major: u32 = version_num.parse::<u32>().map(|n| n / 10000).map_err(|_| {
            SourceError::Other(format!(
                "server reported an unreadable version {version_num:?}"
            ))
        })?;

        let mut parts = Vec::new();
        if self.cfg.schemas.is_empty() {
            parts.push(Part {
                schema: None,
                contents: Contents::Database,
                format: "dump",
                magic: CUSTOM_FORMAT_MAGIC,
            });
        } else {
            let names: Vec<(String,)> = sqlx::query_as(
                "SELECT nspname::text FROM pg_namespace \
                 WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await
            .map_err(connect_err)?;
            let names: Vec<String> = names.into_iter().map(|(n,)| n).collect();
            let mut chosen: Vec<String> = Vec::new();
            for pattern in &self.cfg.schemas {
                let matched: Vec<&String> =
                    names.iter().filter(|n| glob_match(pattern, n)).collect();
                if matched.is_empty() {
                    return Err(SourceError::NoSchemaMatch {
                        target: self.target.clone(),
                        pattern: pattern.clone(),
                        available: names.join(", "),
                    });
                }
                for n in matched {
                    if !chosen.contains(n) {
                        chosen.push(n.clone());
                    }
                }
            }
            chosen.sort();
            parts.extend(chosen.into_iter().map(|s| Part {
                schema: Some(s),
                contents: Contents::Schema,
                format: "dump",
                magic: CUSTOM_FORMAT_MAGIC,
            }));
        }
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, \
                    greatest(c.reltuples::bigint, coalesce(s.n_live_tup, -1))::bigint \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' \
             ORDER BY 1, 2",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(connect_err)?;
        let tables = rows
            .into_iter()
            .map(|(schema, name, rows)| TableInfo {
                schema: Some(schema),
                name,
                rows: (rows >= 0).then_some(rows),
            })
            .collect();
        let _ = conn.close().await;

        let (tool_dir, dump_version) = find_tool_dir(
            "pg_dump",
            major,
            self.cfg.pg_bin_dir.as_deref(),
            &self.target,
        )
        .await?;
        if self.cfg.globals {
            if !tool_dir.join("pg_dumpall").is_file() {
                return Err(SourceError::ToolMissing(format!(
                    "pg_dumpall is missing beside {}: install the full postgresql-client-{major} package",
                    tool_dir.join("pg_dump").display()
                )));
            }
            parts.push(Part {
                schema: None,
                contents: Contents::Globals,
                format: "sql",
                magic: SQL_MAGIC,
            });
        }
        tracing::debug!(target = %self.target, server = %version, tool = %dump_version, dir = %tool_dir.display(), "postgres source prepared");
        Ok(Prepared {
            parts,
            tools: ToolVersions {
                dbkeep: env!("CARGO_PKG_VERSION").to_string(),
                dump_tool: Some(dump_version),
                server: Some(format!("PostgreSQL {version}")),
            },
            tool_dir: Some(tool_dir),
            tables,
        })
    }

    async fn open(
        &self,
        prepared: &Prepared,
        part: &Part,
        _scratch: Option<&Path>,
        cancel: &CancellationToken,
    ) -> Result<Dump, SourceError> {
        let dir = prepared
            .tool_dir
            .clone()
            .ok_or_else(|| SourceError::Other("postgres source used before prepare".into()))?;
        let dbname: OsString = format!("--dbname={}", self.cfg.url).into();
        let spec = match part.contents {
            Contents::Globals => self
                .spec(dir.join("pg_dumpall"))
                .arg("--globals-only")
                .arg("--no-password")
                .arg(dbname),
            Contents::Database | Contents::Schema => {
                let mut spec = self
                    .spec(dir.join("pg_dump"))
                    .arg("--format=custom")
                    .arg("--compress=0")
                    .arg("--no-password")
                    .arg(dbname);
                if let Some(schema) = &part.schema {
                    spec = spec.arg(format!("--schema={}", exact_pattern(schema)));
                }
                spec
            }
        };
        let (running, stdout) = process::spawn_streaming(spec)?;
        let stopper = running.stopper();
        let cancel = cancel.clone();
        let timeout = self.timeout;
        Ok(Dump {
            reader: Box::new(SyncIoBridge::new(stdout)),
            done: Box::pin(async move {
                running
                    .wait(&cancel, timeout)
                    .await
                    .map_err(SourceError::from)
            }),
            stopper: Some(stopper),
        })
    }
}

/// Turn a sqlx connect error into a sentence an operator can act on.
fn explain_connect_error(e: &sqlx::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("password authentication failed") {
        "; check the user's password (`password`, `password_file` or PGPASSWORD)"
    } else if text.contains("does not exist") {
        "; check the database and user names in `url`"
    } else if text.contains("Connection refused") || text.contains("connection refused") {
        "; is the server running and listening on that host and port?"
    } else if text.contains("no password") || text.contains("password was not supplied") {
        "; set `password_file` (or `password`, or PGPASSWORD)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_versions_parse() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 17.2"), Some(17));
        assert_eq!(parse_tool_major("pg_dumpall (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_tool_major("something else"), None);
    }

    #[test]
    fn schema_names_are_quoted_exactly() {
        assert_eq!(exact_pattern("tenant_1"), "\"tenant_1\"");
        assert_eq!(exact_pattern("we\"ird"), "\"we\"\"ird\"");
    }
}
