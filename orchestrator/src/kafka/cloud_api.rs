//! Sending replies through the WhatsApp Cloud API:
//! `POST {WHATSAPP_API_URL}/{WHATSAPP_PHONE_NUMBER_ID}/messages` with a bearer
//! token, behind its own circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::sender::{SendError, WhatsAppSender};
use crate::breaker::{BreakerConfig, BreakerError, CircuitBreaker};
use crate::event::{ResponseContent, ResponseReady};

/// The Graph API base used when `WHATSAPP_API_URL` is unset.
pub const DEFAULT_API_URL: &str = "https://graph.facebook.com/v21.0";

/// Cloud API credentials and endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct CloudApiConfig {
    /// `WHATSAPP_TOKEN`: the bearer token.
    pub token: String,
    /// `WHATSAPP_PHONE_NUMBER_ID`: the sending number's id.
    pub phone_number_id: String,
    /// `WHATSAPP_API_URL` (default [`DEFAULT_API_URL`]).
    pub api_url: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for CloudApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("CloudApiConfig")
            .field("phone_number_id", &self.phone_number_id)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl CloudApiConfig {
    /// From `WHATSAPP_TOKEN` and `WHATSAPP_PHONE_NUMBER_ID` (both needed; `None`
    /// otherwise, meaning "dry run") and `WHATSAPP_API_URL`.
    pub fn from_env() -> Option<Self> {
        let var = |name| std::env::var(name).ok().map(|v: String| v.trim().to_owned()).filter(|v| !v.is_empty());
        Some(Self {
            token: var("WHATSAPP_TOKEN")?,
            phone_number_id: var("WHATSAPP_PHONE_NUMBER_ID")?,
            api_url: var("WHATSAPP_API_URL").unwrap_or_else(|| DEFAULT_API_URL.to_owned()),
            timeout: Duration::from_secs(10),
        })
    }
}

/// Creating the HTTP client failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the Cloud API client: {0}")]
pub struct CloudApiError(String);

/// Sends replies through the Cloud API.
pub struct CloudApiSender {
    client: reqwest::Client,
    endpoint: String,
    token: String,
    breaker: Arc<CircuitBreaker>,
}

impl CloudApiSender {
    /// A sender with its own breaker (named `whatsapp_cloud_api`).
    pub fn new(config: CloudApiConfig, breaker: BreakerConfig) -> Result<Self, CloudApiError> {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CloudApiError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(config.timeout)
            .build()
            .map_err(|e| CloudApiError(e.to_string()))?;
        let endpoint = format!("{}/{}/messages", config.api_url.trim_end_matches('/'), config.phone_number_id);
        Ok(Self {
            client,
            endpoint,
            token: config.token,
            breaker: Arc::new(CircuitBreaker::new("whatsapp_cloud_api", breaker)),
        })
    }

    /// The sender's circuit breaker (health, metrics).
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    async fn post(&self, body: &Value) -> Result<(), SendError> {
        let response = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| SendError::Retryable(format!("Cloud API unreachable: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = response.text().await.unwrap_or_default();
        let error = format!("Cloud API answered {status}: {}", detail.chars().take(300).collect::<String>());
        // Rate limits and server errors pass; other client errors will not.
        if status.as_u16() == 429 || status.is_server_error() {
            Err(SendError::Retryable(error))
        } else {
            Err(SendError::Permanent(error))
        }
    }
}

#[async_trait]
impl WhatsAppSender for CloudApiSender {
    async fn send(&self, response: &ResponseReady) -> Result<(), SendError> {
        let body = cloud_api_body(response);
        self.breaker.call(|e: &SendError| matches!(e, SendError::Retryable(_)), self.post(&body)).await.map_err(
            |error| match error {
                BreakerError::Open { retry_after, .. } => {
                    SendError::Retryable(format!("Cloud API circuit open, retry in {retry_after:?}"))
                }
                BreakerError::Inner(error) => error,
            },
        )
    }
}

/// The Cloud API message body for a reply.
pub fn cloud_api_body(response: &ResponseReady) -> Value {
    let to = response.to_phone.trim_start_matches('+');
    let mut body = json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": to });
    let (kind, content) = match &response.content {
        ResponseContent::Text { message } => ("text", json!({ "preview_url": false, "body": message })),
        ResponseContent::Interactive { body_text, buttons } => (
            "interactive",
            json!({
                "type": "button",
                "body": { "text": body_text },
                "action": { "buttons": buttons.iter().map(|b| json!({ "type": "reply", "reply": { "id": b.id, "title": b.title } })).collect::<Vec<_>>() }
            }),
        ),
        ResponseContent::List { body_text, button_text, sections } => (
            "interactive",
            json!({
                "type": "list",
                "body": { "text": body_text },
                "action": {
                    "button": button_text,
                    "sections": sections.iter().map(|s| json!({
                        "title": s.title,
                        "rows": s.rows.iter().map(|r| {
                            let mut row = json!({ "id": r.id, "title": r.title });
                            if let Some(d) = &r.description { row["description"] = json!(d); }
                            row
                        }).collect::<Vec<_>>()
                    })).collect::<Vec<_>>()
                }
            }),
        ),
        ResponseContent::Media { media_type, media_id, url, caption } => {
            let mut media = json!({});
            if let Some(id) = media_id {
                media["id"] = json!(id);
            } else if let Some(url) = url {
                media["link"] = json!(url);
            }
            if let Some(caption) = caption {
                media["caption"] = json!(caption);
            }
            (media_type.as_str(), media)
        }
        ResponseContent::Template { name, language, parameters } => {
            let mut template = json!({ "name": name, "language": { "code": language } });
            if !parameters.is_empty() {
                template["components"] = json!([{
                    "type": "body",
                    "parameters": parameters.iter().map(|p| json!({ "type": "text", "text": p })).collect::<Vec<_>>()
                }]);
            }
            ("template", template)
        }
    };
    body["type"] = json!(kind);
    body[kind] = content;
    body
}
