//! The validated configuration: what the rest of dbkeep reads, with no `Option` left
//! that it has to re-check, and secrets that never print.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

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

// ---------------------------------------------------------------- validated types

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file the settings came from, if any (a sidecar may have none).
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
    pub daemon: DaemonConfig,
    pub storage: StorageConfig,
    pub targets: Vec<Target>,
    pub notify: Vec<NotifierConfig>,
}

/// What a notifier is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Failed,
    Succeeded,
    Stale,
    DrillFailed,
    UploadPending,
    Recovered,
    Suspect,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::Failed,
        Event::Succeeded,
        Event::Stale,
        Event::DrillFailed,
        Event::UploadPending,
        Event::Recovered,
        Event::Suspect,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Event::Failed => "failed",
            Event::Succeeded => "succeeded",
            Event::Stale => "stale",
            Event::DrillFailed => "drill_failed",
            Event::UploadPending => "upload_pending",
            Event::Recovered => "recovered",
            Event::Suspect => "suspect",
        }
    }
}

/// One `[notify.NAME]`.
#[derive(Debug, Clone, Serialize)]
pub struct NotifierConfig {
    pub name: String,
    pub kind: NotifierKind,
    pub events: Vec<Event>,
    /// Only these targets; all when `None`.
    pub targets: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required).
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No encryption: only for a relay on the same host.
    None,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotifierKind {
    /// An HTTP POST of the event as JSON (or of `template` filled in).
    Webhook {
        url: Secret,
        template: Option<String>,
        secret: Option<Secret>,
    },
    /// healthchecks.io-style pings: `URL/start` when a run starts, `URL` on success,
    /// `URL/fail` on failure.
    Ping { url: Secret },
    Email {
        smtp_host: String,
        smtp_port: u16,
        tls: SmtpTls,
        username: Option<String>,
        password: Option<Secret>,
        from: String,
        to: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonConfig {
    pub listen: String,
    /// Holds the state file, and scratch files when there is no local storage.
    pub work_dir: PathBuf,
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    pub max_concurrent: usize,
    /// How often a standby replica tries to take over a target (its lease); `None`:
    /// every daemon runs every schedule.
    #[serde(serialize_with = "ser_opt_duration")]
    pub lease: Option<Duration>,
    /// The bearer token of the admin API; `None`: the admin API is off.
    pub admin_token: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageConfig {
    pub local: Option<LocalStorageConfig>,
    pub s3: Option<S3Config>,
    /// `[storage.mirrors.NAME]`, by name.
    pub mirrors: Vec<S3Config>,
}

#[derive(Debug, Clone, Serialize)]
pub struct S3Config {
    /// The destination's name in listings, logs and metrics: `s3` for `[storage.s3]`, NAME
    /// for `[storage.mirrors.NAME]`.
    pub name: String,
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
    /// How long one read from the endpoint may wait for data.
    #[serde(serialize_with = "ser_duration")]
    pub read_timeout: Duration,
    /// This destination's own `keep_days` / `min_keep`, replacing the target's there.
    pub keep_days: Option<u32>,
    pub min_keep: Option<u32>,
    /// Upload bytes per second to this destination at most.
    pub max_upload_rate: Option<u64>,
    /// Archives and manifests are written with this Object Lock retention.
    pub object_lock: Option<ObjectLock>,
}

/// S3 Object Lock: every archive and manifest is retained until its run's time plus
/// `period`; the bucket must have Object Lock enabled.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectLock {
    /// `GOVERNANCE` or `COMPLIANCE`, as S3 spells it.
    pub mode: String,
    #[serde(serialize_with = "ser_duration")]
    pub period: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalStorageConfig {
    pub path: PathBuf,
}

/// Commands run around each backup of a target (argument lists, no shell).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Hooks {
    pub before: Option<Vec<String>>,
    pub after: Option<Vec<String>>,
    pub on_failure: Option<Vec<String>>,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// A failing `before` hook stops the run (true, the default) or is only logged.
    pub abort_on_before_failure: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The zone cron expressions are read in, and times are also shown in.
    #[serde(serialize_with = "ser_display")]
    pub timezone: Tz,
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
    pub hooks: Hooks,
    /// Archives of one run (per-schema archives) dumped at once.
    pub jobs: usize,
    /// A failed scheduled backup is tried again this many times...
    pub retries: u32,
    /// ... after this delay, doubled each time.
    #[serde(serialize_with = "ser_duration")]
    pub retry_delay: Duration,
    /// Encryption and manifest signatures.
    pub crypto: Crypto,
    /// Count and hash every table's rows while the dump streams.
    pub fingerprint: bool,
    /// When a new backup is marked suspect next to the previous complete one.
    pub suspect: SuspectRule,
    /// Recovery point objective: the newest complete backup may be at most this old
    /// (`None`: the stale rule alone, due time plus `health_grace`).
    #[serde(serialize_with = "ser_opt_duration")]
    pub rpo: Option<Duration>,
    /// Recovery time objective: a drill's restore may take at most this long.
    #[serde(serialize_with = "ser_opt_duration")]
    pub rto: Option<Duration>,
}

/// When a backup is suspect: a table of at least `min_rows` rows found empty, or total
/// rows or archive bytes down by more than `drop_percent` % (0 turns each check off).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SuspectRule {
    pub min_rows: u64,
    pub drop_percent: u32,
}

/// A target's keys: what its archives are encrypted to, what decrypts them, what signs
/// and checks its manifests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Crypto {
    /// age X25519 recipients (`age1...`, checked at load); empty: archives are stored as
    /// compressed, not encrypted.
    pub recipients: Vec<String>,
    /// The age identity file, read when an archive is decrypted (so a lost key shows in
    /// the next drill, and a host that only backs up needs no private key).
    pub identity_file: Option<PathBuf>,
    #[serde(skip)]
    pub signing: Option<std::sync::Arc<crate::crypt::SigningKey>>,
    /// With a verify key, a manifest without a good signature by it is not trusted.
    #[serde(serialize_with = "ser_verify")]
    pub verify: Option<crate::crypt::VerifyingKey>,
}

