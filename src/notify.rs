//! Notifications: what happened to a target's backups, sent where the operator looks
//! (a webhook for chat or an incident tool, a healthchecks-style ping URL, email).
//! Delivery never blocks or fails a backup: each message is sent by a task of its own,
//! with bounded retries and backoff, then logged and counted
//! (`dbkeep_notifications_total`). A one-shot command waits a bounded time for its
//! deliveries before it exits ([`Notifiers::settle`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio_util::task::TaskTracker;

use crate::config::{Event, NotifierConfig, NotifierKind, SmtpTls};
use crate::metrics;

/// Tries of one delivery, and the wait before the second (doubled each time).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How long one HTTP request or SMTP conversation may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing that happened to a target.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub event: &'static str,
    pub target: String,
    pub backup_id: Option<String>,
    pub stored_bytes: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub error: Option<String>,
    pub host: String,
    pub dbkeep_version: &'static str,
    pub at: DateTime<Utc>,
    /// One line for people: what happened, where.
    pub summary: String,
}

impl Message {
    pub fn new(event: Event, target: &str, at: DateTime<Utc>) -> Self {
        let host = hostname();
        Message {
            event: event.name(),
            target: target.to_string(),
            backup_id: None,
            stored_bytes: None,
            duration_seconds: None,
            error: None,
            summary: String::new(),
            host,
            dbkeep_version: env!("CARGO_PKG_VERSION"),
            at,
        }
        .summarized(event)
    }

    pub fn with_backup(mut self, id: String, bytes: u64, seconds: f64) -> Self {
        self.backup_id = Some(id);
        self.stored_bytes = Some(bytes);
        self.duration_seconds = Some(seconds);
        self.summarized_again()
    }

    pub fn with_error(mut self, error: String) -> Self {
        self.error = Some(error);
        self.summarized_again()
    }

    fn summarized_again(self) -> Self {
        let event = Event::ALL
            .into_iter()
            .find(|e| e.name() == self.event)
            .unwrap_or(Event::Failed);
        self.summarized(event)
    }

    fn summarized(mut self, event: Event) -> Self {
        let t = &self.target;
        let h = &self.host;
        let what = match event {
            Event::Succeeded => format!(
                "backup of {t} on {h} succeeded{}",
                self.backup_id
                    .as_deref()
                    .map(|id| format!(" ({id})"))
                    .unwrap_or_default()
            ),
            Event::Failed => format!("backup of {t} on {h} FAILED"),
            Event::Stale => format!("{t} on {h} has no complete backup by its deadline"),
            Event::DrillFailed => format!("restore drill of {t} on {h} FAILED"),
            Event::UploadPending => {
                format!("backup of {t} on {h} is kept locally, its upload is pending")
            }
            Event::Recovered => format!("{t} on {h} is healthy again"),
            Event::Suspect => format!(
                "backup of {t} on {h} is SUSPECT: far fewer rows or bytes than the last good one"
            ),
        };
        // One line, whatever the error holds.
        let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        self.summary = match &self.error {
            Some(e) => format!("dbkeep: {what}: {}", one_line(e)),
            None => format!("dbkeep: {what}"),
        };
        self
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Deliveries in flight, of every set of notifiers (a reload replaces the set, not what
/// it already sent).
static IN_FLIGHT: std::sync::LazyLock<TaskTracker> = std::sync::LazyLock::new(TaskTracker::new);

/// Wait (at most `limit`) for deliveries in flight; false when some did not finish.
pub async fn settle(limit: Duration) -> bool {
    IN_FLIGHT.close();
    let done = tokio::time::timeout(limit, IN_FLIGHT.wait()).await.is_ok();
    IN_FLIGHT.reopen();
    done
}

/// The configured notifiers.
pub struct Notifiers {
    list: Vec<NotifierConfig>,
    http: reqwest::Client,
    /// When `recovered` was last sent per target: a target that was both failing and
    /// stale recovers from both at once, and is told once.
    recovered: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The last delivery started per notifier: each waits for the one before it, so a
    /// receiver hears `start` before `fail`, and `failed` before `recovered`.
    last: std::sync::Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// Within this, a second `recovered` for the same target is the same news.
const RECOVERED_ONCE: Duration = Duration::from_secs(120);

impl Notifiers {
    pub fn new(list: &[NotifierConfig]) -> Arc<Self> {
        for n in list {
            metrics::notifier_registered(
                &n.name,
                &n.events.iter().map(|e| e.name()).collect::<Vec<_>>(),
            );
        }
        Arc::new(Notifiers {
            list: list.to_vec(),
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                // A redirect would resend the (signed) body to wherever it points.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("dbkeep/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            recovered: Default::default(),
            last: Default::default(),
        })
    }

    pub fn none() -> Arc<Self> {
        Self::new(&[])
    }

    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|n| n.name.as_str()).collect()
    }

    fn covers(n: &NotifierConfig, target: &str) -> bool {
        n.targets
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == target))
    }

