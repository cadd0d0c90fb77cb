//! Typed settings: built-in defaults < config file < `DBKEEP_` environment, validated once.
//!
//! Raw types mirror the TOML/env layout (`deny_unknown_fields`, every key optional);
//! [`validate`] turns them into [`Config`], which holds no `Option` the rest of the code
//! has to re-check. Every error names the key and says what to do.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Environment variables with the `DBKEEP_` prefix that are not config keys.
const NON_CONFIG_ENV: &[&str] = &["DBKEEP_CONFIG", "DBKEEP_LOG_FORMAT"];
const DEFAULT_CONFIG_PATHS: &[&str] = &["./dbkeep.toml", "/etc/dbkeep/dbkeep.toml"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("config: {0}")]
    Other(String),
}

fn key_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

/// A secret value: never printed, logged or serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

// ---------------------------------------------------------------- raw layout

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    defaults: RawPolicy,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    listen: Option<String>,
    shutdown_grace: Option<String>,
    max_concurrent: Option<i64>,
    work_dir: Option<String>,
    admin_token_file: Option<String>,
    admin_api: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    local: Option<RawLocalStorage>,
    s3: Option<RawS3>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    bucket: Option<String>,
    prefix: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    force_path_style: Option<bool>,
    access_key_id: Option<String>,
    access_key_id_file: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<String>,
    session_token: Option<String>,
    session_token_file: Option<String>,
    storage_class: Option<String>,
    sse: Option<String>,
    sse_kms_key_id: Option<String>,
    checksum: Option<String>,
    part_size: Option<String>,
    upload_concurrency: Option<i64>,
    max_attempts: Option<i64>,
    retry_base_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalStorage {
    path: Option<String>,
}

/// Keys a target inherits from `[defaults]` and may override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    schedule: Option<String>,
    every: Option<String>,
    compression: Option<String>,
    compression_level: Option<i64>,
    keep_days: Option<i64>,
    min_keep: Option<i64>,
    timeout: Option<String>,
    pg_bin_dir: Option<String>,
    cleanup_schedule: Option<String>,
    jitter: Option<String>,
    health_grace: Option<String>,
    keep_daily: Option<i64>,
    keep_weekly: Option<i64>,
    keep_monthly: Option<i64>,
    verify_schedule: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    kind: Option<String>,
    // postgres
    url: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    #[serde(default, deserialize_with = "list_or_csv")]
    schemas: Option<Vec<String>>,
    globals: Option<bool>,
    drill_url: Option<String>,
    restore_owner: Option<bool>,
    // sqlite
    path: Option<String>,
    // overrides of [defaults]; serde cannot `flatten` a RawPolicy here and still
    // deny unknown keys, so the fields are spelled out again.
    schedule: Option<String>,
    every: Option<String>,
    compression: Option<String>,
    compression_level: Option<i64>,
    keep_days: Option<i64>,
    min_keep: Option<i64>,
    timeout: Option<String>,
    pg_bin_dir: Option<String>,
    cleanup_schedule: Option<String>,
    jitter: Option<String>,
    health_grace: Option<String>,
    keep_daily: Option<i64>,
    keep_weekly: Option<i64>,
    keep_monthly: Option<i64>,
    verify_schedule: Option<String>,
    schema: Option<RawSchema>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    migrations: Option<String>,
    desired: Option<String>,
    #[serde(default, deserialize_with = "list_or_csv")]
    tenant_schemas: Option<Vec<String>>,
}

/// Accept a TOML array or, from the environment, a comma-separated string.
fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Option::<ListOrCsv>::deserialize(d)? {
        None => None,
        Some(ListOrCsv::List(v)) => Some(v),
        Some(ListOrCsv::Csv(s)) => Some(
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        ),
    })
}

// ---------------------------------------------------------------- the key list

/// Reads the field names a struct's `Deserialize` asks for, without data.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = serde::de::value::Error;
    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("field probe"))
    }
    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("field probe"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

/// Every environment variable dbkeep reads, derived from the config types themselves (so
/// the documented list cannot drift from what the loader accepts).
pub fn env_keys() -> Vec<String> {
    let mut out = vec!["DBKEEP_CONFIG".to_string(), "DBKEEP_LOG_FORMAT".to_string()];
    let section = |prefix: &str, fields: &[&str], out: &mut Vec<String>| {
        // `schema` is a nested section, listed with its own keys.
        for f in fields.iter().filter(|f| **f != "schema") {
            out.push(format!("{prefix}{}", f.to_ascii_uppercase()));
        }
    };
    section("DBKEEP_DAEMON__", fields_of::<RawDaemon>(), &mut out);
    section(
        "DBKEEP_STORAGE__LOCAL__",
        fields_of::<RawLocalStorage>(),
        &mut out,
    );
    section("DBKEEP_STORAGE__S3__", fields_of::<RawS3>(), &mut out);
    section("DBKEEP_DEFAULTS__", fields_of::<RawPolicy>(), &mut out);
    section(
        "DBKEEP_TARGETS__<NAME>__",
        fields_of::<RawTarget>(),
        &mut out,
    );
    section(
        "DBKEEP_TARGETS__<NAME>__SCHEMA__",
        fields_of::<RawSchema>(),
        &mut out,
    );
    for pg in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
        out.push(pg.to_string());
    }
    out
}

