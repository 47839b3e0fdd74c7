//! The demo issuer: an OpenID-style authorization server just big enough for `tollgate demo`.
//!
//! It serves discovery (`/.well-known/openid-configuration`), its JWKS (`/jwks`) and a token
//! endpoint (`/token`) for the `password` and `refresh_token` grants, issuing RS256 JWT access
//! tokens (RFC 9068: `typ` `at+jwt`, `iss`, `aud`, `sub`, `client_id`, `scope`, `exp`, `iat`, `jti`)
//! and opaque refresh tokens. A refreshed access token keeps its grant's `sid` and `grant_id`.
//! Users and their scopes are fixed: see [`USERS`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::keys::{self, SigningKey};
use crate::proxy::json_response;
use crate::Body;

/// Demo accounts: (username, password, scopes the user may get, tenant).
pub const USERS: &[(&str, &str, &str, &str)] = &[
    ("reader", "reader", "api offline_access", "MyStore"),
    (
        "demo",
        "demo",
        "api erp:write reports offline_access",
        "MyStore",
    ),
];

/// The audience of every access token.
pub const AUDIENCE: &str = "api";

struct Grant {
    sub: String,
    client_id: String,
    scope: String,
    tenant: String,
    sid: String,
    grant_id: String,
}

struct State {
    issuer: String,
    key: SigningKey,
    ttl: Duration,
    refresh_tokens: Mutex<HashMap<String, Arc<Grant>>>,
}

/// A running demo issuer.
#[derive(Clone)]
pub struct DemoIssuer {
    state: Arc<State>,
}

impl DemoIssuer {
    /// Creates the issuer for base URL `issuer` with a fresh RSA key.
    pub fn new(issuer: &str, access_token_ttl: Duration) -> Result<Self, String> {
        Ok(DemoIssuer {
            state: Arc::new(State {
                issuer: issuer.trim_end_matches('/').to_owned(),
                key: SigningKey::rsa("demo-1", jsonwebtoken::Algorithm::RS256)?,
                ttl: access_token_ttl,
                refresh_tokens: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// Serves on `listener` until the task is dropped.
    pub fn spawn(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _keep = _tx;
            crate::server::serve(
                listener,
                rx,
                Duration::from_secs(1),
                move |req, _remote: SocketAddr| {
                    let me = me.clone();
                    async move { me.handle(req).await }
                },
            )
            .await;
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let s = &self.state;
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/.well-known/openid-configuration") => json_response(
                StatusCode::OK,
                &json!({
                    "issuer": s.issuer,
                    "jwks_uri": format!("{}/jwks", s.issuer),
                    "token_endpoint": format!("{}/token", s.issuer),
                    "grant_types_supported": ["password", "refresh_token"],
                    "token_endpoint_auth_methods_supported": ["none"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "scopes_supported": ["api", "erp:write", "reports", "offline_access"],
                }),
            ),
            (&Method::GET, "/jwks") => json_response(StatusCode::OK, &keys::jwks(&[&s.key])),
            (&Method::POST, "/token") => self.token(req).await,
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    async fn token(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return oauth_error("invalid_request", "the request body is too large"),
        };
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        match get("grant_type") {
            "password" => {
                let Some((user, _, allowed, tenant)) = USERS
                    .iter()
                    .find(|(u, p, _, _)| *u == get("username") && *p == get("password"))
                else {
                    return oauth_error("invalid_grant", "unknown user or wrong password");
                };
                let client_id = match get("client_id") {
                    "" => "demo-client",
                    c => c,
                };
                let scope = match narrow_scope(get("scope"), allowed) {
                    Ok(s) => s,
                    Err(e) => return oauth_error("invalid_scope", &e),
                };
                let grant = Arc::new(Grant {
                    sub: (*user).to_owned(),
                    client_id: client_id.to_owned(),
                    scope,
                    tenant: (*tenant).to_owned(),
                    sid: random_id(),
                    grant_id: random_id(),
                });
                self.issue(grant)
            }
            "refresh_token" => {
                let grant = self
                    .state
                    .refresh_tokens
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(get("refresh_token")));
                match grant {
                    Some(g) => self.issue(g),
                    None => oauth_error("invalid_grant", "unknown or used refresh token"),
                }
            }
            "" => oauth_error("invalid_request", "grant_type is required"),
            _ => oauth_error("unsupported_grant_type", "use password or refresh_token"),
        }
    }

    /// Issues an access token and a new (rotated) refresh token for the grant.
    fn issue(&self, grant: Arc<Grant>) -> Response<Body> {
        let s = &self.state;
        let now = crate::auth::jwt::now_unix();
        let claims = json!({
            "iss": s.issuer,
            "aud": AUDIENCE,
            "sub": grant.sub,
            "client_id": grant.client_id,
            "scope": grant.scope,
            "tenant": grant.tenant,
            "sid": grant.sid,
            "grant_id": grant.grant_id,
            "iat": now,
            "exp": now + s.ttl.as_secs(),
            "jti": random_id(),
        });
        let token = match s.key.sign(&claims) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "demo issuer could not sign");
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"error": "server_error"}),
                );
            }
        };
        let mut body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": s.ttl.as_secs(),
            "scope": grant.scope,
        });
        if grant.scope.split(' ').any(|x| x == "offline_access") {
            let rt = random_id();
            if let Ok(mut m) = s.refresh_tokens.lock() {
                m.insert(rt.clone(), grant);
            }
            body["refresh_token"] = Value::String(rt);
        }
        json_response(StatusCode::OK, &body)
    }
}

/// The requested scopes if the user may have all of them; the user's scopes when none is asked.
fn narrow_scope(requested: &str, allowed: &str) -> Result<String, String> {
    if requested.trim().is_empty() {
        return Ok(allowed.to_owned());
    }
    let allowed: Vec<&str> = allowed.split(' ').collect();
    let mut out = Vec::new();
    for s in requested.split_ascii_whitespace() {
        if !allowed.contains(&s) {
            return Err(format!("scope {s} is not available to this user"));
        }
        out.push(s);
    }
    Ok(out.join(" "))
}

fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn oauth_error(code: &str, description: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": code, "error_description": description}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_narrowed_to_what_the_user_has() {
        assert_eq!(narrow_scope("", "api reports").unwrap(), "api reports");
        assert_eq!(narrow_scope("api", "api reports").unwrap(), "api");
        assert!(narrow_scope("admin", "api reports").is_err());
    }
}
