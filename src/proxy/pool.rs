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
    /// `tollgate_upstream_connections_opened_total` of this upstream (none in unit tests).
    opened: Option<prometheus::IntCounter>,
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
        opened: Option<prometheus::IntCounter>,
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
            opened,
        })
    }

    /// Sends `req` (absolute URI) on an idle connection, or on a new one when none is idle.
    /// A request that a reused connection closed before sending is sent again on another:
    /// nothing of it reached the upstream.
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
        async move {
            loop {
                let (mut conn, reused) = match self.take(stack) {
                    Some(conn) => (conn, true),
                    // Boxed: dialling (TCP, TLS, handshake) is a large future, and only the
                    // first request on a connection needs it; inline, every request would
                    // carry it.
                    None => (Box::pin(self.connect()).await?, false),
                };
                match conn.try_send_request(req).await {
                    Ok(resp) => return Ok(self.attach(conn, stack, resp)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => req = unsent,
                        _ => return Err(e.into_error().into()),
                    },
                }
            }
        }
    }

    /// The most recently used idle connection of `stack` that can take a request now; closed
    /// and stale ones met on the way are dropped.
    fn take(&self, stack: usize) -> Option<SendRequest<Body>> {
        let mut idle = self.idle[stack].lock().unwrap_or_else(|p| p.into_inner());
        while let Some(Idle { conn, since }) = idle.pop() {
            if conn.is_ready() && since.elapsed() < self.idle_timeout {
                return Some(conn);
            }
        }
        None
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
        if let Some(opened) = &self.opened {
            opened.inc();
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
    }

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
                            Answer::KeepAlive | Answer::SilentClose => {
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
                        if sent.is_err() || !matches!(answer, Answer::KeepAlive | Answer::Slow) {
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

    fn counting_pool(
        addr: std::net::SocketAddr,
        opened: Option<prometheus::IntCounter>,
    ) -> Arc<Pool> {
        keeping_pool(addr, opened, Duration::from_secs(90))
    }

    fn keeping_pool(
        addr: std::net::SocketAddr,
        opened: Option<prometheus::IntCounter>,
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
                opened,
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
            let opened = prometheus::IntCounter::new("opened", "test").unwrap();
            let pool = counting_pool(up.addr, Some(opened.clone()));
            for _ in 0..3 {
                assert_eq!(fetch(&pool, up.addr).await, "ok");
            }
            assert_eq!(up.connections.load(Ordering::SeqCst), expected);
            assert_eq!(opened.get(), expected as u64);
        }
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let opened = prometheus::IntCounter::new("opened", "test").unwrap();
        let pool = counting_pool(refused, Some(opened.clone()));
        assert!(pool.send(get(refused, "/")).await.is_err());
        assert_eq!(opened.get(), 0);
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