/// A postgres URL from libpq's own variables, for a target configured without `url`.
fn url_from_libpq_env() -> Option<String> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (host, db) = (get("PGHOST"), get("PGDATABASE"));
    if host.is_none() && db.is_none() {
        return None;
    }
    let user = get("PGUSER").unwrap_or_else(|| "postgres".into());
    let port = get("PGPORT").unwrap_or_else(|| "5432".into());
    let db = db.unwrap_or_else(|| user.clone());
    Some(match host.as_deref() {
        Some(h) if h.starts_with('/') => {
            format!("postgres://{user}@localhost:{port}/{db}?host={h}")
        }
        Some(h) => format!("postgres://{user}@{h}:{port}/{db}"),
        None => format!("postgres://{user}@localhost:{port}/{db}"),
    })
}

// ---------------------------------------------------------------- validated types

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file the settings came from, if any (a sidecar may have none).
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
    pub daemon: DaemonConfig,
    pub storage: StorageConfig,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonConfig {
    pub listen: String,
    /// Holds the state file, and scratch files when there is no local storage.
    pub work_dir: PathBuf,
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    pub max_concurrent: usize,
    /// The bearer token of the admin API; `None`: the admin API is off.
    pub admin_token: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageConfig {
    pub local: Option<LocalStorageConfig>,
    pub s3: Option<S3Config>,
}

#[derive(Debug, Clone, Serialize)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing '/', never empty.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub force_path_style: bool,
    /// Static keys; `None` uses the SDK's default chain (env, profile, web identity, IMDS).
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub storage_class: Option<String>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Send checksums only when the operation requires them (for stores that reject the
    /// newer default checksum headers, such as some R2 or older MinIO versions).
    pub checksum_when_required: bool,
    pub part_size: usize,
    pub upload_concurrency: usize,
    pub max_attempts: u32,
    #[serde(serialize_with = "ser_duration")]
    pub retry_base_delay: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalStorageConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub source: SourceConfig,
    pub schedule: Schedule,
    /// When restore drills run; `None`: never.
    pub verify_schedule: Option<Schedule>,
    /// When cleanup runs; `None`: right after each backup of the target.
    pub cleanup_schedule: Option<Schedule>,
    #[serde(serialize_with = "ser_duration")]
    pub jitter: Duration,
    /// How late a backup may be before the target is stale (after its next due time).
    #[serde(serialize_with = "ser_duration")]
    pub health_grace: Duration,
    pub compression: Compression,
    pub keep_days: u32,
    pub min_keep: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// The declared schema, when the target manages one.
    pub schema: Option<SchemaConfig>,
}

/// Where a target's declared schema comes from.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaConfig {
    pub declared: Declared,
    /// Patterns of schemas the migrations also apply to (PostgreSQL).
    pub tenant_schemas: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Declared {
    /// A folder of versioned migrations (`NNNN_name.up.sql` / `.down.sql`).
    Migrations(PathBuf),
    /// One file with the whole desired DDL.
    Desired(PathBuf),
}

impl Target {
    pub fn policy(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            keep_days: self.keep_days,
            min_keep: self.min_keep,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    Postgres(PostgresConfig),
    Sqlite(SqliteConfig),
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Postgres(_) => "postgres",
            SourceConfig::Sqlite(_) => "sqlite",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresConfig {
    /// Connection URL with any password removed (the password lives in `password`).
    pub url: String,
    /// A server where restore drills may create scratch databases (default: `url`'s server).
    pub drill_url: Option<String>,
    /// Keep object ownership on restore (needs a superuser); default `--no-owner`.
    pub restore_owner: bool,
    pub password: Option<Secret>,
    pub schemas: Vec<String>,
    pub globals: bool,
    pub pg_bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SqliteConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(String),
    Every(Duration),
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Schedule::Cron(c) => s.serialize_str(&format!("cron {c}")),
            Schedule::Every(d) => {
                s.serialize_str(&format!("every {}", humantime::format_duration(*d)))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd { level: i32 },
    Gzip { level: u32 },
    None,
}

impl Compression {
    /// The file-name extension of this codec (empty for none).
    pub fn extension(&self) -> &'static str {
        match self {
            Compression::Zstd { .. } => "zst",
            Compression::Gzip { .. } => "gz",
            Compression::None => "",
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Compression::Zstd { .. } => "zstd",
            Compression::Gzip { .. } => "gzip",
            Compression::None => "none",
        }
    }
}

impl Serialize for Compression {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Compression::Zstd { level } => s.serialize_str(&format!("zstd level {level}")),
            Compression::Gzip { level } => s.serialize_str(&format!("gzip level {level}")),
            Compression::None => s.serialize_str("none"),
        }
    }
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl Config {
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn target_names(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.name.as_str()).collect()
    }

    /// The effective configuration as TOML-like JSON, secrets shown as `***`.
    pub fn to_display_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }
}

