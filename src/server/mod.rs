//! Listeners and connections: the proxy listener and the separate admin listener, each an accept
//! loop serving HTTP/1.1 and HTTP/2 (hyper's connection builders), with graceful shutdown.
//!
//! Tests and the demo bind their own listeners (port 0) and pass them in through [`Listeners`], so
//! no port is ever probed and released.
//!
//! One connection's life on the proxy listener (`[server]` keys in brackets):
//!
//! ```text
//! accept                                on the accepting thread's own socket when per-core
//! wait for a place [max_connections]    over the limit, one connection waits unserved and the
//!                                       next ones in the listen backlog
//! TLS handshake [tls]                   bounded by [header_read_timeout]; ALPN h2 or http/1.1
//! HTTP/1.1 or HTTP/2                    TLS: ALPN decides; cleartext: HTTP/1.1, or also h2 with
//!                                       prior knowledge when [http2_cleartext]
//!   request head                        [max_header_bytes] (431), [header_read_timeout] from its
//!                                       first byte (the connection is closed)
//!   request .. response body sent       in flight: no timer runs
//!   nothing in flight [idle_timeout]    graceful close (HTTP/2: GOAWAY)
//! shutdown                              graceful close; in-flight requests get `shutdown_grace`
//! ```
//!
//! With per-core threads (`server.scheduler`), each thread accepts on a socket of its own bound
//! to the proxy's address ([`bind_proxy`]), and serves what it accepts on its own runtime; the
//! places under `max_connections` are one count for all of them.
//!
//! The admin listener (and the demo's servers) use the same loop with fixed limits
//! (`Limits::ADMIN`).

pub mod admin;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::{ListenerMetrics, OpenGuard};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, Http2Limits, Scheduler, ServerConfig, TlsConfig};
use crate::gateway::{Conn, Gateway};
use crate::metrics::Metrics;
use crate::{Body, BoxError};
use tls::{TlsAcceptor, TlsReloader};

/// How long shutdown waits for the upstream logouts of every session.
const SESSION_LOGOUT_BOUND: Duration = Duration::from_secs(10);

/// The HTTP/2 connection preface (RFC 9113 §3.4), to tell h2c from HTTP/1.1 on a cleartext
/// connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The bound listeners.
pub struct Listeners {
    pub proxy: TcpListener,
    /// Further sockets listening on the proxy's address, one for each further per-core thread
    /// (`server.scheduler = "per-core"`; see [`bind_proxy`]). Empty with one thread.
    pub per_core: Vec<std::net::TcpListener>,
    pub admin: TcpListener,
}

/// A running gateway.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Gateway,
    tls: TlsReloader,
    admin_access: admin::AdminAccess,
    shutdown: watch::Sender<bool>,
    /// The admin listener stops last, so that `/readyz` answers 503 while the proxy drains.
    admin_shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    /// The per-core runtimes beside the main thread's: stopped last, as the tasks they run
    /// (an upstream connection, a session's release) may be needed until the end.
    workers: Vec<crate::runtime::Worker>,
}

/// The listen backlog of the per-core sockets (tokio's own for a listener it binds).
const BACKLOG: u32 = 1024;

/// A connection's place under `max_connections`, and its count in `tollgate_connections_open`:
/// both held by its IO, so an upgraded connection keeps them until its tunnel ends.
type Place = (OwnedSemaphorePermit, Option<OpenGuard>);

/// The connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest request head: hyper's HTTP/1 `max_header_size` and HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`; over it, 431.
    pub(crate) max_header_bytes: usize,
    /// Time from the first byte of an HTTP/1 request head to its end; also bounds the TLS
    /// handshake.
    pub(crate) header_read_timeout: Duration,
    /// A connection with nothing in flight this long is closed gracefully.
    pub(crate) idle_timeout: Duration,
    /// A connection that could not be written to for this long is dropped.
    pub(crate) send_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub(crate) max_connections: usize,
    /// Cleartext connections may speak HTTP/2 with prior knowledge.
    pub(crate) http2_cleartext: bool,
    /// What one HTTP/2 connection may make the gateway do (streams, resets, pings).
    pub(crate) http2: Http2Limits,
}

