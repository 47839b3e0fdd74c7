//! Logging in to and out of the legacy API (design §6.5, §6.9.4).
//!
//! Login bodies carry the service account's password and login answers carry stack traces: the
//! request body is never logged, and the answer's body is read only to classify it, then dropped.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use super::jar::Jar;
use crate::config::{Credentials, SessionConfig};
use crate::proxy::{self, Upstream, UpstreamBody};
use crate::Body;

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

/// What a login answer said, read once: the status, the headers classification needs, the new
/// session's cookies and a bounded prefix of the body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<HeaderValue>,
    pub location: Option<HeaderValue>,
    pub jar: Jar,
    /// At most `MAX_LOGIN_ANSWER` bytes of the body: a longer body is still classified by its
    /// beginning (error texts come first), never taken for an empty one.
    pub body: Bytes,
}

/// Classifies a login answer (pure, for tests), in the design's order. Besides the body's "API
/// Login Limit", a redirect to the upstream's error page that names the concurrent-login limit
/// is seat exhaustion too; a locked or disabled account is a credential failure (retrying it
/// only prolongs the lock).
pub fn classify(a: Answer, cfg: &SessionConfig) -> LoginOutcome {
    let text = String::from_utf8_lossy(&a.body).to_lowercase();
    if text.contains("api login limit")
        || error_page_says_login_limit(a.status, a.location.as_ref())
    {
        return LoginOutcome::LoginLimit;
    }
    if text.contains("invalid credentials")
        || text.contains("locked")
        || text.contains("disabled")
        || a.status == StatusCode::UNAUTHORIZED
        || a.status == StatusCode::FORBIDDEN
    {
        return LoginOutcome::BadCredentials;
    }
    if a.status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = a
            .retry_after
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(5);
        return LoginOutcome::Throttled { retry_after };
    }
    if a.status.is_success() {
        let missing: Vec<&str> = cfg
            .marker_cookies
            .iter()
            .filter(|m| !a.jar.has(m))
            .map(String::as_str)
            .collect();
        return if missing.is_empty() {
            LoginOutcome::Ok(a.jar)
        } else {
            LoginOutcome::Error(format!(
                "login answered {} without the marker cookies {missing:?}",
                a.status
            ))
        };
    }
    LoginOutcome::Error(format!("login answered {}", a.status))
}

/// A 302/303 to `/Frames/Error.aspx` whose decoded query names the API login limit ("API Login
/// Limit", "concurrent API logins"): the third shape of seat exhaustion.
fn error_page_says_login_limit(status: StatusCode, location: Option<&HeaderValue>) -> bool {
    if !status.is_redirection() {
        return false;
    }
    let Some(loc) = location.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (path, query) = loc.split_once('?').unwrap_or((loc, ""));
    if !path.to_ascii_lowercase().ends_with("/frames/error.aspx") {
        return false;
    }
    let text: String = url::form_urlencoded::parse(query.as_bytes())
        .map(|(_, v)| v.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    text.contains("api login") || text.contains("concurrent api")
}

/// Reads a login answer: its cookies into a fresh jar, and a bounded prefix of its body.
pub async fn read_answer(resp: Response<UpstreamBody>, cfg: &SessionConfig) -> Answer {
    let status = resp.status();
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let location = resp.headers().get(header::LOCATION).cloned();
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
    let body = read_prefix(resp.into_body(), MAX_LOGIN_ANSWER).await;
    Answer {
        status,
        retry_after,
        location,
        jar,
        body,
    }
}

/// The first `max` bytes of a body (fewer if it ends or fails sooner). The rest is not read.
pub async fn read_prefix<B>(mut body: B, max: usize) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut buf = bytes::BytesMut::new();
    while buf.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = max - buf.len();
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    buf.freeze()
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
    // A login made for a request is a span of its trace, and tells the upstream so.
    let step = crate::telemetry::call_to("upstream login", &Method::POST, &uri);
    // Unrepeatable: never on a connection the upstream may be closing. A login that met that
    // close would fail, and a failed login holds every grant's logins back (the gate's
    // backoff); one sent twice could open two upstream sessions.
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .extension(proxy::Unrepeatable)
        .body(proxy::full(body));
    let mut req = match req {
        Ok(r) => r,
        Err(e) => return LoginOutcome::Error(e.to_string()),
    };
    step.inject(req.headers_mut());
    let step = &step;
    let exchange = async {
        let resp = upstream
            .send_within(req, cfg.login_timeout)
            .await
            .map_err(|e| e.to_string())?;
        step.status(resp.status().as_u16());
        Ok::<_, String>(classify(read_answer(resp, cfg).await, cfg))
    };
    // The send has its own timeout; this one also bounds reading the answer.
    let outcome =
        match tokio::time::timeout(cfg.login_timeout + Duration::from_secs(1), exchange).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => LoginOutcome::Error(e),
            Err(_) => LoginOutcome::Error("login timed out".to_owned()),
        };
    if !matches!(outcome, LoginOutcome::Ok(_)) {
        step.fail(outcome.label());
    }
    outcome
}

