//! Logging in to and out of the legacy API (design §6.5, §6.9.4).
//!
//! Login bodies carry the service account's password and login answers carry stack traces: the
//! request body is never logged, and the answer's body is read only to classify it, then dropped.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use super::jar::Jar;
use crate::config::{Credentials, SessionConfig};
use crate::proxy::{self, Upstream};

/// The largest login answer read for classification.
const MAX_LOGIN_ANSWER: usize = 64 * 1024;

/// What a login attempt came to (checked in the design's order).
#[derive(Debug)]
pub enum LoginOutcome {
    /// 2xx with every marker cookie: the new session's jar.
    Ok(Jar),
    /// "API Login Limit": the upstream's seats are exhausted (any status).
    LoginLimit,
    /// "Invalid credentials", 401 or 403: never retried automatically.
    BadCredentials,
    /// 429 without the login-limit text.
    Throttled { retry_after: u64 },
    /// Anything else: other statuses, missing markers, timeouts, connection errors.
    Error(String),
}

impl LoginOutcome {
    /// The `result` label of `tollgate_upstream_logins_total`.
    pub fn label(&self) -> &'static str {
        match self {
            LoginOutcome::Ok(_) => "ok",
            LoginOutcome::LoginLimit => "login_limit",
            LoginOutcome::BadCredentials => "bad_credentials",
            LoginOutcome::Throttled { .. } => "throttled",
            LoginOutcome::Error(_) => "error",
        }
    }
}

/// Classifies a login answer (pure, for tests).
pub fn classify(
    status: StatusCode,
    retry_after: Option<&HeaderValue>,
    body: &[u8],
    jar: Jar,
    cfg: &SessionConfig,
) -> LoginOutcome {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    if text.contains("api login limit") {
        return LoginOutcome::LoginLimit;
    }
    if text.contains("invalid credentials")
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
    {
        return LoginOutcome::BadCredentials;
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(5);
        return LoginOutcome::Throttled { retry_after };
    }
    if status.is_success() {
        let missing: Vec<&str> = cfg
            .marker_cookies
            .iter()
            .filter(|m| !jar.has(m))
            .map(String::as_str)
            .collect();
        return if missing.is_empty() {
            LoginOutcome::Ok(jar)
        } else {
            LoginOutcome::Error(format!(
                "login answered {status} without the marker cookies {missing:?}"
            ))
        };
    }
    LoginOutcome::Error(format!("login answered {status}"))
}

/// The JSON login body of the credential profile.
fn login_body(creds: &Credentials) -> Bytes {
    let mut body = json!({ "name": creds.name, "password": creds.password.expose() });
    for (k, v) in [
        ("tenant", &creds.tenant),
        ("branch", &creds.branch),
        ("locale", &creds.locale),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    Bytes::from(body.to_string())
}

/// `POST login_path` with the credentials; the answer's cookies form the new jar.
pub async fn login(upstream: &Upstream, cfg: &SessionConfig, creds: &Credentials) -> LoginOutcome {
    let uri = match upstream.uri_for(&cfg.login_path) {
        Ok(u) => u,
        Err(e) => return LoginOutcome::Error(e.to_string()),
    };
    let body = login_body(creds);
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(proxy::full(body));
    let req = match req {
        Ok(r) => r,
        Err(e) => return LoginOutcome::Error(e.to_string()),
    };
    let exchange = async {
        let resp = upstream
            .send_within(req, cfg.login_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        let mut jar = Jar::default();
        let set_cookies: Vec<String> = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        jar.apply_all(
            set_cookies.iter().map(String::as_str),
            SystemTime::now(),
            cfg.max_jar_cookies,
            cfg.max_jar_bytes,
        );
        let body = Limited::new(resp.into_body(), MAX_LOGIN_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>(classify(status, retry_after.as_ref(), &body, jar, cfg))
    };
    // The send has its own timeout; this one also bounds reading the answer.
    match tokio::time::timeout(cfg.login_timeout + Duration::from_secs(1), exchange).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => LoginOutcome::Error(e),
        Err(_) => LoginOutcome::Error("login timed out".to_owned()),
    }
}

/// `POST logout_path` with the jar's cookies and `Content-Length: 0` (IIS answers 411 without it
/// and the seat stays taken). True on 2xx.
pub async fn logout(upstream: &Upstream, cfg: &SessionConfig, jar: &Jar) -> bool {
    let Ok(uri) = upstream.uri_for(&cfg.logout_path) else {
        return false;
    };
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_LENGTH, "0");
    if let Some(cookie) = jar
        .cookie_header(&cfg.logout_path)
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        b = b.header(header::COOKIE, cookie);
    }
    let Ok(req) = b.body(proxy::full(Bytes::new())) else {
        return false;
    };
    match upstream.send_within(req, cfg.logout_timeout).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            // Drain the (small) answer so the connection can be reused.
            let _ = tokio::time::timeout(
                cfg.logout_timeout,
                Limited::new(resp.into_body(), MAX_LOGIN_ANSWER).collect(),
            )
            .await;
            ok
        }
        Err(_) => false,
    }
}