// ---------------------------------------------------------------- loading

/// Where the config file comes from: `--config`, `$DBKEEP_CONFIG`, `./dbkeep.toml`,
/// `/etc/dbkeep/dbkeep.toml`, or none at all (env only).
pub fn find_config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(ConfigError::File {
                path: p.to_path_buf(),
                message: "no such file (check the --config path)".into(),
            });
        }
        return Ok(Some(p.to_path_buf()));
    }
    if let Ok(p) = std::env::var("DBKEEP_CONFIG") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(ConfigError::File {
                path: p,
                message: "no such file (named by DBKEEP_CONFIG)".into(),
            });
        }
        return Ok(Some(p));
    }
    Ok(DEFAULT_CONFIG_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file()))
}

/// Load defaults < file < environment and validate.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let env: std::collections::HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("DBKEEP_") && !NON_CONFIG_ENV.contains(&k.as_str()))
        .collect();
    let text = match file {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| ConfigError::File {
            path: p.to_path_buf(),
            message: e.to_string(),
        })?),
        None => None,
    };
    let mut cfg = load_from(text.as_deref(), env)?;
    cfg.source_file = file.map(Path::to_path_buf);
    Ok(cfg)
}

/// Load from TOML text and an explicit environment map (testable without touching the process env).
pub fn load_from(
    toml_text: Option<&str>,
    env: std::collections::HashMap<String, String>,
) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(text) = toml_text {
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("DBKEEP")
            .prefix_separator("_")
            .separator("__")
            .source(Some(env.into_iter().collect())),
    );
    let built = builder.build().map_err(|e| {
        ConfigError::Other(format!("{e} (check the TOML syntax near the line named)"))
    })?;
    let root: config::Value = built
        .try_deserialize()
        .map_err(|e| ConfigError::Other(e.to_string()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(root).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = if inner.contains("unknown field") {
            format!("{inner}; remove or rename it (see config/dbkeep.example.toml)")
        } else {
            inner
        };
        key_err(if key == "." { "<root>".into() } else { key }, message)
    })?;
    validate(raw)
}

