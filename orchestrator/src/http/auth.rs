//! Bearer authentication for the HTTP API: JSON Web Tokens, verified with a
//! shared secret (HS256, `JWT_SECRET`) or a public key (RS256 or ES256,
//! `JWT_PUBLIC_KEY_FILE`), whose organisation claim (`JWT_ORG_CLAIM`,
//! default `org_id`) names the tenant a caller acts for.
//!
//! A token must carry `exp`; `exp` and `nbf` are checked (60 s of clock
//! skew allowed), and only the configured algorithm is accepted, so a
//! token cannot pick a weaker one (`none`, or HS256 signed with the public
//! key). A token whose `scope` includes `admin` may use `/admin` too.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};

/// The scope that opens `/admin`.
pub const ADMIN_SCOPE: &str = "admin";

/// Verifies bearer tokens with one key and one algorithm.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    org_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.validation.algorithms)
            .field("org_claim", &self.org_claim)
            .finish_non_exhaustive()
    }
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The organisation (tenant) named by the org claim; `None` when the token names none.
    pub organisation: Option<String>,
    /// The token's `scope` includes [`ADMIN_SCOPE`].
    pub admin: bool,
    /// The token's `sub`, for logs.
    pub subject: Option<String>,
}

/// A verifier that cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// The algorithm is not one this server verifies with a public key.
    #[error(
        "JWT_ALGORITHM `{0}` is not supported: use HS256 with JWT_SECRET, or RS256 or ES256 with JWT_PUBLIC_KEY_FILE"
    )]
    Algorithm(String),
    /// The public key is not a PEM key of the algorithm's kind.
    #[error("JWT public key: {0}")]
    Key(String),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("a bearer token is required")]
    Missing,
    /// The token is malformed, badly signed, expired or not yet valid.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is valid but may not do this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.to_string() }));
        match self {
            AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, body).into_response(),
            AuthError::Missing => {
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer".to_owned())], body).into_response()
            }
            AuthError::Invalid(_) => {
                let challenge = r#"Bearer error="invalid_token""#.to_owned();
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], body).into_response()
            }
        }
    }
}

/// A refusal: 403 for a valid token that may not do this; otherwise a bare
/// 401 that says nothing more.
pub fn refusal(error: AuthError) -> Response {
    match error {
        AuthError::Forbidden(_) => error.into_response(),
        AuthError::Missing | AuthError::Invalid(_) => {
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], Json(json!({"error": "unauthorized"})))
                .into_response()
        }
    }
}

impl JwtVerifier {
    /// HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8], org_claim: impl Into<String>) -> Self {
        Self::with_key(DecodingKey::from_secret(secret), Algorithm::HS256, org_claim.into())
    }

    /// RS256 or ES256 tokens, verified with the PEM public key `pem`.
    pub fn public_key(algorithm: &str, pem: &[u8], org_claim: impl Into<String>) -> Result<Self, JwtConfigError> {
        let (algorithm, key) = match algorithm.to_ascii_uppercase().as_str() {
            "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)),
            "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(pem)),
            _ => return Err(JwtConfigError::Algorithm(algorithm.to_owned())),
        };
        let key = key.map_err(|error| JwtConfigError::Key(error.to_string()))?;
        Ok(Self::with_key(key, algorithm, org_claim.into()))
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm, org_claim: String) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Self { key, validation, org_claim }
    }

    /// The claim naming the caller's organisation.
    pub fn org_claim(&self) -> &str {
        &self.org_claim
    }

    /// Verifies `token` and reads who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|error| AuthError::Invalid(error.to_string()))?
            .claims;
        let organisation = match claims.get(&self.org_claim) {
            Some(Value::String(org)) if !org.is_empty() => Some(org.clone()),
            Some(Value::Number(org)) => Some(org.to_string()),
            _ => None,
        };
        Ok(Caller {
            organisation,
            admin: scopes(&claims).any(|scope| scope == ADMIN_SCOPE),
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// Verifies the request's bearer token.
    pub fn verify_request(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        self.verify(bearer(headers).ok_or(AuthError::Missing)?)
    }
}

/// What a bearer token opens on the routes that both operators and
/// organisations use (the live stream, conversations, the console).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The admin token, or a JWT with the `admin` scope: every organisation.
    Operator,
    /// A JWT naming an organisation: that one only.
    Organisation(String),
}

