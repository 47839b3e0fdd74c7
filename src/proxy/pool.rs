//! An upstream's HTTP/1.1 connections, kept open between requests.
//!
//! One pool serves one upstream, so a connection is found without a key or a hash: the idle
//! ones sit on a stack behind one lock, and the most recently used is taken first (it is the
//! least likely to have met the upstream's keep-alive timeout). There is one stack for each
//! per-core runtime ([`crate::runtime`]): a connection is driven by the runtime that opened it,
//! so a request taking it from another thread's stack would cross threads twice (to send, and
//! for the answer). A connection goes back on the
//! stack when its answer has been read to the end, by the answer's body itself
//! ([`UpstreamBody`]), so an ordinary request spawns no task. HTTP/2 upstreams keep hyper-util's
//! client, which multiplexes.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

use crate::{Body, BoxError};

/// Idle connections kept at most, over all stacks; one more is closed when its answer ends.
const MAX_IDLE: usize = 256;
/// Idle connections each stack may keep at least, however many threads share [`MAX_IDLE`].
const MIN_IDLE_PER_STACK: usize = 16;
/// A kept connection idle for this long may meet the upstream's keep-alive timer as a request
/// goes out on it: an idempotent request without a body is then copied first, so that it can
/// be sent again if the connection closes without an answer. Busier connections are reused
/// within milliseconds and their requests are not copied. Web servers' keep-alive timeouts
/// are seconds long (gunicorn 2 s; Node.js and Apache httpd 5 s), well above this.
const RETRY_AFTER_IDLE: Duration = Duration::from_millis(250);

/// The HTTP/1.1 connections to one upstream.
pub(crate) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials.
    target: Uri,
    /// The `Host` of a request that has none: the upstream's host, with its port unless it is
    /// the scheme's default, as clients write it.
    host: HeaderValue,
    /// One stack per per-core runtime, by [`crate::runtime::place`].
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// What one stack keeps at most.
    max_idle: usize,
    /// An idle connection older than this (the upstream's `idle_timeout`) is closed instead of
    /// reused.
    idle_timeout: Duration,
    /// This upstream's series of the pool's counters (none in unit tests).
    counters: Option<Counters>,
}

/// The pool's metric series of one upstream, resolved once.
#[derive(Clone)]
pub(crate) struct Counters {
    /// `tollgate_upstream_connections_opened_total`.
    pub(crate) opened: prometheus::IntCounter,
    /// `tollgate_upstream_retries_total`.
    pub(crate) retried: prometheus::IntCounter,
}

