//! PostgreSQL: dumps with the server's own client binaries, restores in one transaction,
//! scratch databases on the target's (or the drill) server, catalog introspection.

pub mod conn;
pub mod custom;
pub mod database;
pub mod doctor;
pub mod dump;
pub mod globals;
pub mod hold;
pub mod introspect;
pub mod restore;
pub mod session;
pub mod sqlguard;
pub mod tables;
pub mod tools;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use self::conn::Dsn;
use self::session::PgSession;
use crate::config::PostgresConfig;
use crate::engine::model::{DatabaseInfo, TableEntry};
use crate::engine::{
    Archive, Destination, Dump, Engine, EngineError, Part, Prepared, Purpose, RestoreMode,
    RestoreOptions, Restorer, Scratch, Session,
};
use crate::process::Spec;

const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// A child of the client tools that talks to `dsn`'s server, its password in the
/// environment only.
fn client_spec(program: PathBuf, dsn: &Dsn) -> Spec {
    Spec::new(program)
        .env("PGAPPNAME", "dbkeep")
        .env("PGCONNECT_TIMEOUT", "15")
        .secret_env("PGPASSWORD", dsn.password.as_ref())
}

pub struct PostgresEngine {
    target: String,
    cfg: PostgresConfig,
    /// The target's own database.
    dsn: Dsn,
    timeout: Duration,
}

impl PostgresEngine {
    pub fn new(target: &str, cfg: PostgresConfig, timeout: Duration) -> Self {
        let dsn = Dsn {
            url: cfg.url.clone(),
            password: cfg.password.clone(),
        };
        PostgresEngine {
            target: target.to_string(),
            cfg,
            dsn,
            timeout,
        }
    }

    /// A child of the client tools, its password in the environment only.
    fn spec(&self, program: PathBuf) -> Spec {
        client_spec(program, &self.dsn)
    }

    /// Where a restore goes: the target's own database (a server target's archive: its
    /// own database on the server), or the URL given.
    fn dsn_of(&self, dest: &Destination, database: Option<&str>) -> Result<Dsn, EngineError> {
        match dest {
            Destination::Own => match database {
                Some(db) => self.dsn.with_database(db),
                None => Ok(self.dsn.clone()),
            },
            Destination::Other { to, password } => {
                let dsn = Dsn::parse(to, password.as_ref())?;
                if dsn.password.is_some() {
                    return Ok(dsn);
                }
                // The target's password goes only to the target's own role on its own
                // server; anywhere else it would be handed to someone else's server.
                let same_role = |u: &str| {
                    url::Url::parse(u).ok().map(|u| {
                        (
                            u.username().to_string(),
                            u.host_str().map(str::to_string),
                            u.port(),
                        )
                    })
                };
                if same_role(&dsn.url) == same_role(&self.dsn.url) {
                    Ok(Dsn {
                        password: self.dsn.password.clone(),
                        ..dsn
                    })
                } else {
                    Ok(dsn)
                }
            }
        }
    }

    async fn session(&self, dsn: &Dsn) -> Result<Box<dyn Session>, EngineError> {
        Ok(Box::new(PgSession {
            conn: dsn.connect().await?,
            location: dsn.location(),
        }))
    }

    async fn restore_into(
        &self,
        dsn: &Dsn,
        archive: Archive<'_>,
        mode: &RestoreMode,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let tools =
            restore::restore_tools(&self.cfg, dsn, &archive.backup.manifest, &self.target).await?;
        // A scratch database is the restoring role's own: owners are not kept there.
        let run = restore::Run {
            tools: &tools,
            dsn,
            keep_owner: self.cfg.restore_owner.unwrap_or(false),
            timeout: self.timeout,
            lock_timeout: self.cfg.lock_timeout,
            cancel,
            list: None,
        };
        restore::pg_restore(&run, archive, mode).await
    }

    /// The restorer of a checked destination: who will own the objects, and the tools.
    async fn restorer(
        &self,
        dsn: Dsn,
        archive: Archive<'_>,
        toc: &restore::Toc,
        over: bool,
        created: Option<Dsn>,
    ) -> Result<Box<dyn Restorer>, EngineError> {
        let manifest = &archive.backup.manifest;
        let owners: Vec<String> = toc.owners.iter().cloned().collect();
        let (keep_owner, notes) = match self.cfg.restore_owner {
            Some(keep) => (keep, Vec::new()),
            None if owners.is_empty() => (true, Vec::new()),
            None => {
                let (missing, me) = database::owners_not_kept(&dsn, &owners).await?;
                if missing.is_empty() {
                    (true, Vec::new())
                } else {
                    (false, vec![format!(
                        "objects come back owned by {me}: the restoring role cannot be {} (not a member, or the role does not exist here); grant it membership, or set `restore_owner = false` to make this the rule",
                        missing.join(", ")
                    )])
                }
            }
        };
        let tools = restore::restore_tools(&self.cfg, &dsn, manifest, &self.target).await?;
        Ok(Box::new(PgRestorer {
            run: RestoreRun {
                tools,
                dsn,
                keep_owner,
                timeout: self.timeout,
                lock_timeout: self.cfg.lock_timeout,
            },
            notes,
            over,
            created,
        }))
    }

