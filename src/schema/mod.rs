//! Declared versus live schema: status, safe sync, versioned migrations behind a verified
//! backup, diffs against the declared schema or a past backup. The database work goes
//! through the engine's [`Session`]; this module decides what to compare and change.

pub mod compare;
pub mod diff;
pub mod migrate;
pub mod migrations;
pub mod sync;

use std::path::PathBuf;

use serde::Serialize;

use crate::config::{Declared, SchemaConfig, Target};
use crate::engine::{self, glob_match, EngineError, MigrateStep, Purpose, SchemaModel, Session};
use crate::error::{Classify, ErrorKind};
use crate::ops::backup::BackupError;
use crate::ops::restore::RestoreError;
use crate::ops::Context;

pub use compare::{diff, DiffReport, SchemaDiff};
pub use diff::Difference;
pub use migrate::{baseline, migrate, BaselineReport, Direction, MigrateReport};
use migrations::{MigrationFile, MigrationState, MigrationStatus};
pub use sync::{apply_sync, plan_sync, SyncPlan};

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
    #[error("target {target}: {source}")]
    Engine {
        target: String,
        #[source]
        source: Box<EngineError>,
    },
    #[error("the declared schema is built in a scratch database, and that failed: {source}")]
    Scratch {
        #[source]
        source: Box<EngineError>,
        /// The target's database kind, for the hint.
        kind: &'static str,
    },
    #[error("{} does not apply to an empty database: {source}", file.display())]
    Desired {
        file: PathBuf,
        #[source]
        source: Box<EngineError>,
    },
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("the backup taken before changing the schema failed, so nothing was changed: {0}")]
    Backup(#[source] Box<BackupError>),
    #[error(transparent)]
    Restore(Box<RestoreError>),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("schema {schema}: {source}")]
    Migrate {
        schema: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("{0}")]
    Other(String),
}

impl From<RestoreError> for SchemaError {
    fn from(e: RestoreError) -> Self {
        SchemaError::Restore(Box::new(e))
    }
}

impl Classify for SchemaError {
    fn kind(&self) -> ErrorKind {
        match self {
            SchemaError::NotConfigured(_) => ErrorKind::Usage,
            SchemaError::Refused(_) => ErrorKind::Refused,
            SchemaError::Modified { .. } => ErrorKind::Conflict,
            SchemaError::Engine { source, .. }
            | SchemaError::Scratch { source, .. }
            | SchemaError::Desired { source, .. } => source.kind(),
            SchemaError::Read { source, .. } => crate::error::io_kind(source),
            SchemaError::Backup(e) => e.kind(),
            SchemaError::Restore(e) => e.kind(),
            SchemaError::Catalog(e) => e.kind(),
            SchemaError::Migrate { .. } => ErrorKind::Failed,
            SchemaError::Migrations { .. }
            | SchemaError::MigrationFailed { .. }
            | SchemaError::Other(_) => ErrorKind::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            SchemaError::Scratch {
                kind: "postgres", ..
            } => Some(
                "on PostgreSQL the declared schema is built in a scratch database on the target's server: the role needs CREATEDB (ALTER ROLE <role> CREATEDB)"
                    .into(),
            ),
            SchemaError::Engine { source, .. }
            | SchemaError::Scratch { source, .. }
            | SchemaError::Desired { source, .. } => source.hint(),
            SchemaError::Backup(e) => e.hint(),
            SchemaError::Restore(e) => e.hint(),
            _ => None,
        }
    }
}