// ---------------------------------------------------------------- validation

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let local = match raw.storage.local {
        None => None,
        Some(l) => match l.path.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => Some(LocalStorageConfig {
                path: PathBuf::from(p),
            }),
            _ => {
                return Err(key_err(
                    "storage.local.path",
                    "missing or empty: set the folder that holds local backups",
                ))
            }
        },
    };
    let s3 = raw.storage.s3.map(validate_s3).transpose()?;
    if local.is_none() && s3.is_none() {
        return Err(key_err(
            "storage.local.path",
            "no storage configured: add [storage.local] path = \"/var/lib/dbkeep/backups\" \
             (or DBKEEP_STORAGE__LOCAL__PATH), and/or a [storage.s3] section",
        ));
    }
    let work_dir = match raw.daemon.work_dir.as_deref().map(str::trim) {
        Some(w) if !w.is_empty() => PathBuf::from(w),
        _ => local
            .as_ref()
            .map(|l| l.path.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/dbkeep")),
    };

    let daemon = DaemonConfig {
        work_dir,
        listen: raw.daemon.listen.unwrap_or_else(|| "127.0.0.1:9187".into()),
        shutdown_grace: parse_duration(
            "daemon.shutdown_grace",
            raw.daemon.shutdown_grace.as_deref(),
            "5m",
        )?,
        max_concurrent: match raw.daemon.max_concurrent {
            None => 2,
            Some(n) if n >= 1 => n as usize,
            Some(n) => {
                return Err(key_err(
                    "daemon.max_concurrent",
                    format!("{n} is not allowed: set it to 1 or more"),
                ))
            }
        },
        admin_token: match (raw.daemon.admin_api, raw.daemon.admin_token_file.as_deref()) {
            (Some(false), _) => None,
            (_, Some(f)) if !f.trim().is_empty() => {
                Some(read_secret_file("daemon.admin_token_file", f.trim())?)
            }
            (Some(true), _) => {
                return Err(key_err(
                    "daemon.admin_token_file",
                    "admin_api = true needs a token: set admin_token_file to a file holding a long random token (the admin API never runs unauthenticated)",
                ))
            }
            _ => None,
        },
    };
    if let Some(t) = &daemon.admin_token {
        if t.expose().trim().len() < 16 {
            return Err(key_err(
                "daemon.admin_token_file",
                "the token is shorter than 16 characters: put a long random token in the file, e.g. `openssl rand -hex 32 > FILE`",
            ));
        }
    }
    if daemon.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(key_err(
            "daemon.listen",
            format!(
                "{:?} is not an address:port such as \"127.0.0.1:9187\"",
                daemon.listen
            ),
        ));
    }

    if raw.targets.is_empty() {
        return Err(ConfigError::Other(
            "no targets configured: add a [targets.NAME] section (or DBKEEP_TARGETS__NAME__KIND=postgres|sqlite)".into(),
        ));
    }
    let defaults = raw.defaults;
    let mut targets = Vec::new();
    for (name, t) in raw.targets {
        targets.push(validate_target(&name, t, &defaults)?);
    }
    Ok(Config {
        source_file: None,
        daemon,
        storage: StorageConfig { local, s3 },
        targets,
    })
}