/// The protocol of a connection, decided before HTTP starts: by ALPN with TLS, by the first
/// bytes (the h2 preface or not) on cleartext with `http2_cleartext`, else HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

/// What every connection task of one listener shares: the HTTP builders, configured once.
struct Shared<F> {
    limits: Limits,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    handler: F,
}

/// Request activity of one connection, shared by its service (which counts requests), its IO
/// (the head timer) and its task (the idle timer).
struct Activity {
    epoch: Instant,
    /// Requests whose response body has not been sent (or dropped) yet.
    in_flight: AtomicUsize,
    /// Requests begun so far: a change tells the head timer that its head was complete.
    begun: AtomicU64,
    /// When the last request ended, in milliseconds after `epoch`.
    last_end_ms: AtomicU64,
    /// The connection switched protocols (101): its bytes are no longer HTTP heads.
    upgraded: AtomicBool,
    /// HTTP/2 answers owed a poll of their body, by request number, and since when: from the
    /// moment the head is handed over and after each frame the body gives. hyper polls again
    /// once the client's flow-control window lets it send, so an entry older than
    /// `send_timeout` is a client that keeps its window shut (HTTP/1.1 needs none of this: a
    /// client that reads nothing stalls the socket, which [`Watched`] times).
    owed: std::sync::Mutex<HashMap<u64, Instant>>,
}

/// One request in flight, and its number on the connection; it ends when this is dropped (with
/// the response body).
struct InFlight(Arc<Activity>, u64);

/// A response body that keeps its request in flight until the body has been sent.
struct Tracked {
    body: Body,
    /// HTTP/2: this answer's number in [`Activity::owed`].
    owed: Option<u64>,
    in_flight: InFlight,
}

/// The IO of a connection: it holds the connection's place (so an upgraded connection still
/// counts towards `max_connections` until its tunnel ends), replays the bytes read to choose
/// the protocol, times HTTP/1 request heads, and drops a connection its client stopped reading
/// (`send_timeout`): otherwise a client that reads nothing would hold its answer, and with it
/// the upstream connection and any session lease, for ever.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
    head_timeout: Duration,
    /// HTTP/2 has no head timer (HEADERS frames are bounded by the h2 codec).
    proto: Proto,
    /// Bytes already read from `io` (to tell h2c from HTTP/1.1), served first.
    replay: Bytes,
    /// The head being read: the `begun` count when its first byte came, and its deadline.
    head: Option<(u64, Instant)>,
    /// The head's timer, set only once a read has to wait in the middle of a head: most
    /// heads arrive whole in one read and need none. Disarmed with its head.
    timer: crate::limits::Alarm,
    /// How long writes have been waiting for the client to take bytes.
    send: crate::limits::Gap,
    _place: Place,
}

/// The first bytes of a cleartext connection and what they show.
struct Sniffed {
    proto: Proto,
    bytes: Bytes,
    /// When the first byte came: an HTTP/1.1 head's timer started then.
    first_byte: Instant,
}

// === impl Listeners ===

impl Listeners {
    /// Binds the addresses of the configuration: the proxy's once per thread when the threads
    /// are per-core ([`bind_proxy`]).
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let threads = match config.server.scheduler {
            Scheduler::PerCore => crate::runtime::threads(config.server.threads)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            Scheduler::WorkStealing => 1,
        };
        // A bind error says which key's address it was.
        let named = |key: &'static str, addr: SocketAddr| {
            move |e: io::Error| io::Error::new(e.kind(), format!("{key} {addr}: {e}"))
        };
        let listen = config.server.listen;
        let (proxy, per_core) = bind_proxy(listen, threads)
            .await
            .map_err(named("server.listen", listen))?;
        let admin_listen = config.server.admin_listen;
        let admin = TcpListener::bind(admin_listen)
            .await
            .map_err(named("server.admin_listen", admin_listen))?;
        Ok(Listeners {
            proxy,
            per_core,
            admin,
        })
    }

    /// Binds both on `127.0.0.1:0`, the proxy for one thread (tests).
    pub async fn ephemeral() -> std::io::Result<Self> {
        Listeners::ephemeral_per_core(1).await
    }

    /// Binds both on `127.0.0.1:0`, the proxy for `threads` per-core threads (tests).
    pub async fn ephemeral_per_core(threads: usize) -> std::io::Result<Self> {
        let (proxy, per_core) = bind_proxy(([127, 0, 0, 1], 0).into(), threads).await?;
        Ok(Listeners {
            proxy,
            per_core,
            admin: TcpListener::bind("127.0.0.1:0").await?,
        })
    }
}

