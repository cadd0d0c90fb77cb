//! Declared versus live schema: status, safe sync, versioned migrations behind a verified
//! backup, diffs against the declared schema or a past backup, and the fingerprint every
//! backup records.

pub mod diff;
pub mod introspect;
pub mod migrate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection};
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, BackupId};
use crate::config::{Declared, SchemaConfig, Secret, SourceConfig, Target};
use crate::job::{self, JobError};
use crate::restore::{self, RestoreError, Selector};
use crate::source::glob_match;
use crate::state::StateFile;
use crate::storage::Storage;

pub use diff::{Dialect, Difference};
pub use introspect::SchemaModel;
use migrate::{MigrationFile, MigrationState, MigrationStatus};

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("target {0} declares no schema: add [targets.{0}.schema] with migrations = \"<folder>\" or desired = \"<file.sql>\"")]
    NotConfigured(String),
    #[error("migrations folder {}: {message}", dir.display())]
    Migrations { dir: PathBuf, message: String },
    #[error("schema {schema}: migration {} failed{}: {message}; it was rolled back and later migrations were not applied", file.display(), line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    MigrationFailed {
        schema: String,
        version: i64,
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("schema {schema}: the applied migration {} was modified after it ran; restore the file as it was applied (e.g. from git) and put the change in a new migration", file.display())]
    Modified { schema: String, file: PathBuf },
    #[error("target {target}: {message}")]
    Database { target: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("the backup taken before changing the schema failed, so nothing was changed: {0}")]
    Backup(#[source] JobError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("{0}")]
    Other(String),
}

/// How to reach the target's database.
enum Live {
    Pg {
        url: String,
        password: Option<Secret>,
    },
    Sqlite(PathBuf),
}

enum Conn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

impl Live {
    fn of(target: &Target) -> Result<Live, SchemaError> {
        Ok(match &target.source {
            SourceConfig::Postgres(pg) => {
                let (url, password) = restore::split_password(&pg.url, pg.password.as_ref())?;
                Live::Pg { url, password }
            }
            SourceConfig::Sqlite(sq) => Live::Sqlite(sq.path.clone()),
        })
    }

    fn dialect(&self) -> Dialect {
        match self {
            Live::Pg { .. } => Dialect::Postgres,
            Live::Sqlite(_) => Dialect::Sqlite,
        }
    }

    async fn connect(&self, target: &str) -> Result<Conn, SchemaError> {
        match self {
            Live::Pg { url, password } => {
                Ok(Conn::Pg(restore::connect(url, password.as_ref()).await?))
            }
            Live::Sqlite(path) => Ok(Conn::Sqlite(sqlite_connect(path, target).await?)),
        }
    }
}

async fn sqlite_connect(path: &Path, target: &str) -> Result<SqliteConnection, SchemaError> {
    if !path.is_file() {
        return Err(db_err(
            target,
            format!(
                "{} does not exist; dbkeep never creates the database it manages",
                path.display()
            ),
        ));
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(60))
        .foreign_keys(true);
    SqliteConnection::connect_with(&opts)
        .await
        .map_err(|e| db_err(target, format!("cannot open {}: {e}", path.display())))
}

fn db_err(target: &str, message: impl std::fmt::Display) -> SchemaError {
    SchemaError::Database {
        target: target.to_string(),
        message: message.to_string(),
    }
}

fn config(target: &Target) -> Result<&SchemaConfig, SchemaError> {
    target
        .schema
        .as_ref()
        .ok_or_else(|| SchemaError::NotConfigured(target.name.clone()))
}

/// The schemas a target manages: the main one (where unqualified names land), then the
/// tenant schemas that exist and match `tenant_schemas`, sorted.
async fn managed_schemas(
    conn: &mut Conn,
    target: &Target,
    tenants: &[String],
) -> Result<Vec<String>, SchemaError> {
    match conn {
        Conn::Sqlite(_) => Ok(vec!["main".into()]),
        Conn::Pg(c) => {
            let main = introspect::pg_current_schema(c)
                .await
                .map_err(|e| db_err(&target.name, e))?;
            let mut out = vec![main.clone()];
            if !tenants.is_empty() {
                for s in introspect::pg_schemas(c)
                    .await
                    .map_err(|e| db_err(&target.name, e))?
                {
                    if s != main && tenants.iter().any(|p| glob_match(p, &s)) {
                        out.push(s);
                    }
                }
            }
            Ok(out)
        }
    }
}

