//! The front door: where each request goes, and what every request meets before its handler
//! (the idle sweep, the leak counters, the `503` of a stopped application pool, IIS's `411`
//! for a `POST` without a length), plus the reading of the bodies the fake parses.

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::data::DataOp;
use super::replies::{json_response, length_required, not_found, service_unavailable};
use super::{FakeLegacy, ISSUED_COOKIES};
use crate::Body;

/// Request bodies the fake parses (login, control API) are read up to this size.
pub(super) const MAX_BODY: usize = 64 * 1024;

/// Where a request goes.
enum Route {
    Health,
    Login,
    Logout,
    /// `/entity/auth/...` other than login and logout, or a wrong method on them.
    AuthOther {
        known: bool,
    },
    /// `/entity/{endpoint}/{version}/...`: `prefix` is `/entity/{endpoint}/{version}`.
    Data {
        prefix: String,
        op: DataOp,
    },
    /// Any other path (UI pages): login redirect without a session.
    Page,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let is = |i: usize, name: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(name));
        if segs.len() == 1 && is(0, "health") && (method == Method::GET || method == Method::HEAD) {
            return Route::Health;
        }
        if !is(0, "entity") {
            return Route::Page;
        }
        if is(1, "auth") {
            let post = method == Method::POST;
            return match segs.len() {
                3 if is(2, "login") && post => Route::Login,
                3 if is(2, "logout") && post => Route::Logout,
                3 if is(2, "login") || is(2, "logout") => Route::AuthOther { known: true },
                _ => Route::AuthOther { known: false },
            };
        }
        let prefix = format!(
            "/{}",
            segs.iter().take(3).copied().collect::<Vec<_>>().join("/")
        );
        let rest = segs.get(3..).unwrap_or(&[]);
        Route::Data {
            prefix,
            op: DataOp::of(method, rest),
        }
    }
}

impl FakeLegacy {
    /// Answers one request (the whole fake: legacy API and control API).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path == "/_fake" || path.starts_with("/_fake/") {
            return self.control(req, &path).await;
        }
        let cookies = parse_cookies(req.headers());
        let strict = {
            let mut st = self.inner.lock();
            st.sweep();
            if cookies
                .iter()
                .any(|(name, _)| !ISSUED_COOKIES.contains(&name.as_str()))
            {
                st.counters.foreign_cookie += 1;
            }
            if req.headers().contains_key(header::AUTHORIZATION) {
                st.counters.authorization_header_seen += 1;
            }
            st.opts.strict_content_length
        };
        let route = Route::of(req.method(), &path);
        if self.inner.lock().opts.unavailable && !matches!(route, Route::Health) {
            return service_unavailable();
        }
        if strict && req.method() == Method::POST && !has_length(req.headers()) {
            if matches!(route, Route::Logout) {
                self.inner.lock().counters.logouts_411 += 1;
            }
            return length_required();
        }
        match route {
            Route::Health => json_response(StatusCode::OK, &json!({"status": "ok"})),
            Route::Login => self.login(req).await,
            Route::Logout => self.logout(&cookies),
            Route::AuthOther { known: true } => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"message": format!("The requested resource does not support http method '{}'.", req.method())}),
            ),
            Route::AuthOther { known: false } => not_found(),
            Route::Data { prefix, op } => {
                self.session_request(req, &cookies, Some((prefix, op)))
                    .await
            }
            Route::Page => self.session_request(req, &cookies, None).await,
        }
    }
}

