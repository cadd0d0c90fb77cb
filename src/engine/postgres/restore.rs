//! Restoring a PostgreSQL archive: `pg_restore --single-transaction` for whole databases,
//! or pg_restore -> dbkeep -> psql in one explicit transaction whose COMMIT dbkeep sends
//! only after every stage succeeded and the archive's sha256 matched.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::conn::{quote_ident, Dsn};
use super::sqlguard::SqlGuard;
use super::tools::{find_tool_dir, parse_tool_major};
use crate::catalog::Manifest;
use crate::config::PostgresConfig;
use crate::engine::archive::{feed, Gate};
use crate::engine::{Archive, EngineError, RestoreMode};
use crate::process::{self, ProcessError, Spec};

/// The folder of pg_restore and psql that can read this archive and talk to this server.
pub async fn restore_tools(
    pg: &PostgresConfig,
    dsn: &Dsn,
    manifest: &Manifest,
    target: &str,
) -> Result<PathBuf, EngineError> {
    let mut conn = dsn.connect().await?;
    let (num,): (String,) = sqlx::query_as("SELECT current_setting('server_version_num')")
        .fetch_one(&mut conn)
        .await
        .map_err(EngineError::db(format!(
            "reading the version of {}",
            dsn.location()
        )))?;
    let _ = sqlx::Connection::close(conn).await;
    let server_major = num.parse::<u32>().map(|n| n / 10000).unwrap_or(0);
    let dump_major = manifest
        .tools
        .dump_tool
        .as_deref()
        .and_then(parse_tool_major)
        .unwrap_or(0);
    let (dir, _) = find_tool_dir(
        "pg_restore",
        server_major.max(dump_major),
        pg.pg_bin_dir.as_deref(),
        target,
    )
    .await?;
    Ok(dir)
}

/// What an archive's table of contents says (`pg_restore --list`).
#[derive(Debug, Default)]
pub struct Toc {
    /// Schemas the archive creates (its `SCHEMA` entries).
    pub schemas: BTreeSet<String>,
    /// Roles that own objects in it.
    pub owners: BTreeSet<String>,
}

/// How many bytes of a TOC listing are read at most.
const TOC_LIMIT: u64 = 64 * 1024 * 1024;

/// Read the archive's table of contents: its head is decompressed into `pg_restore
/// --list`, which stops reading once it has the TOC (the data that follows is not read,
/// and not hashed: nothing is restored from this).
pub async fn toc(tools: &Path, archive: Archive<'_>) -> Result<Toc, EngineError> {
    use tokio::io::AsyncReadExt;
    let spec = Spec::new(tools.join("pg_restore")).arg("--list");
    let (child, stdin, mut stdout) = process::spawn_filter(spec)?;
    let mut sink = process::blocking_stdin(stdin)
        .map_err(EngineError::io("the input pipe of pg_restore --list"))?;
    let reader = archive.open().await?;
    let backup = archive.backup.clone();
    let file = archive.backup.file.clone();
    let keys = archive.keys.cloned();
    let feeding = tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
        let mut decoder = crate::engine::archive::plain(reader, &backup, keys.as_deref())?;
        match io::copy(&mut decoder, &mut sink) {
            // pg_restore closes its input once it has read the TOC.
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(EngineError::io(format!("reading {file}"))(e)),
        }
    });
    let mut listing = Vec::new();
    let mut limited = (&mut stdout).take(TOC_LIMIT);
    let read = limited.read_to_end(&mut listing);
    let never = CancellationToken::new();
    let (read, waited) = tokio::join!(read, child.wait(&never, Duration::from_secs(600)));
    let fed = feeding
        .await
        .map_err(|e| EngineError::io("the TOC reader")(io::Error::other(e)))
        .and_then(|r| r);
    let listed = read
        .map_err(EngineError::io("reading pg_restore --list"))
        .and(fed)
        .and_then(|()| waited.map_err(EngineError::from));
    match listed {
        Ok(()) => Ok(parse_toc(&String::from_utf8_lossy(&listing))),
        // A corrupt archive is named as such, not as what failed to read it.
        Err(e) => Err(crate::engine::archive::mismatch_or(archive, e).await),
    }
}