/// The tokens a server accepts: the static admin token and JWTs.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The static admin token (`ADMIN_TOKEN`); `None` or blank: none is accepted.
    pub admin_token: Option<String>,
    /// Verifies JWTs.
    pub jwt: Option<JwtVerifier>,
}

impl Credentials {
    /// Whether any token can be accepted at all.
    pub fn any(&self) -> bool {
        self.admin_token().is_some() || self.jwt.is_some()
    }

    /// The static admin token, when one is set.
    pub(crate) fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref().filter(|t| !t.trim().is_empty())
    }

    /// What `token` opens: the admin token (compared in constant time), an
    /// admin JWT, or an organisation's JWT.
    pub fn access(&self, token: &str) -> Result<Access, AuthError> {
        if self
            .admin_token()
            .is_some_and(|admin| crate::webhook::signature::secrets_match(token.as_bytes(), admin.as_bytes()))
        {
            return Ok(Access::Operator);
        }
        let Some(jwt) = &self.jwt else { return Err(AuthError::Invalid("not the admin token".to_owned())) };
        let caller = jwt.verify(token)?;
        if caller.admin {
            return Ok(Access::Operator);
        }
        match caller.organisation.filter(|org| !org.trim().is_empty()) {
            Some(organisation) => Ok(Access::Organisation(organisation)),
            None => Err(AuthError::Forbidden("the token names no organisation and has no `admin` scope")),
        }
    }

    /// [`access`](Self::access) of the request's bearer token.
    pub fn access_of(&self, headers: &HeaderMap) -> Result<Access, AuthError> {
        self.access(bearer(headers).ok_or(AuthError::Missing)?)
    }
}

/// The scopes a token grants: `scope` as a space-separated string (RFC
/// 8693), or `scope`/`scp` as an array.
fn scopes(claims: &Map<String, Value>) -> impl Iterator<Item = &str> {
    let claim = claims.get("scope").or_else(|| claims.get("scp"));
    let words: Vec<&str> = match claim {
        Some(Value::String(scope)) => scope.split_whitespace().collect(),
        Some(Value::Array(scopes)) => scopes.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    words.into_iter()
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 9110).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
}

