//! Sending replies through the WhatsApp Cloud API:
//! `POST {WHATSAPP_API_URL}/{phone_number_id}/messages` with a bearer token,
//! behind its own circuit breaker. The business number is the reply's own
//! (see [`ResponseReady::business_number`]), else `WHATSAPP_PHONE_NUMBER_ID`;
//! the token is that number's (`WHATSAPP_TOKENS`), else `WHATSAPP_TOKEN`.
//! Failures are classified by WhatsApp's error `code` (see [`classify`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::send::{SendError, Sent, WhatsAppSender};
use crate::breaker::{BreakerConfig, BreakerError, CircuitBreaker};
use crate::event::{ResponseContent, ResponseReady};
use crate::health::{Probe, ProbeFailure};

/// The Graph API base used when `WHATSAPP_API_URL` is unset.
pub const DEFAULT_API_URL: &str = "https://graph.facebook.com/v21.0";

/// Name of the sender's circuit breaker (`/health`, `circuit_breaker_state`).
pub const BREAKER_NAME: &str = "whatsapp_cloud_api";

/// Cloud API credentials and endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct CloudApiConfig {
    /// `WHATSAPP_TOKEN`: the bearer token for every number without one of its own
    /// (a system-user token usually covers all of a business's numbers).
    pub token: String,
    /// `WHATSAPP_TOKENS`: tokens per business number, `id=token,id=token`.
    pub tokens: HashMap<String, String>,
    /// `WHATSAPP_PHONE_NUMBER_ID`: the number replies go out from when they name none.
    pub phone_number_id: String,
    /// `WHATSAPP_API_URL` (default [`DEFAULT_API_URL`]).
    pub api_url: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for CloudApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        f.debug_struct("CloudApiConfig")
            .field("phone_number_id", &self.phone_number_id)
            .field("numbers_with_own_token", &self.tokens.keys().collect::<Vec<_>>())
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// `WHATSAPP_TOKENS` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("WHATSAPP_TOKENS: entry {0} is not `phone_number_id=token`")]
pub struct TokensError(usize);

impl CloudApiConfig {
    /// The token for `phone_number_id`: its own, else the default one.
    pub fn token_for(&self, phone_number_id: &str) -> &str {
        self.tokens.get(phone_number_id).map_or(self.token.as_str(), String::as_str)
    }
}

/// Parses `id=token,id=token` (blank entries ignored).
pub(crate) fn parse_tokens(text: &str) -> Result<HashMap<String, String>, TokensError> {
    text.split(',')
        .map(str::trim)
        .enumerate()
        .filter(|(_, entry)| !entry.is_empty())
        .map(|(n, entry)| match entry.split_once('=') {
            Some((id, token)) if !id.trim().is_empty() && !token.trim().is_empty() => {
                Ok((id.trim().to_owned(), token.trim().to_owned()))
            }
            // Its position only: the text may be a token, which must never reach a log.
            _ => Err(TokensError(n + 1)),
        })
        .collect()
}

/// Creating the HTTP client failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the Cloud API client: {0}")]
pub struct CloudApiError(String);

/// Sends replies through the Cloud API.
pub struct CloudApiSender {
    client: reqwest::Client,
    config: CloudApiConfig,
    breaker: Arc<CircuitBreaker>,
}

impl CloudApiSender {
    /// A sender with its own breaker (named [`BREAKER_NAME`]).
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
            // Many replies in flight to one host: keep their connections.
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| CloudApiError(e.to_string()))?;
        Ok(Self { client, config, breaker: Arc::new(CircuitBreaker::new(BREAKER_NAME, breaker)) })
    }

    /// The sender's circuit breaker (health, metrics).
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    async fn post(&self, phone_number_id: &str, body: &Value) -> Result<Sent, SendError> {
        let endpoint = format!("{}/{}/messages", self.config.api_url.trim_end_matches('/'), phone_number_id);
        let response = self
            .client
            .post(&endpoint)
            .bearer_auth(self.config.token_for(phone_number_id))
            .json(body)
            .send()
            .await
            .map_err(|e| SendError::retryable(format!("Cloud API unreachable: {e}")))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            let wamid = answer["messages"][0]["id"].as_str().map(str::to_owned);
            return Ok(Sent { wamid });
        }
        let error = &answer["error"];
        let code = error["code"].as_i64();
        let detail = error["message"].as_str().map_or_else(|| text.chars().take(300).collect(), str::to_owned);
        Err(classify(status, code, format!("Cloud API answered {status}: {detail}")))
    }
}

