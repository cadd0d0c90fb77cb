//! Connections to PostgreSQL: URLs with the password kept apart, connect with a timeout,
//! and errors an operator can act on.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;

use crate::config::Secret;
use crate::engine::EngineError;
use crate::error::ErrorKind;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A server and database to connect to: the URL without password, and the password.
#[derive(Clone)]
pub struct Dsn {
    pub url: String,
    pub password: Option<Secret>,
}

impl Dsn {
    /// Split the password out of `url`; without one there, use `fallback`, then PGPASSWORD.
    pub fn parse(url: &str, fallback: Option<&Secret>) -> Result<Dsn, EngineError> {
        let u = url::Url::parse(url)
            .map_err(|e| EngineError::Refused(format!("{:?} is not a URL: {e}", redact(url))))?;
        // The database is the URL's path, and only that: a `dbname=` (or a `service=`,
        // which can name one too) in the query would send the restore elsewhere than the
        // confirmation and the non-empty check said.
        if let Some((k, _)) = u
            .query_pairs()
            .find(|(k, _)| k.eq_ignore_ascii_case("dbname") || k.eq_ignore_ascii_case("service"))
        {
            return Err(EngineError::Refused(format!(
                "{:?} names its database twice (path and `{k}=` in the query): write the database only as the path, postgres://user@host/dbname",
                redact(url)
            )));
        }
        // Every way a password can sit in the URL is taken out of it.
        let (url, from_url) = crate::config::split_url_password(url)
            .map_err(|m| EngineError::Refused(format!("{:?} {m}", redact(url))))?;
        Ok(Dsn {
            url,
            password: from_url
                .or_else(|| fallback.cloned())
                .or_else(|| std::env::var("PGPASSWORD").ok().map(Secret::new)),
        })
    }

    /// The same server with another database. The name goes in the query
    /// (`?dbname=...`), every byte but letters, digits, `_` and `-` as `%XX`: in the
    /// path, a URL parser would resolve `.` and `..` and drop tabs and newlines, and so
    /// connect to another database than the one named (libpq and sqlx both take
    /// `dbname` from the query and decode `%XX` alike).
    pub fn with_database(&self, db: &str) -> Result<Dsn, EngineError> {
        let mut u = url::Url::parse(&self.url)
            .map_err(|e| EngineError::Refused(format!("bad url: {e}")))?;
        u.set_path("/");
        let mut query: Vec<String> = u
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.to_ascii_lowercase().starts_with("dbname="))
            .map(str::to_string)
            .collect();
        query.push(format!("dbname={}", crate::catalog::encode_name(db)));
        u.set_query(Some(&query.join("&")));
        Ok(Dsn {
            url: u.to_string(),
            password: self.password.clone(),
        })
    }

    /// The database this URL names; refused when it names none.
    pub fn database(&self) -> Result<String, EngineError> {
        let u = url::Url::parse(&self.url)
            .map_err(|e| EngineError::Refused(format!("bad url: {e}")))?;
        // Set by `with_database` (the user's URLs may not carry one: see `parse`).
        if let Some((_, db)) = u.query_pairs().find(|(k, _)| k == "dbname") {
            return Ok(db.into_owned());
        }
        // libpq decodes %XX in the path: the name checked and created here must be the one
        // it connects to (`oth%65r` is `other`).
        let db =
            crate::config::percent_decode(u.path().trim_start_matches('/')).ok_or_else(|| {
                EngineError::Refused(format!(
                    "{:?} names a database that is not UTF-8 once decoded",
                    redact(&self.url)
                ))
            })?;
        if db.contains('/') {
            return Err(EngineError::Refused(format!(
                "{:?} names the database {db:?}, with a slash: write one database name after the host",
                redact(&self.url)
            )));
        }
        if db.is_empty() {
            return Err(EngineError::Refused(format!(
                "{:?} names no database: add /dbname",
                redact(&self.url)
            )));
        }
        Ok(db)
    }

    /// host:port/database, for messages.
    pub fn location(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| {
                if let Some((_, db)) = u.query_pairs().find(|(k, _)| k == "dbname") {
                    return format!(
                        "{}:{}/{}",
                        u.host_str().unwrap_or("localhost"),
                        u.port().unwrap_or(5432),
                        db.escape_debug()
                    );
                }
                let path = u.path().trim_start_matches('/');
                format!(
                    "{}:{}/{}",
                    u.host_str().unwrap_or("localhost"),
                    u.port().unwrap_or(5432),
                    crate::config::percent_decode(path).unwrap_or_else(|| path.to_string())
                )
            })
            .unwrap_or_else(|_| "<unparsable url>".into())
    }

    pub fn options(&self) -> Result<PgConnectOptions, EngineError> {
        let mut opts = PgConnectOptions::from_str(&self.url)
            .map_err(|e| EngineError::Refused(format!("bad url {:?}: {e}", redact(&self.url))))?;
        if let Some(p) = &self.password {
            opts = opts.password(p.expose());
        }
        Ok(opts.application_name("dbkeep"))
    }

    /// Connect within `timeout`; the error says what to check.
    pub async fn connect_within(&self, timeout: Duration) -> Result<PgConnection, EngineError> {
        let opts = self.options()?;
        let what = format!("PostgreSQL at {}", self.location());
        match tokio::time::timeout(timeout, PgConnection::connect_with(&opts)).await {
            Err(_) => Err(EngineError::Connect {
                what,
                message: format!("no answer within {}s", timeout.as_secs()),
                kind: ErrorKind::Unreachable,
                hint: Some("check host, port and firewall"),
                source: None,
            }),
            Ok(Err(e)) => Err(connect_error(what, e)),
            Ok(Ok(c)) => Ok(c),
        }
    }

    pub async fn connect(&self) -> Result<PgConnection, EngineError> {
        self.connect_within(CONNECT_TIMEOUT).await
    }
}