/// Binds the proxy's listening sockets for `threads` per-core threads: one socket for one
/// thread, else one each on the same address with `SO_REUSEPORT`, so that the kernel spreads
/// new connections over the threads (by a hash of each connection's addresses). The first is
/// registered with the calling runtime; the others are left for [`App::start`] to hand to the
/// worker threads. Port 0 gives them all the one port the kernel chose for the first.
///
/// Where the kernel does not spread connections over such sockets (outside Linux), one socket
/// is bound, and one thread serves the proxy.
pub async fn bind_proxy(
    addr: SocketAddr,
    threads: usize,
) -> io::Result<(TcpListener, Vec<std::net::TcpListener>)> {
    if threads <= 1 || !cfg!(target_os = "linux") {
        return Ok((TcpListener::bind(addr).await?, Vec::new()));
    }
    if addr.port() != 0 {
        // `SO_REUSEPORT` lets any socket of this user share a port whose sockets all set it:
        // a second gateway started by mistake on this address would silently take a share of
        // the connections. A plain bind first fails, as a bind without it would, when anything
        // listens on the port already.
        let probe = socket_for(addr)?;
        probe.set_reuseaddr(true)?;
        probe.bind(addr)?;
    }
    let first = shared_listener(addr)?;
    let addr = first.local_addr()?;
    let mut rest = Vec::with_capacity(threads - 1);
    for _ in 1..threads {
        rest.push(shared_listener(addr)?.into_std()?);
    }
    Ok((first, rest))
}

fn socket_for(addr: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
    if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
}

/// A socket listening on `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`, as tokio sets on the
/// listeners it binds, so that a restart is not refused for its old connections' `TIME_WAIT`).
fn shared_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuseaddr(true)?;
    #[cfg(target_os = "linux")]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

// === impl App ===

