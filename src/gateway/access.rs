//! The access log: one line per request, written when the answer's body has been sent (or the
//! client went away), so that it can say how many bytes went each way and how long the whole
//! exchange took. The line's fields are gathered while the pipeline runs; [`Line`] owns them
//! and [`Logged`], the answer's body, writes the line when it ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::limits::Broken;
use crate::{Body, BoxError};

/// A header value as log text: `-` when absent or not visible ASCII.
fn shown(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// The request as the access log shows it: the client's address, host, path without the
/// query, protocol and user agent.
pub(super) struct Seen {
    client: std::net::SocketAddr,
    /// The client's `X-Forwarded-For`, logged (its first address) only when trusted.
    forwarded_for: Option<HeaderValue>,
    host: Option<HeaderValue>,
    /// The target (its parts share the request's bytes): the log shows its path only.
    uri: http::Uri,
    version: Version,
    user_agent: Option<HeaderValue>,
}

impl Seen {
    pub(super) fn of<B>(req: &http::Request<B>, client: std::net::SocketAddr) -> Seen {
        let forwarded_for = req
            .headers()
            .get(&crate::proxy::headers::X_FORWARDED_FOR)
            .cloned();
        let host = req.headers().get(http::header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        Seen {
            client,
            forwarded_for,
            host,
            uri: req.uri().clone(),
            version: req.version(),
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
        }
    }
}

/// Everything one access-log line says, owned until the answer ends.
pub(super) struct Line {
    pub start: Instant,
    pub request_id: HeaderValue,
    pub trace_id: Option<String>,
    pub seen: Seen,
    /// `server.trust_forwarded_headers`: the forwarded client is shown.
    pub trust_forwarded: bool,
    pub method: Method,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub decision: &'static str,
    pub token_refused: Option<&'static str>,
    pub issuer: Option<Arc<str>>,
    pub client_id: Option<String>,
    /// The subject as `log.subject` shows it (a tag, the raw `sub`, or nothing).
    pub subject: Option<String>,
    pub upstream: Option<Arc<str>>,
    pub upstream_status: Option<u16>,
    pub upstream_ms: Option<f64>,
    pub session: Option<&'static str>,
    pub lease_ms: Option<f64>,
    /// The request body as read (None: there was none to read).
    pub body_in: Option<Arc<Broken>>,
    /// The answer's head was ready after this long.
    pub head_ms: f64,
}

impl Line {
    /// Writes the line: `bytes_out` body bytes were sent, `complete` unless the client left
    /// (or the answer broke) before its end.
    fn write(&self, bytes_out: u64, complete: bool) {
        let forwarded_for = self
            .trust_forwarded
            .then(|| shown(self.seen.forwarded_for.as_ref()).split(',').next())
            .flatten()
            .map_or("-", str::trim);
        tracing::info!(
            target: "tollgate::access",
            route = self.route.as_deref().unwrap_or("none"),
            method = self.method.as_str(),
            status = self.status,
            decision = self.decision,
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            head_ms = self.head_ms,
            bytes_in = self.body_in.as_ref().map_or(0, |b| b.bytes_read()),
            bytes_out,
            complete,
            upstream_status = self.upstream_status,
            request_id = self.request_id.to_str().unwrap_or("-"),
            trace_id = self.trace_id.as_deref().unwrap_or("-"),
            client = %self.seen.client.ip(),
            forwarded_for,
            host = shown(self.seen.host.as_ref()),
            path = self.seen.uri.path(),
            protocol = ?self.seen.version,
            user_agent = shown(self.seen.user_agent.as_ref()),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            upstream_ms = self.upstream_ms,
            issuer = self.issuer.as_deref().unwrap_or("-"),
            client_id = self.client_id.as_deref().unwrap_or("-"),
            subject = self.subject.as_deref().unwrap_or("-"),
            session = self.session.unwrap_or("-"),
            token_refused = self.token_refused.unwrap_or("-"),
            lease_ms = self.lease_ms,
            "request"
        );
    }
}

/// The answer's body, counting what it sends; writes the access-log line once, at its end or
/// when dropped before it.
pub(super) struct Logged {
    inner: Body,
    line: Option<Box<Line>>,
    sent: u64,
}

impl Logged {
    pub(super) fn wrap(inner: Body, line: Line) -> Body {
        Logged {
            inner,
            line: Some(Box::new(line)),
            sent: 0,
        }
        .boxed()
    }

    fn finish(&mut self, complete: bool) {
        if let Some(line) = self.line.take() {
            line.write(self.sent, complete);
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body the server never polled (a HEAD, an empty answer) is complete when it was
        // empty; one dropped mid-way was cut off.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::BodyExt as _;

    use super::*;

    /// A `tracing` writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line() -> Line {
        Line {
            start: Instant::now(),
            request_id: HeaderValue::from_static("r1"),
            trace_id: None,
            seen: Seen {
                client: "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
                forwarded_for: None,
                host: None,
                uri: http::Uri::from_static("/x?secret=1"),
                version: Version::HTTP_11,
                user_agent: None,
            },
            trust_forwarded: false,
            method: Method::GET,
            status: 200,
            route: None,
            decision: "-",
            token_refused: None,
            issuer: None,
            client_id: None,
            subject: None,
            upstream: None,
            upstream_status: None,
            upstream_ms: None,
            session: None,
            lease_ms: None,
            body_in: None,
            head_ms: 0.0,
        }
    }

    /// Runs `f` with the access log captured as JSON lines, and returns them parsed.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `n` chunks of 10 bytes.
    struct Chunks(usize);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"0123456789")))))
        }
    }

    fn chunks(n: usize) -> Body {
        Chunks(n).boxed()
    }

    #[test]
    fn a_whole_answer_is_logged_once_with_its_bytes() {
        let lines = logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap_or_else(|_| unreachable!());
            let body = Logged::wrap(chunks(3), line());
            let got = rt.block_on(body.collect()).map(|c| c.to_bytes().len());
            assert_eq!(got.ok(), Some(30));
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["bytes_out"], 30);
        assert_eq!(lines[0]["complete"], true);
        assert_eq!(lines[0]["path"], "/x", "never the query");
    }

    #[test]
    fn an_answer_dropped_mid_way_is_logged_as_incomplete() {
        let lines = logged(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap_or_else(|_| unreachable!());
            let mut body = Logged::wrap(chunks(3), line());
            let first = rt.block_on(body.frame());
            assert!(first.is_some());
            drop(body); // the client went away
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["bytes_out"], 10);
        assert_eq!(lines[0]["complete"], false);
    }

    #[test]
    fn an_empty_answer_never_polled_is_complete() {
        let lines = logged(|| {
            drop(Logged::wrap(
                http_body_util::Empty::new().map_err(|e| match e {}).boxed(),
                line(),
            ))
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(
            (
                lines[0]["bytes_out"].as_u64(),
                lines[0]["complete"].as_bool()
            ),
            (Some(0), Some(true))
        );
    }
}