    async fn read_info(&self, out: &mut DatabaseInfo) -> Result<(), EngineError> {
        let mut c = self.dsn.connect().await?;
        let what = format!("reading the catalog of {}", self.dsn.location());
        let (version, size): (String, i64) = sqlx::query_as(
            "SELECT current_setting('server_version'), pg_database_size(current_database())",
        )
        .fetch_one(&mut c)
        .await
        .map_err(EngineError::db(what.clone()))?;
        let rows: Vec<(String, String, f32)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, c.reltuples FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') \
             AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' ORDER BY 1, 2",
        )
        .fetch_all(&mut c)
        .await
        .map_err(EngineError::db(what))?;
        let _ = sqlx::Connection::close(c).await;
        out.server_version = Some(version);
        out.size_bytes = Some(size);
        out.tables = rows
            .into_iter()
            .map(|(schema, name, est)| TableEntry {
                schema: Some(schema),
                name,
                rows: (est >= 0.0).then_some(est as i64),
            })
            .collect();
        Ok(())
    }
}

#[async_trait]
impl Engine for PostgresEngine {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        self.dsn.location()
    }

    async fn try_hold(
        &self,
        kind: crate::engine::HoldKind,
    ) -> Result<Option<Box<dyn crate::engine::Hold>>, EngineError> {
        // The target and its database: two deployments that happen to share a target name
        // on one server do not lock each other out.
        let scope = format!(
            "{}/{}",
            self.target,
            self.dsn.database().unwrap_or_default()
        );
        hold::try_hold(&self.dsn, kind, &scope).await
    }

    async fn data_directory(&self) -> Option<PathBuf> {
        let mut conn = self.dsn.connect().await.ok()?;
        let dir = dump::visible_data_dir(&mut conn).await;
        let _ = sqlx::Connection::close(conn).await;
        dir
    }

    async fn ping(&self) -> Result<(), EngineError> {
        let mut conn = self.dsn.connect_within(PING_TIMEOUT).await?;
        let r = sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(EngineError::db(format!("pinging {}", self.dsn.location())));
        let _ = sqlx::Connection::close(conn).await;
        r.map(|_| ())
    }

    async fn prepare(&self) -> Result<Prepared, EngineError> {
        dump::prepare(self).await
    }

    async fn open(
        &self,
        prepared: &Prepared,
        part: &Part,
        _scratch: &Path,
        cancel: &CancellationToken,
    ) -> Result<Dump, EngineError> {
        dump::open(self, prepared, part, cancel)
    }

    async fn info(&self) -> DatabaseInfo {
        DatabaseInfo::gather(&self.target, "postgres", self.dsn.location(), async |out| {
            self.read_info(out).await
        })
        .await
    }

    fn destination(
        &self,
        into: Option<&str>,
        password: Option<crate::config::Secret>,
    ) -> Result<Destination, EngineError> {
        match into {
            None => Ok(Destination::Own),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Destination::Other {
                    to: u.to_string(),
                    password,
                })
            }
            Some(u) => Err(EngineError::Refused(format!(
                "--into {:?}: a postgres target restores into a URL such as postgres://user@host/newdb",
                conn::redact(u)
            ))),
        }
    }

    async fn is_own_place(&self, dest: &Destination, database: Option<&str>) -> bool {
        let Destination::Other { to, .. } = dest else {
            return false;
        };
        let (Ok(other), Ok(own)) = (
            Dsn::parse(to, None),
            self.dsn_of(&Destination::Own, database),
        ) else {
            return false;
        };
        // host:port/database on both sides (`localhost` and `127.0.0.1` are not matched:
        // this catches the target's own URL given again, not every alias). A database that
        // is gone from the server is recreated `--into` it, not restored over.
        if other.location() != own.location() {
            return false;
        }
        match database {
            Some(db) => database::exists(&self.dsn, db).await.unwrap_or(false),
            None => true,
        }
    }

    fn describe(&self, dest: &Destination, database: Option<&str>) -> String {
        match dest {
            Destination::Own => format!(
                "target {}'s own database {}",
                self.target,
                self.dsn_of(dest, database)
                    .map(|d| d.location())
                    .unwrap_or_else(|_| self.dsn.location())
            ),
            Destination::Other { to, .. } => conn::redact(to),
        }
    }

    fn supports(&self, _mode: &RestoreMode) -> Result<(), EngineError> {
        Ok(())
    }

    async fn begin_restore(
        &self,
        dest: &Destination,
        archive: Archive<'_>,
        mode: &RestoreMode,
        opts: &RestoreOptions,
    ) -> Result<Box<dyn Restorer>, EngineError> {
        let manifest = &archive.backup.manifest;
        let dsn = self.dsn_of(dest, manifest.database.as_deref())?;
        if let (Destination::Own, Some(db)) = (dest, &manifest.database) {
            if !database::exists(&self.dsn, db).await? {
                return Err(EngineError::Refused(format!(
                    "database {db:?} is no longer on the server of target {}, so there is no own database to restore over; restore it with --into postgres://USER@HOST/{} (a missing database is created), or create it empty (CREATE DATABASE {}) and run this again",
                    self.target,
                    crate::catalog::encode_name(db),
                    crate::engine::model::quote_ident(db)
                )));
            }
        }
        // A pg_restore that reads the archive, for its table of contents; the one that
        // restores is chosen for the destination server below.
        let dump_major = manifest
            .tools
            .dump_tool
            .as_deref()
            .and_then(tools::parse_tool_major)
            .unwrap_or(0);
        let toc_tools = tools::find_tool_dir(
            "pg_restore",
            dump_major,
            self.cfg.pg_bin_dir.as_deref(),
            &self.target,
        )
        .await?
        .0;
        // Globals are SQL for psql, not an archive pg_restore can list (and name no owners).
        let needs_toc = match mode {
            RestoreMode::Globals => false,
            RestoreMode::Schema { .. } => true,
            _ => self.cfg.restore_owner.is_none(),
        };
        let toc = if needs_toc {
            restore::toc(&toc_tools, archive).await?
        } else {
            restore::Toc::default()
        };
        if let RestoreMode::Schema { name, from_full } = mode {
            check_schema(name, *from_full, archive, &toc)?;
            let outside = database::dependents_outside(&dsn, name).await?;
            if !outside.is_empty() && !opts.drop_dependents {
                return Err(EngineError::Refused(format!(
                    "replacing schema {name} drops {} object(s) outside it that depend on it and are not in the archive: {}; nothing was changed. Add --drop-dependents to go on (they are gone afterwards), or restore the whole database",
                    outside.len(),
                    outside.join(", ")
                )));
            }
        }
        // A whole database restored over a non-empty one (`--yes`) drops what the archive
        // holds first, as a restore over the target's own database does.
        let mut over = false;
        let mut created = None;
        if let Destination::Other { .. } = dest {
            match database::prepare(&dsn, opts.yes).await? {
                database::Prepared::NotEmpty => {
                    over = archive.backup.contents == crate::catalog::Contents::Database
                }
                database::Prepared::Created if opts.discard_created => created = Some(dsn.clone()),
                database::Prepared::Created => {}
                database::Prepared::Empty => {}
            }
        }
        let ready = self
            .restorer(dsn, archive, &toc, over, created.clone())
            .await;
        if let (Err(_), Some(made)) = (&ready, &created) {
            drop_created(made).await;
        }
        ready
    }

    async fn connect(&self) -> Result<Box<dyn Session>, EngineError> {
        self.session(&self.dsn).await
    }

    async fn restore_tables(
        &self,
        archive: Archive<'_>,
        copies: &[crate::engine::TableCopy],
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<(Vec<crate::engine::TableRestored>, Vec<String>), EngineError> {
        tables::restore_tables(self, archive, copies, dir, cancel).await
    }

    async fn doctor(
        &self,
        wants: crate::engine::doctor::Wants,
    ) -> Vec<crate::engine::doctor::Check> {
        doctor::doctor(self, wants).await
    }

    async fn scratch_denied(&self, purpose: Purpose) -> Result<Option<String>, EngineError> {
        if matches!(purpose, Purpose::Drill | Purpose::Diff) && self.cfg.drill_url.is_some() {
            // A server named for the purpose: a role without rights there is a mistake to
            // report when the drill runs, not a state to live with.
            return Ok(None);
        }
        database::scratch_denied(&self.dsn, purpose).await
    }

    async fn scratch(
        &self,
        purpose: Purpose,
        _dir: &Path,
    ) -> Result<Box<dyn Scratch>, EngineError> {
        let server = match (purpose, &self.cfg.drill_url) {
            (Purpose::Drill | Purpose::Diff, Some(u)) => Dsn::parse(u, self.cfg.password.as_ref())?,
            _ => self.dsn.clone(),
        };
        let dsn = database::create_scratch(&server, &self.target, purpose.word()).await?;
        Ok(Box::new(PgScratch {
            engine: PostgresEngine::new(&self.target, self.cfg.clone(), self.timeout),
            dsn,
        }))
    }
}