impl App {
    /// Starts the gateway on the given listeners: JWKS fetches begin at once, `/readyz` turns
    /// 200 when every issuer has keys. With `[server.tls]`, the certificate, key and client CA
    /// are read first; an unreadable or unusable file is an error naming it.
    pub fn start(config: &Config, listeners: Listeners) -> anyhow::Result<App> {
        let acceptor = match &config.server.tls {
            Some(t) => Some(TlsAcceptor::new(t).map_err(anyhow::Error::msg)?),
            None => None,
        };
        // Before the gateway: its upstream pools keep an idle stack per per-core runtime.
        let workers = (1..=listeners.per_core.len())
            .map(crate::runtime::Worker::start)
            .collect::<io::Result<Vec<_>>>()?;
        let metrics = Metrics::new()?;
        let gateway = Gateway::new(config, metrics)?;
        gateway.start();
        let proxy_addr = listeners.proxy.local_addr()?;
        let admin_addr = listeners.admin.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let draining = Arc::new(AtomicBool::new(false));
        let grace = config.server.shutdown_grace;
        let tls_reloader = TlsReloader::new(acceptor.clone(), gateway.metrics().clone());
        if let Some(cfg) = &config.server.tls {
            tls_reloader.publish_expiry(cfg);
        }
        let tls = acceptor.is_some();

        let gw = gateway.clone();
        let limits = Limits::proxy(&config.server);
        let shared = Arc::new(Shared::new(limits, acceptor, move |req, conn| {
            // The pipeline's future is several kilobytes: boxed, hyper's dispatcher and the
            // connection's wrappers move a pointer instead of copying it at every step.
            Box::pin(gw.clone().handle(req, conn))
        }));
        // One count of places for all the threads' sockets: `max_connections` is the
        // listener's, however many threads accept.
        let places = Arc::new(Semaphore::new(limits.max_connections));
        let listener_metrics = gateway.metrics().listener("proxy");
        // Each registered with its worker's own reactor, so that its readiness wakes that
        // thread; all of them before any accepts, so that a failure leaves nothing running.
        let per_core = workers
            .iter()
            .zip(listeners.per_core)
            .map(|(worker, socket)| {
                let _on = worker.handle().enter();
                TcpListener::from_std(socket)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut tasks = vec![tokio::spawn(accept(
            listeners.proxy,
            (shared.clone(), places.clone()),
            Some(listener_metrics.clone()),
            rx.clone(),
            grace,
        ))];
        for (worker, listener) in workers.iter().zip(per_core) {
            tasks.push(worker.handle().spawn(accept(
                listener,
                (shared.clone(), places.clone()),
                Some(listener_metrics.clone()),
                rx.clone(),
                grace,
            )));
        }
        let admin_access = admin::AdminAccess::new(&config.server);
        if config.server.admin_token.is_none() && !admin_addr.ip().is_loopback() {
            tracing::warn!(%admin_addr, "the admin port listens beyond this host without server.admin_token_file: anyone who reaches it can list sessions and log grants out");
        }
        let admin_state =
            admin::Admin::new(gateway.clone(), draining.clone(), admin_access.clone());
        let (admin_shutdown, admin_rx) = watch::channel(false);
        tasks.push(tokio::spawn(serve_listener(
            listeners.admin,
            Limits::ADMIN,
            (None, Some(gateway.metrics().listener("admin"))),
            admin_rx,
            grace,
            move |req, _| {
                let a = admin_state.clone();
                async move { a.handle(req).await }
            },
        )));
        let runtime = tokio::runtime::Handle::current();
        let (threads, scheduler) = match runtime.runtime_flavor() {
            _ if !workers.is_empty() => (workers.len() + 1, "per-core"),
            tokio::runtime::RuntimeFlavor::CurrentThread => (1, "single-threaded"),
            _ => (runtime.metrics().num_workers(), "multi-threaded"),
        };
        tracing::info!(%proxy_addr, %admin_addr, tls, threads, scheduler, "tollgate listening");
        let tls = tls_reloader;
        Ok(App {
            proxy_addr,
            admin_addr,
            gateway,
            tls,
            admin_access,
            shutdown,
            admin_shutdown,
            draining,
            tasks,
            workers,
        })
    }

    /// Applies the `[server.tls]` of a reloaded configuration to the proxy listener: the
    /// certificate, key and client CA files are read again and used for new connections
    /// (established ones keep theirs). On an error the running certificate stays. TLS cannot be
    /// turned on or off without a restart. See [`TlsReloader::reload_tls`].
    pub fn reload_tls(&self, cfg: Option<&TlsConfig>) -> Result<(), String> {
        self.tls.reload_tls(cfg)
    }

    /// A handle for [`App::reload_tls`] that a reload task can keep.
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// The admin port's token rule, for a reload task to apply a new configuration's to.
    pub fn admin_access(&self) -> admin::AdminAccess {
        self.admin_access.clone()
    }

    /// Stops accepting, lets in-flight requests finish (up to `server.shutdown_grace`), then ends.
    pub async fn shutdown(mut self) {
        // From here /readyz answers 503, while the admin listener keeps serving.
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let admin = self.tasks.pop();
        for t in self.tasks {
            let _ = t.await;
        }
        // Requests are drained: give every licence seat back.
        self.gateway.shutdown_sessions(SESSION_LOGOUT_BOUND).await;
        // The last spans (the logouts' among them) go to the collector; the SDK's flush blocks.
        let telemetry = self.gateway.telemetry().clone();
        if telemetry.is_on() {
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        let _ = self.admin_shutdown.send(true);
        if let Some(t) = admin {
            let _ = t.await;
        }
        for worker in self.workers {
            worker.stop().await;
        }
    }
}

// === impl Limits ===

impl Limits {
    /// The admin listener's (and the demo servers') fixed limits; h2c is accepted there.
    pub(crate) const ADMIN: Limits = Limits {
        max_header_bytes: 64 << 10,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(60),
        max_connections: 1024,
        http2_cleartext: true,
        http2: Http2Limits {
            max_concurrent_streams: 100,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 256,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
        },
    };

    /// The proxy listener's limits, from `[server]`.
    pub(crate) fn proxy(server: &ServerConfig) -> Limits {
        Limits {
            max_header_bytes: server.max_header_bytes,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            send_timeout: server.send_timeout,
            max_connections: usize::try_from(server.max_connections).unwrap_or(usize::MAX),
            http2_cleartext: server.http2_cleartext,
            http2: server.http2,
        }
    }
}

// === impl Shared ===

impl<F> Shared<F> {
    fn new(limits: Limits, tls: Option<TlsAcceptor>, handler: F) -> Shared<F> {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // A longer head is answered 431 by hyper.
            .max_header_size(limits.max_header_bytes)
            // `Watched` times heads instead: hyper's timer also runs while a keep-alive
            // connection waits for its next request, which is `idle_timeout`'s business.
            .header_read_timeout(None);
        let h2 = limits.http2;
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // Also bounds a CONTINUATION flood: h2 allows about this size's worth of frames
            // for one header block, then answers GOAWAY (ENHANCE_YOUR_CALM).
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            // Set rather than left to hyper's and h2's defaults, which are not part of their
            // stability promises: each bounds what one client can make the gateway do.
            .max_concurrent_streams(h2.max_concurrent_streams)
            // Rapid reset (CVE-2023-44487): streams reset before they were taken up.
            .max_pending_accept_reset_streams(to_usize(h2.max_pending_accept_reset_streams))
            // Streams the gateway itself reset for the client's errors (refused streams, bad
            // headers): past this, GOAWAY.
            .max_local_error_reset_streams(to_usize(h2.max_local_error_reset_streams))
            .keep_alive_interval(h2.keep_alive_interval)
            .keep_alive_timeout(h2.keep_alive_timeout);
        Shared {
            limits,
            http1,
            http2,
            tls,
            handler,
        }
    }
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

// === impl Activity ===

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            last_end_ms: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            owed: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.owed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Since when the longest-owed HTTP/2 answer has waited for its body to be polled.
    fn oldest_owed(&self) -> Option<Instant> {
        self.owed().values().min().copied()
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let n = self.begun.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone(), n)
    }

    /// When the connection becomes idle for `idle`: `None` while a request is in flight.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::SeqCst));
        Some(self.epoch + last + idle)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // The end time first, so that whoever sees nothing in flight sees when it ended.
        a.last_end_ms.fetch_max(ms, Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

// === impl Tracked ===

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(id) = self.owed else {
            return Pin::new(&mut self.body).poll_frame(cx);
        };
        self.in_flight.0.owed().remove(&id);
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &poll {
            self.in_flight.0.owed().insert(id, Instant::now());
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(id) = self.owed {
            self.in_flight.0.owed().remove(&id);
        }
    }
}

// === impl Watched ===

impl<I> Watched<I> {
    fn new(
        io: I,
        activity: Arc<Activity>,
        proto: Proto,
        (head_timeout, send_timeout): (Duration, Duration),
        place: Place,
    ) -> Self {
        Watched {
            io,
            activity,
            head_timeout,
            proto,
            replay: Bytes::new(),
            head: None,
            timer: crate::limits::Alarm::default(),
            send: crate::limits::Gap::new(send_timeout),
            _place: place,
        }
    }

    /// A write (or flush) that `poll` attempted: progress resets the clock; a wait longer than
    /// `send_timeout` becomes an error, which ends the connection.
    fn sending<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut I>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        I: Unpin,
    {
        match poll(Pin::new(&mut self.io), cx) {
            Poll::Pending if self.send.stalled(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for longer than server.send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
            ready @ Poll::Ready(_) => {
                self.send.progressed();
                ready
            }
        }
    }

    /// Serves `sniffed.bytes` before reading on; they began the first HTTP/1.1 head.
    fn replaying(mut self, sniffed: Sniffed) -> Self {
        if self.proto == Proto::Http1 && !sniffed.bytes.is_empty() {
            let deadline = sniffed.first_byte + self.head_timeout;
            self.head = Some((0, deadline));
        }
        self.replay = sniffed.bytes;
        self
    }

    /// True when heads are timed: HTTP/1.1, not upgraded.
    fn times_heads(&self) -> bool {
        self.proto == Proto::Http1 && !self.activity.upgraded.load(Ordering::SeqCst)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if !this.times_heads() {
            this.head = None;
            this.timer.disarm();
            return poll;
        }
        let begun = this.activity.begun.load(Ordering::SeqCst);
        if matches!(&this.head, Some((at, _)) if *at != begun) {
            // A request began since the head's first byte: that head was complete.
            this.head = None;
            this.timer.disarm();
        }
        match &poll {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                // The first byte of a head: bytes while nothing is in flight.
                if this.head.is_none() && this.activity.in_flight.load(Ordering::SeqCst) == 0 {
                    this.head = Some((begun, Instant::now() + this.head_timeout));
                }
            }
            Poll::Pending => {
                if let Some((_, deadline)) = this.head {
                    if this.timer.rung(deadline, cx) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the request head did not arrive within server.header_read_timeout",
                        )));
                    }
                }
            }
            Poll::Ready(_) => {}
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().sending(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .sending(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().sending(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// === accept loops ===

/// An accept loop with the admin listener's fixed limits and no TLS, for the servers beside the
/// proxy listener: the admin listener, the demo's servers and the benchmark's fixtures, so that
/// none of them needs an accept loop of its own. It speaks HTTP/1.1 with upgrades, or HTTP/2 by
/// preface, and calls `handler` with each request and the client's address. When `shutdown`
/// turns true (or its sender is dropped, so keep the sender while serving) it stops accepting,
/// closes every connection gracefully, and returns once they have ended or `grace` has passed.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    serve_listener(
        listener,
        Limits::ADMIN,
        (None, None),
        shutdown,
        grace,
        move |req, conn: Conn| handler(req, conn.remote),
    )
    .await;
}

/// An accept loop with `limits`, speaking TLS when `tls` is set, counting its connections in
/// `metrics` when set. When `shutdown` turns true (or its sender goes away) it stops accepting,
/// closes every connection gracefully, and returns once they have ended or `grace` has passed.
pub(crate) async fn serve_listener<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    (tls, metrics): (Option<TlsAcceptor>, Option<ListenerMetrics>),
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    handler: F,
) where
    F: Fn(Request<Incoming>, Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let shared = Arc::new(Shared::new(limits, tls, handler));
    let places = Arc::new(Semaphore::new(limits.max_connections));
    accept(listener, (shared, places), metrics, shutdown, grace).await;
}

/// The accept loop of one listening socket: each accepted connection takes a place among
/// `places`, then gets its own task on this thread's runtime. Returns as [`serve_listener`]
/// does.
async fn accept<F, Fut>(
    listener: TcpListener,
    (shared, places): (Arc<Shared<F>>, Arc<Semaphore>),
    metrics: Option<ListenerMetrics>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) where
    F: Fn(Request<Incoming>, Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // Every connection task holds a receiver: `closed()` means they have all ended.
    let (live, _) = watch::channel(());
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Then a place: over `max_connections` this connection waits here, unserved, and the
        // next clients in the listen backlog, instead of being accepted and dropped. Accepted
        // first, so that a thread waiting for a connection holds no place: with several
        // threads accepting, places held that way would leave fewer for the connections.
        let (place, waited) = match places.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(_) => tokio::select! {
                place = places.clone().acquire_owned() => match place {
                    Ok(p) => (p, true),
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let open = metrics.as_ref().map(|m| m.accepted(waited));
        tokio::spawn(connection(
            shared.clone(),
            stream,
            remote,
            (place, open),
            shutdown.clone(),
            live.subscribe(),
        ));
    }
    drop(listener);
    tokio::select! {
        () = live.closed() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace elapsed with requests still in flight");
        }
    }
}

/// One accepted connection: the TLS handshake when the listener has TLS (bounded by
/// `header_read_timeout`; a failure is logged at debug and only ends this connection), then HTTP.
async fn connection<F, Fut>(
    shared: Arc<Shared<F>>,
    stream: TcpStream,
    remote: SocketAddr,
    place: Place,
    mut shutdown: watch::Receiver<bool>,
    _live: watch::Receiver<()>,
) where
    F: Fn(Request<Incoming>, Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let Some(acceptor) = &shared.tls else {
        let conn = Conn { remote, tls: false };
        if !shared.limits.http2_cleartext {
            let sniffed = Sniffed {
                proto: Proto::Http1,
                bytes: Bytes::new(),
                first_byte: Instant::now(),
            };
            return http(shared, stream, sniffed, conn, place, shutdown).await;
        }
        let mut stream = stream;
        let sniffed = tokio::select! {
            s = sniff(&mut stream, &shared.limits) => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, %remote, "connection closed before its first request");
                    return;
                }
            },
            _ = shutdown.wait_for(|&v| v) => return,
        };
        return http(shared, stream, sniffed, conn, place, shutdown).await;
    };
    let handshake =
        tokio::time::timeout(shared.limits.header_read_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %remote, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                return;
            }
        },
        _ = shutdown.wait_for(|&v| v) => return,
    };
    let proto = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Proto::Http2,
        _ => Proto::Http1,
    };
    let sniffed = Sniffed {
        proto,
        bytes: Bytes::new(),
        first_byte: Instant::now(),
    };
    let conn = Conn { remote, tls: true };
    http(shared, stream, sniffed, conn, place, shutdown).await;
}