fn validate_target(name: &str, t: RawTarget, defaults: &RawPolicy) -> Result<Target, ConfigError> {
    let k = |field: &str| format!("targets.{name}.{field}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(key_err(
            format!("targets.{name}"),
            "a target name may hold only lowercase letters, digits, '_' and '-' (it names folders and files)",
        ));
    }
    let o = &t;

    // Schedule: the target's own choice replaces the default's; exactly one of the two keys.
    let (sched_key, schedule, every) = if o.schedule.is_some() || o.every.is_some() {
        (
            format!("targets.{name}"),
            o.schedule.clone(),
            o.every.clone(),
        )
    } else {
        (
            "defaults".to_string(),
            defaults.schedule.clone(),
            defaults.every.clone(),
        )
    };
    let schedule = match (schedule, every) {
        (Some(_), Some(_)) => {
            return Err(key_err(
                format!("{sched_key}.every"),
                "both `schedule` and `every` are set: keep exactly one of them",
            ))
        }
        (Some(cron), None) => {
            parse_cron(&cron).map_err(|m| key_err(format!("{sched_key}.schedule"), m))?;
            Schedule::Cron(cron)
        }
        (None, Some(every)) => {
            let d = parse_duration(&format!("{sched_key}.every"), Some(&every), "")?;
            if d < Duration::from_secs(1) {
                return Err(key_err(format!("{sched_key}.every"), "must be at least 1s"));
            }
            Schedule::Every(d)
        }
        (None, None) => Schedule::Cron("0 2 * * *".into()),
    };

    let pick_str = |own: &Option<String>, def: &Option<String>| own.clone().or_else(|| def.clone());
    let pick_int = |own: Option<i64>, def: Option<i64>| own.or(def);
    let level_key = if o.compression_level.is_some() {
        k("compression_level")
    } else {
        "defaults.compression_level".into()
    };
    let comp_key = if o.compression.is_some() {
        k("compression")
    } else {
        "defaults.compression".into()
    };
    let level = pick_int(o.compression_level, defaults.compression_level);
    let compression = match pick_str(&o.compression, &defaults.compression)
        .as_deref()
        .unwrap_or("zstd")
    {
        "zstd" => {
            let level = level.unwrap_or(3);
            if !(1..=19).contains(&level) {
                return Err(key_err(
                    level_key,
                    format!("{level} is out of range for zstd: use 1 to 19 (3 is the default)"),
                ));
            }
            Compression::Zstd {
                level: level as i32,
            }
        }
        "gzip" => {
            let level = level.unwrap_or(6);
            if !(1..=9).contains(&level) {
                return Err(key_err(
                    level_key,
                    format!("{level} is out of range for gzip: use 1 to 9 (6 is the default)"),
                ));
            }
            Compression::Gzip {
                level: level as u32,
            }
        }
        "none" => Compression::None,
        other => {
            return Err(key_err(
                comp_key,
                format!("unknown compression {other:?}: use \"zstd\", \"gzip\" or \"none\""),
            ));
        }
    };

    let non_negative = |key: String, v: Option<i64>, default: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if (0..=u32::MAX as i64).contains(&n) => Ok(n as u32),
            Some(n) => Err(key_err(
                key,
                format!("{n} is not allowed: use 0 or a positive whole number"),
            )),
        }
    };
    let keep_days = non_negative(
        if o.keep_days.is_some() {
            k("keep_days")
        } else {
            "defaults.keep_days".into()
        },
        pick_int(o.keep_days, defaults.keep_days),
        30,
    )?;
    let min_keep = non_negative(
        if o.min_keep.is_some() {
            k("min_keep")
        } else {
            "defaults.min_keep".into()
        },
        pick_int(o.min_keep, defaults.min_keep),
        5,
    )?;
    // The key an error names: the target's own when it set one, else the default's.
    let key_of = |own_set: bool, field: &str| {
        if own_set {
            k(field)
        } else {
            format!("defaults.{field}")
        }
    };
    let keep_daily = non_negative(
        key_of(o.keep_daily.is_some(), "keep_daily"),
        pick_int(o.keep_daily, defaults.keep_daily),
        0,
    )?;
    let keep_weekly = non_negative(
        key_of(o.keep_weekly.is_some(), "keep_weekly"),
        pick_int(o.keep_weekly, defaults.keep_weekly),
        0,
    )?;
    let keep_monthly = non_negative(
        key_of(o.keep_monthly.is_some(), "keep_monthly"),
        pick_int(o.keep_monthly, defaults.keep_monthly),
        0,
    )?;
    let cleanup_key = key_of(o.cleanup_schedule.is_some(), "cleanup_schedule");
    let cleanup_schedule = match pick_str(&o.cleanup_schedule, &defaults.cleanup_schedule) {
        None => None,
        Some(s) if s.trim() == "after_backup" => None,
        Some(s) => Some(parse_schedule_or_interval(&cleanup_key, &s)?),
    };
    let verify_key = key_of(o.verify_schedule.is_some(), "verify_schedule");
    let verify_schedule = match pick_str(&o.verify_schedule, &defaults.verify_schedule)
        .as_deref()
        .map(str::trim)
    {
        None => Some(Schedule::Every(Duration::from_secs(24 * 3600))),
        Some("off") => None,
        Some(s) => Some(parse_schedule_or_interval(&verify_key, s)?),
    };
    let jitter = parse_duration(
        &key_of(o.jitter.is_some(), "jitter"),
        pick_str(&o.jitter, &defaults.jitter).as_deref(),
        "0s",
    )?;
    let health_grace = match pick_str(&o.health_grace, &defaults.health_grace) {
        Some(g) => parse_duration(
            &key_of(o.health_grace.is_some(), "health_grace"),
            Some(&g),
            "",
        )?,
        None => match &schedule {
            Schedule::Every(d) => *d,
            Schedule::Cron(_) => Duration::from_secs(3600),
        },
    };
    let timeout_key = if o.timeout.is_some() {
        k("timeout")
    } else {
        "defaults.timeout".into()
    };
    let timeout = parse_duration(
        &timeout_key,
        pick_str(&o.timeout, &defaults.timeout).as_deref(),
        "12h",
    )?;
    let pg_bin_dir = pick_str(&o.pg_bin_dir, &defaults.pg_bin_dir).map(PathBuf::from);

    let kind = t.kind.as_deref().ok_or_else(|| {
        key_err(
            k("kind"),
            "missing: set kind = \"postgres\" or kind = \"sqlite\"",
        )
    })?;
    let source = match kind {
        "postgres" => {
            if t.path.is_some() {
                return Err(key_err(
                    k("path"),
                    "is for sqlite targets; a postgres target takes `url`",
                ));
            }
            let url = match t.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
                Some(u) => u.to_string(),
                None => url_from_libpq_env().ok_or_else(|| {
                    key_err(
                        k("url"),
                        "missing: set url = \"postgres://user@host:5432/dbname\" (or libpq's PGHOST and PGDATABASE)",
                    )
                })?,
            };
            let url = url.as_str();
            let (url, url_password) = split_url_password(url).map_err(|m| key_err(k("url"), m))?;
            let password = match (t.password, t.password_file) {
                (Some(_), Some(_)) => {
                    return Err(key_err(
                        k("password_file"),
                        "both `password` and `password_file` are set: keep one",
                    ))
                }
                (Some(p), None) => Some(Secret::new(p)),
                (None, Some(f)) => Some(read_secret_file(&k("password_file"), &f)?),
                (None, None) => {
                    url_password.or_else(|| std::env::var("PGPASSWORD").ok().map(Secret::new))
                }
            };
            let schemas = t.schemas.unwrap_or_default();
            if let Some(bad) = schemas.iter().find(|s| s.trim().is_empty()) {
                return Err(key_err(
                    k("schemas"),
                    format!("{bad:?} is not a schema name or pattern"),
                ));
            }
            let drill_url = match t.drill_url.as_deref() {
                None => None,
                Some(d) => Some(
                    split_url_password(d)
                        .map_err(|m| key_err(k("drill_url"), m))?
                        .0,
                ),
            };
            PostgresConfig {
                url,
                drill_url,
                restore_owner: t.restore_owner.unwrap_or(false),
                password,
                schemas,
                globals: t.globals.unwrap_or(false),
                pg_bin_dir,
            }
            .into()
        }
        "sqlite" => {
            for (field, set) in [
                ("url", t.url.is_some()),
                ("password", t.password.is_some()),
                ("password_file", t.password_file.is_some()),
                ("schemas", t.schemas.is_some()),
                ("globals", t.globals.is_some()),
                ("drill_url", t.drill_url.is_some()),
                ("restore_owner", t.restore_owner.is_some()),
            ] {
                if set {
                    return Err(key_err(
                        k(field),
                        "is for postgres targets; a sqlite target takes `path`",
                    ));
                }
            }
            let path = t
                .path
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    key_err(
                        k("path"),
                        "missing: set path = \"/var/lib/app/app.db\" (the SQLite database file)",
                    )
                })?;
            SourceConfig::Sqlite(SqliteConfig {
                path: PathBuf::from(path),
            })
        }
        other => {
            return Err(key_err(
                k("kind"),
                format!("unknown kind {other:?}: use \"postgres\" or \"sqlite\""),
            ));
        }
    };

    let schema = t
        .schema
        .map(|s| validate_schema(name, s, matches!(source, SourceConfig::Sqlite(_))))
        .transpose()?;

    Ok(Target {
        name: name.to_string(),
        schema,
        source,
        schedule,
        cleanup_schedule,
        verify_schedule,
        jitter,
        health_grace,
        compression,
        keep_days,
        min_keep,
        keep_daily,
        keep_weekly,
        keep_monthly,
        timeout,
    })
}