/// Mints an HS256 token for `organisation` (`scope` space-separated, may be
/// empty), valid for `ttl` from now: what `consumer token` prints, for
/// trying the API and for tests.
pub fn mint_hs256(
    secret: &[u8],
    org_claim: &str,
    organisation: Option<&str>,
    scope: &str,
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let mut claims = Map::new();
    claims.insert("iat".to_owned(), json!(now));
    claims.insert("nbf".to_owned(), json!(now));
    claims.insert("exp".to_owned(), json!(now + ttl.as_secs() as i64));
    if let Some(organisation) = organisation {
        claims.insert(org_claim.to_owned(), json!(organisation));
    }
    if !scope.trim().is_empty() {
        claims.insert("scope".to_owned(), json!(scope.trim()));
    }
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECRET: &[u8] = b"a-test-secret-of-some-length";
    const EC_PRIVATE: &str = include_str!("testdata/ec-private.pem");
    const EC_PUBLIC: &str = include_str!("testdata/ec-public.pem");
    const RSA_PRIVATE: &str = include_str!("testdata/rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("testdata/rsa-public.pem");

    fn signed(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
        jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn an_hs256_token_names_its_organisation_and_scopes() {
        let verifier = JwtVerifier::hs256(SECRET, "org_id");
        let token = mint_hs256(SECRET, "org_id", Some("acme"), "messages admin", Duration::from_secs(60)).unwrap();
        let caller = verifier.verify(&token).unwrap();
        assert_eq!(caller.organisation.as_deref(), Some("acme"));
        assert!(caller.admin);
        let plain = mint_hs256(SECRET, "org_id", Some("acme"), "", Duration::from_secs(60)).unwrap();
        assert!(!verifier.verify(&plain).unwrap().admin);
    }

    #[test]
    fn the_organisation_comes_from_the_configured_claim() {
        let key = EncodingKey::from_secret(SECRET);
        let token = signed(Algorithm::HS256, &key, json!({ "exp": now() + 60, "tenant": "globex", "org_id": "acme" }));
        let caller = JwtVerifier::hs256(SECRET, "tenant").verify(&token).unwrap();
        assert_eq!(caller.organisation.as_deref(), Some("globex"));
        let none = signed(Algorithm::HS256, &key, json!({ "exp": now() + 60 }));
        assert_eq!(JwtVerifier::hs256(SECRET, "org_id").verify(&none).unwrap().organisation, None);
        let scp = signed(Algorithm::HS256, &key, json!({ "exp": now() + 60, "scp": ["read", "admin"] }));
        assert!(JwtVerifier::hs256(SECRET, "org_id").verify(&scp).unwrap().admin);
    }

    #[test]
    fn expired_premature_unsigned_and_foreign_tokens_are_refused() {
        let verifier = JwtVerifier::hs256(SECRET, "org_id");
        let key = EncodingKey::from_secret(SECRET);
        let refused = |token: &str| matches!(verifier.verify(token), Err(AuthError::Invalid(_)));
        assert!(refused(&signed(Algorithm::HS256, &key, json!({ "exp": now() - 120, "org_id": "acme" }))));
        let early = json!({ "exp": now() + 600, "nbf": now() + 300, "org_id": "acme" });
        assert!(refused(&signed(Algorithm::HS256, &key, early)));
        // No `exp` at all.
        assert!(refused(&signed(Algorithm::HS256, &key, json!({ "org_id": "acme" }))));
        let other = EncodingKey::from_secret(b"another secret");
        assert!(refused(&signed(Algorithm::HS256, &other, json!({ "exp": now() + 60 }))));
        // `alg: none` (header and payload, no signature).
        let b64 = |v: Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
        let unsigned = format!("{}.{}.", b64(json!({"alg":"none","typ":"JWT"})), b64(json!({"exp": now() + 60})));
        assert!(refused(&unsigned));
        assert!(refused("not a token"));
    }

    #[test]
    fn es256_and_rs256_tokens_verify_with_the_public_key_only_in_their_algorithm() {
        let es = JwtVerifier::public_key("ES256", EC_PUBLIC.as_bytes(), "org_id").unwrap();
        let ec_key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let token = signed(Algorithm::ES256, &ec_key, json!({ "exp": now() + 60, "org_id": "acme" }));
        assert_eq!(es.verify(&token).unwrap().organisation.as_deref(), Some("acme"));

        let rs = JwtVerifier::public_key("rs256", RSA_PUBLIC.as_bytes(), "org_id").unwrap();
        let rsa_key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let token = signed(Algorithm::RS256, &rsa_key, json!({ "exp": now() + 60, "org_id": "acme" }));
        assert_eq!(rs.verify(&token).unwrap().organisation.as_deref(), Some("acme"));
        // The RS256 verifier refuses the ES256 token, and an HS256 token signed with the public key.
        let es_token = signed(Algorithm::ES256, &ec_key, json!({ "exp": now() + 60 }));
        assert!(matches!(rs.verify(&es_token), Err(AuthError::Invalid(_))));
        let confused =
            signed(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()), json!({ "exp": now() + 60 }));
        assert!(matches!(rs.verify(&confused), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn unsupported_algorithms_and_bad_keys_are_configuration_errors() {
        assert!(matches!(JwtVerifier::public_key("HS512", b"x", "org_id"), Err(JwtConfigError::Algorithm(_))));
        assert!(matches!(JwtVerifier::public_key("ES256", b"not a pem", "org_id"), Err(JwtConfigError::Key(_))));
    }

    #[test]
    fn the_bearer_header_is_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "bEaReR abc.def.ghi ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc.def.ghi"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