/// `POST logout_path` with the jar's cookies and `Content-Length: 0` (IIS answers 411 without it
/// and the seat stays taken). True on 2xx.
pub async fn logout(upstream: &Upstream, cfg: &SessionConfig, jar: &Jar) -> bool {
    let Some(req) = logout_request(upstream, cfg, jar) else {
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

/// The logout's request. Marked [`proxy::Replayable`]: a logout that meets a kept connection
/// the upstream closes as it goes out is sent again, since a failed logout leaves a live
/// upstream session whose seat the fleet no longer counts (docs/sessions.md), and logging out
/// twice ends the session once.
fn logout_request(upstream: &Upstream, cfg: &SessionConfig, jar: &Jar) -> Option<Request<Body>> {
    let uri = upstream.uri_for(&cfg.logout_path).ok()?;
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_LENGTH, "0")
        .extension(proxy::Replayable);
    if let Some(cookie) = jar
        .cookie_header(&cfg.logout_path)
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        b = b.header(header::COOKIE, cookie);
    }
    b.body(proxy::full(Bytes::new())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        let toml = r#"
[[upstream]]
id = "erp"
url = "http://127.0.0.1:9"
[upstream.session]
max_upstream_sessions = 2
[upstream.session.credentials]
name = "admin"
password = "x"
[[route]]
id = "r"
prefix = "/"
upstream = "erp"
auth = "none"
"#;
        let c = crate::config::from_toml_str(toml).unwrap();
        c.upstreams[0].session.clone().unwrap()
    }

    /// A logout may be sent twice (the pool does, when the upstream closes the connection as
    /// it goes out); a login may not.
    #[test]
    fn a_logout_is_marked_replayable() {
        let toml = r#"
[[upstream]]
id = "erp"
url = "http://127.0.0.1:9/base"
"#;
        let c = crate::config::from_toml_str(&format!(
            "{toml}[[route]]\nid = \"r\"\nprefix = \"/\"\nupstream = \"erp\"\nauth = \"none\"\n"
        ))
        .unwrap();
        let upstream = Upstream::new(&c.upstreams[0]).unwrap();
        let req = logout_request(&upstream, &cfg(), &Jar::default()).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert!(req.uri().path().starts_with("/base/"), "{}", req.uri());
        assert!(req.extensions().get::<proxy::Replayable>().is_some());
    }

    fn answer(status: u16, location: Option<&str>, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            location: location.map(|l| HeaderValue::from_str(l).unwrap()),
            jar: Jar::default(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn label(a: Answer) -> &'static str {
        classify(a, &cfg()).label()
    }

    #[test]
    fn login_answers_are_classified_in_the_designs_order() {
        assert_eq!(label(answer(500, None, "API Login Limit")), "login_limit");
        assert_eq!(label(answer(429, None, "api login limit")), "login_limit");
        assert_eq!(
            label(answer(500, None, "Error: Invalid credentials.")),
            "bad_credentials"
        );
        assert_eq!(
            label(answer(500, None, "Error: Your account is locked out.")),
            "bad_credentials"
        );
        assert_eq!(
            label(answer(500, None, "The user account is disabled.")),
            "bad_credentials"
        );
        assert_eq!(label(answer(403, None, "")), "bad_credentials");
        assert_eq!(label(answer(429, None, "")), "throttled");
        assert_eq!(label(answer(500, None, "")), "error");
        assert_eq!(label(answer(204, None, "")), "error", "no marker cookies");
    }

    #[test]
    fn a_redirect_to_the_error_page_naming_the_login_limit_is_seat_exhaustion() {
        let limit = "/Frames/Error.aspx?exceptionID=x&message=Login%20failed.%20The%20number%20of%20concurrent%20API%20logins%20exceeds%20the%20license%20limit.";
        assert_eq!(label(answer(302, Some(limit), "")), "login_limit");
        assert_eq!(
            label(answer(
                303,
                Some("https://erp.example.com/frames/error.aspx?message=API+Login+Limit"),
                ""
            )),
            "login_limit"
        );
        assert_eq!(
            label(answer(302, Some("/Frames/Error.aspx?message=Timeout"), "")),
            "error"
        );
        assert_eq!(
            label(answer(
                302,
                Some("/Frames/Login.aspx?message=concurrent%20API"),
                ""
            )),
            "error"
        );
    }

    #[tokio::test]
    async fn a_long_answer_is_classified_by_its_beginning() {
        let long = format!(
            "{{\"exceptionMessage\":\"Error: Invalid credentials.\",\"stackTrace\":\"{}\"}}",
            "x".repeat(3 * MAX_LOGIN_ANSWER)
        );
        let body = http_body_util::Full::new(Bytes::from(long));
        let prefix = read_prefix(body, MAX_LOGIN_ANSWER).await;
        assert_eq!(prefix.len(), MAX_LOGIN_ANSWER);
        let a = Answer {
            body: prefix,
            ..answer(500, None, "")
        };
        assert_eq!(label(a), "bad_credentials");
    }
}
