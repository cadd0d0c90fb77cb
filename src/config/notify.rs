//! The `[notify.NAME]` sections: webhooks, healthchecks-style pings and email.

use super::parse::{read_secret_file, shown};
use super::raw::RawNotify;
use super::types::{Event, NotifierConfig, NotifierKind, Secret, SmtpTls, Target};
use super::{key_err, ConfigError};

/// What a notifier hears about when it does not say: everything an operator must act on.
const DEFAULT_EVENTS: [Event; 5] = [
    Event::Failed,
    Event::Stale,
    Event::DrillFailed,
    Event::UploadPending,
    Event::Recovered,
];

pub(super) fn validate_notifier(
    name: &str,
    n: RawNotify,
    targets: &[Target],
) -> Result<NotifierConfig, ConfigError> {
    let k = |f: &str| format!("notify.{name}.{f}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(key_err(
            format!("notify.{name}"),
            "a notifier name may hold only letters, digits, '_' and '-'",
        ));
    }
    let events = match &n.events {
        // A ping URL is a dead-man's switch: it hears every run's success or failure.
        None if n.kind.as_deref().map(str::trim) == Some("ping") => {
            vec![Event::Succeeded, Event::Failed]
        }
        None => DEFAULT_EVENTS.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for e in list {
                let Some(ev) = Event::ALL.iter().find(|x| x.name() == e.trim()) else {
                    return Err(key_err(
                        k("events"),
                        format!(
                            "{} is not an event: use {}",
                            shown(e),
                            Event::ALL.map(|e| e.name()).join(", ")
                        ),
                    ));
                };
                if !out.contains(ev) {
                    out.push(*ev);
                }
            }
            out
        }
    };
    if let Some(list) = &n.targets {
        for t in list {
            if !targets.iter().any(|x| &x.name == t) {
                return Err(key_err(
                    k("targets"),
                    format!(
                        "{} is not a configured target (have: {})",
                        shown(t),
                        targets
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    let url = |n: &RawNotify| -> Result<Secret, ConfigError> {
        let url = match (&n.url, &n.url_file) {
            (Some(_), Some(_)) => {
                return Err(key_err(
                    k("url"),
                    "both url and url_file are set: keep one (url_file keeps a URL with a token out of the config)",
                ))
            }
            (Some(u), None) => Secret::new(u.trim()),
            (None, Some(f)) => read_secret_file(&k("url_file"), f.trim())?,
            (None, None) => {
                return Err(key_err(
                    k("url"),
                    "missing: set url (or url_file, a file holding it)",
                ))
            }
        };
        match url::Url::parse(url.expose()) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => Ok(url),
            // The URL may hold a token: it is not repeated.
            _ => Err(key_err(
                k("url"),
                "not an http(s) URL: write e.g. https://hc-ping.com/<uuid>",
            )),
        }
    };
    let kind = match n.kind.as_deref().map(str::trim) {
        Some("webhook") => NotifierKind::Webhook {
            url: url(&n)?,
            template: n.template.clone(),
            secret: n
                .secret_file
                .as_deref()
                .map(|f| read_secret_file(&k("secret_file"), f.trim()))
                .transpose()?,
        },
        Some("ping") => {
            if n.template.is_some() || n.secret_file.is_some() {
                return Err(key_err(
                    k("template"),
                    "a ping notifier sends no body to shape or sign: remove template/secret_file (or use kind = \"webhook\")",
                ));
            }
            NotifierKind::Ping { url: url(&n)? }
        }
        Some("email") => {
            let host = n
                .smtp_host
                .clone()
                .filter(|h| !h.trim().is_empty())
                .ok_or_else(|| key_err(k("smtp_host"), "missing: the SMTP server's host name"))?;
            let tls = match n.tls.as_deref().map(str::trim) {
                None | Some("starttls") => SmtpTls::Starttls,
                Some("tls") => SmtpTls::Tls,
                Some("none") => SmtpTls::None,
                Some(other) => {
                    return Err(key_err(
                        k("tls"),
                        format!(
                            "{}: use \"starttls\" (default), \"tls\" or \"none\"",
                            shown(other)
                        ),
                    ))
                }
            };
            let port = match n.smtp_port {
                None => match tls {
                    SmtpTls::Tls => 465,
                    _ => 587,
                },
                Some(p) if (1..=65535).contains(&p) => p as u16,
                Some(p) => return Err(key_err(k("smtp_port"), format!("{p} is not a port"))),
            };
            let from = n.from.clone().filter(|f| f.contains('@')).ok_or_else(|| {
                key_err(
                    k("from"),
                    "missing or not an address: e.g. dbkeep@example.com",
                )
            })?;
            let to = n.to.clone().unwrap_or_default();
            if to.is_empty() || to.iter().any(|t| !t.contains('@')) {
                return Err(key_err(
                    k("to"),
                    "one or more addresses, e.g. [\"ops@example.com\"]",
                ));
            }
            let password = n
                .password_file
                .as_deref()
                .map(|f| read_secret_file(&k("password_file"), f.trim()))
                .transpose()?;
            if password.is_some() != n.username.is_some() {
                return Err(key_err(
                    k("username"),
                    "username and password_file go together (or neither, for a relay without authentication)",
                ));
            }
            if tls == SmtpTls::None && password.is_some() && !is_loopback(&host) {
                return Err(key_err(
                    k("tls"),
                    "tls = \"none\" would send the password in clear text to another host: use starttls or tls",
                ));
            }
            NotifierKind::Email {
                smtp_host: host,
                smtp_port: port,
                tls,
                username: n.username.clone(),
                password,
                from,
                to,
            }
        }
        Some(other) => {
            return Err(key_err(
                k("kind"),
                format!(
                    "unknown kind {}: use \"webhook\", \"ping\" or \"email\"",
                    shown(other)
                ),
            ))
        }
        None => {
            return Err(key_err(
                k("kind"),
                "missing: \"webhook\", \"ping\" or \"email\"",
            ))
        }
    };
    Ok(NotifierConfig {
        name: name.to_string(),
        kind,
        events,
        targets: n.targets,
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
