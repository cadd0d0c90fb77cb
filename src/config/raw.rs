//! The raw layer: the TOML/env layout as serde reads it, every key optional, unknown
//! keys refused; and the list of environment variables derived from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

// ---------------------------------------------------------------- raw layout

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    #[serde(default)]
    pub(super) storage: RawStorage,
    #[serde(default)]
    pub(super) defaults: RawPolicy,
    #[serde(default)]
    pub(super) targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    pub(super) notify: BTreeMap<String, RawNotify>,
}

/// `[notify.NAME]`: where events about backups are sent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) kind: Option<String>,
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) targets: Option<Vec<String>>,
    // webhook and ping
    pub(super) url: Option<String>,
    pub(super) url_file: Option<String>,
    pub(super) template: Option<String>,
    pub(super) secret_file: Option<String>,
    // email
    pub(super) smtp_host: Option<String>,
    pub(super) smtp_port: Option<i64>,
    pub(super) tls: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) from: Option<String>,
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) to: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) listen: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) max_concurrent: Option<i64>,
    pub(super) work_dir: Option<String>,
    pub(super) lease: Option<String>,
    pub(super) admin_token_file: Option<String>,
    pub(super) admin_api: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) local: Option<RawLocalStorage>,
    pub(super) s3: Option<RawS3>,
    /// `[storage.mirrors.NAME]`: further S3 destinations, with the keys of `[storage.s3]`.
    #[serde(default)]
    pub(super) mirrors: BTreeMap<String, RawS3>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    pub(super) bucket: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) force_path_style: Option<bool>,
    pub(super) access_key_id: Option<String>,
    pub(super) access_key_id_file: Option<String>,
    pub(super) secret_access_key: Option<String>,
    pub(super) secret_access_key_file: Option<String>,
    pub(super) session_token: Option<String>,
    pub(super) session_token_file: Option<String>,
    pub(super) storage_class: Option<String>,
    pub(super) sse: Option<String>,
    pub(super) sse_kms_key_id: Option<String>,
    pub(super) checksum: Option<String>,
    pub(super) part_size: Option<String>,
    pub(super) upload_concurrency: Option<i64>,
    pub(super) max_attempts: Option<i64>,
    pub(super) retry_base_delay: Option<String>,
    pub(super) read_timeout: Option<String>,
    /// This destination's own retention (the target's when unset).
    pub(super) keep_days: Option<i64>,
    pub(super) min_keep: Option<i64>,
    /// Bytes per second uploads to this destination may take (e.g. "50MiB").
    pub(super) max_upload_rate: Option<String>,
    /// Write archives and manifests with an S3 Object Lock retention.
    pub(super) object_lock: Option<RawObjectLock>,
}

/// `object_lock = { mode = "governance", days = 30 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjectLock {
    pub(super) mode: Option<String>,
    pub(super) days: Option<i64>,
    /// The same as a duration ("36h"), for locks shorter than a day.
    pub(super) period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLocalStorage {
    pub(super) path: Option<String>,
}

/// Keys a target inherits from `[defaults]` and may override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) schedule: Option<String>,
    pub(super) every: Option<String>,
    pub(super) compression: Option<String>,
    pub(super) compression_level: Option<i64>,
    pub(super) keep_days: Option<i64>,
    pub(super) min_keep: Option<i64>,
    pub(super) timeout: Option<String>,
    pub(super) pg_bin_dir: Option<String>,
    pub(super) cleanup_schedule: Option<String>,
    pub(super) jitter: Option<String>,
    pub(super) health_grace: Option<String>,
    pub(super) keep_daily: Option<i64>,
    pub(super) keep_weekly: Option<i64>,
    pub(super) keep_monthly: Option<i64>,
    pub(super) verify_schedule: Option<String>,
    pub(super) timezone: Option<String>,
    pub(super) retries: Option<i64>,
    pub(super) retry_delay: Option<String>,
    /// Archives of one run dumped at once.
    pub(super) jobs: Option<i64>,
    pub(super) hooks: Option<RawHooks>,
    /// age recipients every archive is encrypted to.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) encrypt_to: Option<Vec<String>>,
    /// A file of age recipients, one per line.
    pub(super) encrypt_to_file: Option<String>,
    /// The age identity file that decrypts archives (restore, drills).
    pub(super) identity_file: Option<String>,
    /// The ed25519 key manifests are signed with.
    pub(super) signing_key_file: Option<String>,
    /// The key manifests must be signed with (a host that restores but does not sign).
    pub(super) verify_key: Option<String>,
    /// Count and hash every table's rows while the dump streams (on unless `false`).
    pub(super) fingerprint: Option<bool>,
    /// A table of at least this many rows that a new backup finds empty makes it suspect.
    pub(super) suspect_min_rows: Option<i64>,
    /// Total rows, or archive bytes, down by more than this percentage make it suspect.
    pub(super) suspect_drop_percent: Option<i64>,
    /// Recovery point objective: the newest backup may be at most this old.
    pub(super) rpo: Option<String>,
    /// Recovery time objective: a drill's restore must take at most this long.
    pub(super) rto: Option<String>,
}

