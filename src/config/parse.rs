//! Parsers of config values: cron expressions, durations, sizes, secret files, URLs.

use std::time::Duration;

use super::types::{Schedule, Secret};
use super::{key_err, ConfigError};

/// Parse a cron expression of 5 fields (or 6 with seconds).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    // The shorthands of classic cron, at midnight (or the top of the hour).
    let expr = match expr.trim() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other => other,
    };
    let fields = expr.split_whitespace().count();
    if !(fields == 5 || fields == 6) {
        let counted = if fields == 1 {
            "1 field".to_string()
        } else {
            format!("{fields} fields")
        };
        return Err(format!(
            "{expr:?} has {counted}: write 5 (minute hour day month weekday, e.g. \"0 2 * * *\") or 6 with seconds first, or @hourly, @daily, @weekly, @monthly"
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

/// A cron expression that parses and fires again: `0 0 31 2 *` (February 31st) parses
/// but would never run, which is refused rather than scheduled silently.
pub fn parse_cron_that_fires(expr: &str) -> Result<croner::Cron, String> {
    let cron = parse_cron(expr)?;
    // From a fixed day, so the check does not depend on today; 29 February is 4 years
    // away at most, and a search that finds nothing up to croner's year limit fails.
    let from = chrono::DateTime::<chrono::Utc>::from_timestamp(1_767_225_600, 0)
        .unwrap_or_else(chrono::Utc::now);
    match cron.find_next_occurrence(&from, false) {
        Ok(_) => Ok(cron),
        Err(_) => Err(format!(
            "{expr:?} never fires (no such date, e.g. February 31st): write a date that exists, e.g. \"0 2 * * *\" for 02:00 daily"
        )),
    }
}

/// A value quoted in a config error, unless it may be a secret put under the wrong key (it
/// looks like a URL or a credential, or is long): then only its length is said.
pub(super) fn shown(v: &str) -> String {
    let risky =
        v.len() > 40 || v.contains(['@', ':', '/', '=', '?']) || v.chars().any(char::is_whitespace);
    if risky {
        format!("the value given ({} characters)", v.chars().count())
    } else {
        format!("{v:?}")
    }
}

/// An IANA zone name (`Europe/Berlin`, `UTC`).
pub(super) fn parse_timezone(key: &str, value: Option<&str>) -> Result<chrono_tz::Tz, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(chrono_tz::Tz::UTC),
        Some(v) => v.parse::<chrono_tz::Tz>().map_err(|_| {
            // A zone-shaped value is no secret: it is shown, so a typo can be seen.
            let zone_like = v.len() <= 40
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
            let shown = if zone_like { format!("{v:?}") } else { shown(v) };
            key_err(
                key,
                format!("{shown} is not an IANA time zone (names are case-sensitive): write e.g. \"Europe/Berlin\", \"America/New_York\" or \"UTC\""),
            )
        }),
    }
}

/// "16MiB", "5MB", "8388608".
pub(super) fn parse_size(s: &str) -> Option<usize> {
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
pub(super) fn parse_schedule_or_interval(
    key: &str,
    value: &str,
    tz: chrono_tz::Tz,
) -> Result<Schedule, ConfigError> {
    if let Ok(d) = humantime::parse_duration(value.trim()) {
        if d < Duration::from_secs(1) {
            return Err(key_err(key, "an interval must be at least 1s"));
        }
        return Ok(Schedule::Every(d));
    }
    parse_cron_that_fires(value).map_err(|m| {
        key_err(
            key,
            format!("{m}; or write an interval such as \"6h\", or \"after_backup\" (the default)"),
        )
    })?;
    Ok(Schedule::Cron(value.to_string(), tz))
}

pub(super) fn parse_duration(
    key: &str,
    value: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default).trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|e| {
        key_err(
            key,
            format!(
                "{} is not a duration ({e}): write e.g. \"90s\", \"30m\", \"6h\" or \"1d\"",
                shown(v)
            ),
        )
    })
}

/// A secret file every local user may read (or any user may change) is named in a
/// warning: it still works, since refusing it would stop backups over a mode bit, but the
/// operator learns the secret is not one.
fn warn_if_others_may_read(key: &str, path: &str) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    // Others reading or writing, or the group writing.
    if mode & 0o026 != 0 {
        tracing::warn!(
            key,
            path,
            mode = format!("{mode:04o}"),
            "the secret file may be read or changed by other users; make it private: chmod 600 (or 640 with dbkeep's group)"
        );
    }
}

pub(super) fn read_secret_file(key: &str, path: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        key_err(
            key,
            format!("cannot read {path}: {e}; check the path and that dbkeep's user may read it"),
        )
    })?;
    warn_if_others_may_read(key, path);
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Secret::new(trimmed))
}

/// Remove the password from a postgres URL, returning it separately.
pub fn split_url_password(url: &str) -> Result<(String, Option<Secret>), String> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| format!("not a valid URL ({e}): write postgres://user@host:5432/dbname"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "scheme {:?} is not supported: the URL must start with postgres:// or postgresql://",
            parsed.scheme()
        ));
    }
    if let Some((k, _)) = parsed
        .query_pairs()
        .find(|(k, _)| k.eq_ignore_ascii_case("dbname") || k.eq_ignore_ascii_case("service"))
    {
        return Err(format!(
            "names its database with `{k}=` in the query: write the database only as the path, postgres://user@host:5432/dbname"
        ));
    }
    let mut password = match parsed.password() {
        Some(p) => Some(Secret::new(percent_decode(p).ok_or_else(|| {
            "has a password that is not UTF-8 once its %XX are decoded: use `password_file`"
                .to_string()
        })?)),
        None => None,
    };
    if password.is_some() {
        parsed
            .set_password(None)
            .map_err(|()| "cannot remove the password from this URL".to_string())?;
    }
    // The path must be one database name as written: a URL parser resolves `.` and `..`
    // segments (also as `%2E`), so `/x/../app` or `/%2E%2E` would name another database
    // than the one written.
    let written = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .map(|p| p.split(['?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    if !written.is_empty() && written != parsed.path() {
        return Err(format!(
            "has the path {written:?}, which a URL reads as {:?} (`.` and `..` segments are resolved): write the database name plainly after the host",
            parsed.path()
        ));
    }
    // libpq also takes the password as `?password=`: it is taken out the same way, so the
    // URL dbkeep shows and passes on never carries it. The rest of the query is kept
    // byte for byte: re-encoding it would turn `%20` into `+`, which libpq reads as `+`.
    let mut rest: Vec<String> = Vec::new();
    for seg in parsed.query().unwrap_or_default().split('&') {
        if seg.is_empty() {
            continue;
        }
        let (k, v) = seg.split_once('=').unwrap_or((seg, ""));
        let key = percent_decode(k).unwrap_or_default().to_ascii_lowercase();
        match key.as_str() {
            "password" => {
                if password.is_some() {
                    return Err("gives the password twice (before the host and as `password=`): keep one, or better use `password_file`".into());
                }
                password = Some(Secret::new(percent_decode(v).ok_or_else(|| {
                    "has a `password=` that is not UTF-8 once its %XX are decoded: use `password_file`".to_string()
                })?));
            }
            "sslpassword" => {
                return Err("carries an `sslpassword=`, which would be shown and passed on command lines: use a client key without a passphrase, readable only by dbkeep's user".into());
            }
            _ => rest.push(seg.to_string()),
        }
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.set_query(Some(&rest.join("&")));
    }
    Ok((parsed.to_string(), password))
}

/// Decode `%XX` escapes the way libpq does; `None` when the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
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
    String::from_utf8(out).ok()
}