fn ser_verify<S: serde::Serializer>(
    v: &Option<crate::crypt::VerifyingKey>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(k) => s.serialize_some(&k.text()),
        None => s.serialize_none(),
    }
}

impl Crypto {
    /// The parsed recipients.
    pub fn age_recipients(&self) -> Vec<age::x25519::Recipient> {
        self.recipients
            .iter()
            .filter_map(|r| crate::crypt::parse_recipient(r).ok())
            .collect()
    }

    /// Read the identity file: `path` given on the command line, else the configured one.
    pub fn identities(
        &self,
        path: Option<&std::path::Path>,
    ) -> Result<Option<crate::crypt::Identities>, String> {
        path.or(self.identity_file.as_deref())
            .map(crate::crypt::Identities::load)
            .transpose()
    }
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
    pub fn policy(&self) -> Policy {
        Policy {
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
    Postgres(Box<PostgresConfig>),
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
    /// Object owners on restore: `true` keeps them (the restore fails if the role cannot),
    /// `false` restores everything owned by the restoring role (`--no-owner`); unset keeps
    /// them when the restoring role can (superuser, or member of every owner role) and
    /// says which roles it could not keep otherwise.
    pub restore_owner: Option<bool>,
    pub password: Option<Secret>,
    pub schemas: Vec<String>,
    /// `schema.table` globs left out of the dump entirely, and left out of its data only.
    pub exclude_tables: Vec<String>,
    pub exclude_table_data: Vec<String>,
    /// Globs of the databases to back up (`["*"]`): the target is then the server, `url`
    /// names the database discovery connects to, and each matching database (templates
    /// and databases that refuse connections aside) is its own archive of the run.
    pub databases: Vec<String>,
    pub exclude_databases: Vec<String>,
    /// Set by dbkeep, never by the config: a run of a server target that backs up only
    /// this database (the safety backup before that database is restored over).
    #[serde(skip)]
    pub only_database: Option<String>,
    pub globals: bool,
    pub pg_bin_dir: Option<PathBuf>,
    /// How long a restore waits for locks other sessions hold on what it replaces, before
    /// it stops and names them.
    #[serde(serialize_with = "ser_duration")]
    pub lock_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SqliteConfig {
    pub path: PathBuf,
}

/// An IANA time zone (`Europe/Berlin`); cron expressions are read in their target's.
pub use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression, read as wall-clock time in the zone.
    Cron(String, Tz),
    Every(Duration),
}

impl Schedule {
    /// A cron expression in UTC.
    pub fn cron(expr: &str) -> Self {
        Schedule::Cron(expr.to_string(), Tz::UTC)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Schedule::Cron(c, Tz::UTC) => s.serialize_str(&format!("cron {c}")),
            Schedule::Cron(c, tz) => s.serialize_str(&format!("cron {c} ({tz})")),
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

    pub fn target_names_owned(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.name.clone()).collect()
    }

    /// The effective configuration as TOML-like JSON, secrets shown as `***`.
    pub fn to_display_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }
}

/// How long backups are kept. `keep_daily`/`weekly`/`monthly` (GFS) only ever keep more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub keep_days: u32,
    pub min_keep: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl From<PostgresConfig> for SourceConfig {
    fn from(p: PostgresConfig) -> Self {
        SourceConfig::Postgres(Box::new(p))
    }
}

fn ser_display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_str("off"),
    }
}
