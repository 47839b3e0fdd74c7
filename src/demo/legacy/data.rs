//! The data endpoints under `/entity/{endpoint}/{version}/`, once the request holds its
//! session: Echo (who the session is), Counter (per-session state), Slow (holds the session),
//! LongOp (a long operation that pins the session), Stream (a large answer that may break
//! off: the fault injection of the gateway's tests) and any other entity call (echoes what
//! arrived).

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::json;

use super::replies::{empty, json_response, not_found, px_error};
use super::state::running_op;
use super::FakeLegacy;
use crate::Body;

/// Upper bound of `Slow?ms=`.
const MAX_SLOW_MS: u64 = 60_000;
const OPERATION_RUNNING: &str = "The previous operation has not been completed yet.";

/// What a data request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DataOp {
    Echo,
    CounterIncrement,
    CounterRead,
    Slow,
    Stream,
    LongOpStart,
    LongOpStatus(Option<u64>),
    LongOpOther,
    Generic,
}

impl DataOp {
    /// The operation named by the path after `/entity/{endpoint}/{version}` (`rest`).
    pub(super) fn of(method: &Method, rest: &[&str]) -> DataOp {
        let r = |i: usize, name: &str| rest.get(i).is_some_and(|s| s.eq_ignore_ascii_case(name));
        match rest.len() {
            1 if r(0, "Echo") && method == Method::GET => DataOp::Echo,
            1 if r(0, "Counter") && method == Method::PUT => DataOp::CounterIncrement,
            1 if r(0, "Counter") && method == Method::GET => DataOp::CounterRead,
            1 if r(0, "Slow") && method == Method::GET => DataOp::Slow,
            1 if r(0, "Stream") && method == Method::GET => DataOp::Stream,
            2 if r(0, "LongOp") && r(1, "Start") && method == Method::POST => DataOp::LongOpStart,
            3 if r(0, "LongOp") && r(1, "Status") && method == Method::GET => {
                DataOp::LongOpStatus(rest.get(2).and_then(|id| id.parse().ok()))
            }
            n if n >= 1 && r(0, "LongOp") => DataOp::LongOpOther,
            _ => DataOp::Generic,
        }
    }
}

impl FakeLegacy {
    /// What `op` answers in session `ordinal`; `prefix` is `/entity/{endpoint}/{version}`.
    pub(super) async fn data_op(
        &self,
        ordinal: u64,
        prefix: &str,
        op: DataOp,
        parts: &http::request::Parts,
        body_bytes: u64,
        body_sha256: &str,
    ) -> Response<Body> {
        match op {
            DataOp::Slow => {
                let ms = parts.uri.query().and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "ms")
                        .map(|(_, v)| v.parse::<u64>().ok())
                });
                let ms = match ms {
                    None => 0,
                    Some(Some(ms)) => ms.min(MAX_SLOW_MS),
                    Some(None) => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            &json!({"message": "ms must be a number of milliseconds."}),
                        )
                    }
                };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_response(StatusCode::OK, &json!({"session": ordinal}))
            }
            DataOp::Stream => stream(parts),
            op => self.data_op_now(ordinal, prefix, op, parts, body_bytes, body_sha256),
        }
    }

    /// The data operations that do not wait.
    fn data_op_now(
        &self,
        ordinal: u64,
        prefix: &str,
        op: DataOp,
        parts: &http::request::Parts,
        body_bytes: u64,
        body_sha256: &str,
    ) -> Response<Body> {
        let mut guard = self.inner.lock();
        let now = guard.now();
        let st = &mut *guard;
        let long_op_duration = st.opts.long_op_duration;
        let Some(s) = st.sessions.get_mut(&ordinal) else {
            // Ended during this request: the caller answers 401.
            return empty(StatusCode::UNAUTHORIZED);
        };
        let running = running_op(s, now, long_op_duration);
        let is_long_op = matches!(
            op,
            DataOp::LongOpStart | DataOp::LongOpStatus(_) | DataOp::LongOpOther
        );
        if let Some(id) = running {
            let own_status = matches!(op, DataOp::LongOpStatus(Some(x)) if x == id);
            if is_long_op && !own_status {
                return px_error(StatusCode::INTERNAL_SERVER_ERROR, OPERATION_RUNNING);
            }
        }
        match op {
            DataOp::Echo => json_response(
                StatusCode::OK,
                &json!({"session": ordinal, "user": s.user, "tenant": s.tenant, "branch": s.branch}),
            ),
            DataOp::CounterIncrement => {
                s.counter += 1;
                json_response(
                    StatusCode::OK,
                    &json!({"session": ordinal, "counter": s.counter}),
                )
            }
            DataOp::CounterRead => json_response(
                StatusCode::OK,
                &json!({"session": ordinal, "counter": s.counter}),
            ),
            DataOp::LongOpStart => {
                let id = st.next_op;
                st.next_op += 1;
                s.ops.insert(id, now);
                let mut resp = empty(StatusCode::ACCEPTED);
                if let Ok(v) = HeaderValue::from_str(&format!("{prefix}/LongOp/Status/{id}")) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            DataOp::LongOpStatus(id) => match id.and_then(|id| s.ops.get(&id)) {
                Some(started) if now.saturating_duration_since(*started) < long_op_duration => {
                    empty(StatusCode::ACCEPTED)
                }
                Some(_) => empty(StatusCode::NO_CONTENT),
                None => not_found(),
            },
            DataOp::LongOpOther | DataOp::Generic | DataOp::Slow | DataOp::Stream => json_response(
                StatusCode::OK,
                &json!({"session": ordinal, "path": parts.uri.path(), "method": parts.method.as_str(), "body_bytes": body_bytes, "body_sha256": body_sha256}),
            ),
        }
    }
}

