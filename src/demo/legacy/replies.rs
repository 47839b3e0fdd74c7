//! The answers the fake builds: JSON bodies, Acumatica's error bodies (with `exceptionType` and
//! a stack trace), IIS's HTML error pages, redirects to the login page, and the cookies that ride
//! on answers (`requestid`/`requeststat`, the deletion of `.ASPXAUTH`).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::AUTH_COOKIE;
use crate::{proxy, Body};

/// .NET ticks (100 ns since 0001-01-01) at the Unix epoch.
const DOTNET_TICKS_AT_UNIX_EPOCH: u128 = 621_355_968_000_000_000;
/// The stack trace every error body carries (the gateway must never pass it on).
const STACK_TRACE: &str = "   at PX.Api.ContractBased.WebApi.Controllers.AuthController.Login(LoginRequest request)\r\n   at lambda_method(Closure , Object , Object[] )\r\n   at System.Web.Http.Controllers.ReflectedHttpActionDescriptor.ActionExecutor.Execute(Object instance, Object[] arguments)";

fn dotnet_ticks() -> u128 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    DOTNET_TICKS_AT_UNIX_EPOCH + since_epoch.as_nanos() / 100
}

pub(super) fn add_cookie(headers: &mut HeaderMap, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Fresh `requestid` and `requeststat` cookies.
pub(super) fn add_request_cookies(headers: &mut HeaderMap, seq: u64, path: &str) {
    add_cookie(
        headers,
        &format!("requestid={:032X}; path=/", rand::random::<u128>()),
    );
    add_cookie(
        headers,
        &format!(
            "requeststat=+st:{seq}+sc:~{path}+start:{}+tg:; path=/",
            dotnet_ticks()
        ),
    );
}

/// The deletion of `.ASPXAUTH` that a signed-out session's answers carry.
pub(super) fn delete_auth_cookie(headers: &mut HeaderMap) {
    add_cookie(
        headers,
        &format!("{AUTH_COOKIE}=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/"),
    );
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(proxy::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub(super) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(proxy::full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// An error in Acumatica's shape, stack trace included.
pub(super) fn px_error(status: StatusCode, text: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "message": "An error has occurred.",
            "exceptionMessage": text,
            "exceptionType": "PX.Data.PXException",
            "stackTrace": STACK_TRACE,
        }),
    )
}

pub(super) fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"message": "No HTTP resource was found that matches the request URI."}),
    )
}

/// The errors of the control API (never in Acumatica's shape: they are the fake's own).
pub(super) fn control_error(status: StatusCode, text: &str) -> Response<Body> {
    json_response(status, &json!({"error": text}))
}

/// IIS's own HTML error page: answered before the request reaches the application.
fn iis_error(status: StatusCode, html: &'static str) -> Response<Body> {
    let mut r = Response::new(proxy::full(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=us-ascii"),
    );
    r
}

/// IIS's answer while the application pool is stopped.
pub(super) fn service_unavailable() -> Response<Body> {
    iis_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "<h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is unavailable.</p>",
    )
}

/// IIS's answer to a `POST` without a length.
pub(super) fn length_required() -> Response<Body> {
    iis_error(
        StatusCode::LENGTH_REQUIRED,
        "<h2>Length Required</h2><hr><p>HTTP Error 411. The request must be chunked or have a content length.</p>",
    )
}

/// What Acumatica's UI pages answer without a session.
pub(super) fn login_redirect(path: &str) -> Response<Body> {
    let encoded: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
    let mut r = empty(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&format!("/Frames/Login.aspx?ReturnUrl={encoded}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;

    use crate::demo::legacy::harness::start;
    use crate::demo::legacy::LegacyOptions;

    async fn body_of(r: Response<Body>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn set_cookies(h: &HeaderMap) -> Vec<&str> {
        h.get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn an_error_body_has_acumaticas_shape() {
        let r = px_error(StatusCode::TOO_MANY_REQUESTS, "API Login Limit");
        assert_eq!(r.status(), 429);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        let v: Value = serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(v["message"], "An error has occurred.");
        assert_eq!(v["exceptionMessage"], "API Login Limit");
        assert_eq!(v["exceptionType"], "PX.Data.PXException");
        assert_eq!(v["stackTrace"], STACK_TRACE);
    }

    #[tokio::test]
    async fn iis_pages_are_html_with_their_status() {
        for (r, status, text) in [
            (service_unavailable(), 503, "HTTP Error 503."),
            (length_required(), 411, "HTTP Error 411."),
        ] {
            assert_eq!(r.status(), status);
            assert_eq!(
                r.headers()[header::CONTENT_TYPE],
                "text/html; charset=us-ascii"
            );
            assert!(body_of(r).await.contains(text));
        }
    }

    #[test]
    fn the_login_redirect_carries_the_encoded_path() {
        let r = login_redirect("/Main/a b?");
        assert_eq!(r.status(), 302);
        assert_eq!(
            r.headers()[header::LOCATION],
            "/Frames/Login.aspx?ReturnUrl=%2FMain%2Fa+b%3F"
        );
    }

    #[test]
    fn request_cookies_carry_the_sequence_path_and_ticks() {
        let mut h = HeaderMap::new();
        add_request_cookies(&mut h, 7, "/entity/x");
        let c = set_cookies(&h);
        assert_eq!(c.len(), 2);
        let id = c[0]
            .strip_prefix("requestid=")
            .and_then(|r| r.strip_suffix("; path=/"))
            .unwrap();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        let ticks: u128 = c[1]
            .strip_prefix("requeststat=+st:7+sc:~/entity/x+start:")
            .and_then(|r| r.strip_suffix("+tg:; path=/"))
            .unwrap()
            .parse()
            .unwrap();
        // 2020-01-01 in .NET ticks: the clock is read as time since year 1, not since 1970.
        assert!(ticks > 637_134_336_000_000_000, "{ticks}");
    }

    #[test]
    fn the_auth_cookie_is_deleted_by_an_expiry_in_the_past() {
        let mut h = HeaderMap::new();
        delete_auth_cookie(&mut h);
        add_cookie(&mut h, "bad\nvalue");
        assert_eq!(
            set_cookies(&h),
            [".ASPXAUTH=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/"]
        );
    }

    #[tokio::test]
    async fn error_bodies_carry_the_exception_and_a_stack_trace() {
        let f = start(LegacyOptions::default()).await;
        let r = f.login_as("admin", "wrong", None).await;
        assert_eq!(r.status, 500);
        let v = r.json();
        assert_eq!(v["exceptionType"], "PX.Data.PXException");
        assert!(v["stackTrace"].as_str().unwrap().contains("   at PX."));
    }
}
