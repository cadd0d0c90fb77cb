//! The admin page (HTML, its script and its style as separate files, so the page's CSP
//! allows no inline code) and the OpenAPI document. All 404 while the admin API is off.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::{AdminState, ApiDoc};

/// Headers every admin response carries.
pub(super) const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CACHE_CONTROL, "no-store"),
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn off() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn asset(st: &AdminState, content_type: &'static str, body: &'static str) -> Response {
    if st.daemon.config().daemon.admin_token.is_none() {
        return off();
    }
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    for (k, v) in SECURITY_HEADERS {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

pub(super) async fn openapi(State(st): State<AdminState>) -> Response {
    if st.daemon.config().daemon.admin_token.is_none() {
        return off();
    }
    let mut r = (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_pretty_json().unwrap_or_default(),
    )
        .into_response();
    for (k, v) in SECURITY_HEADERS {
        r.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    r
}

/// Any method but GET on a page: 405 while the admin API is on, 404 (like every admin
/// path) while it is off, so its being there is not told.
pub(super) async fn other_method(State(st): State<AdminState>) -> Response {
    if st.daemon.config().daemon.admin_token.is_none() {
        return off();
    }
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET, HEAD")],
        "method not allowed\n",
    )
        .into_response()
}

pub(super) async fn page(State(st): State<AdminState>) -> Response {
    asset(&st, "text/html; charset=utf-8", include_str!("admin.html"))
}

pub(super) async fn script(State(st): State<AdminState>) -> Response {
    asset(
        &st,
        "text/javascript; charset=utf-8",
        include_str!("app.js"),
    )
}

pub(super) async fn style(State(st): State<AdminState>) -> Response {
    asset(&st, "text/css; charset=utf-8", include_str!("app.css"))
}