/// Every cookie of every `Cookie` header, leniently: pieces split on `;`, name and value split at
/// the first `=` (a piece without `=` is a name with an empty value).
fn parse_cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let text = String::from_utf8_lossy(v.as_bytes());
        for piece in text.split(';') {
            let piece = piece.trim();
            if piece.is_empty() {
                continue;
            }
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            out.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

fn has_length(headers: &HeaderMap) -> bool {
    headers.contains_key(header::CONTENT_LENGTH) || headers.contains_key(header::TRANSFER_ENCODING)
}

pub(super) async fn read_limited(body: Incoming) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"message": "The request body is too large."}),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, Instant};

    use http::HeaderValue;

    use crate::demo::legacy::harness::{start, ECHO};
    use crate::demo::legacy::LegacyOptions;

    fn route(method: Method, path: &str) -> Route {
        Route::of(&method, path)
    }

    #[test]
    fn routes_ignore_case_and_empty_segments() {
        assert!(matches!(route(Method::HEAD, "/Health/"), Route::Health));
        assert!(matches!(route(Method::POST, "/health"), Route::Page));
        assert!(matches!(
            route(Method::POST, "//entity//AUTH/login/"),
            Route::Login
        ));
        assert!(matches!(
            route(Method::POST, "/entity/auth/Logout"),
            Route::Logout
        ));
        assert!(matches!(
            route(Method::GET, "/entity/auth/logout"),
            Route::AuthOther { known: true }
        ));
        assert!(matches!(
            route(Method::POST, "/entity/auth/login/x"),
            Route::AuthOther { known: false }
        ));
        assert!(matches!(route(Method::GET, "/Main"), Route::Page));
        assert!(matches!(route(Method::GET, "/"), Route::Page));
        match route(Method::GET, "/Entity/Default/24.200.001/echo/") {
            Route::Data { prefix, op } => {
                assert_eq!(prefix, "/Entity/Default/24.200.001");
                assert_eq!(op, DataOp::Echo);
            }
            _ => panic!("not a data route"),
        }
        match route(Method::GET, "/entity/Default") {
            Route::Data { prefix, op } => {
                assert_eq!(prefix, "/entity/Default");
                assert_eq!(op, DataOp::Generic);
            }
            _ => panic!("not a data route"),
        }
    }

    #[test]
    fn cookies_are_read_leniently_from_every_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static(" a = 1 ;; b=x=y; lone ;"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("c="));
        let want: Vec<(String, String)> = [("a", "1"), ("b", "x=y"), ("lone", ""), ("c", "")]
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(parse_cookies(&h), want);
        assert!(parse_cookies(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn a_length_is_a_content_length_or_a_transfer_encoding() {
        let mut h = HeaderMap::new();
        assert!(!has_length(&h));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(has_length(&h));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(has_length(&h));
    }

    #[tokio::test]
    async fn login_and_logout_route_without_case_and_with_a_trailing_slash() {
        let f = start(LegacyOptions::default()).await;
        let body = r#"{"name":"admin","password":"123"}"#;
        let r = f
            .call(
                "POST",
                "/Entity/AUTH/Login/",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let jar = r.jar();
        let out = f
            .call(
                "POST",
                "/ENTITY/auth/LOGOUT/",
                &[("cookie", &jar), ("content-length", "0")],
                "",
            )
            .await;
        assert_eq!(out.status, 204);
        assert_eq!(f.fake.counters().logouts, 1);
    }

    #[tokio::test]
    async fn logout_needs_a_content_length() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let raw = f
            .raw(&format!(
                "POST /entity/auth/logout HTTP/1.1\r\nHost: x\r\nCookie: {jar}\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert!(raw.starts_with("HTTP/1.1 411"), "{raw}");
        let n = f.fake.counters();
        assert_eq!((n.logouts_411, n.logouts, n.seats_in_use), (1, 0, 1));
        assert_eq!(f.echo(&jar).await.status, 200);

        let r = f.logout(&jar).await;
        assert_eq!(r.status, 204);
        assert!(r
            .set_cookies()
            .contains(&".ASPXAUTH=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/".to_owned()));
        let n = f.fake.counters();
        assert_eq!((n.logouts, n.seats_in_use, n.expiries), (1, 0, 0));
        assert_eq!(f.echo(&jar).await.status, 401);
        // Idempotent, and a chunked POST is fine too.
        let again = f.logout(&jar).await;
        assert_eq!(again.status, 204);
        assert!(again.set_cookies().is_empty());
        let raw = f
            .raw("POST /entity/auth/logout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n")
            .await;
        assert!(raw.starts_with("HTTP/1.1 204"), "{raw}");
        assert_eq!(f.fake.counters().logouts, 1);
        // Without the strict rule, no length is fine.
        f.call(
            "POST",
            "/_fake/config",
            &[],
            r#"{"strict_content_length":false}"#,
        )
        .await;
        let jar = f.login().await;
        let raw = f
            .raw(&format!(
                "POST /entity/auth/logout HTTP/1.1\r\nHost: x\r\nCookie: {jar}\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert!(raw.starts_with("HTTP/1.1 204"), "{raw}");
        assert_eq!(f.fake.counters().seats_in_use, 0);
    }

    #[tokio::test]
    async fn leaks_are_counted_but_not_on_the_control_api() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let r = f.echo(&format!("{jar}; gw_sess=abc")).await;
        assert_eq!(r.status, 200);
        f.call(
            "GET",
            ECHO,
            &[("cookie", &jar), ("authorization", "Bearer x")],
            "",
        )
        .await;
        f.call(
            "GET",
            "/_fake/state",
            &[("cookie", "gw_sess=1"), ("authorization", "Bearer x")],
            "",
        )
        .await;
        let n = f.fake.counters();
        assert_eq!((n.foreign_cookie, n.authorization_header_seen), (1, 1));
        assert_eq!(n.mixed_session_cookies, 0);
        // A lone name without '=' is a cookie too; empty pieces are not.
        f.echo(&format!("{jar};;  ; odd")).await;
        assert_eq!(f.fake.counters().foreign_cookie, 2);
    }

    #[tokio::test]
    async fn an_unavailable_upstream_and_a_slow_login() {
        let f = start(LegacyOptions {
            unavailable: true,
            ..LegacyOptions::default()
        })
        .await;
        assert_eq!(f.login_as("admin", "123", None).await.status, 503);
        assert_eq!(f.call("GET", "/health", &[], "").await.status, 200);
        f.fake.configure_with(|o| {
            o.unavailable = false;
            o.login_delay = Duration::from_millis(150);
        });
        let started = Instant::now();
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
