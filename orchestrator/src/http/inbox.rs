//! The live inbox: `/api/v1/stream` (Server-Sent Events of
//! `MessageProcessed`, resumable with `Last-Event-ID`) and the
//! conversations' history, for organisations (a JWT naming one: theirs
//! only) and operators (the admin token or an admin JWT: any, chosen with
//! `?organisation=`).
//!
//! | route | does |
//! | --- | --- |
//! | `GET /api/v1/stream` | live events from now, or after `Last-Event-ID` (header, or `last_event_id`) |
//! | `GET /api/v1/conversations` | conversations latest first, with unread counts (`limit`, `before`) |
//! | `GET /api/v1/conversations/{phone}/messages` | a thread newest first, with delivery statuses (`limit`, `before`) |
//! | `POST /api/v1/conversations/{phone}/read` | marks a thread read |
//!
//! SSE rather than WebSocket: the stream goes one way, SSE resumes with a
//! standard header, passes proxies as plain HTTP and needs no protocol of
//! our own. Unauthenticated requests get 401 and nothing else.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Access, Credentials, refusal};
use crate::store::{ConversationCursor, Conversations, conversation_phone};

/// What the inbox routes need.
#[derive(Clone)]
pub struct InboxState {
    /// Who may call.
    pub credentials: Credentials,
    /// The history.
    pub conversations: Arc<dyn Conversations>,
    /// The live events; `None`: `/api/v1/stream` answers 404.
    #[cfg(feature = "kafka")]
    pub feed: Option<crate::kafka::InboxFeed>,
}

/// The inbox routes (see the module docs).
pub fn routes(state: InboxState) -> Router {
    let credentials = state.credentials.clone();
    let router = Router::new()
        .route("/api/v1/conversations", get(conversations))
        .route("/api/v1/conversations/{phone}/messages", get(thread))
        .route("/api/v1/conversations/{phone}/read", post(mark_read));
    #[cfg(feature = "kafka")]
    let router = router.route("/api/v1/stream", get(stream::stream));
    router
        .layer(middleware::from_fn(move |mut request: Request, next: Next| {
            let credentials = credentials.clone();
            async move {
                match credentials.access_of(request.headers()) {
                    Ok(access) => {
                        request.extensions_mut().insert(access);
                        next.run(request).await
                    }
                    Err(error) => refusal(error),
                }
            }
        }))
        .with_state(state)
}

/// A request refused, with its status and the reason.
#[derive(Debug)]
pub(crate) struct Refused {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refused {
    fn bad(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid_request", message: message.into() }
    }

    fn unavailable(error: impl std::fmt::Display) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: error.to_string() }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.code, "message": self.message }))).into_response()
    }
}

/// The query, or a 400 naming what is wrong with it.
fn query<T>(params: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, Refused> {
    params.map(|Query(params)| params).map_err(|rejection| Refused::bad(rejection.body_text()))
}

/// The organisation a request is about: an organisation's own (asking for
/// another is refused), or the one an operator names (`None`: all of them).
fn organisation(access: &Access, asked: Option<&str>) -> Result<Option<String>, Refused> {
    let asked = asked.map(str::trim).filter(|o| !o.is_empty());
    match (access, asked) {
        (Access::Operator, asked) => Ok(asked.map(str::to_owned)),
        (Access::Organisation(own), Some(asked)) if asked != own => Err(Refused {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: "the token is for another organisation".to_owned(),
        }),
        (Access::Organisation(own), _) => Ok(Some(own.clone())),
    }
}

/// [`organisation`], required: a thread is one organisation's.
fn one_organisation(access: &Access, asked: Option<&str>) -> Result<String, Refused> {
    organisation(access, asked)?.ok_or_else(|| Refused::bad("`organisation` is required with an operator's token"))
}

/// Page size: 1 to 200, 50 by default.
fn page_size(limit: Option<u64>) -> Result<u64, Refused> {
    match limit {
        None => Ok(50),
        Some(limit @ 1..=200) => Ok(limit),
        Some(_) => Err(Refused::bad("`limit` must be between 1 and 200")),
    }
}

/// A phone as the history keys it: the pipeline's rule for phones, given
/// its `+` when it came without.
fn checked_phone(phone: &str) -> Result<String, Refused> {
    crate::validate::validate_phone(phone).map_err(Refused::bad)?;
    Ok(conversation_phone(phone))
}

/// Parameters of the routes' queries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    organisation: Option<String>,
    limit: Option<u64>,
    before: Option<String>,
}

