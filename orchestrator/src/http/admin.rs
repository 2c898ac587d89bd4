//! `/admin/dlq...`: the dead-letter queue over HTTP, behind a bearer token:
//! the static admin token, or a JWT with the `admin` scope (see [`super::auth`]).
//!
//! | route | does |
//! | --- | --- |
//! | `GET /admin/dlq` | list (`status`, `tenant`, `failure_type`, `since`, `fingerprint`, `limit`, `offset`) |
//! | `GET /admin/dlq/groups` | the same filters, grouped by failure fingerprint |
//! | `GET /admin/dlq/{id}` | one entry, with its payload |
//! | `POST /admin/dlq/{id}/replay` | replay one |
//! | `POST /admin/dlq/replay` | replay all matching (`dry_run`, `limit`, `per_second`) |
//! | `POST /admin/dlq/{id}/discard` | discard one |

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Access, AuthError, Credentials, JwtVerifier, refusal};
use crate::dlq::{BulkReplay, DlqError, DlqService};
use crate::store::{DeadLetter, DlqFilter, FailureGroup, Page};

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    /// The operations.
    pub dlq: DlqService,
    /// The static bearer token (`ADMIN_TOKEN`); `None` or blank: none is accepted.
    pub token: Option<String>,
    /// Verifies JWTs (`JWT_SECRET` or `JWT_PUBLIC_KEY_FILE`): one whose
    /// `scope` includes `admin` is accepted too.
    pub jwt: Option<JwtVerifier>,
}

impl AdminState {
    /// Admin routes over `dlq` behind the static `token`.
    pub fn new(dlq: DlqService, token: impl Into<String>) -> Self {
        Self { dlq, token: Some(token.into()), jwt: None }
    }

    /// Also accepts JWTs with the `admin` scope that `jwt` verifies.
    pub fn with_jwt(mut self, jwt: JwtVerifier) -> Self {
        self.jwt = Some(jwt);
        self
    }
}

/// The admin routes, refusing requests without a valid bearer token (401)
/// and those whose valid JWT lacks the `admin` scope (403).
pub fn routes(state: AdminState) -> Router {
    let credentials = Credentials { admin_token: state.token.clone(), jwt: state.jwt.clone() };
    Router::new()
        .route("/admin/dlq", get(list))
        .route("/admin/dlq/groups", get(groups))
        .route("/admin/dlq/replay", post(replay_matching))
        .route("/admin/dlq/{id}", get(show))
        .route("/admin/dlq/{id}/replay", post(replay))
        .route("/admin/dlq/{id}/discard", post(discard))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let credentials = credentials.clone();
            async move {
                match credentials.access_of(request.headers()) {
                    Ok(Access::Operator) => next.run(request).await,
                    Ok(Access::Organisation(_)) => refusal(AuthError::Forbidden("the token has no `admin` scope")),
                    Err(error) => refusal(error),
                }
            }
        }))
        .with_state(state)
}

/// Filters and paging, from the query string or a bulk-replay body.
#[derive(Debug, Default, Deserialize)]
struct FilterParams {
    status: Option<String>,
    tenant: Option<String>,
    failure_type: Option<String>,
    since: Option<DateTime<Utc>>,
    fingerprint: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

impl FilterParams {
    fn filter(&self) -> Result<DlqFilter, ApiError> {
        DlqFilter::parse(
            self.status.as_deref(),
            self.tenant.as_deref(),
            self.failure_type.as_deref(),
            self.since,
            self.fingerprint.as_deref(),
        )
        .map_err(ApiError::bad)
    }

    fn page(&self) -> Page {
        Page { limit: self.limit.unwrap_or(100).min(1000), offset: self.offset.unwrap_or(0) }
    }
}

/// An error as JSON with its status code.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: String) -> Self {
        Self(StatusCode::BAD_REQUEST, message)
    }
}

