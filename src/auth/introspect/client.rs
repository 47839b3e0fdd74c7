//! The RFC 7662 exchange with one issuer's introspection endpoint: find the endpoint (configured,
//! or through discovery, once), then `POST` the token as a form with tollgate's client
//! authentication (`client_secret_basic`, `client_secret_post`, or a fresh RFC 7523
//! `private_key_jwt` assertion per call), and accept only a JSON object with a boolean `active`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::HeaderValue;
use jsonwebtoken::Header;
use serde_json::{json, Map, Value};
use url::Url;

use crate::auth::discovery;
use crate::auth::fetch::{FetchError, IdpClient};
use crate::auth::settings::{ClientAuth, IntrospectionConfig, IssuerConfig};
use crate::clock::unix_secs;

/// Why a call produced no answer. Logged; the client sees 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("introspection endpoint unknown: {0}")]
    NoEndpoint(String),
    #[error("introspection call failed: {0}")]
    Fetch(String),
    #[error("introspection answer is not RFC 7662 JSON: {0}")]
    Malformed(String),
    #[error("introspection breaker open")]
    BreakerOpen { retry_after: u64 },
    #[error("cannot sign the client assertion: {0}")]
    Assertion(String),
}

/// One issuer's introspection endpoint and the credentials tollgate presents to it.
pub(super) struct IntrospectionClient {
    issuer_id: Arc<str>,
    /// The exact `iss`, which the discovery document must repeat.
    issuer: String,
    discovery: Option<Url>,
    allow_http: bool,
    fetch_timeout: Duration,
    client_id: String,
    auth: ClientAuth,
    timeout: Duration,
    http: IdpClient,
    endpoint: ArcSwapOption<Url>,
    resolving: tokio::sync::Mutex<()>,
}

// === impl IntrospectionClient ===

impl IntrospectionClient {
    pub(super) fn new(issuer: &IssuerConfig, cfg: &IntrospectionConfig, http: IdpClient) -> Self {
        IntrospectionClient {
            issuer_id: issuer.id.clone(),
            issuer: issuer.issuer.clone(),
            discovery: issuer.discovery.clone(),
            allow_http: issuer.allow_http,
            fetch_timeout: issuer.fetch_timeout,
            client_id: cfg.client_id.clone(),
            auth: cfg.auth.clone(),
            timeout: cfg.timeout,
            http,
            endpoint: ArcSwapOption::new(cfg.endpoint.clone().map(Arc::new)),
            resolving: tokio::sync::Mutex::new(()),
        }
    }

    /// True once the endpoint is known (configured, or found through discovery).
    pub(super) fn knows_endpoint(&self) -> bool {
        self.endpoint.load().is_some()
    }

    /// The endpoint: configured, found earlier, or now through discovery (one lookup at a time).
    pub(super) async fn resolve(&self) -> Result<Arc<Url>, CallError> {
        if let Some(u) = self.endpoint.load_full() {
            return Ok(u);
        }
        let _guard = self.resolving.lock().await;
        if let Some(u) = self.endpoint.load_full() {
            return Ok(u);
        }
        let Some(doc) = &self.discovery else {
            return Err(CallError::NoEndpoint(
                "no endpoint and no discovery".to_owned(),
            ));
        };
        let md = discovery::fetch(&self.http, doc, &self.issuer, self.allow_http, self.fetch_timeout)
            .await
            .map_err(|e| {
                tracing::warn!(issuer = %self.issuer_id, error = %e, "introspection endpoint discovery failed");
                CallError::NoEndpoint(e.to_string())
            })?;
        let url = Arc::new(md.introspection_endpoint.ok_or_else(|| {
            CallError::NoEndpoint("the discovery document has no introspection_endpoint".to_owned())
        })?);
        tracing::info!(issuer = %self.issuer_id, endpoint = %url, "introspection endpoint discovered");
        self.endpoint.store(Some(url.clone()));
        Ok(url)
    }

    /// The HTTP exchange: `POST` form `token=…&token_type_hint=access_token` with client
    /// authentication, expecting 200 and a JSON object with a boolean `active`.
    pub(super) async fn call(&self, token: &str) -> Result<Map<String, Value>, CallError> {
        let endpoint = self.resolve().await?;
        let (form, authorization) = self.request_body(token, &endpoint)?;
        let fetched = self
            .http
            .post_form("introspection", &endpoint, form, authorization, self.timeout)
            .await
            .map_err(|e| match e {
                FetchError::Status { status, .. } if status.as_u16() == 401 => {
                    tracing::error!(issuer = %self.issuer_id, "the introspection endpoint refused tollgate's client authentication");
                    CallError::Fetch(e.to_string())
                }
                other => CallError::Fetch(other.to_string()),
            })?;
        read_answer(&fetched.body)
    }

    /// The form body and `Authorization` header of one call, with the configured client
    /// authentication.
    fn request_body(
        &self,
        token: &str,
        endpoint: &Url,
    ) -> Result<(String, Option<HeaderValue>), CallError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token);
        form.append_pair("token_type_hint", "access_token");
        let mut authorization = None;
        match &self.auth {
            ClientAuth::Basic(secret) => {
                authorization = Some(basic(&self.client_id, secret.expose()));
            }
            ClientAuth::Post(secret) => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", secret.expose());
            }
            ClientAuth::PrivateKeyJwt { key, alg, kid } => {
                let assertion = client_assertion(
                    &self.client_id,
                    endpoint.as_str(),
                    key,
                    *alg,
                    kid.as_deref(),
                )?;
                form.append_pair("client_id", &self.client_id);
                form.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                form.append_pair("client_assertion", &assertion);
            }
        }
        Ok((form.finish(), authorization))
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic(id: &str, secret: &str) -> HeaderValue {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let value = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    );
    let mut v = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// The members of an introspection answer: a JSON object with a boolean `active`.
pub(crate) fn read_answer(body: &[u8]) -> Result<Map<String, Value>, CallError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| CallError::Malformed(e.to_string()))?;
    match value {
        Value::Object(m) if m.get("active").is_some_and(Value::is_boolean) => Ok(m),
        _ => Err(CallError::Malformed(
            "no boolean `active` member".to_owned(),
        )),
    }
}

/// An RFC 7523 client assertion: iss = sub = client_id, aud = the endpoint, 60 s lifetime,
/// a unique jti.
pub fn client_assertion(
    client_id: &str,
    audience: &str,
    key: &jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
) -> Result<String, CallError> {
    let now = unix_secs();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": format!("{:032x}", rand::random::<u128>()),
    });
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| CallError::Assertion(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded() {
        let v = basic("client:1", "s3cr&t");
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        assert_eq!(
            String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap(),
            "client%3A1:s3cr%26t"
        );
        assert!(v.is_sensitive());
    }
}