/// Parse `pg_restore --list` lines: `ID; CATALOG OID TYPE SCHEMA NAME OWNER`, where a
/// SCHEMA entry reads `... SCHEMA - name owner`.
fn parse_toc(text: &str) -> Toc {
    let mut toc = Toc::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let Some((_, rest)) = line.split_once(';') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // catalog oid, object oid, then the description.
        if fields.len() < 5 {
            continue;
        }
        let desc = &fields[2..];
        if let Some(owner) = desc.last().filter(|o| **o != "-") {
            toc.owners.insert((*owner).to_string());
        }
        if desc[0] == "SCHEMA" && desc.get(1) == Some(&"-") && desc.len() >= 4 {
            toc.schemas.insert(desc[2..desc.len() - 1].join(" "));
        }
    }
    toc
}

/// How a restore runs its children.
pub struct Run<'a> {
    pub tools: &'a Path,
    pub dsn: &'a Dsn,
    pub keep_owner: bool,
    pub timeout: Duration,
    /// How long a statement waits for a lock before the restore stops and says who holds it.
    pub lock_timeout: Duration,
    pub cancel: &'a CancellationToken,
    /// Restore only the entries this `pg_restore --use-list` file names (and no grants).
    pub list: Option<&'a Path>,
}

/// A client tool that writes into `dsn` for a restore: named `dbkeep-restore`, with the
/// role's password, and a `lock_timeout` in PGOPTIONS, so that waiting for another
/// session's lock ends with a clear error rather than never.
pub fn writer_spec(program: PathBuf, dsn: &Dsn, lock_timeout: Duration) -> Spec {
    let options = format!(
        "{} -c lock_timeout={}",
        std::env::var("PGOPTIONS").unwrap_or_default(),
        lock_timeout.as_millis().max(1)
    );
    Spec::new(program)
        .env("PGAPPNAME", "dbkeep-restore")
        .env("PGOPTIONS", options.trim().to_string())
        .secret_env("PGPASSWORD", dsn.password.as_ref())
}

/// Stream the archive into the database. Any failure (pg_restore, psql, the server, a
/// changed archive, cancellation) ends without COMMIT, so nothing is kept.
pub async fn pg_restore(
    run: &Run<'_>,
    archive: Archive<'_>,
    mode: &RestoreMode,
) -> Result<(), EngineError> {
    let result = pg_restore_inner(run, archive, mode).await;
    match result {
        Err(e) if e.to_string().contains("lock timeout") => {
            Err(super::database::explain_lock_wait(run.dsn, run.lock_timeout, e).await)
        }
        other => other,
    }
}