impl From<DlqError> for ApiError {
    fn from(error: DlqError) -> Self {
        let code = match &error {
            DlqError::NotFound(_) => StatusCode::NOT_FOUND,
            DlqError::Refused { .. } | DlqError::NoDestination(_) => StatusCode::CONFLICT,
            DlqError::NoPublisher | DlqError::Publish(_) | DlqError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self(code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// An entry as JSON; with `payload`, the original bytes (text, or base64 when not UTF-8).
pub fn entry_json(entry: &DeadLetter, payload: bool) -> Value {
    let mut value = json!({
        "id": entry.id,
        "message_id": entry.message_id,
        "topic": entry.source.as_ref().map(|s| &s.topic),
        "partition": entry.source.as_ref().map(|s| s.partition),
        "offset": entry.source.as_ref().map(|s| s.offset),
        "key": entry.source.as_ref().and_then(|s| s.key.as_ref()),
        "failure_type": entry.failure_type.as_str(),
        "error": entry.error,
        "fingerprint": entry.fingerprint,
        "attempt_count": entry.attempt_count,
        "status": entry.status.as_str(),
        "replay_count": entry.replay_count,
        "tenant_id": entry.tenant_id,
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
    });
    if payload {
        let (text, encoding) = match std::str::from_utf8(&entry.payload) {
            Ok(text) => (text.to_owned(), "utf8"),
            Err(_) => (base64::engine::general_purpose::STANDARD.encode(&entry.payload), "base64"),
        };
        value["payload"] = Value::from(text);
        value["payload_encoding"] = Value::from(encoding);
    }
    value
}

fn group_json(group: &FailureGroup) -> Value {
    json!({
        "fingerprint": group.fingerprint,
        "failure_type": group.failure_type.as_str(),
        "pattern": group.pattern,
        "count": group.count,
        "first_at": group.first_at,
        "last_at": group.last_at,
    })
}

async fn list(State(state): State<AdminState>, Query(params): Query<FilterParams>) -> Result<Json<Value>, ApiError> {
    let page = params.page();
    let entries = state.dlq.list(&params.filter()?, page).await?;
    let items: Vec<Value> = entries.iter().map(|e| entry_json(e, false)).collect();
    Ok(Json(json!({ "items": items, "limit": page.limit, "offset": page.offset })))
}

async fn groups(State(state): State<AdminState>, Query(params): Query<FilterParams>) -> Result<Json<Value>, ApiError> {
    let groups = state.dlq.groups(&params.filter()?, params.page().limit).await?;
    Ok(Json(json!({ "groups": groups.iter().map(group_json).collect::<Vec<_>>() })))
}

async fn show(State(state): State<AdminState>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    Ok(Json(entry_json(&state.dlq.get(id).await?, true)))
}

async fn replay(State(state): State<AdminState>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    Ok(Json(entry_json(&state.dlq.replay(id).await?, false)))
}

async fn discard(State(state): State<AdminState>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    Ok(Json(entry_json(&state.dlq.discard(id).await?, false)))
}

/// The body of `POST /admin/dlq/replay`: a filter and how to run.
#[derive(Debug, Default, Deserialize)]
struct BulkParams {
    #[serde(flatten)]
    filter: FilterParams,
    #[serde(default)]
    dry_run: bool,
    per_second: Option<u32>,
    /// Confirms a replay with no filter at all.
    #[serde(default)]
    all: bool,
}

/// Keys the bulk body may have: a typo (`dryrun`) must not turn a dry run into a real one.
const BULK_KEYS: [&str; 10] =
    ["status", "tenant", "failure_type", "since", "fingerprint", "limit", "offset", "dry_run", "per_second", "all"];

/// Reads the bulk body as JSON whatever its `Content-Type` (clients often send none).
fn bulk_params(body: &[u8]) -> Result<BulkParams, ApiError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("body is not JSON: {e}")))?
    };
    let Some(object) = value.as_object() else { return Err(ApiError::bad("body must be a JSON object".to_owned())) };
    if let Some(unknown) = object.keys().find(|k| !BULK_KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad(format!("unknown field `{unknown}`; expected one of {BULK_KEYS:?}")));
    }
    let params: BulkParams = serde_json::from_value(value).map_err(|e| ApiError::bad(e.to_string()))?;
    let filtered = params.filter.status.is_some()
        || params.filter.tenant.is_some()
        || params.filter.failure_type.is_some()
        || params.filter.since.is_some()
        || params.filter.fingerprint.is_some();
    if !filtered && !params.all && !params.dry_run {
        return Err(ApiError::bad("give a filter, or \"all\": true to replay every failed entry".to_owned()));
    }
    Ok(params)
}

async fn replay_matching(State(state): State<AdminState>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let params = bulk_params(&body)?;
    let defaults = BulkReplay::default();
    let options = BulkReplay {
        dry_run: params.dry_run,
        limit: params.filter.limit.unwrap_or(defaults.limit).min(10_000),
        per_second: params.per_second.unwrap_or(defaults.per_second).clamp(1, 1000),
    };
    let report = state.dlq.replay_matching(&params.filter.filter()?, options).await?;
    let failed: Vec<Value> = report.failed.iter().map(|(id, error)| json!({ "id": id, "error": error })).collect();
    Ok(Json(json!({
        "dry_run": report.dry_run,
        "matched": report.matched,
        "replayed": report.replayed,
        "failed": failed,
    })))
}