struct Idle {
    conn: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        scheme: &http::uri::Scheme,
        authority: &http::uri::Authority,
        idle_timeout: Duration,
        counters: Option<Counters>,
    ) -> Result<Pool, String> {
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| e.to_string())?;
        let default_port = if *scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let stacks = crate::runtime::shards();
        Ok(Pool {
            connector,
            target,
            host: HeaderValue::try_from(host).map_err(|e| e.to_string())?,
            idle: (0..stacks).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle: (MAX_IDLE / stacks).max(MIN_IDLE_PER_STACK),
            idle_timeout,
            counters,
        })
    }

    /// Sends `req` (absolute URI) on an idle connection, or on a new one when none is idle.
    /// A request that a reused connection closed before sending is sent again on another:
    /// nothing of it reached the upstream. An idempotent request without a body (or one marked
    /// [`Replayable`]), sent on a connection kept idle for [`RETRY_AFTER_IDLE`] or more that
    /// then closes without an answer (the upstream's keep-alive ran out as it went), is sent
    /// once more, on a new connection (RFC 9110, 9.2.2; RFC 9112, 9.3.1).
    ///
    /// Not an `async fn`: its request would be kept twice in its future (the argument and the
    /// binding the body moves it to), and that future is part of every request's.
    pub(crate) fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, BoxError>> + '_ {
        // hyper's HTTP/1.1 client writes the URI as given: the origin form, as for a server.
        // Taken, not copied: a copy of a path made for this request would allocate.
        let origin = std::mem::take(req.uri_mut())
            .into_parts()
            .path_and_query
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(origin);
        req.headers_mut()
            .entry(HOST)
            .or_insert_with(|| self.host.clone());
        // This thread's stack: the request is polled here, and the connection it opens is
        // driven here.
        let stack = crate::runtime::place(self.idle.len());
        let unrepeatable = req.extensions().get::<Unrepeatable>().is_some();
        async move {
            // The copy of a request sent on a long-idle connection; boxed, as most requests
            // have none and this future is part of every request's.
            let mut spare: Option<Box<Request<Body>>> = None;
            let mut fresh = false;
            loop {
                let taken = if fresh { None } else { self.take(stack) };
                // An unrepeatable request closes a connection the upstream may be closing, and
                // opens a new one.
                let taken =
                    taken.filter(|(_, idle_for)| !unrepeatable || *idle_for < RETRY_AFTER_IDLE);
                let (mut conn, reused) = match taken {
                    Some((conn, idle_for)) => {
                        if spare.is_none() && idle_for >= RETRY_AFTER_IDLE {
                            spare = replayable(&req).map(Box::new);
                        }
                        (conn, true)
                    }
                    // Boxed: dialling (TCP, TLS, handshake) is a large future, and only the
                    // first request on a connection needs it; inline, every request would
                    // carry it.
                    None => (Box::pin(self.connect()).await?, false),
                };
                match conn.try_send_request(req).await {
                    Ok(resp) => return Ok(self.attach(conn, stack, resp)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => {
                            self.count_retry();
                            req = unsent;
                        }
                        _ => {
                            let e = e.into_error();
                            match spare.take() {
                                Some(copy) if reused && crate::net::closed_unanswered(&e) => {
                                    // The other kept connections are as old or older: a
                                    // new one.
                                    self.count_retry();
                                    req = *copy;
                                    fresh = true;
                                }
                                _ => return Err(e.into()),
                            }
                        }
                    },
                }
            }
        }
    }

    /// The most recently used idle connection of `stack` that can take a request now, and how
    /// long it was idle; closed and stale ones met on the way are dropped.
    fn take(&self, stack: usize) -> Option<(SendRequest<Body>, Duration)> {
        let mut idle = self.idle[stack].lock().unwrap_or_else(|p| p.into_inner());
        while let Some(Idle { conn, since }) = idle.pop() {
            let idle_for = since.elapsed();
            if conn.is_ready() && idle_for < self.idle_timeout {
                return Some((conn, idle_for));
            }
        }
        None
    }

    fn count_retry(&self) {
        if let Some(c) = &self.counters {
            c.retried.inc();
        }
    }

    /// Back on the stack, unless it is full; the oldest entry goes if it has gone stale, so a
    /// burst's connections do not stay open forever once traffic falls.
    fn put(&self, conn: SendRequest<Body>, stack: usize) {
        let now = Instant::now();
        let mut idle = self.idle[stack].lock().unwrap_or_else(|p| p.into_inner());
        if idle
            .first()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= self.idle_timeout)
        {
            idle.remove(0);
        }
        if idle.len() < self.max_idle {
            idle.push(Idle { conn, since: now });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let io = self.connector.clone().call(self.target.clone()).await?;
        let (conn, driver) = hyper::client::conn::http1::handshake(io).await?;
        if let Some(c) = &self.counters {
            c.opened.inc();
        }
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(conn)
    }

    /// The answer, with its connection riding on the body until the body ends. A `101` hands
    /// the connection to the upgrade, so it never comes back.
    fn attach(
        self: &Arc<Self>,
        conn: SendRequest<Body>,
        stack: usize,
        resp: Response<Incoming>,
    ) -> Response<UpstreamBody> {
        let ticket = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Ticket {
            pool: self.clone(),
            conn,
            stack,
        });
        resp.map(|inner| {
            let mut body = UpstreamBody { inner, ticket };
            if body.inner.is_end_stream() {
                body.give_back();
            }
            body
        })
    }

    /// Connections waiting on the stack that can take a request: one the upstream has closed
    /// is not counted, though it stays until a request meets it and drops it.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|stack| {
                let idle = stack.lock().unwrap_or_else(|p| p.into_inner());
                idle.iter().filter(|i| i.conn.is_ready()).count()
            })
            .sum()
    }
}

/// Marks a request whose method is not idempotent as safe to send twice all the same: a session
/// logout (`POST`), which leaves the session as logged out the second time as the first.
#[derive(Debug, Clone, Copy)]
pub struct Replayable;

/// Marks a request that must not be sent twice and whose failure costs more than a connection:
/// a session login (a second one could open a second upstream session; a failed one holds every
/// grant's logins back). It never goes out on a connection idle for 250 ms or more (the
/// pool's retry mark), which the upstream may be closing: such a connection is closed and a new
/// one opened.
#[derive(Debug, Clone, Copy)]
pub struct Unrepeatable;

/// A copy of `req` to send again, if it may be: an idempotent method (RFC 9110, 9.2.2) or the
/// [`Replayable`] mark, and no body. The copy has the head only; the extensions stay with the
/// original, as hyper's HTTP/1.1 client reads none of them.
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    let idempotent = req.method().is_idempotent() || req.extensions().get::<Replayable>().is_some();
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    Some(crate::net::copy_request(
        req,
        crate::proxy::full(Bytes::new()),
    ))
}