/// A URL with any password (before the host or in the query) replaced, for messages.
pub fn redact(url: &str) -> String {
    url::Url::parse(url)
        .map(|mut u| {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret =
                        matches!(k.to_ascii_lowercase().as_str(), "password" | "sslpassword");
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        })
        .unwrap_or_else(|_| "<url>".into())
}

pub use crate::engine::model::quote_ident;

/// Turn a sqlx connect error into a sentence an operator can act on, with its kind.
pub fn connect_error(what: String, e: sqlx::Error) -> EngineError {
    let text = e.to_string();
    let (hint, kind) = if text.contains("password authentication failed") {
        (
            Some("check the user's password (`password`, `password_file` or PGPASSWORD)"),
            ErrorKind::Auth,
        )
    } else if text.contains("does not exist") {
        (
            Some("check the database and user names in `url`"),
            ErrorKind::NotFound,
        )
    } else if text.contains("Connection refused") || text.contains("connection refused") {
        (
            Some("is the server running and listening on that host and port?"),
            ErrorKind::Unreachable,
        )
    } else if text.contains("no password") || text.contains("password was not supplied") {
        (
            Some("set `password_file` (or `password`, or PGPASSWORD)"),
            ErrorKind::Auth,
        )
    } else {
        (None, ErrorKind::Failed)
    };
    // The error's own code or I/O kind decides where it has one; the text only adds the hint.
    let kind = match crate::engine::sqlx_kind(&e) {
        ErrorKind::Failed => kind,
        k => k,
    };
    let message = crate::engine::sql_message(&e);
    EngineError::Connect {
        what,
        message,
        kind,
        hint,
        source: Some(e),
    }
}

/// Where in the statement PostgreSQL says an error is (1-based character position).
pub fn error_position(e: &sqlx::Error) -> Option<usize> {
    use sqlx::postgres::{PgDatabaseError, PgErrorPosition};
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
        .and_then(|p| match p.position() {
            Some(PgErrorPosition::Original(pos)) => Some(pos),
            _ => None,
        })
}