/// Reads the first bytes of a cleartext connection until they are the HTTP/2 preface or cannot
/// be: the first byte within `idle_timeout`, the rest within `header_read_timeout`.
async fn sniff(stream: &mut TcpStream, limits: &Limits) -> io::Result<Sniffed> {
    let mut bytes = Vec::with_capacity(H2_PREFACE.len());
    let mut first_byte = None;
    while bytes.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&bytes) {
        let deadline = match first_byte {
            None => Instant::now() + limits.idle_timeout,
            Some(t) => t + limits.header_read_timeout,
        };
        let mut chunk = [0u8; 24];
        let want = H2_PREFACE.len() - bytes.len();
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        first_byte.get_or_insert_with(Instant::now);
        bytes.extend_from_slice(&chunk[..n]);
    }
    Ok(Sniffed {
        proto: if bytes == H2_PREFACE {
            Proto::Http2
        } else {
            Proto::Http1
        },
        bytes: Bytes::from(bytes),
        first_byte: first_byte.unwrap_or_else(Instant::now),
    })
}

/// Serves HTTP on one connection until it ends, closing it gracefully when it has been idle
/// for `idle_timeout` or when shutdown starts.
async fn http<I, F, Fut>(
    shared: Arc<Shared<F>>,
    io: I,
    sniffed: Sniffed,
    conn: Conn,
    place: Place,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let limits = shared.limits;
    let activity = Arc::new(Activity::new());
    let proto = sniffed.proto;
    let io = Watched::new(
        io,
        activity.clone(),
        proto,
        (limits.header_read_timeout, limits.send_timeout),
        place,
    )
    .replaying(sniffed);
    let io = TokioIo::new(io);
    let requests = activity.clone();
    let handler = shared.clone();
    let svc = service_fn(move |req| {
        let in_flight = requests.begin();
        let response = (handler.handler)(req, conn);
        async move {
            let response = response.await;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.0.upgraded.store(true, Ordering::SeqCst);
            }
            let owed = (proto == Proto::Http2).then(|| {
                in_flight.0.owed().insert(in_flight.1, Instant::now());
                in_flight.1
            });
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                owed,
                in_flight,
            }))
        }
    });
    let watch = Watch {
        activity: &activity,
        idle: limits.idle_timeout,
        send: (proto == Proto::Http2).then_some(limits.send_timeout),
        shutdown,
        remote: conn.remote,
    };
    match proto {
        Proto::Http1 => {
            let served = shared.http1.serve_connection(io, svc).with_upgrades();
            watch.run(served, |c| c.graceful_shutdown()).await;
        }
        Proto::Http2 => {
            let served = shared.http2.serve_connection(io, svc);
            watch.run(served, |c| c.graceful_shutdown()).await;
        }
    }
}