async fn conversations(
    State(state): State<InboxState>,
    Extension(access): Extension<Access>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refused> {
    let params = query(params)?;
    let tenant = organisation(&access, params.organisation.as_deref())?;
    let limit = page_size(params.limit)?;
    let before = match params.before.as_deref() {
        Some(text) => Some(
            ConversationCursor::decode(text)
                .ok_or_else(|| Refused::bad(format!("`before` is not a cursor: `{text}`")))?,
        ),
        None => None,
    };
    // One more than asked: whether a next page exists.
    let mut items = state
        .conversations
        .conversations(tenant.as_deref(), before.as_ref(), limit + 1)
        .await
        .map_err(Refused::unavailable)?;
    let more = items.len() as u64 > limit;
    items.truncate(limit as usize);
    let next = items.last().filter(|_| more).map(|last| ConversationCursor::after(last).encode());
    Ok(Json(json!({ "items": items, "next_before": next })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThreadParams {
    organisation: Option<String>,
    limit: Option<u64>,
    before: Option<i64>,
}

async fn thread(
    State(state): State<InboxState>,
    Extension(access): Extension<Access>,
    Path(phone): Path<String>,
    params: Result<Query<ThreadParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refused> {
    let params = query(params)?;
    let tenant = one_organisation(&access, params.organisation.as_deref())?;
    let (phone, limit) = (checked_phone(&phone)?, page_size(params.limit)?);
    let mut items =
        state.conversations.thread(&tenant, &phone, params.before, limit + 1).await.map_err(Refused::unavailable)?;
    let more = items.len() as u64 > limit;
    items.truncate(limit as usize);
    let next = items.last().filter(|_| more).map(|last| last.id);
    Ok(Json(json!({ "items": items, "next_before": next })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    organisation: Option<String>,
}

async fn mark_read(
    State(state): State<InboxState>,
    Extension(access): Extension<Access>,
    Path(phone): Path<String>,
    params: Result<Query<ReadParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refused> {
    let params = query(params)?;
    let tenant = one_organisation(&access, params.organisation.as_deref())?;
    let phone = checked_phone(&phone)?;
    match state.conversations.mark_read(&tenant, &phone).await.map_err(Refused::unavailable)? {
        true => Ok(Json(json!({ "unread": 0 })).into_response()),
        false => Err(Refused {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no conversation with {phone}"),
        }),
    }
}

#[cfg(feature = "kafka")]
mod stream {
    use std::convert::Infallible;
    use std::time::Duration;

    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt as _;

    use super::*;
    use crate::kafka::inbox_feed::{FeedCursor, FeedError};

    /// How long a quiet stream waits before a keep-alive comment (proxies close idle connections).
    const KEEP_ALIVE: Duration = Duration::from_secs(15);

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct StreamParams {
        organisation: Option<String>,
        /// For clients that cannot set the header.
        last_event_id: Option<String>,
    }

    pub(super) async fn stream(
        State(state): State<InboxState>,
        Extension(access): Extension<Access>,
        headers: HeaderMap,
        params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
    ) -> Result<Response, Refused> {
        let params = query(params)?;
        let feed = state.feed.as_ref().ok_or(Refused {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: "this server has no live stream".to_owned(),
        })?;
        let tenant = organisation(&access, params.organisation.as_deref())?;
        let header = headers.get("last-event-id").map(|v| v.to_str().map(str::to_owned));
        let resume = match header.or(params.last_event_id.map(Ok)) {
            None => None,
            Some(Ok(text)) if text.trim().is_empty() => None,
            Some(Err(_)) => return Err(Refused::bad("Last-Event-ID is not text")),
            Some(Ok(text)) => {
                Some(FeedCursor::parse(&text).map_err(|reason| Refused::bad(format!("Last-Event-ID: {reason}")))?)
            }
        };
        let subscription = match feed.open(tenant, resume).await {
            Ok(subscription) => subscription,
            Err(full @ FeedError::Full(_)) => {
                let mut answer = Refused::unavailable(full).into_response();
                answer.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                return Ok(answer);
            }
            Err(failure) => return Err(Refused::unavailable(failure)),
        };
        let start = subscription.start.encode();
        let ready = Event::default()
            .event("ready")
            .id(start.clone())
            .json_data(json!({ "cursor": start, "gap": subscription.gap }));
        let events = futures_util::stream::unfold(subscription.events, |mut events| async move {
            let item = events.recv().await?;
            let event = Event::default().event("message_processed").id(item.cursor.encode()).json_data(&item.event);
            Some((event, events))
        });
        let body = futures_util::stream::once(async move { ready })
            .chain(events)
            // Serialising our own events cannot fail; were it to, the event is skipped, the stream goes on.
            .filter_map(|event| async move { event.ok() })
            .map(Ok::<_, Infallible>);
        Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
    }
}