fn validate_schema(name: &str, s: RawSchema, sqlite: bool) -> Result<SchemaConfig, ConfigError> {
    let k = |f: &str| format!("targets.{name}.schema.{f}");
    let path = |field: &str, v: Option<String>| -> Result<Option<PathBuf>, ConfigError> {
        match v.as_deref().map(str::trim) {
            None => Ok(None),
            Some("") => Err(key_err(k(field), "is empty: name a file or folder")),
            Some(p) => Ok(Some(PathBuf::from(p))),
        }
    };
    let declared = match (
        path("migrations", s.migrations)?,
        path("desired", s.desired)?,
    ) {
        (Some(_), Some(_)) => {
            return Err(key_err(
                k("desired"),
                "both `migrations` and `desired` are set: declare the schema one way",
            ))
        }
        (Some(dir), None) => {
            if !dir.is_dir() {
                return Err(key_err(
                    k("migrations"),
                    format!(
                        "{} is not a folder: point it at the folder of NNNN_name.up.sql files",
                        dir.display()
                    ),
                ));
            }
            Declared::Migrations(dir)
        }
        (None, Some(file)) => {
            if !file.is_file() {
                return Err(key_err(
                    k("desired"),
                    format!(
                        "{} is not a file: point it at the SQL file of the whole desired schema",
                        file.display()
                    ),
                ));
            }
            Declared::Desired(file)
        }
        (None, None) => {
            return Err(key_err(
                k("migrations"),
                "missing: set migrations = \"migrations/app\" (a folder) or desired = \"schema/app.sql\"",
            ))
        }
    };
    let tenant_schemas = s.tenant_schemas.unwrap_or_default();
    if sqlite && !tenant_schemas.is_empty() {
        return Err(key_err(
            k("tenant_schemas"),
            "is for postgres targets: a SQLite database has one schema",
        ));
    }
    if let Some(bad) = tenant_schemas.iter().find(|p| p.trim().is_empty()) {
        return Err(key_err(
            k("tenant_schemas"),
            format!("{bad:?} is not a schema name or pattern"),
        ));
    }
    Ok(SchemaConfig {
        declared,
        tenant_schemas,
    })
}