/// How a checked restore runs: its tools, destination and owner rule.
struct RestoreRun {
    tools: PathBuf,
    dsn: Dsn,
    keep_owner: bool,
    timeout: Duration,
    lock_timeout: Duration,
}

impl RestoreRun {
    async fn restore(
        &self,
        archive: Archive<'_>,
        mode: &RestoreMode,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let run = restore::Run {
            tools: &self.tools,
            dsn: &self.dsn,
            keep_owner: self.keep_owner,
            timeout: self.timeout,
            lock_timeout: self.lock_timeout,
            cancel,
            list: None,
        };
        restore::pg_restore(&run, archive, mode).await
    }
}

/// A schema to replace must be in the archive: a per-schema archive holds its own, a
/// whole-database one the schemas its tables or its table of contents name.
fn check_schema(
    name: &str,
    from_full: bool,
    archive: Archive<'_>,
    toc: &restore::Toc,
) -> Result<(), EngineError> {
    let m = &archive.backup.manifest;
    if !from_full {
        return match &m.schema {
            Some(s) if s == name => Ok(()),
            _ => Err(EngineError::Refused(format!(
                "{} is not an archive of schema {name}; nothing was changed",
                archive.backup.file
            ))),
        };
    }
    // `pg_restore --list` prints a newline in a name as a space: its names are compared
    // in that form, and one that is only the printed form of another schema the manifest
    // names exactly (`new\nline` for `new line`) is not taken for it.
    let printed = |s: &str| s.replace(['\n', '\r'], " ");
    let exact: Vec<&str> = m
        .tables
        .iter()
        .filter_map(|t| t.schema.as_deref())
        .collect();
    let in_tables = exact.contains(&name);
    let shadowed = exact
        .iter()
        .any(|s| *s != name && printed(s) == printed(name));
    if in_tables || (!shadowed && toc.schemas.contains(&printed(name))) || name == "public" {
        return Ok(());
    }
    let mut have: Vec<String> = exact.iter().map(|s| s.to_string()).collect();
    for s in &toc.schemas {
        if !exact.iter().any(|e| printed(e) == *s) && !have.contains(s) {
            have.push(s.clone());
        }
    }
    have.sort();
    Err(EngineError::NotInArchive(format!(
        "backup {} has no schema {name:?} (it has: {}); nothing was changed",
        archive.backup.id,
        have.join(", ")
    )))
}

