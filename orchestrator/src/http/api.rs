//! `/api/v1`: the send API (the [`crate::message_service`] over HTTP),
//! behind JWTs that name the caller's organisation, with per-organisation
//! request rates, and its OpenAPI document.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /api/v1/messages` | send one now or at `scheduled_at` (202; `Idempotency-Key` honoured) |
//! | `POST /api/v1/messages/batch` | up to 1,000, an id or errors per entry |
//! | `GET /api/v1/messages` | list (`recipient`, `status`, `since`, `limit`, `cursor`) |
//! | `GET /api/v1/messages/{id}` | one, with its status history |
//! | `DELETE /api/v1/messages/{id}` | cancel one that has not gone out |
//! | `GET /api/v1/openapi.json` | this API's OpenAPI 3.1 document (no token needed) |
//!
//! Answers: 401 without a valid token, 403 for a token without an
//! organisation or for another organisation's message, 400 naming each
//! wrong field, 409 for a reused `Idempotency-Key` or a cancel too late,
//! 429 with `Retry-After` past the organisation's rates, 503 when the
//! database is out.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use serde::Deserialize;
use serde_json::json;
use utoipa::OpenApi;

use super::auth::JwtVerifier;
use crate::message_service::{
    Accepted, BatchAccepted, BatchEntry, BatchRequest, FieldError, MessageContent, MessageList, MessageService,
    MessageView, SendRequest, ServiceError, StatusChange, TemplateMessage,
};
use crate::store::{ApiMessageFilter, OutboundStatus};

/// Requests per second and organisation, in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    /// Sustained requests per second.
    pub per_second: NonZeroU32,
    /// Requests allowed at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// What the `/api/v1` routes need.
#[derive(Clone)]
pub struct ApiState {
    /// The operations.
    pub service: MessageService,
    /// Verifies the callers' JWTs.
    pub jwt: JwtVerifier,
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

impl ApiState {
    /// The API over `service`, for callers whose JWTs `jwt` verifies;
    /// `rate`: each organisation's request rate (`None`: unlimited).
    pub fn new(service: MessageService, jwt: JwtVerifier, rate: Option<RequestRate>) -> Self {
        let limiter =
            rate.map(|rate| Arc::new(RateLimiter::keyed(Quota::per_second(rate.per_second).allow_burst(rate.burst))));
        Self { service, jwt, limiter }
    }