impl From<PostgresConfig> for SourceConfig {
    fn from(p: PostgresConfig) -> Self {
        SourceConfig::Postgres(p)
    }
}

/// Parse a cron expression of 5 fields (or 6 with seconds).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let fields = expr.split_whitespace().count();
    if !(fields == 5 || fields == 6) {
        return Err(format!(
            "{expr:?} has {fields} fields: write 5 (minute hour day month weekday, e.g. \"0 2 * * *\") or 6 with seconds first"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!(
                "{expr:?} is not a valid cron expression ({e}); e.g. \"0 2 * * *\" for 02:00 daily"
            )
        })
}

fn validate_s3(raw: RawS3) -> Result<S3Config, ConfigError> {
    let k = |f: &str| format!("storage.s3.{f}");
    let bucket = raw
        .bucket
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| key_err(k("bucket"), "missing: set the bucket name"))?;
    let prefix = raw
        .prefix
        .as_deref()
        .unwrap_or("")
        .trim()
        .trim_matches('/')
        .to_string();
    if prefix.is_empty() {
        return Err(key_err(
            k("prefix"),
            "missing or empty: set a non-empty key prefix such as \"prod\"; dbkeep never \
             lists or deletes at the root of a bucket",
        ));
    }
    if prefix.contains("//") {
        return Err(key_err(
            k("prefix"),
            format!("{prefix:?} has an empty path segment"),
        ));
    }
    if let Some(e) = &raw.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(key_err(
                k("endpoint"),
                format!("{e:?} must start with https:// (or http:// for a local test server)"),
            ));
        }
    }
    let secret = |plain: Option<String>,
                  file: Option<String>,
                  field: &str|
     -> Result<Option<Secret>, ConfigError> {
        match (plain, file) {
            (Some(_), Some(_)) => Err(key_err(
                k(&format!("{field}_file")),
                format!("both `{field}` and `{field}_file` are set: keep one"),
            )),
            (Some(p), None) => Ok(Some(Secret::new(p))),
            (None, Some(f)) => read_secret_file(&k(&format!("{field}_file")), &f).map(Some),
            (None, None) => Ok(None),
        }
    };
    let access_key_id = secret(raw.access_key_id, raw.access_key_id_file, "access_key_id")?;
    let secret_access_key = secret(
        raw.secret_access_key,
        raw.secret_access_key_file,
        "secret_access_key",
    )?;
    let session_token = secret(raw.session_token, raw.session_token_file, "session_token")?;
    if access_key_id.is_some() != secret_access_key.is_some() {
        return Err(key_err(
            k("secret_access_key"),
            "access_key_id and secret_access_key go together: set both, or neither to use the \
             default credential chain (environment, profile, web identity, instance metadata)",
        ));
    }
    let checksum_when_required = match raw.checksum.as_deref().unwrap_or("when_supported") {
        "when_supported" => false,
        "when_required" => true,
        other => {
            return Err(key_err(
                k("checksum"),
                format!("{other:?}: use \"when_supported\" (default) or \"when_required\""),
            ))
        }
    };
    let sse = match raw.sse.as_deref() {
        None => None,
        Some(s @ ("AES256" | "aws:kms" | "aws:kms:dsse")) => Some(s.to_string()),
        Some(other) => {
            return Err(key_err(
                k("sse"),
                format!("{other:?}: use \"AES256\" or \"aws:kms\""),
            ))
        }
    };
    if raw.sse_kms_key_id.is_some() && !matches!(sse.as_deref(), Some("aws:kms" | "aws:kms:dsse")) {
        return Err(key_err(
            k("sse_kms_key_id"),
            "only goes with sse = \"aws:kms\"",
        ));
    }
    let part_size = match raw.part_size.as_deref() {
        None => 16 * 1024 * 1024,
        Some(p) => parse_size(p).ok_or_else(|| {
            key_err(
                k("part_size"),
                format!("{p:?} is not a size: write e.g. \"16MiB\""),
            )
        })?,
    };
    if !(5 * 1024 * 1024..=5 * 1024 * 1024 * 1024).contains(&part_size) {
        return Err(key_err(
            k("part_size"),
            "S3 parts must be between 5MiB and 5GiB",
        ));
    }
    let upload_concurrency = match raw.upload_concurrency {
        None => 2,
        Some(n) if (1..=16).contains(&n) => n as usize,
        Some(n) => {
            return Err(key_err(
                k("upload_concurrency"),
                format!("{n}: use 1 to 16"),
            ))
        }
    };
    let max_attempts = match raw.max_attempts {
        None => 5,
        Some(n) if (1..=20).contains(&n) => n as u32,
        Some(n) => return Err(key_err(k("max_attempts"), format!("{n}: use 1 to 20"))),
    };
    let retry_base_delay = parse_duration(
        &k("retry_base_delay"),
        raw.retry_base_delay.as_deref(),
        "500ms",
    )?;
    Ok(S3Config {
        bucket,
        prefix,
        endpoint: raw.endpoint,
        region: raw.region.unwrap_or_else(|| "us-east-1".into()),
        force_path_style: raw.force_path_style.unwrap_or(false),
        access_key_id,
        secret_access_key,
        session_token,
        storage_class: raw.storage_class,
        sse,
        sse_kms_key_id: raw.sse_kms_key_id,
        checksum_when_required,
        part_size,
        upload_concurrency,
        max_attempts,
        retry_base_delay,
    })
}