async fn pg_restore_inner(
    run: &Run<'_>,
    archive: Archive<'_>,
    mode: &RestoreMode,
) -> Result<(), EngineError> {
    let Run {
        tools,
        dsn,
        keep_owner,
        timeout,
        lock_timeout,
        cancel,
        list,
    } = *run;
    let url = &dsn.url;
    if let (RestoreMode::Whole { clean: false }, Some(schema)) =
        (mode, &archive.backup.manifest.schema)
    {
        super::database::make_room_for_schema(dsn, schema).await?;
    }
    if let RestoreMode::Whole { .. } | RestoreMode::Definitions = mode {
        // pg_restore parses the archive itself: a truncated or corrupt stream is an error,
        // and --single-transaction rolls everything back. `feed` withholds the end of the
        // stream until the sha256 matched, and the gate below makes that end the one
        // pg_restore needs, so pg_restore cannot commit before that.
        let mut spec = writer_spec(tools.join("pg_restore"), dsn, lock_timeout)
            .arg("--single-transaction")
            .arg("--exit-on-error")
            .arg(format!("--dbname={url}"));
        if !keep_owner {
            spec = spec.arg("--no-owner");
        }
        if let Some(list) = list {
            spec = spec
                .arg("--no-privileges")
                .arg(format!("--use-list={}", list.display()));
        }
        match mode {
            RestoreMode::Whole { clean: true } => spec = spec.arg("--clean").arg("--if-exists"),
            RestoreMode::Definitions => spec = spec.arg("--schema-only"),
            _ => {}
        }
        // pg_restore COMMITs once it read the last data block it restores, wherever the
        // stream ends: a whole restore (every block) takes the archive only when that
        // block is its end. A restore with a list or of definitions stops earlier by
        // design, and goes into a scratch database only.
        let gate: Option<Box<dyn Gate>> = match (mode, list) {
            (RestoreMode::Whole { .. }, None) => Some(Box::new(super::custom::Framing::default())),
            _ => None,
        };
        let (child, stdin) = process::spawn_stdin(spec)?;
        let stop = child.stopper();
        let feeding = async {
            let r = match process::blocking_stdin(stdin) {
                Ok(stdin) => feed(archive, stdin, None, gate).await,
                Err(e) => Err(EngineError::io("the restore's input pipe")(e)),
            };
            if r.is_err() {
                stop.terminate();
            }
            r
        };
        let (fed, restored) = tokio::join!(feeding, child.wait(cancel, timeout));
        // A changed archive is the cause when both fail (pg_restore was stopped for it).
        fed?;
        return restored.map_err(EngineError::from);
    }
    if let RestoreMode::Globals = mode {
        // No psql: the statements go one by one over a plain connection (globals.rs), so
        // no stored byte is ever read by a client that runs commands.
        let sql = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let collect: crate::engine::archive::Check = {
            let sql = sql.clone();
            Box::new(move |chunk| {
                let mut sql = sql
                    .lock()
                    .map_err(|_| "globals buffer poisoned".to_string())?;
                if sql.len() + chunk.len() > super::globals::MAX_GLOBALS {
                    return Err(format!(
                        "the globals archive is larger than {} bytes; refused",
                        super::globals::MAX_GLOBALS
                    ));
                }
                sql.extend_from_slice(chunk);
                Ok(())
            })
        };
        // The sha256 is checked before a statement runs.
        feed(archive, io::sink(), Some(collect), None).await?;
        let sql = std::mem::take(&mut *sql.lock().unwrap_or_else(|p| p.into_inner()));
        let statements = super::globals::statements(&sql).map_err(EngineError::Refused)?;
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        for note in super::globals::apply(dsn, &statements).await? {
            tracing::info!(target = %archive.backup.target, "{note}");
        }
        return Ok(());
    }

    let psql = writer_spec(tools.join("psql"), dsn, lock_timeout)
        .arg("-X")
        .arg("-q")
        .arg("--set=ON_ERROR_STOP=1")
        .arg(format!("--dbname={url}"));
    let (psql_run, mut psql_in) = process::spawn_stdin(psql.arg("--file=-"))?;
    let psql_stop = psql_run.stopper();

    let mut first = Spec::new(tools.join("pg_restore")).arg("--file=-");
    // psql itself refuses every meta-command once pg_restore's first line `\restrict KEY`
    // is read, with a key that is random per run and never stored: what the guard below
    // might miss, psql does not run. Older clients have only the guard.
    let restricted = match super::tools::version_line(&tools.join("pg_restore")).await {
        Some(line) if super::tools::has_restrict_key(&line) => {
            let key = hex::encode(rand::random::<[u8; 16]>());
            first = first.arg(format!("--restrict-key={key}"));
            true
        }
        _ => false,
    };
    if !restricted {
        tracing::warn!(
            "pg_restore here predates --restrict-key (15.14, 16.10, 17.6): the schema restore relies on dbkeep's own check of psql commands only; upgrade the client tools"
        );
    }
    if !keep_owner {
        first = first.arg("--no-owner");
    }
    let mut prelude = String::from("BEGIN;\n");
    match mode {
        RestoreMode::Whole { clean: true } => first = first.arg("--clean").arg("--if-exists"),
        RestoreMode::Schema { name, from_full } => {
            prelude.push_str(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE;\n",
                quote_ident(name)
            ));
            if *from_full {
                first = first.arg(format!("--schema={name}"));
                prelude.push_str(&format!("CREATE SCHEMA {};\n", quote_ident(name)));
            }
        }
        _ => {}
    }
    let (pgr_run, pgr_in, mut pgr_out) = process::spawn_filter(first)?;
    let pgr_stop = pgr_run.stopper();

    let feeding = async {
        let r = match process::blocking_stdin(pgr_in) {
            Ok(pgr_in) => feed(archive, pgr_in, None, None).await,
            Err(e) => Err(EngineError::io("the restore's input pipe")(e)),
        };
        if r.is_err() {
            pgr_stop.terminate();
        }
        r
    };
    // pg_restore turns the archive into SQL for psql: a meta-command in it (a planted
    // archive) is refused before psql sees it, and nothing commits.
    let mut refused: Option<String> = None;
    let relaying = async {
        let r: io::Result<()> = async {
            psql_in.write_all(prelude.as_bytes()).await?;
            let mut guard = SqlGuard::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = pgr_out.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                if let Err(m) = guard.check(&buf[..n]) {
                    refused = Some(m);
                    return Err(io::Error::other("refused"));
                }
                psql_in.write_all(&buf[..n]).await?;
            }
            Ok(())
        }
        .await;
        if r.is_err() {
            // psql stopped reading (it failed): pg_restore must not block on a full pipe.
            pgr_stop.terminate();
        }
        r
    };
    let (fed, relayed, restored) = tokio::join!(feeding, relaying, pgr_run.wait(cancel, timeout));
    let ok = fed.is_ok() && relayed.is_ok() && restored.is_ok() && !cancel.is_cancelled();
    if ok {
        let committed: io::Result<()> = async {
            psql_in.write_all(b"COMMIT;\n").await?;
            psql_in.shutdown().await
        }
        .await;
        drop(psql_in);
        let done = psql_run.wait(cancel, timeout).await;
        committed.map_err(EngineError::io("psql stopped before COMMIT"))?;
        return done.map_err(EngineError::from);
    }
    // No COMMIT: psql ends and the server rolls the transaction back.
    psql_stop.terminate();
    drop(psql_in);
    let psql_result = psql_run.wait(cancel, timeout).await;
    // The most downstream failure explains the others (SIGPIPE, broken pipe).
    if let Err(e) = psql_result {
        if !matches!(e, ProcessError::Failed { ref status, .. } if status.contains("signal 15")) {
            return Err(e.into());
        }
    }
    if let Some(m) = refused {
        return Err(EngineError::Refused(m));
    }
    // A changed archive is the cause when it fails too (pg_restore was stopped for it).
    fed?;
    restored?;
    relayed.map_err(EngineError::io("relaying pg_restore's output to psql"))?;
    Err(EngineError::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toc_names_schemas_and_owners() {
        let text = ";\n; Archive created at 2026-11-21\n;\n\
            5; 2615 16385 SCHEMA - tenant_a alice\n\
            6; 2615 16386 SCHEMA - two words bob\n\
            215; 1259 16387 TABLE public t postgres\n\
            3320; 0 16387 TABLE DATA public t postgres\n\
            216; 1259 16390 VIEW tenant_a v alice\n";
        let toc = parse_toc(text);
        assert_eq!(
            toc.schemas.iter().map(String::as_str).collect::<Vec<_>>(),
            ["tenant_a", "two words"]
        );
        assert_eq!(
            toc.owners.iter().map(String::as_str).collect::<Vec<_>>(),
            ["alice", "bob", "postgres"]
        );
    }
}