/// What ends a served connection besides the client: idleness and shutdown.
struct Watch<'a> {
    activity: &'a Activity,
    idle: Duration,
    /// HTTP/2: how long an answer may wait for the client to open its window.
    send: Option<Duration>,
    shutdown: watch::Receiver<bool>,
    remote: SocketAddr,
}

impl Watch<'_> {
    /// Drives `served` to its end, calling `graceful` (once) when the connection has had
    /// nothing in flight for `idle`, or when shutdown starts. A graceful close that has not
    /// ended after another `idle` with nothing in flight is cut: HTTP/2's close waits for the
    /// client to answer a PING, and a client that floods frames without answering (or just
    /// never answers) would otherwise keep the connection forever.
    async fn run<C>(mut self, served: C, graceful: impl Fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), hyper::Error>>,
    {
        tokio::pin!(served);
        let mut check = Instant::now() + self.send.map_or(self.idle, |send| send.min(self.idle));
        // When the graceful close began.
        let mut closing: Option<Instant> = None;
        // An HTTP/2 answer outwaited send_timeout: the GOAWAY is queued, the streams are cut.
        let mut stalled = false;
        loop {
            if stalled {
                // Long enough to write the GOAWAY; the streams are not waited for.
                let _ = tokio::time::timeout(Duration::from_millis(200), served.as_mut()).await;
                return;
            }
            tokio::select! {
                r = served.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, remote = %self.remote, "connection ended with an error");
                    }
                    return;
                }
                _ = self.shutdown.wait_for(|&v| v), if closing.is_none() => {
                    graceful(served.as_mut());
                    closing = Some(Instant::now());
                }
                () = tokio::time::sleep_until(check) => {
                    // Deadlines only move later, so waking at the earliest possible one and
                    // looking again is exact without waking the task on every request.
                    let now = Instant::now();
                    if let Some(send) = self.send {
                        if self.activity.oldest_owed().is_some_and(|since| since + send <= now) {
                            tracing::debug!(remote = %self.remote, "an answer waited longer than server.send_timeout for the client's flow-control window; connection closed");
                            graceful(served.as_mut());
                            stalled = true;
                        }
                    }
                    match self.activity.idle_deadline(self.idle) {
                        Some(deadline) if deadline <= now => match closing {
                            None => {
                                graceful(served.as_mut());
                                closing = Some(now);
                                check = now + self.idle;
                            }
                            Some(began) if began + self.idle <= now => {
                                tracing::debug!(remote = %self.remote, "graceful close unfinished; connection dropped");
                                return;
                            }
                            Some(began) => check = began + self.idle,
                        },
                        Some(deadline) => check = deadline,
                        None => check = now + self.idle,
                    }
                    if let Some(send) = self.send {
                        // An answer owed now is overdue at the earliest a `send` from now.
                        let owed = self.activity.oldest_owed().map_or(now + send, |o| o + send);
                        check = check.min(owed);
                    }
                }
            }
        }
    }
}