/// "16MiB", "5MB", "8388608".
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `cleanup_schedule` takes a cron expression or an interval ("6h").
fn parse_schedule_or_interval(key: &str, value: &str) -> Result<Schedule, ConfigError> {
    if let Ok(d) = humantime::parse_duration(value.trim()) {
        if d < Duration::from_secs(1) {
            return Err(key_err(key, "an interval must be at least 1s"));
        }
        return Ok(Schedule::Every(d));
    }
    parse_cron(value).map_err(|m| {
        key_err(
            key,
            format!("{m}; or write an interval such as \"6h\", or \"after_backup\" (the default)"),
        )
    })?;
    Ok(Schedule::Cron(value.to_string()))
}

fn parse_duration(key: &str, value: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default).trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|e| {
        key_err(
            key,
            format!("{v:?} is not a duration ({e}): write e.g. \"90s\", \"30m\", \"6h\" or \"1d\""),
        )
    })
}

fn read_secret_file(key: &str, path: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        key_err(
            key,
            format!("cannot read {path}: {e}; check the path and that dbkeep's user may read it"),
        )
    })?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Secret::new(trimmed))
}

/// Remove the password from a postgres URL, returning it separately.
fn split_url_password(url: &str) -> Result<(String, Option<Secret>), String> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| format!("not a valid URL ({e}): write postgres://user@host:5432/dbname"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "scheme {:?} is not supported: the URL must start with postgres:// or postgresql://",
            parsed.scheme()
        ));
    }
    let password = parsed.password().map(|p| Secret::new(percent_decode(p)));
    if password.is_some() {
        parsed
            .set_password(None)
            .map_err(|()| "cannot remove the password from this URL".to_string())?;
    }
    Ok((parsed.to_string(), password))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const BASE: &str = r#"
        [storage.local]
        path = "/tmp/x"
        [targets.app]
        kind = "postgres"
        url = "postgres://backup:s3cret@db:5432/app"
    "#;

    #[test]
    fn url_password_is_split_out_and_hidden() {
        let cfg = load_from(Some(BASE), HashMap::new()).unwrap();
        let SourceConfig::Postgres(pg) = &cfg.targets[0].source else {
            panic!()
        };
        assert_eq!(pg.url, "postgres://backup@db:5432/app");
        assert_eq!(pg.password.as_ref().unwrap().expose(), "s3cret");
        assert!(!cfg.to_display_json().contains("s3cret"));
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let env = HashMap::from([
            ("DBKEEP_DEFAULTS__KEEP_DAYS".to_string(), "14".to_string()),
            (
                "DBKEEP_TARGETS__APP__SCHEMAS".to_string(),
                "shared, tenant_*".to_string(),
            ),
            ("DBKEEP_TARGETS__APP__EVERY".to_string(), "6h".to_string()),
        ]);
        let cfg = load_from(Some(BASE), env).unwrap();
        let t = &cfg.targets[0];
        assert_eq!(t.keep_days, 14);
        assert_eq!(t.min_keep, 5);
        assert!(matches!(t.schedule, Schedule::Every(d) if d == Duration::from_secs(6 * 3600)));
        let SourceConfig::Postgres(pg) = &t.source else {
            panic!()
        };
        assert_eq!(pg.schemas, vec!["shared", "tenant_*"]);
    }

    #[test]
    fn percent_encoded_password() {
        let (url, pw) = split_url_password("postgres://u:p%40ss@h/db").unwrap();
        assert_eq!(url, "postgres://u@h/db");
        assert_eq!(pw.unwrap().expose(), "p@ss");
    }
}
