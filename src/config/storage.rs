//! The storage sections: `[storage.local]` and `[storage.s3]`.

use std::path::PathBuf;

use super::parse::{parse_duration, parse_size, read_secret_file};
use super::raw::{RawLocalStorage, RawS3};
use super::types::{LocalStorageConfig, S3Config, Secret};
use super::{key_err, ConfigError};

/// `[storage.mirrors.NAME]`: a name fit for metrics labels and file names, not one of
/// the built-in storages', then the keys of `[storage.s3]`.
pub(super) fn validate_mirror(name: &str, raw: RawS3) -> Result<S3Config, ConfigError> {
    let section = format!("storage.mirrors.{name}");
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(key_err(
            section,
            "a mirror's name is 1 to 32 characters: lowercase letters, digits, `_` or `-`, starting with a letter (it names the destination in `list`, logs and metrics)",
        ));
    }
    if matches!(name, "local" | "s3" | "copy" | "config") {
        return Err(key_err(
            section,
            format!("`{name}` is the name of a built-in storage: call the mirror after its provider or site, e.g. `offsite`"),
        ));
    }
    validate_s3(name, &section, raw)
}

/// Two destinations must not share objects: each one's retention would delete the other's
/// backups. The same endpoint and bucket with the same prefix, or one prefix inside the
/// other, is refused.
pub(super) fn no_overlap<'a>(all: impl Iterator<Item = &'a S3Config>) -> Result<(), ConfigError> {
    let all: Vec<&S3Config> = all.collect();
    let place = |c: &S3Config| {
        c.endpoint
            .as_deref()
            .unwrap_or("aws")
            .trim_end_matches('/')
            .to_ascii_lowercase()
    };
    let section = |c: &S3Config| match c.name.as_str() {
        "s3" => "storage.s3".to_string(),
        m => format!("storage.mirrors.{m}"),
    };
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let nested = a.prefix == b.prefix
                || a.prefix.starts_with(&format!("{}/", b.prefix))
                || b.prefix.starts_with(&format!("{}/", a.prefix));
            if place(a) == place(b) && a.bucket == b.bucket && nested {
                return Err(key_err(
                    format!("{}.prefix", section(b)),
                    format!(
                        "{} and {} would keep their objects in the same place (bucket `{}`, prefixes `{}` and `{}`): each one's retention would delete the other's backups; give each destination a prefix (or bucket) of its own",
                        section(a), section(b), b.bucket, a.prefix, b.prefix
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn validate_s3(name: &str, section: &str, raw: RawS3) -> Result<S3Config, ConfigError> {
    let k = |f: &str| format!("{section}.{f}");
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
                format!(
                    "{} must start with https:// (or http:// for a local test server)",
                    super::parse::shown(e)
                ),
            ));
        }
        // S3 signs requests with keys; credentials in the URL would only end up in logs.
        if url::Url::parse(e).is_ok_and(|u| !u.username().is_empty() || u.password().is_some()) {
            return Err(key_err(
                k("endpoint"),
                "holds credentials (user:password@): S3 uses access_key_id and secret_access_key (or their _file keys); remove them from the URL",
            ));
        }
        if url::Url::parse(e).is_ok_and(|u| u.query().is_some()) {
            return Err(key_err(
                k("endpoint"),
                "has a query string: give the endpoint's scheme, host and port only",
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
                format!(
                    "{}: use \"when_supported\" (default) or \"when_required\"",
                    super::parse::shown(other)
                ),
            ))
        }
    };
    let sse = match raw.sse.as_deref() {
        None => None,
        Some(s @ ("AES256" | "aws:kms" | "aws:kms:dsse")) => Some(s.to_string()),
        Some(other) => {
            return Err(key_err(
                k("sse"),
                format!(
                    "{}: use \"AES256\" or \"aws:kms\"",
                    super::parse::shown(other)
                ),
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
                format!(
                    "{} is not a size: write e.g. \"16MiB\"",
                    super::parse::shown(p)
                ),
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
    let read_timeout = parse_duration(&k("read_timeout"), raw.read_timeout.as_deref(), "30s")?;
    if read_timeout.is_zero() {
        return Err(key_err(
            k("read_timeout"),
            "0 would fail every request: use e.g. \"30s\"",
        ));
    }
    let count = |key: &str, v: Option<i64>| -> Result<Option<u32>, ConfigError> {
        match v {
            None => Ok(None),
            Some(n) if (0..=u32::MAX as i64).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(key_err(
                k(key),
                format!("{n} is not allowed: use 0 or a positive whole number"),
            )),
        }
    };
    let keep_days = count("keep_days", raw.keep_days)?;
    let min_keep = count("min_keep", raw.min_keep)?;
    let max_upload_rate = match raw.max_upload_rate.as_deref().map(str::trim) {
        None | Some("") | Some("off") => None,
        Some(r) => {
            let per_second = r.strip_suffix("/s").unwrap_or(r);
            match parse_size(per_second) {
                Some(n) if n >= 64 * 1024 => Some(n as u64),
                Some(_) => {
                    return Err(key_err(
                        k("max_upload_rate"),
                        "below 64KiB per second an upload would outlast any schedule: give e.g. \"50MiB\" (per second)",
                    ))
                }
                None => {
                    return Err(key_err(
                        k("max_upload_rate"),
                        format!(
                            "{} is not a rate: write bytes per second, e.g. \"50MiB\" (or \"off\")",
                            super::parse::shown(r)
                        ),
                    ))
                }
            }
        }
    };
    let object_lock = match raw.object_lock {
        None => None,
        Some(l) => {
            let mode = match l.mode.as_deref().map(|m| m.trim().to_ascii_lowercase()) {
                Some(m) if m == "governance" || m == "compliance" => m.to_ascii_uppercase(),
                Some(m) => {
                    return Err(key_err(
                        k("object_lock.mode"),
                        format!(
                            "{} is not an Object Lock mode: use \"governance\" or \"compliance\"",
                            super::parse::shown(&m)
                        ),
                    ))
                }
                None => {
                    return Err(key_err(
                        k("object_lock.mode"),
                        "missing: set \"governance\" or \"compliance\"",
                    ))
                }
            };
            let period = match (l.days, l.period.as_deref()) {
                (Some(_), Some(_)) => {
                    return Err(key_err(
                        k("object_lock.period"),
                        "both `days` and `period` are set: keep one",
                    ))
                }
                (Some(d), None) if (1..=36_500).contains(&d) => {
                    std::time::Duration::from_secs(d as u64 * 86_400)
                }
                (Some(d), None) => {
                    return Err(key_err(
                        k("object_lock.days"),
                        format!("{d} is out of range: use 1 to 36500"),
                    ))
                }
                (None, Some(p)) => {
                    let d = parse_duration(&k("object_lock.period"), Some(p), "")?;
                    if d < std::time::Duration::from_secs(1) {
                        return Err(key_err(k("object_lock.period"), "must be at least 1s"));
                    }
                    d
                }
                (None, None) => {
                    return Err(key_err(
                        k("object_lock.days"),
                        "missing: how long each archive and manifest stays locked (days = N)",
                    ))
                }
            };
            Some(super::types::ObjectLock { mode, period })
        }
    };
    Ok(S3Config {
        object_lock,
        name: name.to_string(),
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
        read_timeout,
        keep_days,
        min_keep,
        max_upload_rate,
    })
}
pub(super) fn validate_local(l: RawLocalStorage) -> Result<LocalStorageConfig, ConfigError> {
    match l.path.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => {
            // A relative path is the working directory's (made absolute here, so the daemon
            // and one-shot commands agree), and links are followed for the check: `.` run
            // from `/`, or a link to `/etc`, is still `/` or `/etc`.
            let given = PathBuf::from(p);
            let path = if given.is_absolute() {
                given
            } else {
                std::env::current_dir()
                    .map(|d| d.join(&given))
                    .unwrap_or(given)
            };
            let resolved = resolve_existing(&path);
            if let Some(system) = system_folder(&path).or_else(|| system_folder(&resolved)) {
                return Err(key_err(
                    "storage.local.path",
                    format!("{p:?} is {system}: dbkeep makes a folder per target there and removes old archives, which must never happen among the system's own files; use a folder of its own, e.g. /var/backups/dbkeep"),
                ));
            }
            Ok(LocalStorageConfig { path })
        }
        _ => Err(key_err(
            "storage.local.path",
            "missing or empty: set the folder that holds local backups",
        )),
    }
}

/// `path` with links resolved as far as it exists (the rest appended as written).
fn resolve_existing(path: &std::path::Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Folders that hold the system itself (a storage there could clash with, or be mistaken
/// for, the host's own files): `/`, the top-level folders, and anything inside the ones
/// that hold programs, configuration and kernel interfaces, written any way.
fn system_folder(path: &std::path::Path) -> Option<&'static str> {
    use std::path::Component;
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            Component::Prefix(_) => return None,
        }
    }
    if !path.is_absolute() {
        return None;
    }
    match parts.as_slice() {
        [] => Some("the root of the filesystem"),
        [first, ..]
            if matches!(
                first.as_str(),
                "bin"
                    | "boot"
                    | "dev"
                    | "etc"
                    | "lib"
                    | "lib32"
                    | "lib64"
                    | "libx32"
                    | "proc"
                    | "sbin"
                    | "sys"
                    | "usr"
            ) =>
        {
            Some("inside a system folder")
        }
        [one]
            if matches!(
                one.as_str(),
                "root" | "run" | "var" | "home" | "tmp" | "srv" | "opt" | "mnt" | "media" | "snap"
            ) =>
        {
            Some("a top-level system folder")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::system_folder;
    use std::path::Path;

    #[test]
    fn the_root_and_system_folders_are_never_storage() {
        for p in [
            "/",
            "//",
            "/./",
            "/etc",
            "/etc/",
            "/usr/../",
            "/var",
            "/tmp/..",
            "/proc",
            "/srv",
            "/opt",
            "/usr/local",
            "/etc/dbkeep",
        ] {
            assert!(system_folder(Path::new(p)).is_some(), "{p}");
        }
        for p in [
            "/var/backups/dbkeep",
            "/srv/backups",
            "/tmp/x",
            "/home/a/b",
            "/opt/dbkeep",
        ] {
            assert!(system_folder(Path::new(p)).is_none(), "{p}");
        }
    }
}
