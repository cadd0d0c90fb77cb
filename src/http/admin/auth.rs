//! Access to the admin API: the bearer token (compared in constant time), signed download
//! links, and one log line per call.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{AdminState, ApiError, ErrorBody, PREFIX};
use crate::config::Secret;
use crate::metrics;

/// How long a signed download link from `GET /backups` stays valid.
const LINK_TTL_SECS: i64 = 3600;
/// Failed calls a peer may make in one window before it gets 429 until the window ends.
const MAX_FAILURES: u32 = 60;
const WINDOW: Duration = Duration::from_secs(60);
/// Peers remembered at most.
const MAX_PEERS: usize = 10_000;

/// Failed calls per peer: a brute force is slowed to `MAX_FAILURES` a minute, and logged
/// as one line per peer and minute (with the count of the minute before), not one per try.
#[derive(Default)]
pub(super) struct Limiter {
    peers: Mutex<HashMap<IpAddr, Window>>,
}

struct Window {
    start: Instant,
    failures: u32,
}

/// What to do about one failure.
struct Failed {
    /// Log it (the first of its peer's window).
    log: bool,
    /// Failures of this peer's previous window, when it had any.
    before: u32,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocked(&self, peer: IpAddr, now: Instant) -> bool {
        self.lock()
            .get(&peer)
            .is_some_and(|w| now.duration_since(w.start) < WINDOW && w.failures >= MAX_FAILURES)
    }

    fn failed(&self, peer: IpAddr, now: Instant) -> Failed {
        let mut peers = self.lock();
        // Forget windows long over, so the map stays small.
        if peers.len() > MAX_PEERS {
            peers.retain(|_, w| now.duration_since(w.start) < WINDOW);
            if peers.len() > MAX_PEERS {
                // A flood from more addresses than that: memory stays bounded, and the
                // counts start over (each address still gets at most one window's worth).
                peers.clear();
            }
        }
        let w = peers.entry(peer).or_insert(Window {
            start: now,
            failures: 0,
        });
        let mut before = 0;
        if now.duration_since(w.start) >= WINDOW {
            before = w.failures;
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures += 1;
        Failed {
            log: w.failures == 1,
            before,
        }
    }
}

/// A digest comparison whose time does not depend on where the inputs differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Who a token is in logs: a short hash, never the token.
fn token_id(token: &Secret) -> String {
    format!(
        "token:{}",
        &hex::encode(Sha256::digest(token.expose().as_bytes()))[..8]
    )
}

fn hmac(key: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
    // HMAC takes keys of any length: the error case is not reached, and refuses.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    m.update(msg);
    Some(m.finalize().into_bytes().to_vec())
}

/// The signature of a download link, with a key derived from the token for this one use
/// (a signature never is, nor helps guess, the bearer token itself). `None` never
/// validates.
fn link_signature(token: &Secret, path: &str, expires: i64) -> Option<String> {
    let key = hmac(
        token.expose().as_bytes(),
        b"dbkeep signed download links v1",
    )?;
    hmac(&key, format!("GET\n{path}\n{expires}").as_bytes()).map(hex::encode)
}

/// A download link that works without the header for `LINK_TTL_SECS`.
pub(super) fn signed_link(token: &Secret, target: &str, file: &str, now: DateTime<Utc>) -> String {
    let path = format!("{PREFIX}/backups/{target}/{file}");
    let expires = now.timestamp() + LINK_TTL_SECS;
    let sig = link_signature(token, &path, expires).unwrap_or_default();
    format!("{path}?expires={expires}&sig={sig}")
}

#[derive(Deserialize)]
struct LinkQuery {
    expires: Option<String>,
    sig: Option<String>,
}

/// Whether `uri` (as the client sent it, prefix included) is a valid, unexpired signed link.
fn signed_ok(token: &Secret, method: &axum::http::Method, uri: &axum::http::Uri) -> bool {
    if method != axum::http::Method::GET || !uri.path().starts_with(&format!("{PREFIX}/backups/")) {
        return false;
    }
    let Ok(Query(q)) = Query::<LinkQuery>::try_from_uri(uri) else {
        return false;
    };
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return false;
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return false;
    };
    // Valid until its expiry, and never longer than a link dbkeep hands out lives.
    let now = Utc::now().timestamp();
    let Some(want) = link_signature(token, uri.path(), expires) else {
        return false;
    };
    expires >= now
        && expires <= now + LINK_TTL_SECS
        && !sig.is_empty()
        && same_secret(sig.as_bytes(), want.as_bytes())
}