/// A connection on loan to one answer, and the stack it goes back to.
struct Ticket {
    pool: Arc<Pool>,
    conn: SendRequest<Body>,
    stack: usize,
}

impl Ticket {
    fn give_back(self) {
        if self.conn.is_ready() {
            self.pool.put(self.conn, self.stack);
        } else if !self.conn.is_closed() {
            // The connection has not yet taken the end of the answer in, or is still sending
            // the request's body: back once it can take another request.
            let Ticket {
                pool,
                mut conn,
                stack,
            } = self;
            tokio::spawn(async move {
                if conn.ready().await.is_ok() {
                    pool.put(conn, stack);
                }
            });
        }
    }
}

/// An upstream answer's body. Read to its end, it gives its connection back to the pool; dropped
/// before, it closes it (the rest of the answer would have to be read first).
pub struct UpstreamBody {
    inner: Incoming,
    ticket: Option<Ticket>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.ticket.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// A body without a pooled connection (the HTTP/2 client's).
    pub(crate) fn unpooled(inner: Incoming) -> UpstreamBody {
        UpstreamBody {
            inner,
            ticket: None,
        }
    }

    fn give_back(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.give_back();
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.give_back(),
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.ticket = None,
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// How the test upstream answers each request on a connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `200` with a body, connection kept.
        KeepAlive,
        /// `200` with a body, then the upstream closes the connection without saying so.
        SilentClose,
        /// `200` with `Connection: close`.
        Close,
        /// `200` whose body is sent in two parts, the second after a pause.
        Slow,
        /// `200` with a body, connection kept for [`SHORT_KEEP_ALIVE`]: a request that comes
        /// on a connection idle for longer finds it closed under it, unanswered.
        ShortKeepAlive,
    }

    /// The keep-alive of [`Answer::ShortKeepAlive`].
    const SHORT_KEEP_ALIVE: Duration = Duration::from_millis(300);

    /// A raw HTTP/1.1 upstream on 127.0.0.1:0 that counts its connections and hands each
    /// request's head to `heads`.
    struct Upstream {
        addr: std::net::SocketAddr,
        connections: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
    }

