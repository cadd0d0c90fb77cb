//! The PostgreSQL client binaries: find the ones whose major version matches the server
//! (exact first, then the oldest newer one, then PATH), or say which package is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine::EngineError;
use crate::process::{self, Spec};

/// The major version from `pg_dump --version` output: "pg_dump (PostgreSQL) 15.18 (Debian ...)".
pub fn parse_tool_major(version_output: &str) -> Option<u32> {
    let after = version_output.split(')').nth(1)?.trim_start();
    let number = after.split_whitespace().next()?;
    let major: String = number.chars().take_while(char::is_ascii_digit).collect();
    major.parse().ok()
}

/// Whether a client of this `--version` line has `--restrict-key` (pg_restore, pg_dump) and
/// psql's `\restrict`: the releases of August 2025 (13.22, 14.19, 15.14, 16.10, 17.6) and
/// every later one.
pub fn has_restrict_key(version_output: &str) -> bool {
    let Some(major) = parse_tool_major(version_output) else {
        return false;
    };
    let minor: u32 = version_output
        .split(')')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| {
            m.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    match major {
        0..=12 => false,
        13 => minor >= 22,
        14 => minor >= 19,
        15 => minor >= 14,
        16 => minor >= 10,
        17 => minor >= 6,
        _ => true,
    }
}

/// The `--version` line of a client program.
pub async fn version_line(program: &Path) -> Option<String> {
    tool_version(program).await.map(|(_, line)| line)
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
pub async fn find_tool_dir(
    tool: &str,
    major: u32,
    pg_bin_dir: Option<&Path>,
    target: &str,
) -> Result<(PathBuf, String), EngineError> {
    let advice = format!(
        "install postgresql-client-{major} (Debian/Ubuntu; postgresql{major} on RHEL/Alpine) or set `targets.{target}.pg_bin_dir`"
    );
    if let Some(dir) = pg_bin_dir {
        let program = dir.join(tool);
        return match tool_version(&program).await {
            Some((v, line)) if v >= major => Ok((dir.to_path_buf(), line)),
            Some((v, _)) => Err(EngineError::ToolMissing(format!(
                "{tool} {v} in {} cannot dump a server of version {major}: {advice}",
                dir.display()
            ))),
            None => Err(EngineError::ToolMissing(format!(
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
    Err(EngineError::ToolMissing(format!(
        "no {tool} that can dump PostgreSQL {major} (looked in {}): {advice}",
        looked.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrict_key_support_follows_the_august_2025_releases() {
        for (line, yes) in [
            ("pg_restore (PostgreSQL) 15.18 (Debian 15.18-1)", true),
            ("pg_restore (PostgreSQL) 15.13", false),
            ("pg_restore (PostgreSQL) 17.6", true),
            ("pg_restore (PostgreSQL) 16.9", false),
            ("pg_restore (PostgreSQL) 18.1", true),
            ("pg_restore (PostgreSQL) 18beta1", true),
            ("pg_restore (PostgreSQL) 12.22", false),
        ] {
            assert_eq!(has_restrict_key(line), yes, "{line}");
        }
    }

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
}