    /// A backup run of `target` starts: ping notifiers that report its success are told
    /// (`URL/start`, so the service can time the run).
    pub fn run_started(self: &Arc<Self>, target: &str) {
        for n in &self.list {
            if let NotifierKind::Ping { url } = &n.kind {
                if Self::covers(n, target) && n.events.contains(&Event::Succeeded) {
                    let url = format!("{}/start", url.expose().trim_end_matches('/'));
                    let me = self.clone();
                    let name = n.name.clone();
                    self.in_order(&n.name, async move {
                        let _ = me.retrying(&name, "start", || me.ping(&url, None)).await;
                    });
                }
            }
        }
    }

    /// Send `m` to every notifier that wants its event for its target; returns at once.
    pub fn send(self: &Arc<Self>, event: Event, m: Message) {
        if event == Event::Recovered {
            let mut last = self.recovered.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if last
                .get(&m.target)
                .is_some_and(|t| now.duration_since(*t) < RECOVERED_ONCE)
            {
                return;
            }
            last.insert(m.target.clone(), now);
        }
        for n in &self.list {
            if !Self::covers(n, &m.target) || !n.events.contains(&event) {
                continue;
            }
            let me = self.clone();
            let name = n.name.clone();
            let n = n.clone();
            let m = m.clone();
            self.in_order(&name, async move {
                let _ = me.deliver_retrying(&n, event, &m).await;
            });
        }
    }

    /// Deliver in the background, after what was sent before through `notifier`.
    fn in_order(
        &self,
        notifier: &str,
        delivery: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let before = last.remove(notifier);
        let handle = IN_FLIGHT.spawn(async move {
            if let Some(b) = before {
                let _ = b.await;
            }
            delivery.await;
        });
        last.insert(notifier.to_string(), handle);
    }

    /// Send a test message through one notifier now, and say how it went.
    pub async fn test(&self, name: &str) -> Result<(), String> {
        let n =
            self.list.iter().find(|n| n.name == name).ok_or_else(|| {
                format!("no notifier {name:?} (have: {})", self.names().join(", "))
            })?;
        let mut m = Message::new(Event::Succeeded, "dbkeep-test", Utc::now());
        m.summary = format!(
            "dbkeep: test message from {} (dbkeep notify test {name})",
            m.host
        );
        self.deliver_retrying(n, Event::Succeeded, &m).await
    }

    async fn deliver_retrying(
        &self,
        n: &NotifierConfig,
        event: Event,
        m: &Message,
    ) -> Result<(), String> {
        self.retrying(&n.name, event.name(), || self.deliver(n, event, m))
            .await
    }

