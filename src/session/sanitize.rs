//! Upstream error answers on session upstreams (design: "upstream error bodies carry stack
//! traces: never pass them on or log them"; §6.11.5).
//!
//! The reference upstream answers errors in ASP.NET's shape, `{"message", "exceptionMessage",
//! "exceptionType", "stackTrace", "innerException"}`, and a stack trace names the server's
//! internals. With `error_bodies = "sanitize"` (the default) the gateway keeps the upstream's
//! status but never its exception details:
//!
//! - a 5xx answer's body is replaced by the gateway's own JSON error;
//! - a 4xx JSON answer loses every exception member (at any depth) and keeps the rest, so a
//!   validation answer still tells the client which field was wrong;
//! - a 4xx answer that is not JSON passes unchanged unless it shows a stack trace or exception
//!   details, which replace it as for a 5xx;
//! - a body over [`MAX_ERROR_BODY`], compressed, or unreadable in time is replaced.
//!
//! 2xx and 3xx answers are never touched, and neither is `Retry-After`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use serde_json::Value;

use super::login::read_prefix;

/// The largest error body examined; a longer one is replaced.
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long reading an error body may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Member names of ASP.NET exception details (compared without case).
const EXCEPTION_MEMBERS: [&str; 5] = [
    "exceptionmessage",
    "exceptiontype",
    "stacktrace",
    "innerexception",
    "exception",
];

/// True when an answer with this status is examined.
pub fn applies(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// Reads an error answer's body and returns the body the client may see. `headers` are the
/// answer's; their `Content-Length`, `Content-Type` and `Content-Encoding` are set to match.
pub async fn error_body<B>(status: StatusCode, headers: &mut HeaderMap, body: B) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let compressed = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let read = tokio::time::timeout(READ_TIMEOUT, read_prefix(body, MAX_ERROR_BODY + 1)).await;
    let cleaned = match read {
        Ok(bytes) if !compressed && bytes.len() <= MAX_ERROR_BODY && !status.is_server_error() => {
            clean(headers, bytes)
        }
        _ => None,
    };
    let out = cleaned.unwrap_or_else(|| {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Bytes::from(
            serde_json::json!({
                "error": "upstream_error",
                "error_description": format!(
                    "the upstream answered {}; its error details are withheld by the gateway",
                    status.as_u16()
                ),
            })
            .to_string(),
        )
    });
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    out
}

/// A 4xx body without exception details, or `None` when it must be replaced.
fn clean(headers: &HeaderMap, bytes: Bytes) -> Option<Bytes> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.starts_with("application/json") || v.contains("+json")
        });
    if json {
        let mut value: Value = serde_json::from_slice(&bytes).ok()?;
        if !strip(&mut value) {
            return Some(bytes);
        }
        return serde_json::to_vec(&value).ok().map(Bytes::from);
    }
    (!shows_details(&bytes)).then_some(bytes)
}

/// Removes exception members at any depth; true when something was removed.
fn strip(v: &mut Value) -> bool {
    match v {
        Value::Object(map) => {
            let before = map.len();
            map.retain(|k, _| !EXCEPTION_MEMBERS.contains(&k.to_ascii_lowercase().as_str()));
            let mut removed = map.len() != before;
            for child in map.values_mut() {
                removed |= strip(child);
            }
            removed
        }
        Value::Array(items) => items.iter_mut().fold(false, |acc, i| strip(i) | acc),
        _ => false,
    }
}

/// True when a non-JSON body names exception details or shows .NET stack frames.
fn shows_details(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    EXCEPTION_MEMBERS[..4].iter().any(|m| text.contains(m))
        || text.contains("stack trace")
        || text.contains("\n   at ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    async fn run(status: u16, content_type: &str, body: &str) -> (String, HeaderMap) {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        let out = error_body(
            StatusCode::from_u16(status).unwrap(),
            &mut h,
            Full::new(Bytes::from(body.to_owned())),
        )
        .await;
        (String::from_utf8(out.to_vec()).unwrap(), h)
    }

    const PX: &str = r#"{"message":"An error has occurred.","exceptionMessage":"Customer ID cannot be empty.","exceptionType":"PX.Data.PXException","stackTrace":"   at PX.Api.ContractBased.EntityService.Put()"}"#;

    #[tokio::test]
    async fn server_errors_are_replaced() {
        let (body, h) = run(500, "application/json", PX).await;
        assert!(body.contains("upstream_error"), "{body}");
        assert!(!body.contains("PX."), "{body}");
        assert_eq!(h[header::CONTENT_LENGTH], body.len().to_string());
    }

    #[tokio::test]
    async fn client_errors_keep_all_but_the_exception() {
        let (body, _) = run(400, "application/json; charset=utf-8", PX).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, serde_json::json!({"message": "An error has occurred."}));
        let nested = r#"{"id":1,"errors":[{"field":"CustomerID","StackTrace":"x","InnerException":{"a":1}}]}"#;
        let (body, _) = run(422, "application/json", nested).await;
        assert_eq!(body, r#"{"errors":[{"field":"CustomerID"}],"id":1}"#);
        let clean = r#"{"message":"not found"}"#;
        assert_eq!(run(404, "application/json", clean).await.0, clean);
    }

    #[tokio::test]
    async fn other_bodies_pass_unless_they_show_a_trace() {
        assert_eq!(
            run(404, "text/html", "<h1>Not Found</h1>").await.0,
            "<h1>Not Found</h1>"
        );
        let ysod = "<h2>Server Error</h2><b>Stack Trace:</b><pre>\n   at X.Y()</pre>";
        assert!(run(403, "text/html", ysod)
            .await
            .0
            .contains("upstream_error"));
        assert!(run(400, "application/json", "{broken")
            .await
            .0
            .contains("upstream_error"));
    }

    #[tokio::test]
    async fn large_bodies_are_replaced() {
        let big = format!("{{\"message\":\"{}\"}}", "x".repeat(MAX_ERROR_BODY));
        assert!(run(400, "application/json", &big)
            .await
            .0
            .contains("upstream_error"));
    }
}
