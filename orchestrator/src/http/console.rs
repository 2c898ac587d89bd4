//! `/console`: the operator console, a small page embedded in the binary
//! (no CDN: it works on machines without internet). It signs in with the
//! admin token (or an admin JWT) and reads the same routes as everyone:
//! `/api/v1/stream` and `/api/v1/conversations` for the live feed and
//! threads, `/admin/dlq` for dead letters, `/health` for breakers and
//! `/metrics` for the charts.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /console/login` | the sign-in form (public; it holds nothing) |
//! | `POST /console/login` | `{"token": ...}`: an operator's token sets the session cookie |
//! | `POST /console/logout` | clears it |
//! | `GET /console`, `/console/console.js`, `/console/console.css` | the console, with the cookie only (401 without) |
//!
//! The cookie only opens the page's files (`HttpOnly`, `SameSite=Strict`,
//! `Path=/console`; for the admin token it holds a signed expiry, not the
//! token); the page calls the APIs with the bearer token, so no API
//! accepts a cookie and none can be called across sites.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Access, AuthError, Credentials, refusal};

const LOGIN_HTML: &str = include_str!("console/login.html");
const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The session cookie's name.
const COOKIE: &str = "console_session";
/// How long a sign-in lasts, in seconds.
const SESSION_SECONDS: u32 = 12 * 3600;

/// The console's routes; `credentials` decides who may sign in (operators only).
pub fn routes(credentials: Credentials) -> Router {
    Router::new()
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route(
            "/console",
            get(|s: State<Credentials>, h: HeaderMap| asset(s, h, INDEX_HTML, "text/html; charset=utf-8")),
        )
        .route(
            "/console/console.js",
            get(|s: State<Credentials>, h: HeaderMap| asset(s, h, CONSOLE_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/console.css",
            get(|s: State<Credentials>, h: HeaderMap| asset(s, h, CONSOLE_CSS, "text/css; charset=utf-8")),
        )
        .with_state(credentials)
}

/// Headers every console answer carries: nothing from elsewhere, never framed, never sniffed.
fn guarded(mut response: Response, inline_script: bool) -> Response {
    let policy = if inline_script {
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
    } else {
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn login_page() -> Response {
    guarded(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], LOGIN_HTML).into_response(), true)
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

/// Only operators sign in: an organisation's token is refused (403).
fn operator(credentials: &Credentials, token: &str) -> Result<(), AuthError> {
    match credentials.access(token)? {
        Access::Operator => Ok(()),
        Access::Organisation(_) => Err(AuthError::Forbidden("the console is for operators: use the admin token")),
    }
}

async fn login(State(credentials): State<Credentials>, body: Bytes) -> Response {
    let Ok(SignIn { token }) = serde_json::from_slice::<SignIn>(&body) else {
        let message = "send {\"token\": \"...\"} as JSON";
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_request", "message": message })))
            .into_response();
    };
    if let Err(error) = operator(&credentials, token.trim()) {
        return refusal(error);
    }
    let value = session_value(&credentials, token.trim(), chrono::Utc::now().timestamp() + i64::from(SESSION_SECONDS));
    let cookie = format!("{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}");
    ([(header::SET_COOKIE, cookie)], Json(json!({ "signed_in": true }))).into_response()
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Json(json!({ "signed_in": false }))).into_response()
}

/// A session's cookie value. For the admin token: its expiry, signed with
/// the token (`a.<expiry>.<signature>`), so the token itself is not in the
/// cookie and any replica with the same token accepts it. For an admin
/// JWT: the JWT (`j.<jwt>`), which carries its own expiry.
fn session_value(credentials: &Credentials, token: &str, expires: i64) -> String {
    match credentials
        .admin_token()
        .filter(|admin| crate::webhook::signature::secrets_match(token.as_bytes(), admin.as_bytes()))
    {
        Some(admin) => format!("a.{expires}.{}", session_signature(admin, expires)),
        None => format!("j.{token}"),
    }
}

fn session_signature(admin_token: &str, expires: i64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, admin_token.as_bytes());
    let signature = ring::hmac::sign(&key, format!("console-session:{expires}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref())
}

/// Whether the request's session cookie opens the console.
fn session(credentials: &Credentials, headers: &HeaderMap) -> Result<(), AuthError> {
    let cookies = headers.get_all(header::COOKIE).into_iter().filter_map(|v| v.to_str().ok());
    let value = cookies
        .flat_map(|line| line.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
        .ok_or(AuthError::Missing)?;
    let invalid = || AuthError::Invalid("not a console session".to_owned());
    if let Some(jwt) = value.strip_prefix("j.") {
        return operator(credentials, jwt);
    }
    let (expires, signature) = value.strip_prefix("a.").and_then(|rest| rest.split_once('.')).ok_or_else(invalid)?;
    let expires: i64 = expires.parse().map_err(|_| invalid())?;
    let admin = credentials.admin_token().ok_or_else(invalid)?;
    let genuine =
        crate::webhook::signature::secrets_match(signature.as_bytes(), session_signature(admin, expires).as_bytes());
    if genuine && expires > chrono::Utc::now().timestamp() { Ok(()) } else { Err(invalid()) }
}

async fn asset(
    State(credentials): State<Credentials>,
    headers: HeaderMap,
    body: &'static str,
    kind: &'static str,
) -> Response {
    match session(&credentials, &headers) {
        Ok(()) => guarded(([(header::CONTENT_TYPE, kind)], body).into_response(), false),
        Err(AuthError::Forbidden(reason)) => refusal(AuthError::Forbidden(reason)),
        // 401 and nothing but where to sign in.
        _ => guarded(
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                "<!doctype html><title>401</title><a href=\"/console/login\">Sign in</a>",
            )
                .into_response(),
            false,
        ),
    }
}