    async fn retrying<F, Fut>(&self, name: &str, event: &str, mut op: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), Failure>>,
    {
        let mut wait = FIRST_RETRY;
        let mut last = String::new();
        let mut attempts = 0;
        for attempt in 1..=ATTEMPTS {
            attempts = attempt;
            match op().await {
                Ok(()) => {
                    metrics::notification(name, event, true);
                    tracing::debug!(notifier = name, event, attempt, "notification delivered");
                    return Ok(());
                }
                // Refused for good (a 4xx, a rejected login): another try would be too.
                Err(Failure::Final(e)) => {
                    last = e;
                    break;
                }
                Err(Failure::Retry(e)) => {
                    last = e;
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
        metrics::notification(name, event, false);
        tracing::warn!(notifier = name, event, attempts, error = %last, "notification not delivered");
        Err(last)
    }

    async fn deliver(&self, n: &NotifierConfig, event: Event, m: &Message) -> Result<(), Failure> {
        match &n.kind {
            NotifierKind::Webhook {
                url,
                template,
                secret,
            } => {
                let body = match template {
                    Some(t) => fill(t, m),
                    None => serde_json::to_string(m).map_err(|e| Failure::Final(e.to_string()))?,
                };
                let mut req = self
                    .http
                    .post(url.expose())
                    .header(reqwest::header::CONTENT_TYPE, "application/json");
                if let Some(s) = secret {
                    req = req.header(
                        "X-Dbkeep-Signature",
                        format!("sha256={}", sign(s.expose(), &body)),
                    );
                }
                answer(req.body(body).send().await, url.expose())
            }
            NotifierKind::Ping { url } => {
                let base = url.expose().trim_end_matches('/');
                let target = match event {
                    Event::Succeeded => base.to_string(),
                    _ => format!("{base}/fail"),
                };
                self.ping(&target, Some(m.summary.clone())).await
            }
            NotifierKind::Email {
                smtp_host,
                smtp_port,
                tls,
                username,
                password,
                from,
                to,
            } => {
                send_mail(
                    smtp_host,
                    *smtp_port,
                    *tls,
                    username
                        .as_deref()
                        .zip(password.as_ref().map(|p| p.expose())),
                    from,
                    to,
                    m,
                )
                .await
            }
        }
    }

    async fn ping(&self, url: &str, body: Option<String>) -> Result<(), Failure> {
        let req = self.http.post(url).body(body.unwrap_or_default());
        answer(req.send().await, url)
    }
}

/// Why a delivery failed, and whether trying again can help.
enum Failure {
    Retry(String),
    Final(String),
}

/// A 2xx answer, or why not, without the URL's path or query (they may hold a token).
fn answer(r: reqwest::Result<reqwest::Response>, url: &str) -> Result<(), Failure> {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "the endpoint".into());
    match r {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let s = resp.status();
            let why = format!("{host} answered {s}");
            if s.is_redirection() {
                Err(Failure::Final(format!(
                    "{why}: dbkeep follows no redirect (it would send the message elsewhere); put the URL it redirects to in the config"
                )))
            } else if s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429 {
                Err(Failure::Final(why))
            } else {
                Err(Failure::Retry(why))
            }
        }
        Err(e) if e.is_timeout() => Err(Failure::Retry(format!(
            "{host} did not answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
        Err(e) if e.is_connect() => Err(Failure::Retry(format!("cannot connect to {host}"))),
        Err(_) => Err(Failure::Retry(format!("request to {host} failed"))),
    }
}

/// HMAC-SHA256 of `body` with `secret`, hex: what the receiver recomputes to trust it.
pub fn sign(secret: &str, body: &str) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A body template filled in: `{summary}`, `{event}`, `{target}`, `{backup_id}`,
/// `{error}`, `{host}`, `{at}`, `{stored_bytes}`, `{duration_seconds}`, each as JSON string
/// content (quotes and control characters escaped), so the template stays valid JSON.
pub fn fill(template: &str, m: &Message) -> String {
    let esc = |s: &str| {
        let quoted = serde_json::to_string(s).unwrap_or_default();
        quoted[1..quoted.len().saturating_sub(1)].to_string()
    };
    let values = [
        ("{summary}", esc(&m.summary)),
        ("{event}", esc(m.event)),
        ("{target}", esc(&m.target)),
        ("{backup_id}", esc(m.backup_id.as_deref().unwrap_or(""))),
        ("{error}", esc(m.error.as_deref().unwrap_or(""))),
        ("{host}", esc(&m.host)),
        ("{at}", m.at.to_rfc3339()),
        (
            "{stored_bytes}",
            // Numbers stay valid JSON when unknown (a failed run has no size).
            m.stored_bytes
                .map(|b| b.to_string())
                .unwrap_or_else(|| "null".into()),
        ),
        (
            "{duration_seconds}",
            m.duration_seconds
                .map(|d| format!("{d:.1}"))
                .unwrap_or_else(|| "null".into()),
        ),
    ];
    // One pass, so a value holding `{target}` is not filled again.
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'outer: while !rest.is_empty() {
        for (k, v) in &values {
            if let Some(after) = rest.strip_prefix(k) {
                out.push_str(v);
                rest = after;
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

async fn send_mail(
    host: &str,
    port: u16,
    tls: SmtpTls,
    credentials: Option<(&str, &str)>,
    from: &str,
    to: &[String],
    m: &Message,
) -> Result<(), Failure> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};

    let mut mail = Mail::builder()
        .from(
            from.parse()
                .map_err(|e| Failure::Final(format!("from address: {e}")))?,
        )
        .subject(format!("[dbkeep] {}: {}", m.target, m.event));
    for t in to {
        mail = mail.to(t
            .parse()
            .map_err(|e| Failure::Final(format!("to address {t:?}: {e}")))?);
    }
    let body = format!(
        "{}\n\ntarget: {}\nevent: {}\nhost: {}\nat: {}\nbackup: {}\nerror: {}\n\n{}\n",
        m.summary,
        m.target,
        m.event,
        m.host,
        m.at.to_rfc3339(),
        m.backup_id.as_deref().unwrap_or("-"),
        m.error.as_deref().unwrap_or("-"),
        serde_json::to_string_pretty(m).unwrap_or_default()
    );
    let mail = mail
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| Failure::Final(format!("building the mail: {e}")))?;
    let builder = match tls {
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| Failure::Final(format!("SMTP {host}: {e}")))?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
            .map_err(|e| Failure::Final(format!("SMTP {host}: {e}")))?,
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
    };
    let mut builder = builder.port(port).timeout(Some(REQUEST_TIMEOUT));
    if let Some((user, pass)) = credentials {
        builder = builder.credentials(Credentials::new(user.to_string(), pass.to_string()));
    }
    // The whole conversation is bounded: a server that accepts and never greets (or
    // trickles) must not keep the delivery, and its connection, for ever.
    let sent = tokio::time::timeout(REQUEST_TIMEOUT * 3, builder.build().send(mail))
        .await
        .map_err(|_| {
            Failure::Retry(format!(
                "SMTP {host}:{port} did not finish within {}s",
                (REQUEST_TIMEOUT * 3).as_secs()
            ))
        })?;
    sent.map(|_| ()).map_err(|e| {
        let why = format!("SMTP {host}:{port}: {e}");
        if e.is_permanent() {
            Failure::Final(why)
        } else {
            Failure::Retry(why)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_stay_valid_json_whatever_the_values() {
        let m = Message::new(Event::Failed, "app", Utc::now())
            .with_error("quote \" backslash \\ newline \n {target}".into());
        let filled = fill(
            r#"{"text": "{summary}", "t": "{target}", "e": "{error}"}"#,
            &m,
        );
        let v: serde_json::Value = serde_json::from_str(&filled).unwrap();
        assert_eq!(v["t"], "app");
        assert_eq!(v["e"], "quote \" backslash \\ newline \n {target}");
        assert!(v["text"].as_str().unwrap().contains("backup of app on"));
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