/// Upper bound of `Stream?bytes=`.
const MAX_STREAM_BYTES: usize = 16 << 20;

/// `GET Stream?bytes=N&fault=reset|stall`: a 200 with `Content-Length: N` (default 64 KiB), sent
/// in two halves. With `fault=reset` the second half never comes and the connection is broken
/// off (a server that crashed mid-answer); with `fault=stall` it never comes and the connection
/// stays open (a server stuck mid-answer). The session counts as in use until the answer ends.
fn stream(parts: &http::request::Parts) -> Response<Body> {
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let bytes = match get("bytes").map(str::parse::<usize>) {
        None => 64 << 10,
        Some(Ok(n)) => n.min(MAX_STREAM_BYTES),
        Some(Err(_)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"message": "bytes must be a number."}),
            )
        }
    };
    let fault = match get("fault") {
        None => None,
        Some("reset") => Some(Fault::Reset),
        Some("stall") => Some(Fault::Stall),
        Some(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"message": "fault must be reset or stall."}),
            )
        }
    };
    let half = bytes / 2;
    let body = Halves {
        first: Some(bytes::Bytes::from(vec![b'a'; half])),
        second: Some(bytes::Bytes::from(vec![b'b'; bytes - half])),
        fault,
        pause: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
    };
    let mut r = Response::new(http_body_util::BodyExt::boxed(body));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Reset,
    Stall,
}

