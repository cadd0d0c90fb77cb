//! Validation: raw settings to [`Config`], defaults filled in, each error naming its key.

use std::path::PathBuf;
use std::time::Duration;

use super::parse::{
    parse_cron_that_fires, parse_duration, parse_schedule_or_interval, parse_timezone,
    read_secret_file, split_url_password,
};
use super::raw::*;
use super::storage::{validate_local, validate_s3};
use super::types::*;
use super::{key_err, ConfigError};

// ---------------------------------------------------------------- validation

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let local = raw.storage.local.map(validate_local).transpose()?;
    let s3 = raw
        .storage
        .s3
        .map(|s| validate_s3("s3", "storage.s3", s))
        .transpose()?;
    let mut mirrors = Vec::new();
    for (name, m) in raw.storage.mirrors {
        mirrors.push(super::storage::validate_mirror(&name, m)?);
    }
    super::storage::no_overlap(s3.iter().chain(mirrors.iter()))?;
    if !mirrors.is_empty() && local.is_none() && s3.is_none() {
        return Err(key_err(
            "storage.mirrors",
            "mirrors copy what the primary storage holds: add [storage.local] (or [storage.s3]) as the primary",
        ));
    }
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
        lease: match raw.daemon.lease.as_deref().map(str::trim) {
            Some("off") => None,
            other => {
                let d = parse_duration("daemon.lease", other, "15s")?;
                if d < Duration::from_secs(1) {
                    return Err(key_err("daemon.lease", "must be at least 1s (or \"off\")"));
                }
                Some(d)
            }
        },
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
        weak_token(t.expose().trim()).map_err(|why| {
            key_err(
                "daemon.admin_token_file",
                format!("{why}: a token holder can restore over any database, so it must be long and random; put one in the file, e.g. `openssl rand -hex 32 > FILE`"),
            )
        })?;
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
    let mut notify = Vec::new();
    for (name, n) in raw.notify {
        notify.push(super::notify::validate_notifier(&name, n, &targets)?);
    }
    Ok(Config {
        source_file: None,
        daemon,
        storage: StorageConfig { local, s3, mirrors },
        targets,
        notify,
    })
}

/// The admin token must be at least [`MIN_TOKEN_CHARS`] characters and not a visibly
/// non-random one (few distinct characters). 32 hex characters carry 128 bits, beyond
/// online guessing even without the rate limit.
fn weak_token(t: &str) -> Result<(), String> {
    let n = t.chars().count();
    if n < MIN_TOKEN_CHARS {
        return Err(format!(
            "the token is {n} characters long, fewer than {MIN_TOKEN_CHARS}"
        ));
    }
    let distinct = t.chars().collect::<std::collections::HashSet<_>>().len();
    if distinct < MIN_TOKEN_DISTINCT {
        return Err(format!(
            "the token uses only {distinct} different characters, so it is not random"
        ));
    }
    Ok(())
}