struct PgRestorer {
    run: RestoreRun,
    notes: Vec<String>,
    /// Goes over a non-empty database (`--into` one with `--yes`): cleaned first.
    over: bool,
    /// The database this restore created (`--into` a new one): dropped when it fails, so
    /// a failed restore leaves nothing behind.
    created: Option<Dsn>,
}

/// Drop a database a failed restore created; a failure to is logged, not raised (the
/// restore's own error is the one to report).
async fn drop_created(dsn: &Dsn) {
    match database::drop(dsn).await {
        Ok(()) => {
            tracing::info!(database = %dsn.location(), "dropped the database this failed restore created")
        }
        Err(e) => {
            tracing::warn!(database = %dsn.location(), error = %e, "the database this failed restore created was not dropped")
        }
    }
}

#[async_trait]
impl Restorer for PgRestorer {
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    async fn restore(
        self: Box<Self>,
        archive: Archive<'_>,
        mode: &RestoreMode,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let clean = RestoreMode::Whole { clean: true };
        let mode = match (self.over, mode) {
            (true, RestoreMode::Whole { clean: false }) => &clean,
            _ => mode,
        };
        let restored = self.run.restore(archive, mode, cancel).await;
        if let (Err(_), Some(made)) = (&restored, &self.created) {
            drop_created(made).await;
        }
        restored
    }
}

struct PgScratch {
    engine: PostgresEngine,
    dsn: Dsn,
}

#[async_trait]
impl Scratch for PgScratch {
    async fn restore(
        &self,
        archive: Archive<'_>,
        mode: &RestoreMode,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        self.engine
            .restore_into(&self.dsn, archive, mode, cancel)
            .await
    }

    async fn connect(&self) -> Result<Box<dyn Session>, EngineError> {
        self.engine.session(&self.dsn).await
    }

    async fn content(
        &self,
        backup: &crate::catalog::Manifest,
        cancel: &CancellationToken,
    ) -> Result<crate::catalog::Content, EngineError> {
        let e = &self.engine;
        let tools = restore::restore_tools(&e.cfg, &self.dsn, backup, &e.target).await?;
        let encoding = backup.content.as_ref().and_then(|c| c.encoding.as_deref());
        dump::content_of(&tools, &self.dsn, encoding, e.timeout, cancel).await
    }

    async fn discard(self: Box<Self>) -> Result<(), EngineError> {
        database::drop(&self.dsn).await
    }
}