/// The admin surface's security headers on a response.
fn with_headers(mut r: Response) -> Response {
    for (k, v) in super::page::SECURITY_HEADERS {
        r.headers_mut()
            .insert(k, axum::http::HeaderValue::from_static(v));
    }
    r
}

/// Token check, then one log line per call (who, what, result). The API is off (404)
/// without a configured token; a wrong or missing token is 401 with no detail, counted,
/// and logged at most a few times a minute per peer; past `MAX_FAILURES` a minute the
/// peer gets 429 without its token being looked at.
pub(super) async fn guard(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let t0 = Instant::now();
    // Inside `nest` the URI lost its prefix; the original one is what the client signed.
    let uri = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| req.uri().clone());
    let method = req.method().to_string();
    let path = uri.path().to_string();
    let cfg = st.daemon.config();
    let Some(token) = cfg.daemon.admin_token.as_ref() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "the admin API is off",
            "set daemon.admin_token_file to turn it on",
        )
        .into_response();
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if st.limiter.blocked(peer.ip(), Instant::now()) {
        metrics::admin_denied(&peer.to_string(), &method, &path, false);
        return with_headers(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "60")],
                Json(ErrorBody {
                    error: "too many failed calls from this address; wait a minute".into(),
                    hint: None,
                }),
            )
                .into_response(),
        );
    }
    let who = match bearer {
        Some(b) if same_secret(b.as_bytes(), token.expose().as_bytes()) => token_id(token),
        _ if signed_ok(token, req.method(), &uri) => format!("signed link from {peer}"),
        _ => {
            let f = st.limiter.failed(peer.ip(), Instant::now());
            if f.before > 1 {
                tracing::warn!(who = %peer, failures = f.before, "admin API calls refused from this address in the minute before");
            }
            metrics::admin_denied(&peer.to_string(), &method, &path, f.log);
            return with_headers(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    Json(ErrorBody {
                        error: "unauthorized".into(),
                        hint: None,
                    }),
                )
                    .into_response(),
            );
        }
    };
    let response = with_headers(next.run(req).await);
    metrics::admin_call(
        &who,
        &method,
        &path,
        response.status().as_u16(),
        t0.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_only() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn links_are_not_signed_with_the_token_itself_and_expiry_is_capped() {
        let token = Secret::new("0123456789abcdef0123456789abcdef");
        let direct = hex::encode(hmac(token.expose().as_bytes(), b"GET\n/p/a\n100").unwrap());
        assert_ne!(link_signature(&token, "/p/a", 100).unwrap(), direct);
        let path = format!("{PREFIX}/backups/app/app_20261121_000000.dump.zst");
        let ok = |expires: i64, sig: &str| {
            let uri: axum::http::Uri = format!("{path}?expires={expires}&sig={sig}")
                .parse()
                .unwrap();
            signed_ok(&token, &axum::http::Method::GET, &uri)
        };
        let now = Utc::now().timestamp();
        let soon = now + 60;
        assert!(ok(soon, &link_signature(&token, &path, soon).unwrap()));
        let far = now + (1 << 40);
        assert!(!ok(far, &link_signature(&token, &path, far).unwrap()));
        assert!(!ok(soon, ""));
        let past = now - 1;
        assert!(!ok(past, &link_signature(&token, &path, past).unwrap()));
    }

    #[test]
    fn failures_are_limited_and_logged_once_per_window_per_peer() {
        let limiter = Limiter::default();
        let peer: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let other: std::net::IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..MAX_FAILURES {
            assert!(!limiter.blocked(peer, t0));
            if limiter
                .failed(peer, t0 + Duration::from_millis(i as u64))
                .log
            {
                logged += 1;
            }
        }
        assert_eq!(logged, 1, "one line per peer per window");
        assert!(limiter.blocked(peer, t0 + Duration::from_secs(1)));
        assert!(!limiter.blocked(other, t0 + Duration::from_secs(1)));
        // The next window: allowed again, and the first failure there says how many the
        // last one had.
        let later = t0 + WINDOW + Duration::from_secs(1);
        assert!(!limiter.blocked(peer, later));
        let f = limiter.failed(peer, later);
        assert!(f.log);
        assert_eq!(f.before, MAX_FAILURES);
    }

    #[test]
    fn signed_links_are_bound_to_path_and_expiry() {
        let token = Secret::new("0123456789abcdef0123");
        let a = link_signature(&token, "/p/a", 100);
        assert_eq!(a, link_signature(&token, "/p/a", 100));
        assert_ne!(a, link_signature(&token, "/p/b", 100));
        assert_ne!(a, link_signature(&token, "/p/a", 101));
        assert_ne!(
            a,
            link_signature(&Secret::new("another-token-0000"), "/p/a", 100)
        );
    }
}