const MIN_TOKEN_CHARS: usize = 32;
const MIN_TOKEN_DISTINCT: usize = 10;

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
    let timezone = parse_timezone(
        &if o.timezone.is_some() {
            k("timezone")
        } else {
            "defaults.timezone".into()
        },
        o.timezone.as_deref().or(defaults.timezone.as_deref()),
    )?;
    let hooks = validate_hooks(name, o.hooks.as_ref(), defaults.hooks.as_ref())?;
    let crypto = validate_crypto(name, o, defaults)?;

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
            parse_cron_that_fires(&cron)
                .map_err(|m| key_err(format!("{sched_key}.schedule"), m))?;
            Schedule::Cron(cron, timezone)
        }
        (None, Some(every)) => {
            let d = parse_duration(&format!("{sched_key}.every"), Some(&every), "")?;
            if d < Duration::from_secs(1) {
                return Err(key_err(format!("{sched_key}.every"), "must be at least 1s"));
            }
            Schedule::Every(d)
        }
        (None, None) => Schedule::Cron("0 2 * * *".into(), timezone),
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
                format!(
                    "unknown compression {}: use \"zstd\", \"gzip\" or \"none\"",
                    super::parse::shown(other)
                ),
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
    let retries_key = key_of(o.retries.is_some(), "retries");
    let retries = match pick_int(o.retries, defaults.retries) {
        None => 2,
        Some(n) if (0..=10).contains(&n) => n as u32,
        Some(n) => return Err(key_err(retries_key, format!("{n}: use 0 (no retry) to 10"))),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let jobs = match pick_int(o.jobs, defaults.jobs) {
        None => 2.min(cores) as usize,
        Some(n) if (1..=cores).contains(&n) => n as usize,
        Some(n) => {
            return Err(key_err(
                key_of(o.jobs.is_some(), "jobs"),
                format!("{n}: use 1 to {cores} (the cores of this machine)"),
            ))
        }
    };
    let retry_delay = parse_duration(
        &key_of(o.retry_delay.is_some(), "retry_delay"),
        pick_str(&o.retry_delay, &defaults.retry_delay).as_deref(),
        "5m",
    )?;
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
        Some(s) => Some(parse_schedule_or_interval(&cleanup_key, &s, timezone)?),
    };
    let verify_key = key_of(o.verify_schedule.is_some(), "verify_schedule");
    let verify_schedule = match pick_str(&o.verify_schedule, &defaults.verify_schedule)
        .as_deref()
        .map(str::trim)
    {
        None => Some(Schedule::Every(Duration::from_secs(24 * 3600))),
        Some("off") => None,
        Some(s) => Some(parse_schedule_or_interval(&verify_key, s, timezone)?),
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
            Schedule::Cron(..) => Duration::from_secs(3600),
        },
    };
    let fingerprint = o.fingerprint.or(defaults.fingerprint).unwrap_or(true);
    let suspect_min_rows = non_negative(
        key_of(o.suspect_min_rows.is_some(), "suspect_min_rows"),
        pick_int(o.suspect_min_rows, defaults.suspect_min_rows),
        1000,
    )?;
    let drop_key = key_of(o.suspect_drop_percent.is_some(), "suspect_drop_percent");
    let suspect_drop_percent = match pick_int(o.suspect_drop_percent, defaults.suspect_drop_percent)
    {
        None => 50,
        Some(n) if (0..=100).contains(&n) => n as u32,
        Some(n) => {
            return Err(key_err(
                drop_key,
                format!("{n}: use a percentage from 1 to 100, or 0 to turn the check off"),
            ))
        }
    };
    let objective = |field: &str, own: &Option<String>, default: &Option<String>| {
        pick_str(own, default)
            .map(|v| parse_duration(&key_of(own.is_some(), field), Some(&v), ""))
            .transpose()
            .and_then(|d| match d {
                Some(d) if d.is_zero() => Err(key_err(
                    key_of(own.is_some(), field),
                    "0s: leave the key out to have no objective".to_string(),
                )),
                other => Ok(other),
            })
    };
    let rpo = objective("rpo", &o.rpo, &defaults.rpo)?;
    let rto = objective("rto", &o.rto, &defaults.rto)?;
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
            let lock_timeout =
                parse_duration(&k("lock_timeout"), t.lock_timeout.as_deref(), "30s")?;
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
            let pattern = |key: &str,
                           list: Option<Vec<String>>|
             -> Result<Vec<String>, ConfigError> {
                let list = list.unwrap_or_default();
                for p in &list {
                    // Globs on the real names (`*`, `?`), not pg_dump's patterns: no quotes,
                    // brackets or regex, and short enough to match quickly.
                    let ok = p
                        .split_once('.')
                        .is_some_and(|(s, t)| !s.is_empty() && !t.is_empty())
                        && p.len() <= 200
                        && !p.chars().any(|c| {
                            c.is_control() || c.is_whitespace() || "\"[]|()+{}\\^$".contains(c)
                        });
                    if !ok {
                        return Err(key_err(
                            k(key),
                            format!("{p:?} is not a schema-qualified table pattern: write the real (case-sensitive) names with * and ? as wildcards, e.g. \"public.audit_log\" or \"logs.*\" (no quotes or regex, at most 200 characters)"),
                        ));
                    }
                }
                Ok(list)
            };
            let databases = t.databases.unwrap_or_default();
            let exclude_databases = t.exclude_databases.unwrap_or_default();
            for (key, list) in [
                ("databases", &databases),
                ("exclude_databases", &exclude_databases),
            ] {
                if let Some(bad) = list.iter().find(|p| {
                    p.trim().is_empty() || p.len() > 200 || p.chars().any(char::is_control)
                }) {
                    return Err(key_err(
                        k(key),
                        format!("{bad:?} is not a database name or pattern: write real names with * and ? as wildcards, e.g. [\"*\"] or [\"app_*\"]"),
                    ));
                }
            }
            if !exclude_databases.is_empty() && databases.is_empty() {
                return Err(key_err(
                    k("exclude_databases"),
                    "only means something with `databases` (e.g. databases = [\"*\"]); without it the target is the one database of `url`",
                ));
            }
            if !databases.is_empty() && !schemas.is_empty() {
                return Err(key_err(
                    k("schemas"),
                    "cannot be combined with `databases`: a server target makes one archive per database; split the schemas of one database in a target of its own",
                ));
            }
            // A server target connects to `url`'s database only to discover the others:
            // without one named, the maintenance database `postgres`.
            let url = match databases.is_empty() {
                true => url,
                false => with_default_database(&url, "postgres"),
            };
            let exclude_tables = pattern("exclude_tables", t.exclude_tables)?;
            let exclude_table_data = pattern("exclude_table_data", t.exclude_table_data)?;
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
                restore_owner: t.restore_owner,
                password,
                schemas,
                exclude_tables,
                exclude_table_data,
                databases,
                exclude_databases,
                only_database: None,
                globals: t.globals.unwrap_or(false),
                pg_bin_dir,
                lock_timeout,
            }
            .into()
        }
        "sqlite" => {
            for (field, set) in [
                ("url", t.url.is_some()),
                ("password", t.password.is_some()),
                ("password_file", t.password_file.is_some()),
                ("schemas", t.schemas.is_some()),
                ("exclude_tables", t.exclude_tables.is_some()),
                ("exclude_table_data", t.exclude_table_data.is_some()),
                ("databases", t.databases.is_some()),
                ("exclude_databases", t.exclude_databases.is_some()),
                ("globals", t.globals.is_some()),
                ("drill_url", t.drill_url.is_some()),
                ("restore_owner", t.restore_owner.is_some()),
                ("lock_timeout", t.lock_timeout.is_some()),
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
                format!(
                    "unknown kind {}: use \"postgres\" or \"sqlite\"",
                    super::parse::shown(other)
                ),
            ));
        }
    };

    let schema = t
        .schema
        .map(|s| validate_schema(name, s, matches!(source, SourceConfig::Sqlite(_))))
        .transpose()?;

    Ok(Target {
        crypto,
        fingerprint,
        suspect: SuspectRule {
            min_rows: suspect_min_rows as u64,
            drop_percent: suspect_drop_percent,
        },
        rpo,
        rto,
        jobs,
        retries,
        retry_delay,
        hooks,
        timezone,
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

/// The target's keys. `encrypt_to` and `encrypt_to_file` are taken together, from the
/// target when it sets either, else from `[defaults]`; the other keys each on their own.
fn validate_crypto(name: &str, o: &RawTarget, d: &RawPolicy) -> Result<Crypto, ConfigError> {
    let own = o.encrypt_to.is_some() || o.encrypt_to_file.is_some();
    let (section, list, file) = match own {
        true => (format!("targets.{name}"), &o.encrypt_to, &o.encrypt_to_file),
        false => ("defaults".to_string(), &d.encrypt_to, &d.encrypt_to_file),
    };
    let mut recipients = Vec::new();
    for r in list.iter().flatten() {
        let parsed = crate::crypt::parse_recipient(r)
            .map_err(|m| key_err(format!("{section}.encrypt_to"), m))?;
        recipients.push(parsed.to_string());
    }
    if let Some(f) = file {
        let key = format!("{section}.encrypt_to_file");
        let text = std::fs::read_to_string(f.trim())
            .map_err(|e| key_err(&key, format!("cannot read {}: {e}", f.trim())))?;
        let parsed = crate::crypt::parse_recipients_file(&text)
            .map_err(|m| key_err(&key, format!("{}: {m}", f.trim())))?;
        if parsed.is_empty() {
            return Err(key_err(
                key,
                format!("{} holds no recipient: encryption would be off", f.trim()),
            ));
        }
        recipients.extend(parsed.iter().map(|r| r.to_string()));
    }
    if list.as_ref().is_some_and(|l| l.is_empty()) && file.is_none() && own {
        return Err(key_err(
            format!("{section}.encrypt_to"),
            "is empty: give at least one recipient (age1...), or remove the key to store archives unencrypted",
        ));
    }
    recipients.dedup();
    let pick = |own: &Option<String>, def: &Option<String>, field: &str| match own {
        Some(v) => Some((format!("targets.{name}.{field}"), v.trim().to_string())),
        None => def
            .as_ref()
            .map(|v| (format!("defaults.{field}"), v.trim().to_string())),
    };
    let identity_file =
        pick(&o.identity_file, &d.identity_file, "identity_file").map(|(_, p)| PathBuf::from(p));
    // Read when an archive is decrypted, not needed to back up: a problem is a warning
    // here (the next drill fails on it).
    if let Some(path) = &identity_file {
        match crate::crypt::Identities::load(path) {
            Err(m) => tracing::warn!(
                target = name,
                "{m}; restores and drills of encrypted backups will fail"
            ),
            Ok(ids)
                if !recipients.is_empty()
                    && !ids.recipients().iter().any(|r| recipients.contains(r)) =>
            {
                tracing::warn!(target = name, identity_file = %path.display(), "the identity file holds no key of the recipients in `encrypt_to`: new backups could not be restored with it")
            }
            Ok(_) => {}
        }
    }
    let signing = match pick(&o.signing_key_file, &d.signing_key_file, "signing_key_file") {
        Some((key, path)) => {
            let text = read_secret_file(&key, &path)?;
            let k = crate::crypt::SigningKey::parse(text.expose())
                .map_err(|m| key_err(key, format!("{path} {m}")))?;
            Some(std::sync::Arc::new(k))
        }
        None => None,
    };
    let verify = match pick(&o.verify_key, &d.verify_key, "verify_key") {
        Some((key, text)) => {
            let v = crate::crypt::VerifyingKey::parse(&text).map_err(|m| key_err(&key, m))?;
            if let Some(s) = &signing {
                if s.verifying() != v {
                    return Err(key_err(key, format!("is not the verify key of `signing_key_file` ({}): manifests this host signs would not be trusted; remove `verify_key` or fix it", s.verifying().text())));
                }
            }
            Some(v)
        }
        None => signing.as_ref().map(|s| s.verifying()),
    };
    Ok(Crypto {
        recipients,
        identity_file,
        signing,
        verify,
    })
}

/// `url` with the path `/db` when it names no database (`postgres://u@h:5432` or `.../`).
fn with_default_database(url: &str, db: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.path().trim_matches('/').is_empty() => {
            u.set_path(&format!("/{db}"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The target's hooks: each key of `[targets.NAME.hooks]` replaces the same key of
/// `[defaults.hooks]`.
fn validate_hooks(
    name: &str,
    own: Option<&RawHooks>,
    defaults: Option<&RawHooks>,
) -> Result<Hooks, ConfigError> {
    let key = |f: &str, from_own: bool| {
        if from_own {
            format!("targets.{name}.hooks.{f}")
        } else {
            format!("defaults.hooks.{f}")
        }
    };
    let pick = |f: fn(&RawHooks) -> Option<Vec<String>>,
                field: &str|
     -> Result<Option<Vec<String>>, ConfigError> {
        let (v, from_own) = match own.and_then(f) {
            Some(v) => (Some(v), true),
            None => (defaults.and_then(f), false),
        };
        let Some(v) = v else { return Ok(None) };
        let k = key(field, from_own);
        let Some(program) = v.first().filter(|p| !p.trim().is_empty()) else {
            return Err(key_err(k, "an empty command: write the program and its arguments as a list, e.g. [\"/usr/local/bin/pause-app\", \"--wait\"]"));
        };
        let path = std::path::Path::new(program);
        if path.is_absolute() && !path.is_file() {
            return Err(key_err(
                k,
                format!("{program} does not exist (or is not a file)"),
            ));
        }
        if path.is_absolute() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o111 == 0 {
                return Err(key_err(
                    k,
                    format!("{program} is not executable: chmod +x it, or run it through its interpreter, e.g. [\"sh\", \"{program}\"]"),
                ));
            }
        }
        Ok(Some(v))
    };
    let before = pick(|h| h.before.clone(), "before")?;
    let after = pick(|h| h.after.clone(), "after")?;
    let on_failure = pick(|h| h.on_failure.clone(), "on_failure")?;
    let timeout_own = own.and_then(|h| h.timeout.clone());
    let timeout = parse_duration(
        &key("timeout", timeout_own.is_some()),
        timeout_own
            .or_else(|| defaults.and_then(|h| h.timeout.clone()))
            .as_deref(),
        "5m",
    )?;
    if timeout < std::time::Duration::from_secs(1) {
        return Err(key_err(
            key("timeout", own.and_then(|h| h.timeout.as_ref()).is_some()),
            "must be at least 1s",
        ));
    }
    let bf_own = own.and_then(|h| h.before_failure.clone());
    let bf_key = key("before_failure", bf_own.is_some());
    let abort_on_before_failure = match bf_own
        .or_else(|| defaults.and_then(|h| h.before_failure.clone()))
        .as_deref()
        .map(str::trim)
    {
        None | Some("abort") => true,
        Some("continue") => false,
        Some(other) => {
            return Err(key_err(
                bf_key,
                format!(
                    "{}: use \"abort\" (default) or \"continue\"",
                    super::parse::shown(other)
                ),
            ))
        }
    };
    Ok(Hooks {
        before,
        after,
        on_failure,
        timeout,
        abort_on_before_failure,
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