    async fn upstream(answer: Answer) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (counted, seen) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered_at: Option<Instant> = None;
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        seen.lock().unwrap().push(String::from_utf8(head).unwrap());
                        let sent = match answer {
                            Answer::ShortKeepAlive
                                if answered_at.is_some_and(|t| t.elapsed() >= SHORT_KEEP_ALIVE) =>
                            {
                                return;
                            }
                            Answer::KeepAlive | Answer::SilentClose | Answer::ShortKeepAlive => {
                                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                    .await
                            }
                            Answer::Close => {
                                sock.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                                    .await
                            }
                            Answer::Slow => {
                                let _ = sock
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
                                    .await;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                sock.write_all(b"cd").await
                            }
                        };
                        answered_at = Some(Instant::now());
                        if sent.is_err()
                            || !matches!(
                                answer,
                                Answer::KeepAlive | Answer::Slow | Answer::ShortKeepAlive
                            )
                        {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            connections,
            heads,
        }
    }

    fn pool(addr: std::net::SocketAddr) -> Arc<Pool> {
        counting_pool(addr, None)
    }

    fn counting_pool(addr: std::net::SocketAddr, counters: Option<Counters>) -> Arc<Pool> {
        keeping_pool(addr, counters, Duration::from_secs(90))
    }

    /// Counters of their own, outside any registry.
    fn counters() -> Counters {
        Counters {
            opened: prometheus::IntCounter::new("opened", "test").unwrap(),
            retried: prometheus::IntCounter::new("retried", "test").unwrap(),
        }
    }

    fn keeping_pool(
        addr: std::net::SocketAddr,
        counters: Option<Counters>,
        idle_timeout: Duration,
    ) -> Arc<Pool> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(crate::pem::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let authority: http::uri::Authority = addr.to_string().parse().unwrap();
        Arc::new(
            Pool::new(
                https,
                &http::uri::Scheme::HTTP,
                &authority,
                idle_timeout,
                counters,
            )
            .unwrap(),
        )
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> Request<Body> {
        Request::get(format!("http://{addr}{path}"))
            .body(crate::proxy::full(Bytes::new()))
            .unwrap()
    }

    async fn read(resp: Response<UpstreamBody>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    /// `GET /` through `pool`, read to the end.
    async fn fetch(pool: &Arc<Pool>, addr: std::net::SocketAddr) -> Bytes {
        read(pool.send(get(addr, "/")).await.unwrap()).await
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let up = upstream(Answer::KeepAlive).await;
        let pool = pool(up.addr);
        for _ in 0..5 {
            let resp = pool.send(get(up.addr, "/a")).await.unwrap();
            assert_eq!(read(resp).await, "ok");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    /// The upstream's `idle_timeout`: a connection idle for longer is closed, not reused, so
    /// that an upstream with a shorter keep-alive than the default never has a request sent
    /// on a connection it is closing.
    #[tokio::test]
    async fn a_connection_idle_past_the_idle_timeout_is_not_reused() {
        let up = upstream(Answer::KeepAlive).await;
        let pool = keeping_pool(up.addr, None, Duration::from_millis(200));
        assert_eq!(fetch(&pool, up.addr).await, "ok");
        assert_eq!(fetch(&pool, up.addr).await, "ok");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            1,
            "reused while fresh"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fetch(&pool, up.addr).await, "ok");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            2,
            "a new one once stale"
        );
        assert_eq!(pool.idle_count(), 1, "the stale one was dropped, not kept");
    }

    /// A kept connection that the upstream closes as a request goes out on it (its keep-alive
    /// ran out): an idempotent request without a body is sent once more, on a new connection,
    /// and counted; a `POST` is not (it may have been acted on), nor is a request on a
    /// connection reused at once.
    #[tokio::test]
    async fn an_idempotent_request_on_a_connection_closed_under_it_is_sent_again() {
        let pause = SHORT_KEEP_ALIVE + Duration::from_millis(100);
        let up = upstream(Answer::ShortKeepAlive).await;
        let c = counters();
        let pool = counting_pool(up.addr, Some(c.clone()));
        assert_eq!(fetch(&pool, up.addr).await, "ok");
        tokio::time::sleep(pause).await;
        assert_eq!(fetch(&pool, up.addr).await, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
        assert_eq!(c.retried.get(), 1);
        assert_eq!(c.opened.get(), 2);

        tokio::time::sleep(pause).await;
        let mut post = get(up.addr, "/");
        *post.method_mut() = http::Method::POST;
        let e = pool.send(post).await.unwrap_err();
        assert!(
            super::super::describe(&*e).contains("closed before"),
            "{}",
            super::super::describe(&*e)
        );
        assert_eq!(c.retried.get(), 1, "a POST is never sent twice");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    /// A login must not be sent twice, and must not fail for want of a live connection: it
    /// reuses a connection used moments ago, and never one idle long enough for the upstream to
    /// be closing it.
    #[tokio::test]
    async fn an_unrepeatable_request_never_goes_on_a_connection_the_upstream_may_be_closing() {
        let up = upstream(Answer::ShortKeepAlive).await;
        let c = counters();
        let pool = counting_pool(up.addr, Some(c.clone()));
        let login = || {
            let mut req = get(up.addr, "/login");
            *req.method_mut() = http::Method::POST;
            req.extensions_mut().insert(Unrepeatable);
            req
        };
        for _ in 0..2 {
            assert_eq!(read(pool.send(login()).await.unwrap()).await, "ok");
        }
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            1,
            "reused while warm"
        );
        tokio::time::sleep(SHORT_KEEP_ALIVE + Duration::from_millis(100)).await;
        assert_eq!(read(pool.send(login()).await.unwrap()).await, "ok");
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            2,
            "a new one once cold"
        );
        assert_eq!(c.retried.get(), 0, "never sent twice");
        assert_eq!(pool.idle_count(), 1, "the cold one was closed");
    }

    #[test]
    fn only_idempotent_requests_without_a_body_are_copied_for_a_retry() {
        let with = |method: http::Method, body: &'static str| {
            let mut req = Request::new(crate::proxy::full(Bytes::from_static(body.as_bytes())));
            *req.method_mut() = method;
            *req.uri_mut() = Uri::from_static("/a?b");
            req.headers_mut()
                .insert("x-one", HeaderValue::from_static("1"));
            req
        };
        let copy = replayable(&with(http::Method::DELETE, "")).unwrap();
        assert_eq!(copy.method(), http::Method::DELETE);
        assert_eq!(copy.uri(), "/a?b");
        assert_eq!(copy.headers()["x-one"], "1");
        assert!(copy.body().is_end_stream());
        for method in [http::Method::GET, http::Method::HEAD, http::Method::PUT] {
            assert!(replayable(&with(method, "")).is_some());
        }
        assert!(replayable(&with(http::Method::PUT, "body")).is_none());
        for method in [http::Method::POST, http::Method::PATCH] {
            assert!(replayable(&with(method, "")).is_none());
        }
        // A logout is a POST, marked.
        let mut logout = with(http::Method::POST, "");
        logout.extensions_mut().insert(Replayable);
        assert_eq!(replayable(&logout).unwrap().method(), http::Method::POST);
        let mut with_body = with(http::Method::POST, "x");
        with_body.extensions_mut().insert(Replayable);
        assert!(replayable(&with_body).is_none());
    }

    /// A connection is driven by the runtime that opened it: a per-core thread takes only the
    /// connections on its own stack, so that no request waits on another thread's.
    #[tokio::test]
    async fn each_per_core_thread_reuses_the_connections_it_opened() {
        let worker = crate::runtime::Worker::start(1).unwrap();
        let up = upstream(Answer::KeepAlive).await;
        let pool = pool(up.addr);
        assert!(pool.idle.len() >= 2, "a stack for each runtime");
        for _ in 0..2 {
            let (p, addr) = (pool.clone(), up.addr);
            let body = worker
                .handle()
                .spawn(async move { fetch(&p, addr).await })
                .await
                .unwrap();
            assert_eq!(body, "ok");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        // The worker's idle connection is not this thread's: it opens one of its own, then
        // reuses that.
        for _ in 0..2 {
            assert_eq!(fetch(&pool, up.addr).await, "ok");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 2);
        worker.stop().await;
    }

    #[tokio::test]
    async fn the_request_line_is_in_origin_form_with_the_upstreams_host() {
        let up = upstream(Answer::KeepAlive).await;
        let pool = pool(up.addr);
        read(pool.send(get(up.addr, "/orders/1?x=%20y")).await.unwrap()).await;
        let mut own_host = get(up.addr, "/b");
        own_host
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("api.example"));
        read(pool.send(own_host).await.unwrap()).await;
        let heads = up.heads.lock().unwrap().clone();
        assert!(
            heads[0].starts_with("GET /orders/1?x=%20y HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains(&format!("host: {}\r\n", up.addr)),
            "{}",
            heads[0]
        );
        // A Host the request carries (preserve_host) is kept.
        assert!(heads[1].contains("host: api.example\r\n"), "{}", heads[1]);
    }

    #[tokio::test]
    async fn concurrent_requests_get_connections_of_their_own_and_all_come_back() {
        let up = upstream(Answer::Slow).await;
        let pool = pool(up.addr);
        let sent = (0..4).map(|_| {
            let pool = pool.clone();
            let req = get(up.addr, "/");
            async move { read(pool.send(req).await.unwrap()).await }
        });
        for body in futures_util::future::join_all(sent).await {
            assert_eq!(body, "abcd");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 4);
        assert_eq!(pool.idle_count(), 4);
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_closes_its_connection() {
        let up = upstream(Answer::Slow).await;
        let pool = pool(up.addr);
        let resp = pool.send(get(up.addr, "/")).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        drop(body);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(fetch(&pool, up.addr).await, "abcd");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let up = upstream(Answer::Close).await;
        let pool = pool(up.addr);
        for _ in 0..3 {
            assert_eq!(fetch(&pool, up.addr).await, "ok");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
        let up = upstream(Answer::SilentClose).await;
        let pool = pool(up.addr);
        for _ in 0..3 {
            assert_eq!(fetch(&pool, up.addr).await, "ok");
            // The close reaches the pooled connection; the next request must not fail on it,
            // and the pool no longer counts it as idle.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(pool.idle_count(), 0);
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 3);
    }

    /// `tollgate_upstream_connections_opened_total` counts what the upstream accepted: one
    /// connection for requests that reuse it, one a request when the upstream closes each,
    /// and none for a dial that fails.
    #[tokio::test]
    async fn every_connection_opened_is_counted_once() {
        for (answer, expected) in [(Answer::KeepAlive, 1), (Answer::Close, 3)] {
            let up = upstream(answer).await;
            let c = counters();
            let pool = counting_pool(up.addr, Some(c.clone()));
            for _ in 0..3 {
                assert_eq!(fetch(&pool, up.addr).await, "ok");
            }
            assert_eq!(up.connections.load(Ordering::SeqCst), expected);
            assert_eq!(c.opened.get(), expected as u64);
        }
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let c = counters();
        let pool = counting_pool(refused, Some(c.clone()));
        assert!(pool.send(get(refused, "/")).await.is_err());
        assert_eq!(c.opened.get(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error_not_a_hang() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let pool = pool(addr);
        let e = pool.send(get(addr, "/")).await.unwrap_err();
        assert!(
            super::super::describe(&*e).contains("onnection refused"),
            "{e}"
        );
    }
}