    /// Ok, or how long `organisation` must wait for its next request.
    fn admit(&self, organisation: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        // Keeps the per-organisation table from growing with organisations long idle.
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        limiter.check_key(&organisation.to_owned()).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

/// The caller's organisation, set by the authentication layer.
#[derive(Debug, Clone)]
struct Organisation(String);

/// The `/api/v1` routes (see the module docs).
pub fn routes(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/api/v1/messages", post(send).get(list_messages))
        .route("/api/v1/messages/batch", post(send_batch))
        .route("/api/v1/messages/{id}", get(get_message).delete(cancel_message))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new().route("/api/v1/openapi.json", get(openapi)).merge(protected).with_state(state)
}

/// Verifies the bearer JWT, requires an organisation in it, and applies
/// the organisation's request rate.
async fn authenticate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let caller = match state.jwt.verify_request(request.headers()) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let Some(organisation) = caller.organisation.filter(|org| !org.trim().is_empty()) else {
        let message = format!("the token has no `{}` claim naming the organisation", state.jwt.org_claim());
        return error(StatusCode::FORBIDDEN, "forbidden", message, Vec::new());
    };
    if let Err(wait) = state.admit(&organisation) {
        crate::metrics::metrics().message_service_processed.with_label_values(&["rate_limited"]).inc();
        return too_many(wait, "the organisation's request rate is exceeded");
    }
    request.extensions_mut().insert(Organisation(organisation));
    next.run(request).await
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `invalid_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `rate_limited`, `unavailable`.
    pub error: String,
    /// What went wrong, readable.
    pub message: String,
    /// Each wrong field, for `invalid_request`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>, errors: Vec<FieldError>) -> Response {
    (status, Json(ErrorBody { error: code.to_owned(), message: message.into(), errors })).into_response()
}

fn invalid(errors: Vec<FieldError>) -> Response {
    crate::metrics::metrics().message_service_processed.with_label_values(&["invalid"]).inc();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    let message = format!("invalid fields: {}", fields.join(", "));
    error(StatusCode::BAD_REQUEST, "invalid_request", message, errors)
}

fn too_many(wait: Duration, message: &str) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message, Vec::new());
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ServiceError::Invalid(errors) => invalid(errors),
            ServiceError::IdempotencyConflict(_) => error(StatusCode::CONFLICT, "conflict", message, Vec::new()),
            ServiceError::TooLate { .. } => error(StatusCode::CONFLICT, "conflict", message, Vec::new()),
            ServiceError::OverDailyLimit { retry_after, .. } => too_many(retry_after, &message),
            ServiceError::NotFound(_) => error(StatusCode::NOT_FOUND, "not_found", message, Vec::new()),
            ServiceError::Forbidden(_) => error(StatusCode::FORBIDDEN, "forbidden", message, Vec::new()),
            ServiceError::Store(store) => {
                tracing::error!(error = %store, "send API: database failed");
                error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the database is unavailable; retry", Vec::new())
            }
        }
    }
}

/// Parses a JSON body, naming the field a wrong value is in.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Vec<FieldError>> {
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // `.` is the document itself, `?` a place the parser never reached (not JSON).
        let field = match e.path().to_string() {
            path if path == "." || path == "?" => "body".to_owned(),
            path => path,
        };
        vec![FieldError::new(field, e.inner().to_string())]
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Vec<FieldError>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str().map(str::trim) {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_owned())),
        _ => Err(vec![FieldError::new("Idempotency-Key", "1 to 255 visible ASCII characters")]),
    }
}

/// Times a route into `message_service_processing_duration_seconds`.
struct Timed(&'static str, Instant);

impl Timed {
    fn start(route: &'static str) -> Self {
        Self(route, Instant::now())
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        let metrics = crate::metrics::metrics();
        metrics.message_service_duration.with_label_values(&[self.0]).observe(self.1.elapsed().as_secs_f64());
    }
}

/// Send one message.
#[utoipa::path(
    post, path = "/api/v1/messages", tag = "messages",
    request_body = SendRequest,
    params(("Idempotency-Key" = Option<String>, Header,
            description = "Repeating a request with the same key answers as the first did and sends nothing again")),
    responses(
        (status = 202, description = "Accepted: `queued`, or `scheduled` with `scheduled_at`", body = Accepted),
        (status = 400, description = "Invalid fields, each named", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token names no organisation", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with a different request", body = ErrorBody),
        (status = 429, description = "Request rate or daily messages exceeded; see Retry-After", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn send(
    State(state): State<ApiState>,
    Extension(Organisation(org)): Extension<Organisation>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _timed = Timed::start("send");
    let key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(errors) => return invalid(errors),
    };
    let request: SendRequest = match parse(&body) {
        Ok(request) => request,
        Err(errors) => return invalid(errors),
    };
    match state.service.send(&org, &request, key.as_deref()).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Send up to 1,000 messages, each accepted or refused on its own.
#[utoipa::path(
    post, path = "/api/v1/messages/batch", tag = "messages",
    request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header,
            description = "Makes each entry idempotent under the key and its position")),
    responses(
        (status = 202, description = "Processed: an id or errors per entry, in order", body = BatchAccepted),
        (status = 400, description = "Not a batch, or none of its entries is valid", body = BatchAccepted),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Request rate or daily messages exceeded; see Retry-After", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn send_batch(
    State(state): State<ApiState>,
    Extension(Organisation(org)): Extension<Organisation>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _timed = Timed::start("batch");
    let _active = ActiveBatch::start();
    let key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(errors) => return invalid(errors),
    };
    let batch: BatchRequest = match parse(&body) {
        Ok(batch) => batch,
        Err(errors) => return invalid(errors),
    };
    match state.service.send_batch(&org, &batch.messages, key.as_deref()).await {
        Ok(answer) if answer.accepted == 0 => (StatusCode::BAD_REQUEST, Json(answer)).into_response(),
        Ok(answer) => (StatusCode::ACCEPTED, Json(answer)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Counts a batch in `message_service_active_batches` while its request lasts.
struct ActiveBatch;

impl ActiveBatch {
    fn start() -> Self {
        crate::metrics::metrics().message_service_active_batches.inc();
        Self
    }
}

impl Drop for ActiveBatch {
    fn drop(&mut self) {
        crate::metrics::metrics().message_service_active_batches.dec();
    }
}

/// Filters and paging of `GET /api/v1/messages`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this recipient (E.164).
    recipient: Option<String>,
    /// Only this status: scheduled, queued, sent, delivered, read, failed, cancelled.
    status: Option<String>,
    /// Only those accepted at or after this time (RFC 3339).
    since: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u64>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

impl ListQuery {
    fn filter(&self) -> Result<ApiMessageFilter, Vec<FieldError>> {
        let mut errors = Vec::new();
        let status = self.status.as_deref().and_then(|s| {
            let parsed = OutboundStatus::parse(s);
            if parsed.is_none() {
                errors.push(FieldError::new(
                    "status",
                    "one of scheduled, queued, sent, delivered, read, failed, cancelled",
                ));
            }
            parsed
        });
        let since = self.since.as_deref().and_then(|s| match DateTime::parse_from_rfc3339(s) {
            Ok(at) => Some(at.with_timezone(&Utc)),
            Err(_) => {
                errors.push(FieldError::new("since", "must be an RFC 3339 time"));
                None
            }
        });
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            errors.push(FieldError::new("limit", "1 to 500"));
        }
        let before = self.cursor.as_deref().and_then(|c| match c.parse::<i64>() {
            Ok(cursor) => Some(cursor),
            Err(_) => {
                errors.push(FieldError::new("cursor", "not a cursor this API gave"));
                None
            }
        });
        if let Some(recipient) = &self.recipient
            && !crate::message_service::validate::is_e164(recipient)
        {
            errors.push(FieldError::new("recipient", "must be E.164"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ApiMessageFilter { recipient: self.recipient.clone(), status, since, before, limit })
    }
}

/// List the organisation's messages, newest first.
#[utoipa::path(
    get, path = "/api/v1/messages", tag = "messages",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        (status = 400, description = "Invalid filters, each named", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    )
)]
async fn list_messages(
    State(state): State<ApiState>,
    Extension(Organisation(org)): Extension<Organisation>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let _timed = Timed::start("list");
    let Ok(Query(query)) = query else {
        return invalid(vec![FieldError::new("query", "limit must be a number")]);
    };
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(errors) => return invalid(errors),
    };
    match state.service.list(&org, &filter).await {
        Ok(list) => Json(list).into_response(),
        Err(error) => error.into_response(),
    }
}

/// One message with its status history.
#[utoipa::path(
    get, path = "/api/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "The id the send answered")),
    responses(
        (status = 200, description = "The message", body = MessageView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Another organisation's message", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
    )
)]
async fn get_message(
    State(state): State<ApiState>,
    Extension(Organisation(org)): Extension<Organisation>,
    Path(id): Path<String>,
) -> Response {
    let _timed = Timed::start("get");
    match state.service.get(&org, &id).await {
        Ok(view) => Json(view).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Cancel a message that has not gone out (scheduled, or queued and not being sent).
#[utoipa::path(
    delete, path = "/api/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "The id the send answered")),
    responses(
        (status = 200, description = "Cancelled: it will not be sent", body = MessageView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Another organisation's message", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 409, description = "Too late: being sent, sent, failed or cancelled", body = ErrorBody),
    )
)]
async fn cancel_message(
    State(state): State<ApiState>,
    Extension(Organisation(org)): Extension<Organisation>,
    Path(id): Path<String>,
) -> Response {
    let _timed = Timed::start("cancel");
    match state.service.cancel(&org, &id).await {
        Ok(view) => Json(view).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The OpenAPI document of `/api/v1`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "WhatsApp Orchestrator send API",
        description = "Start conversations: messages now, in batches or scheduled, with their delivery status."
    ),
    paths(send, send_batch, list_messages, get_message, cancel_message),
    components(schemas(
        SendRequest, MessageContent, TemplateMessage, BatchRequest, Accepted, BatchAccepted, BatchEntry,
        FieldError, MessageView, StatusChange, MessageList, ErrorBody
    )),
    modifiers(&BearerJwt),
    security(("bearer_jwt" = [])),
    tags((name = "messages", description = "Send API messages of the caller's organisation"))
)]
pub struct ApiDoc;

/// Declares the bearer JWT scheme every route uses.
struct BearerJwt;

impl utoipa::Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer_jwt", SecurityScheme::Http(scheme));
    }
}

async fn openapi() -> Response {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    Json(json!(doc)).into_response()
}