/// `[defaults.hooks]` / `[targets.NAME.hooks]`: commands around each backup.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) before: Option<Vec<String>>,
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) after: Option<Vec<String>>,
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) on_failure: Option<Vec<String>>,
    pub(super) timeout: Option<String>,
    pub(super) before_failure: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) kind: Option<String>,
    // postgres
    pub(super) url: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<String>,
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) schemas: Option<Vec<String>>,
    /// `schema.table` patterns (globs) pg_dump leaves out, definition and data.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) exclude_tables: Option<Vec<String>>,
    /// `schema.table` patterns whose rows are left out (the definition is kept).
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) exclude_table_data: Option<Vec<String>>,
    /// Database globs: the target is the server, each matching database its own archive.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) databases: Option<Vec<String>>,
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) exclude_databases: Option<Vec<String>>,
    pub(super) globals: Option<bool>,
    pub(super) drill_url: Option<String>,
    pub(super) restore_owner: Option<bool>,
    pub(super) lock_timeout: Option<String>,
    // sqlite
    pub(super) path: Option<String>,
    // overrides of [defaults]; serde cannot `flatten` a RawPolicy here and still
    // deny unknown keys, so the fields are spelled out again.
    pub(super) schedule: Option<String>,
    pub(super) every: Option<String>,
    pub(super) compression: Option<String>,
    pub(super) compression_level: Option<i64>,
    pub(super) keep_days: Option<i64>,
    pub(super) min_keep: Option<i64>,
    pub(super) timeout: Option<String>,
    pub(super) pg_bin_dir: Option<String>,
    pub(super) cleanup_schedule: Option<String>,
    pub(super) jitter: Option<String>,
    pub(super) health_grace: Option<String>,
    pub(super) keep_daily: Option<i64>,
    pub(super) keep_weekly: Option<i64>,
    pub(super) keep_monthly: Option<i64>,
    pub(super) verify_schedule: Option<String>,
    pub(super) timezone: Option<String>,
    pub(super) retries: Option<i64>,
    pub(super) retry_delay: Option<String>,
    /// Archives of one run dumped at once.
    pub(super) jobs: Option<i64>,
    pub(super) hooks: Option<RawHooks>,
    /// age recipients every archive is encrypted to.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) encrypt_to: Option<Vec<String>>,
    /// A file of age recipients, one per line.
    pub(super) encrypt_to_file: Option<String>,
    /// The age identity file that decrypts archives (restore, drills).
    pub(super) identity_file: Option<String>,
    /// The ed25519 key manifests are signed with.
    pub(super) signing_key_file: Option<String>,
    /// The key manifests must be signed with (a host that restores but does not sign).
    pub(super) verify_key: Option<String>,
    /// Count and hash every table's rows while the dump streams (on unless `false`).
    pub(super) fingerprint: Option<bool>,
    /// A table of at least this many rows that a new backup finds empty makes it suspect.
    pub(super) suspect_min_rows: Option<i64>,
    /// Total rows, or archive bytes, down by more than this percentage make it suspect.
    pub(super) suspect_drop_percent: Option<i64>,
    /// Recovery point objective: the newest backup may be at most this old.
    pub(super) rpo: Option<String>,
    /// Recovery time objective: a drill's restore must take at most this long.
    pub(super) rto: Option<String>,
    pub(super) schema: Option<RawSchema>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchema {
    pub(super) migrations: Option<String>,
    pub(super) desired: Option<String>,
    #[serde(default, deserialize_with = "list_or_csv")]
    pub(super) tenant_schemas: Option<Vec<String>>,
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
        // `schema`, `hooks` and `object_lock` are nested, listed with their own keys.
        for f in fields
            .iter()
            .filter(|f| !["schema", "hooks", "object_lock"].contains(*f))
        {
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
    section(
        "DBKEEP_STORAGE__S3__OBJECT_LOCK__",
        fields_of::<RawObjectLock>(),
        &mut out,
    );
    section(
        "DBKEEP_STORAGE__MIRRORS__<NAME>__",
        fields_of::<RawS3>(),
        &mut out,
    );
    section(
        "DBKEEP_STORAGE__MIRRORS__<NAME>__OBJECT_LOCK__",
        fields_of::<RawObjectLock>(),
        &mut out,
    );
    section("DBKEEP_DEFAULTS__", fields_of::<RawPolicy>(), &mut out);
    section(
        "DBKEEP_DEFAULTS__HOOKS__",
        fields_of::<RawHooks>(),
        &mut out,
    );
    section(
        "DBKEEP_TARGETS__<NAME>__",
        fields_of::<RawTarget>(),
        &mut out,
    );
    section(
        "DBKEEP_TARGETS__<NAME>__HOOKS__",
        fields_of::<RawHooks>(),
        &mut out,
    );
    section(
        "DBKEEP_TARGETS__<NAME>__SCHEMA__",
        fields_of::<RawSchema>(),
        &mut out,
    );
    section(
        "DBKEEP_NOTIFY__<NAME>__",
        fields_of::<RawNotify>(),
        &mut out,
    );
    for pg in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
        out.push(pg.to_string());
    }
    out
}

/// A postgres URL from libpq's own variables, for a target configured without `url`.
pub(super) fn url_from_libpq_env() -> Option<String> {
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