/// Attach the target's name to an engine error.
pub(crate) fn on(target: &Target) -> impl Fn(EngineError) -> SchemaError + '_ {
    move |source| SchemaError::Engine {
        target: target.name.clone(),
        source: Box::new(source),
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
    session: &mut dyn Session,
    target: &Target,
    tenants: &[String],
) -> Result<Vec<String>, SchemaError> {
    let main = session.main_schema().await.map_err(on(target))?;
    let mut out = vec![main.clone()];
    if !tenants.is_empty() {
        for s in session.schemas().await.map_err(on(target))? {
            if s != main && tenants.iter().any(|p| glob_match(p, &s)) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn load_migrations(sc: &SchemaConfig) -> Result<Vec<MigrationFile>, SchemaError> {
    match &sc.declared {
        Declared::Migrations(dir) => migrations::load(dir),
        Declared::Desired(_) => Ok(Vec::new()),
    }
}

/// A connection to the target's live database.
async fn live(target: &Target) -> Result<Box<dyn Session>, SchemaError> {
    engine::build(target).connect().await.map_err(on(target))
}

// ---------------------------------------------------------------- the declared schema

/// Apply the declared schema to a fresh scratch database (on the target's server for
/// PostgreSQL, a scratch file for SQLite) and read it back. The scratch database is
/// dropped also when building fails.
pub async fn declared_model(ctx: &Context, target: &Target) -> Result<SchemaModel, SchemaError> {
    let sc = config(target)?;
    let files = load_migrations(sc)?;
    let key = declared_key(target, sc, &files)?;
    let mut cache = ctx.declared.lock().await;
    if let Some((_, model)) = cache.get(&target.name).filter(|(k, _)| *k == key) {
        return Ok(model.clone());
    }
    let model = build_declared(ctx, target, sc, &files).await?;
    cache.insert(target.name.clone(), (key, model.clone()));
    Ok(model)
}

/// What the declared schema is built from: the kind of database and every file's bytes.
fn declared_key(
    target: &Target,
    sc: &SchemaConfig,
    files: &[MigrationFile],
) -> Result<String, SchemaError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(target.source.kind().as_bytes());
    match &sc.declared {
        Declared::Migrations(dir) => {
            h.update(dir.to_string_lossy().as_bytes());
            for f in files {
                h.update(f.version.to_be_bytes());
                h.update(f.checksum());
            }
        }
        Declared::Desired(file) => {
            let sql = std::fs::read(file).map_err(|source| SchemaError::Read {
                file: file.clone(),
                source,
            })?;
            h.update(file.to_string_lossy().as_bytes());
            h.update(&sql);
        }
    }
    Ok(hex::encode(h.finalize()))
}

pub(super) async fn build_declared(
    ctx: &Context,
    target: &Target,
    sc: &SchemaConfig,
    files: &[MigrationFile],
) -> Result<SchemaModel, SchemaError> {
    Ok(build_in_scratch(ctx, target, sc, files, false).await?.0)
}

/// Everything the declared schema builds, for `migrate baseline`: the main schema's
/// model and the objects the model leaves out, and every other schema it creates.
pub(super) struct Reference {
    pub main: SchemaModel,
    pub main_inventory: Vec<String>,
    /// (schema, model, inventory) of the other schemas the migrations create.
    pub others: Vec<(String, SchemaModel, Vec<String>)>,
}

pub(super) async fn build_reference(
    ctx: &Context,
    target: &Target,
    sc: &SchemaConfig,
    files: &[MigrationFile],
) -> Result<Reference, SchemaError> {
    let (main, extras) = build_in_scratch(ctx, target, sc, files, true).await?;
    let (main_inventory, others) = extras.unwrap_or_default();
    Ok(Reference {
        main,
        main_inventory,
        others,
    })
}

type Extras = (Vec<String>, Vec<(String, SchemaModel, Vec<String>)>);

async fn build_in_scratch(
    ctx: &Context,
    target: &Target,
    sc: &SchemaConfig,
    files: &[MigrationFile],
    with_extras: bool,
) -> Result<(SchemaModel, Option<Extras>), SchemaError> {
    let dir = crate::ops::scratch_dir(ctx, target);
    let scratch = engine::build(target)
        .scratch(Purpose::Declared, &dir)
        .await
        .map_err(|source| SchemaError::Scratch {
            source: Box::new(source),
            kind: target.source.kind(),
        })?;
    let built = async {
        let mut session = scratch.connect().await.map_err(on(target))?;
        let r: Result<(SchemaModel, Option<Extras>), SchemaError> = async {
            let model = apply_declared(session.as_mut(), sc, files, target).await?;
            if !with_extras {
                return Ok((model, None));
            }
            let main = session.main_schema().await.map_err(on(target))?;
            let inventory = session.inventory(&main).await.map_err(on(target))?;
            let mut others = Vec::new();
            for s in session.schemas().await.map_err(on(target))? {
                if s != main {
                    let m = session.model(&s).await.map_err(on(target))?;
                    let inv = session.inventory(&s).await.map_err(on(target))?;
                    others.push((s, m, inv));
                }
            }
            Ok((model, Some((inventory, others))))
        }
        .await;
        session.close().await;
        r
    }
    .await;
    let dropped = scratch.discard().await.map_err(on(target));
    let model = built?;
    dropped?;
    Ok(model)
}

async fn apply_declared(
    session: &mut dyn Session,
    sc: &SchemaConfig,
    files: &[MigrationFile],
    target: &Target,
) -> Result<SchemaModel, SchemaError> {
    let main = session.main_schema().await.map_err(on(target))?;
    match &sc.declared {
        Declared::Migrations(_) => {
            let m = migrations::migrator(files, session.history_table(None));
            session
                .migrate(&m, None, MigrateStep::Up(None))
                .await
                .map_err(|e| {
                    migrations::explain(
                        e,
                        &format!("{main} (declared, in a scratch database)"),
                        files,
                        false,
                    )
                })?;
        }
        Declared::Desired(file) => {
            let sql = std::fs::read_to_string(file).map_err(|source| SchemaError::Read {
                file: file.clone(),
                source,
            })?;
            session
                .execute_script(&sql)
                .await
                .map_err(|source| SchemaError::Desired {
                    file: file.clone(),
                    source: Box::new(source),
                })?;
        }
    }
    session.model(&main).await.map_err(on(target))
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

/// Migrations and drift of every managed schema.
pub async fn status(ctx: &Context, target: &Target) -> Result<StatusReport, SchemaError> {
    let sc = config(target)?;
    let files = load_migrations(sc)?;
    let declared = declared_model(ctx, target).await?;
    let mut session = live(target).await?;
    let read = async {
        let schemas = managed_schemas(session.as_mut(), target, &sc.tenant_schemas).await?;
        let mut reports = Vec::new();
        for schema in schemas {
            let model = session.model(&schema).await.map_err(on(target))?;
            let applied = session.applied(&schema).await.map_err(on(target))?;
            reports.push(SchemaReport {
                fingerprint: model.fingerprint(),
                migrations: migrations::statuses(&files, &applied),
                differences: diff::diff(&declared, &model, "declared"),
                schema,
            });
        }
        Ok::<_, SchemaError>(reports)
    }
    .await;
    session.close().await;
    let schemas = read?;
    Ok(StatusReport {
        target: target.name.clone(),
        kind: target.source.kind().into(),
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
            crate::error::one_line(&s.schema),
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
                out.push_str(&format!("      {}\n", crate::error::one_line(&d.message)));
            }
        }
    }
    out
}

// ---------------------------------------------------------------- history

/// Every schema's applied history, oldest first, with the file each row came from.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub schema: String,
    #[serde(flatten)]
    pub applied: engine::Applied,
    pub file: Option<String>,
    pub modified: bool,
}

pub async fn history(target: &Target) -> Result<Vec<HistoryRow>, SchemaError> {
    let sc = config(target)?;
    let files = load_migrations(sc)?;
    let mut session = live(target).await?;
    let read = async {
        let mut out = Vec::new();
        for schema in managed_schemas(session.as_mut(), target, &sc.tenant_schemas).await? {
            for a in session.applied(&schema).await.map_err(on(target))? {
                let f = files.iter().find(|f| f.version == a.version);
                out.push(HistoryRow {
                    schema: schema.clone(),
                    file: f.map(MigrationFile::file_name),
                    modified: f.is_some_and(|f| f.checksum() != a.checksum.as_slice()),
                    applied: a,
                });
            }
        }
        Ok::<_, SchemaError>(out)
    }
    .await;
    session.close().await;
    read
}