/// The body of [`stream`].
struct Halves {
    first: Option<bytes::Bytes>,
    second: Option<bytes::Bytes>,
    fault: Option<Fault>,
    /// Before breaking off: the head and the first half leave first, as from a server that
    /// crashed mid-answer rather than before it.
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// What a `fault=reset` answer breaks off with.
#[derive(Debug, thiserror::Error)]
#[error("the fake broke its answer off (fault=reset)")]
struct BrokenOff;

impl http_body::Body for Halves {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(first))));
        }
        match self.fault {
            // Never woken: the answer waits until the client goes away.
            Some(Fault::Stall) => Poll::Pending,
            Some(Fault::Reset) => {
                if self.pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.fault = None;
                self.second = None;
                Poll::Ready(Some(Err(Box::new(BrokenOff))))
            }
            None => Poll::Ready(self.second.take().map(|b| Ok(http_body::Frame::data(b)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use serde_json::json;

    use crate::demo::legacy::harness::start;
    use crate::demo::legacy::LegacyOptions;

    fn op(method: Method, rest: &str) -> DataOp {
        let segs: Vec<&str> = rest.split('/').collect();
        DataOp::of(&method, &segs)
    }

    #[test]
    fn operations_are_named_by_path_and_method_without_case() {
        assert_eq!(op(Method::GET, "echo"), DataOp::Echo);
        assert_eq!(op(Method::POST, "Echo"), DataOp::Generic);
        assert_eq!(op(Method::PUT, "COUNTER"), DataOp::CounterIncrement);
        assert_eq!(op(Method::GET, "Counter"), DataOp::CounterRead);
        assert_eq!(op(Method::DELETE, "Counter"), DataOp::Generic);
        assert_eq!(op(Method::GET, "Slow"), DataOp::Slow);
        assert_eq!(op(Method::POST, "longop/start"), DataOp::LongOpStart);
        assert_eq!(
            op(Method::GET, "LongOp/Status/12"),
            DataOp::LongOpStatus(Some(12))
        );
        assert_eq!(
            op(Method::GET, "LongOp/Status/x"),
            DataOp::LongOpStatus(None)
        );
        // Anything else under LongOp still counts as part of the long operation.
        assert_eq!(op(Method::GET, "LongOp/Start"), DataOp::LongOpOther);
        assert_eq!(op(Method::GET, "LongOp"), DataOp::LongOpOther);
        assert_eq!(op(Method::GET, "Customer/Echo"), DataOp::Generic);
        assert_eq!(DataOp::of(&Method::GET, &[]), DataOp::Generic);
    }

    #[tokio::test]
    async fn counters_are_per_session() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let b = f.login().await;
        let path = "/entity/Default/24.200.001/Counter";
        for want in 1..=3 {
            let r = f.call("PUT", path, &[("cookie", &a)], "{}").await;
            assert_eq!(r.json(), json!({"session": 1, "counter": want}));
        }
        let r = f.call("PUT", path, &[("cookie", &b)], "").await;
        assert_eq!(r.json(), json!({"session": 2, "counter": 1}));
        let r = f.call("GET", path, &[("cookie", &a)], "").await;
        assert_eq!(r.json(), json!({"session": 1, "counter": 3}));
    }

    #[tokio::test]
    async fn long_operations_pin_the_session() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let b = f.login().await;
        let r = f
            .call(
                "POST",
                "/entity/Default/24.200.001/LongOp/Start",
                &[("cookie", &a), ("content-length", "0")],
                "",
            )
            .await;
        assert_eq!(r.status, 202);
        let status = r
            .headers
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            status.starts_with("/entity/Default/24.200.001/LongOp/Status/"),
            "{status}"
        );
        assert_eq!(
            f.call("GET", &status, &[("cookie", &a)], "").await.status,
            202
        );
        assert_eq!(
            f.call("GET", &status, &[("cookie", &b)], "").await.status,
            404
        );
        let again = f
            .call(
                "POST",
                "/entity/Default/24.200.001/LongOp/Start",
                &[("cookie", &a)],
                "",
            )
            .await;
        assert_eq!(
            (again.status, again.exception().as_str()),
            (500, OPERATION_RUNNING)
        );
        // Other endpoints of the session still work; another session may start its own.
        assert_eq!(f.echo(&a).await.status, 200);
        let other = f
            .call(
                "POST",
                "/entity/Default/24.200.001/LongOp/Start",
                &[("cookie", &b)],
                "",
            )
            .await;
        assert_eq!(other.status, 202);
        f.fake.advance_clock(Duration::from_secs(1));
        assert_eq!(
            f.call("GET", &status, &[("cookie", &a)], "").await.status,
            204
        );
        assert_eq!(
            f.call("GET", &status, &[("cookie", &b)], "").await.status,
            404
        );
        let next = f
            .call(
                "POST",
                "/entity/Default/24.200.001/LongOp/Start",
                &[("cookie", &a)],
                "",
            )
            .await;
        assert_eq!(next.status, 202);
    }
}