async fn read_model(conn: &mut Conn, schema: &str) -> Result<SchemaModel, sqlx::Error> {
    match conn {
        Conn::Pg(c) => introspect::pg_schema(c, schema).await,
        Conn::Sqlite(c) => introspect::sqlite_schema(c).await,
    }
}

async fn read_applied(conn: &mut Conn, schema: &str) -> Result<Vec<migrate::Applied>, sqlx::Error> {
    match conn {
        Conn::Pg(c) => migrate::pg_applied(c, schema).await,
        Conn::Sqlite(c) => migrate::sqlite_applied(c).await,
    }
}

async fn close(conn: Conn) {
    let _ = match conn {
        Conn::Pg(c) => c.close().await,
        Conn::Sqlite(c) => c.close().await,
    };
}

fn load_migrations(sc: &SchemaConfig) -> Result<Vec<MigrationFile>, SchemaError> {
    match &sc.declared {
        Declared::Migrations(dir) => migrate::load(dir),
        Declared::Desired(_) => Ok(Vec::new()),
    }
}

// ---------------------------------------------------------------- the declared schema

/// Apply the declared schema to a fresh database and read it back: a scratch database on
/// the target's server (PostgreSQL) or an in-memory database (SQLite). The scratch
/// database is dropped also when building fails.
pub async fn declared_model(target: &Target) -> Result<SchemaModel, SchemaError> {
    let sc = config(target)?;
    let files = load_migrations(sc)?;
    match &target.source {
        SourceConfig::Postgres(pg) => {
            let (url, password) = restore::scratch_database(pg, &target.name, "schema", None)
                .await
                .map_err(|e| {
                    SchemaError::Other(format!(
                        "the declared schema is built in a scratch database on the target's server, and that failed: {e}; the role needs CREATEDB (ALTER ROLE <role> CREATEDB)"
                    ))
                })?;
            let built = async {
                let mut conn = restore::connect(&url, password.as_ref()).await?;
                let main = introspect::pg_current_schema(&mut conn)
                    .await
                    .map_err(|e| db_err(&target.name, e))?;
                apply_declared(&mut Conn::Pg(conn), sc, &files, &main, target).await
            }
            .await;
            let dropped = restore::drop_database(&url, password.as_ref()).await;
            let model = built?;
            dropped?;
            Ok(model)
        }
        SourceConfig::Sqlite(_) => {
            let opts = SqliteConnectOptions::from_str("sqlite::memory:")
                .map_err(|e| SchemaError::Other(e.to_string()))?
                .foreign_keys(true);
            let conn = SqliteConnection::connect_with(&opts)
                .await
                .map_err(|e| SchemaError::Other(format!("in-memory SQLite: {e}")))?;
            apply_declared(&mut Conn::Sqlite(conn), sc, &files, "main", target).await
        }
    }
}

async fn apply_declared(
    conn: &mut Conn,
    sc: &SchemaConfig,
    files: &[MigrationFile],
    main: &str,
    target: &Target,
) -> Result<SchemaModel, SchemaError> {
    let label = "(declared, in a scratch database)";
    match &sc.declared {
        Declared::Migrations(_) => {
            let m = migrate::migrator(files, migrate::history_table(None));
            let r = match conn {
                Conn::Pg(c) => m.run_direct(None, c, false).await,
                Conn::Sqlite(c) => m.run_direct(None, c, false).await,
            };
            r.map_err(|e| migrate::explain(e, &format!("{main} {label}"), files, false))?;
        }
        Declared::Desired(file) => {
            let sql = std::fs::read_to_string(file)
                .map_err(|e| SchemaError::Other(format!("cannot read {}: {e}", file.display())))?;
            let r = match conn {
                Conn::Pg(c) => sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *c).await,
                Conn::Sqlite(c) => sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(&mut *c)
                    .await
                    .map(|_| Default::default()),
            };
            r.map_err(|e| {
                SchemaError::Other(format!(
                    "{} does not apply to an empty database: {e}",
                    file.display()
                ))
            })?;
        }
    }
    read_model(conn, main)
        .await
        .map_err(|e| db_err(&target.name, e))
}

