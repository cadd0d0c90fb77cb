//! Access to the admin API: the bearer token (compared in constant time), signed download
//! links, and one log line per call.

use std::net::SocketAddr;
use std::time::Instant;

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

fn link_signature(token: &Secret, path: &str, expires: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("GET\n{path}\n{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A download link that works without the header for `LINK_TTL_SECS`.
pub(super) fn signed_link(token: &Secret, target: &str, file: &str, now: DateTime<Utc>) -> String {
    let path = format!("{PREFIX}/backups/{target}/{file}");
    let expires = now.timestamp() + LINK_TTL_SECS;
    let sig = link_signature(token, &path, expires);
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
    expires >= Utc::now().timestamp()
        && same_secret(
            sig.as_bytes(),
            link_signature(token, uri.path(), expires).as_bytes(),
        )
}

/// Token check, then one log line per call (who, what, result). The API is off (404)
/// without a configured token; a wrong or missing token is 401 with no detail, logged and
/// counted.
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
    let who = match bearer {
        Some(b) if same_secret(b.as_bytes(), token.expose().as_bytes()) => token_id(token),
        _ if signed_ok(token, req.method(), &uri) => format!("signed link from {peer}"),
        _ => {
            metrics::admin_denied(&peer.to_string(), &method, &path);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(ErrorBody {
                    error: "unauthorized".into(),
                    hint: None,
                }),
            )
                .into_response();
        }
    };
    let response = next.run(req).await;
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