#[async_trait]
impl Probe for CloudApiSender {
    /// A cheap authenticated request (`GET /{phone_number_id}?fields=id`
    /// with the default number's token), for `/health`: the API's upstream
    /// status code when it fails.
    async fn probe(&self) -> Result<(), ProbeFailure> {
        let number = &self.config.phone_number_id;
        let endpoint = format!("{}/{}?fields=id", self.config.api_url.trim_end_matches('/'), number);
        let response = self
            .client
            .get(&endpoint)
            .bearer_auth(self.config.token_for(number))
            .send()
            .await
            .map_err(|e| ProbeFailure { status_code: None, error: format!("Cloud API unreachable: {e}") })?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(());
        }
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let detail = answer["error"]["message"].as_str().unwrap_or("no error message");
        Err(ProbeFailure { status_code: Some(status), error: format!("Cloud API answered {status}: {detail}") })
    }
}

/// What a failed send means, by WhatsApp's error `code` first and the HTTP
/// status only when the code is unknown or missing.
pub fn classify(status: u16, code: Option<i64>, message: String) -> SendError {
    match code {
        // Throughput, pair rate, spam rate, business account and app call limits.
        Some(130429 | 131056 | 131048 | 80007 | 4) => SendError::Throttled { code, message },
        // Temporary errors.
        Some(1 | 2 | 131000 | 131016 | 133004) => SendError::Retryable { code, message },
        // Undeliverable, outside the 24 h window, bad parameter, expired token.
        Some(131026 | 131047 | 100 | 190) => SendError::Permanent { code, message },
        _ if status == 429 => SendError::Throttled { code, message },
        _ if status == 408 || status >= 500 => SendError::Retryable { code, message },
        _ => SendError::Permanent { code, message },
    }
}

#[async_trait]
impl WhatsAppSender for CloudApiSender {
    async fn send(&self, reply: &ResponseReady) -> Result<Sent, SendError> {
        let from = reply.business_number().unwrap_or(&self.config.phone_number_id).to_owned();
        let body = cloud_api_body(reply);
        self.breaker.call(SendError::is_outage, self.post(&from, &body)).await.map_err(|error| match error {
            BreakerError::Open { retry_after, .. } => SendError::CircuitOpen { retry_after },
            BreakerError::Inner(error) => error,
        })
    }

    fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        Some(&self.breaker)
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
        ResponseContent::Template { name, language, parameters, components } => {
            let mut template = json!({ "name": name, "language": { "code": language } });
            if !components.is_empty() {
                template["components"] = json!(components);
            } else if !parameters.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decide_before_http_status() {
        let kind = |status, code| match classify(status, code, String::new()) {
            SendError::Throttled { .. } => "throttled",
            SendError::Retryable { .. } => "retryable",
            SendError::Permanent { .. } => "permanent",
            SendError::CircuitOpen { .. } => "open",
        };
        assert_eq!(kind(400, Some(130429)), "throttled");
        assert_eq!(kind(400, Some(131056)), "throttled");
        assert_eq!(kind(400, Some(80007)), "throttled");
        assert_eq!(kind(400, Some(2)), "retryable");
        assert_eq!(kind(400, Some(131026)), "permanent");
        assert_eq!(kind(400, Some(131047)), "permanent");
        // A known permanent code stays permanent even on a 500.
        assert_eq!(kind(500, Some(190)), "permanent");
        assert_eq!(kind(429, None), "throttled");
        assert_eq!(kind(503, None), "retryable");
        assert_eq!(kind(503, Some(999_999)), "retryable");
        assert_eq!(kind(404, None), "permanent");
    }

    #[test]
    fn tokens_per_number_and_a_default() {
        let tokens = parse_tokens(" 111=aaa, 222 = bbb ,").unwrap();
        let config = CloudApiConfig {
            token: "default".into(),
            tokens,
            phone_number_id: "111".into(),
            api_url: DEFAULT_API_URL.into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(config.token_for("111"), "aaa");
        assert_eq!(config.token_for("222"), "bbb");
        assert_eq!(config.token_for("333"), "default");
        let error = parse_tokens("111=aaa,222secret").unwrap_err().to_string();
        assert!(error.contains("entry 2") && !error.contains("secret") && !error.contains("aaa"), "{error}");
        assert!(parse_tokens("333=").is_err());
        assert!(!format!("{config:?}").contains("aaa"));
    }
}
