//! Typed settings: built-in defaults < config file < `DBKEEP_` environment, validated once.
//!
//! `raw.rs` mirrors the TOML/env layout (`deny_unknown_fields`, every key optional);
//! `validate.rs` turns it into [`Config`] (`types.rs`), which holds no `Option` the rest
//! of the code has to re-check. Every error names the key and says what to do.

mod notify;
mod parse;
mod raw;
mod storage;
mod types;
mod validate;

use std::path::{Path, PathBuf};

pub use parse::{parse_cron, percent_decode, split_url_password};
pub use raw::env_keys;
pub use types::*;

use crate::error::{Classify, ErrorKind};

/// Environment variables with the `DBKEEP_` prefix that are not config keys.
const NON_CONFIG_ENV: &[&str] = &["DBKEEP_CONFIG", "DBKEEP_LOG_FORMAT"];
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["./dbkeep.toml", "/etc/dbkeep/dbkeep.toml"];

/// Whether the environment carries config keys (a sidecar configured without a file).
pub fn env_configures() -> bool {
    std::env::vars().any(|(k, _)| k.starts_with("DBKEEP_") && !NON_CONFIG_ENV.contains(&k.as_str()))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("config: {0}")]
    Other(String),
}

pub(super) fn key_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

impl Classify for ConfigError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Usage
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
        ConfigError::Other(format!(
            "{} (check the TOML syntax near the line named)",
            hide_values(&e.to_string())
        ))
    })?;
    let root: config::Value = built
        .try_deserialize()
        .map_err(|e| ConfigError::Other(hide_values(&e.to_string())))?;
    let raw: raw::RawConfig = serde_path_to_error::deserialize(root).map_err(|e| {
        let key = e.path().to_string();
        let inner = hide_values(&e.into_inner().to_string());
        let message = if inner.contains("unknown field") {
            format!("{inner}; remove or rename it (see config/dbkeep.example.toml)")
        } else {
            inner
        };
        key_err(if key == "." { "<root>".into() } else { key }, message)
    })?;
    validate::validate(raw)
}

/// serde quotes the value it could not use (`invalid type: string "...", expected an
/// integer`): that value may be a secret under the wrong key, so it is left out; the key
/// and the expected type are enough to fix it.
fn hide_values(msg: &str) -> String {
    // A TOML syntax error shows the source line (and a caret under it): the line may hold
    // a secret, and the line and column numbers say where to look.
    let msg: String = msg
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            let numbered = t
                .split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
            !(numbered || t == "|" || t.starts_with("| "))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let msg = msg.as_str();
    const QUOTED: &str = "string \"";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(QUOTED) {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let after = &rest[i + QUOTED.len()..];
        rest = match after.find("\", ").or_else(|| after.rfind('"')) {
            Some(j) => &after[j + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_serde_could_not_use_are_not_repeated() {
        assert_eq!(
            super::hide_values(
                r#"invalid type: string "postgres://u:pw@h/db", expected an integer"#
            ),
            "invalid type: a string, expected an integer"
        );
        assert_eq!(
            super::hide_values("missing field `kind`"),
            "missing field `kind`"
        );
        assert_eq!(super::hide_values(r#"string "unterminated"#), "a string");
        let toml = "TOML parse error at line 4, column 1\n  |\n4 | url = \"postgres://u:pw@h\"\n  | ^^^\nduplicate key `url`";
        assert_eq!(
            super::hide_values(toml),
            "TOML parse error at line 4, column 1\nduplicate key `url`"
        );
    }

    use super::parse::split_url_password;
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

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
    fn a_cron_expression_that_never_fires_is_refused() {
        let text = format!("{BASE}schedule = \"0 0 31 2 *\"\n");
        let err = load_from(Some(&text), HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("never fires"), "{err}");
        assert!(err.to_string().contains("targets.app.schedule"), "{err}");
        for fires in ["0 0 29 2 *", "0 2 * * *", "*/15 * * * * *"] {
            let text = format!("{BASE}schedule = \"{fires}\"\n");
            load_from(Some(&text), HashMap::new()).unwrap_or_else(|e| panic!("{fires}: {e}"));
        }
        let text = format!("{BASE}cleanup_schedule = \"0 0 30 2 *\"\n");
        let err = load_from(Some(&text), HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("never fires"), "{err}");
    }

    #[test]
    fn percent_encoded_password() {
        let (url, pw) = split_url_password("postgres://u:p%40ss@h/db").unwrap();
        assert_eq!(url, "postgres://u@h/db");
        assert_eq!(pw.unwrap().expose(), "p@ss");
    }

    #[test]
    fn the_query_is_kept_byte_for_byte_and_dot_paths_are_refused() {
        let (url, pw) = split_url_password(
            "postgres://u@h/db?options=-c%20statement_timeout%3D5000&password=a+b%20c&application_name=my%20app",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u@h/db?options=-c%20statement_timeout%3D5000&application_name=my%20app"
        );
        // libpq decodes %XX only: `+` stays a plus.
        assert_eq!(pw.unwrap().expose(), "a+b c");
        for bad in [
            "postgres://u@h/%2E%2E",
            "postgres://u@h/x/../app",
            "postgres://u@h/./db",
            "postgres://u@h/%2e",
        ] {
            let e = split_url_password(bad).unwrap_err();
            assert!(e.contains("plainly"), "{bad}: {e}");
        }
        assert!(split_url_password("postgres://u@h/app").is_ok());
        assert!(split_url_password("postgres://u@h").is_ok());
        assert!(split_url_password("postgres://u@h/").is_ok());
    }
}