// ---------------------------------------------------------------- status

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SchemaReport {
    pub schema: String,
    pub fingerprint: String,
    pub migrations: Vec<MigrationStatus>,
    pub differences: Vec<Difference>,
}

impl SchemaReport {
    pub fn in_sync(&self) -> bool {
        self.differences.is_empty()
            && self
                .migrations
                .iter()
                .all(|m| m.state == MigrationState::Applied)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusReport {
    pub target: String,
    pub kind: String,
    /// The folder or file the schema is declared in.
    #[schema(value_type = String)]
    pub declared: PathBuf,
    pub declared_fingerprint: String,
    pub in_sync: bool,
    pub schemas: Vec<SchemaReport>,
}

pub async fn status(target: &Target) -> Result<StatusReport, SchemaError> {
    let sc = config(target)?;
    let files = load_migrations(sc)?;
    let declared = declared_model(target).await?;
    let live = Live::of(target)?;
    let mut conn = live.connect(&target.name).await?;
    let result = async {
        let schemas = managed_schemas(&mut conn, target, &sc.tenant_schemas).await?;
        let mut reports = Vec::new();
        for schema in schemas {
            let model = read_model(&mut conn, &schema)
                .await
                .map_err(|e| db_err(&target.name, e))?;
            let applied = read_applied(&mut conn, &schema)
                .await
                .map_err(|e| db_err(&target.name, e))?;
            reports.push(SchemaReport {
                fingerprint: model.fingerprint(),
                migrations: migrate::statuses(&files, &applied),
                differences: diff::diff(&declared, &model, "declared"),
                schema,
            });
        }
        Ok::<_, SchemaError>(reports)
    }
    .await;
    close(conn).await;
    let schemas = result?;
    Ok(StatusReport {
        target: target.name.clone(),
        kind: match live {
            Live::Pg { .. } => "postgres".into(),
            Live::Sqlite(_) => "sqlite".into(),
        },
        declared: match &sc.declared {
            Declared::Migrations(p) | Declared::Desired(p) => p.clone(),
        },
        declared_fingerprint: declared.fingerprint(),
        in_sync: schemas.iter().all(SchemaReport::in_sync),
        schemas,
    })
}

/// Human-readable status, one block per schema.
pub fn render_status(r: &StatusReport) -> String {
    let mut out = format!(
        "{} ({}), declared in {}: {}\n",
        r.target,
        r.kind,
        r.declared.display(),
        if r.in_sync { "in sync" } else { "DRIFT" }
    );
    for s in &r.schemas {
        let count = |st: MigrationState| s.migrations.iter().filter(|m| m.state == st).count();
        out.push_str(&format!(
            "  schema {}: {}\n",
            s.schema,
            if s.in_sync() { "in sync" } else { "drift" }
        ));
        if !s.migrations.is_empty() {
            out.push_str(&format!(
                "    migrations: {} applied, {} pending, {} modified, {} missing, {} failed\n",
                count(MigrationState::Applied),
                count(MigrationState::Pending),
                count(MigrationState::Modified),
                count(MigrationState::Missing),
                count(MigrationState::Failed)
            ));
            for m in s
                .migrations
                .iter()
                .filter(|m| m.state != MigrationState::Applied)
            {
                out.push_str(&format!(
                    "      {:<8} {:04} {} ({})\n",
                    format!("{:?}", m.state).to_lowercase(),
                    m.version,
                    m.description,
                    m.file.as_deref().unwrap_or("file missing")
                ));
            }
        }
        if !s.differences.is_empty() {
            out.push_str(&format!("    {} difference(s):\n", s.differences.len()));
            for d in &s.differences {
                out.push_str(&format!("      {}\n", d.message));
            }
        }
    }
    out
}

// ---------------------------------------------------------------- sync

/// The tables `schema sync` would create, per schema.
#[derive(Debug, Clone, Serialize)]
pub struct SyncPlan {
    pub target: String,
    pub schemas: Vec<(String, Vec<String>)>,
}

impl SyncPlan {
    pub fn is_empty(&self) -> bool {
        self.schemas.iter().all(|(_, s)| s.is_empty())
    }
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (schema, stmts) in &self.schemas {
            if stmts.is_empty() {
                continue;
            }
            out.push_str(&format!("-- schema {schema}\n"));
            for s in stmts {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

pub async fn plan_sync(target: &Target) -> Result<SyncPlan, SchemaError> {
    let sc = config(target)?;
    let declared = declared_model(target).await?;
    let live = Live::of(target)?;
    let mut conn = live.connect(&target.name).await?;
    let result = async {
        let mut schemas = Vec::new();
        for schema in managed_schemas(&mut conn, target, &sc.tenant_schemas).await? {
            let model = read_model(&mut conn, &schema)
                .await
                .map_err(|e| db_err(&target.name, e))?;
            schemas.push((
                schema,
                diff::sync_statements(&declared, &model, live.dialect()),
            ));
        }
        Ok::<_, SchemaError>(schemas)
    }
    .await;
    close(conn).await;
    Ok(SyncPlan {
        target: target.name.clone(),
        schemas: result?,
    })
}

/// Take the `pre-sync` backup, then run the plan in one transaction.
pub async fn apply_sync(
    target: &Target,
    plan: &SyncPlan,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    cancel: &CancellationToken,
) -> Result<BackupId, SchemaError> {
    let id = backup_first(target, storages, state, "pre-sync", cancel).await?;
    let live = Live::of(target)?;
    let conn = live.connect(&target.name).await?;
    let applied = match conn {
        Conn::Pg(mut c) => {
            let r = async {
                let mut tx = c.begin().await?;
                for (schema, stmts) in &plan.schemas {
                    if stmts.is_empty() {
                        continue;
                    }
                    sqlx::query("SELECT set_config('search_path', $1, true)")
                        .bind(introspect::quote_ident(schema))
                        .execute(&mut *tx)
                        .await?;
                    for s in stmts {
                        sqlx::raw_sql(AssertSqlSafe(s.clone()))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await
            }
            .await;
            let _ = c.close().await;
            r
        }
        Conn::Sqlite(mut c) => {
            let r = async {
                let mut tx = c.begin().await?;
                for s in plan.schemas.iter().flat_map(|(_, s)| s) {
                    sqlx::raw_sql(AssertSqlSafe(s.clone()))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await;
            let _ = c.close().await;
            r
        }
    };
    applied.map_err(|e| {
        db_err(
            &target.name,
            format!("sync failed and was rolled back, nothing was created: {e}"),
        )
    })?;
    Ok(id)
}

/// A fresh backup whose archives are re-read and checked against their sha256 before any
/// schema change; its id.
async fn backup_first(
    target: &Target,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    reason: &str,
    cancel: &CancellationToken,
) -> Result<BackupId, SchemaError> {
    let outcome = job::backup(target, storages, state, Some(reason), cancel)
        .await
        .map_err(SchemaError::Backup)?;
    let now = chrono::Utc::now();
    let mut checked = 0;
    for s in storages {
        let listing = catalog::list(s.as_ref(), &target.name, now)
            .await
            .map_err(|e| SchemaError::Other(e.to_string()))?;
        for b in listing.complete.iter().filter(|b| b.id == outcome.id) {
            restore::verify_checksum(s.as_ref(), b).await?;
            checked += 1;
        }
        if checked > 0 {
            break;
        }
    }
    if checked == 0 {
        return Err(SchemaError::Other(format!(
            "the {reason} backup {} is not listed after it was taken; nothing was changed",
            outcome.id
        )));
    }
    tracing::info!(target = %target.name, backup_id = %outcome.id, reason, archives = checked, "backup taken and verified before the schema change");
    Ok(outcome.id)
}

// ---------------------------------------------------------------- migrations

/// Where each schema stands against the migrations folder.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub target: String,
    /// The backup taken first (none when there was nothing to do).
    pub backup: Option<BackupId>,
    /// Per schema, the versions applied (up) or reverted (down).
    pub schemas: Vec<(String, Vec<i64>)>,
}

pub enum Direction {
    Up { to: Option<i64> },
    Down { steps: usize },
}

/// Apply pending migrations (or revert the newest) in the main schema and every tenant
/// schema, after a verified `pre-migrate` backup. Checks everything it can first: a
/// modified applied file, or a missing down file, refuses before anything is touched.
pub async fn migrate(
    target: &Target,
    direction: Direction,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    cancel: &CancellationToken,
) -> Result<MigrateReport, SchemaError> {
    let sc = config(target)?;
    let Declared::Migrations(_) = &sc.declared else {
        return Err(SchemaError::Refused(format!(
            "target {} declares its schema with a `desired` file, which has no versions: use `dbkeep schema sync` or `schema diff --sql`",
            target.name
        )));
    };
    let files = load_migrations(sc)?;
    let live = Live::of(target)?;
    let mut conn = live.connect(&target.name).await?;
    let planned = async {
        let mut plan: Vec<(String, Vec<i64>, i64)> = Vec::new();
        for schema in managed_schemas(&mut conn, target, &sc.tenant_schemas).await? {
            let applied = read_applied(&mut conn, &schema)
                .await
                .map_err(|e| db_err(&target.name, e))?;
            let st = migrate::statuses(&files, &applied);
            refuse_unclean(&schema, &st, &files)?;
            plan.push(match direction {
                Direction::Up { to } => {
                    let v: Vec<i64> = st
                        .iter()
                        .filter(|m| m.state == MigrationState::Pending)
                        .filter(|m| to.is_none_or(|t| m.version <= t))
                        .map(|m| m.version)
                        .collect();
                    (schema, v, to.unwrap_or(i64::MAX))
                }
                Direction::Down { steps } => {
                    let mut done: Vec<i64> = applied.iter().map(|a| a.version).collect();
                    done.sort_unstable_by(|a, b| b.cmp(a));
                    let revert: Vec<i64> = done.iter().take(steps).copied().collect();
                    for v in &revert {
                        let f = files.iter().find(|f| f.version == *v);
                        if f.is_none_or(|f| f.down_file.is_none()) {
                            return Err(SchemaError::Refused(format!(
                                "schema {schema}: migration {v} has no down file ({}); nothing was reverted",
                                f.map(|f| f.file_name().replace(".up.sql", ".down.sql"))
                                    .unwrap_or_else(|| format!("{v:04}_*.down.sql"))
                            )));
                        }
                    }
                    let to = done.get(steps).copied().unwrap_or(0);
                    (schema, revert, to)
                }
            });
        }
        Ok::<_, SchemaError>(plan)
    }
    .await;
    close(conn).await;
    let plan = planned?;
    let mut report = MigrateReport {
        target: target.name.clone(),
        backup: None,
        schemas: plan
            .iter()
            .map(|(s, _, _)| (s.clone(), Vec::new()))
            .collect(),
    };
    if plan.iter().all(|(_, v, _)| v.is_empty()) {
        return Ok(report);
    }
    report.backup = Some(backup_first(target, storages, state, "pre-migrate", cancel).await?);

    let main = plan[0].0.clone();
    for (i, (schema, versions, to)) in plan.iter().enumerate() {
        if versions.is_empty() {
            continue;
        }
        let mut conn = live.connect(&target.name).await?;
        let table = match conn {
            Conn::Pg(_) => migrate::history_table(Some(schema)),
            Conn::Sqlite(_) => migrate::history_table(None),
        };
        let m = migrate::migrator(&files, table);
        let down = matches!(direction, Direction::Down { .. });
        let r = match &mut conn {
            Conn::Pg(c) => {
                if *schema != main {
                    sqlx::query("SELECT set_config('search_path', $1, false)")
                        .bind(introspect::quote_ident(schema))
                        .execute(&mut *c)
                        .await
                        .map_err(|e| db_err(&target.name, e))?;
                }
                if down {
                    m.undo(&mut *c, *to).await
                } else {
                    m.run_direct(Some(*to), c, false).await
                }
            }
            Conn::Sqlite(c) => {
                if down {
                    m.undo(&mut *c, *to).await
                } else {
                    m.run_direct(Some(*to), c, false).await
                }
            }
        };
        close(conn).await;
        if let Err(e) = r {
            return Err(migrate::explain(e, schema, &files, down));
        }
        report.schemas[i].1 = versions.clone();
    }
    Ok(report)
}

fn refuse_unclean(
    schema: &str,
    st: &[MigrationStatus],
    files: &[MigrationFile],
) -> Result<(), SchemaError> {
    for m in st {
        match m.state {
            MigrationState::Modified => {
                let file = files
                    .iter()
                    .find(|f| f.version == m.version)
                    .map(|f| f.up_file.clone())
                    .unwrap_or_default();
                return Err(SchemaError::Modified {
                    schema: schema.to_string(),
                    file,
                });
            }
            MigrationState::Missing => {
                return Err(SchemaError::Refused(format!(
                    "schema {schema}: migration {} ({}) was applied but its file is gone from the folder; put it back before migrating",
                    m.version, m.description
                )))
            }
            MigrationState::Failed => {
                return Err(SchemaError::Refused(format!(
                    "schema {schema}: migration {} is recorded as failed half way; repair the schema by hand and delete its row from _sqlx_migrations",
                    m.version
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every schema's applied history, oldest first, with the file each row came from.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub schema: String,
    #[serde(flatten)]
    pub applied: migrate::Applied,
    pub file: Option<String>,
    pub modified: bool,
}

pub async fn history(target: &Target) -> Result<Vec<HistoryRow>, SchemaError> {
    let sc = config(target)?;
    let files = load_migrations(sc)?;
    let live = Live::of(target)?;
    let mut conn = live.connect(&target.name).await?;
    let result = async {
        let mut out = Vec::new();
        for schema in managed_schemas(&mut conn, target, &sc.tenant_schemas).await? {
            for a in read_applied(&mut conn, &schema)
                .await
                .map_err(|e| db_err(&target.name, e))?
            {
                let f = files.iter().find(|f| f.version == a.version);
                out.push(HistoryRow {
                    schema: schema.clone(),
                    file: f.map(MigrationFile::file_name),
                    modified: f.is_some_and(|f| f.checksum() != a.checksum.as_slice()),
                    applied: a,
                });
            }
        }
        Ok(out)
    }
    .await;
    close(conn).await;
    result
}

// ---------------------------------------------------------------- diff

#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub target: String,
    /// `declared` or `backup <id>`.
    pub reference: String,
    pub schemas: Vec<SchemaDiff>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchemaDiff {
    pub schema: String,
    pub differences: Vec<Difference>,
    /// A proposed migration: additive statements, destructive ones commented out.
    pub sql: Vec<String>,
}

/// Live against declared, or against the schema inside a past backup (restored, without
/// rows, into a scratch database on PostgreSQL; unpacked into a scratch file on SQLite).
pub async fn diff(
    target: &Target,
    against: Option<&Selector>,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    cancel: &CancellationToken,
) -> Result<DiffReport, SchemaError> {
    let tenants: &[String] = target
        .schema
        .as_ref()
        .map(|s| s.tenant_schemas.as_slice())
        .unwrap_or(&[]);
    let live = Live::of(target)?;
    let mut conn = live.connect(&target.name).await?;
    let lived = async {
        let mut models = Vec::new();
        for schema in managed_schemas(&mut conn, target, tenants).await? {
            let m = read_model(&mut conn, &schema)
                .await
                .map_err(|e| db_err(&target.name, e))?;
            models.push((schema, m));
        }
        Ok::<_, SchemaError>(models)
    }
    .await;
    close(conn).await;
    let live_models = lived?;

    let (reference, refs): (String, BTreeMap<String, SchemaModel>) = match against {
        None => {
            let declared = declared_model(target).await?;
            let refs = live_models
                .iter()
                .map(|(s, _)| (s.clone(), declared.clone()))
                .collect();
            ("declared".into(), refs)
        }
        Some(sel) => {
            let (id, refs) =
                backup_models(target, sel, storages, state, &live_models, cancel).await?;
            (format!("backup {id}"), refs)
        }
    };
    let dialect = live.dialect();
    let schemas = live_models
        .iter()
        .map(|(schema, model)| {
            let empty = SchemaModel::default();
            let r = refs.get(schema).unwrap_or(&empty);
            let differences = diff::diff(r, model, &reference);
            let sql = diff::proposal(r, &differences, dialect);
            SchemaDiff {
                schema: schema.clone(),
                differences,
                sql,
            }
        })
        .collect();
    Ok(DiffReport {
        target: target.name.clone(),
        reference,
        schemas,
    })
}

async fn backup_models(
    target: &Target,
    sel: &Selector,
    storages: &[Box<dyn Storage>],
    state: &StateFile,
    live_models: &[(String, SchemaModel)],
    cancel: &CancellationToken,
) -> Result<(BackupId, BTreeMap<String, SchemaModel>), SchemaError> {
    let chosen = restore::choose(target, storages, sel, false).await?;
    let storage = storages[chosen.storage].as_ref();
    restore::verify_checksum(storage, &chosen.backup).await?;
    let mut out = BTreeMap::new();
    match &target.source {
        SourceConfig::Postgres(pg) => {
            let (url, password) =
                restore::scratch_database(pg, &target.name, "diff", pg.drill_url.as_deref())
                    .await?;
            let read = async {
                let tools = restore::restore_tools(
                    pg,
                    &url,
                    password.as_ref(),
                    &chosen.backup.manifest,
                    &target.name,
                )
                .await?;
                restore::pg_restore(
                    &tools,
                    &url,
                    password.as_ref(),
                    storage,
                    &chosen.backup,
                    &restore::Mode::Definitions,
                    false,
                    target.timeout,
                    cancel,
                )
                .await?;
                let mut c = restore::connect(&url, password.as_ref()).await?;
                for (schema, _) in live_models {
                    let m = introspect::pg_schema(&mut c, schema)
                        .await
                        .map_err(|e| db_err(&target.name, e))?;
                    out.insert(schema.clone(), m);
                }
                let _ = c.close().await;
                Ok::<_, SchemaError>(())
            }
            .await;
            let dropped = restore::drop_database(&url, password.as_ref()).await;
            read?;
            dropped?;
        }
        SourceConfig::Sqlite(_) => {
            let dir = crate::storage::scratch_dir(storages, &target.name, state.work_dir());
            let scratch = crate::storage::local::ScratchFile::reserve(&dir, "diff.sqlite");
            let path = scratch.path().to_path_buf();
            let read = async {
                restore::sqlite_restore(storage, &chosen.backup, &path, false).await?;
                let mut c = sqlite_connect(&path, &target.name).await?;
                let m = introspect::sqlite_schema(&mut c)
                    .await
                    .map_err(|e| db_err(&target.name, e))?;
                let _ = c.close().await;
                out.insert("main".to_string(), m);
                Ok::<_, SchemaError>(())
            }
            .await;
            let _ = std::fs::remove_file(&path);
            read?;
        }
    }
    Ok((chosen.backup.id, out))
}

// ---------------------------------------------------------------- fingerprints

/// The fingerprint of the live database (all user schemas), and of each schema: what a
/// backup records in its manifests.
pub async fn live_fingerprints(
    target: &Target,
) -> Result<(String, BTreeMap<String, String>), SchemaError> {
    let live = Live::of(target)?;
    let mut conn = live.connect(&target.name).await?;
    let result = async {
        let schemas = match &mut conn {
            Conn::Pg(c) => introspect::pg_schemas(c).await,
            Conn::Sqlite(_) => Ok(vec!["main".to_string()]),
        }
        .map_err(|e| db_err(&target.name, e))?;
        let mut models = BTreeMap::new();
        for s in schemas {
            let m = read_model(&mut conn, &s)
                .await
                .map_err(|e| db_err(&target.name, e))?;
            models.insert(s, m);
        }
        Ok::<_, SchemaError>(models)
    }
    .await;
    close(conn).await;
    let models = result?;
    let each = models
        .iter()
        .map(|(s, m)| (s.clone(), m.fingerprint()))
        .collect();
    Ok((introspect::fingerprint_all(&models), each))
}
