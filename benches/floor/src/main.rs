//! The forwarding floor: the least a reverse proxy built on hyper 1 (tollgate's HTTP stack)
//! spends on a request, measured by `benches/peers` as a row of its own (`hyper-floor`), pinned
//! alone to the gateway core like every gateway. Built as its own package (see its Cargo.toml)
//! with the versions of hyper and tokio that tollgate is built with, and tollgate's profile.
//!
//! ```text
//! hyper-floor LISTEN UPSTREAM
//! ```
//!
//! It does only what no proxy can skip: hyper's HTTP/1.1 server on a single-threaded runtime
//! (tollgate's on one CPU), the request passed as it came to hyper's HTTP/1.1 client, on
//! keep-alive connections from a stack (most recently used first, as tollgate's pool), the
//! answer streamed back. `TCP_NODELAY` both ways, as tollgate sets it. No header edits, no
//! timeouts, no metrics, no logging, no error answers beyond a bare 502. tollgate's public
//! row's CPU over this row's is what tollgate's own code costs a forwarded request.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize| -> anyhow::Result<SocketAddr> {
        let v = args
            .get(i)
            .context("usage: hyper-floor LISTEN UPSTREAM (two socket addresses)")?;
        v.parse().with_context(|| format!("{v}: not an address"))
    };
    let outcome = parse(0).and_then(|listen| {
        let upstream = parse(1)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(tokio::task::LocalSet::new().run_until(serve(listen, upstream)))
    });
    if let Err(e) = outcome {
        eprintln!("hyper-floor: {e:#}");
        std::process::exit(1);
    }
}

/// The idle upstream connections, most recently used last.
type Idle = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let idle: Idle = Rc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let idle = idle.clone();
        tokio::task::spawn_local(async move {
            let service =
                hyper::service::service_fn(move |req| forward(req, upstream, idle.clone()));
            // A client that goes away mid-request is no concern of the measurement.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    idle: Idle,
) -> Result<Response<Pooled>, Infallible> {
    let taken = idle.borrow_mut().pop().filter(SendRequest::is_ready);
    let conn = match taken {
        Some(conn) => Ok(conn),
        None => connect(upstream).await,
    };
    let answer = match conn {
        Ok(mut conn) => match conn.send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| Pooled::new(body, conn, idle))),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    Ok(answer.unwrap_or_else(|_: anyhow::Error| {
        let mut bad = Response::new(Pooled::empty());
        *bad.status_mut() = StatusCode::BAD_GATEWAY;
        bad
    }))
}

async fn connect(upstream: SocketAddr) -> anyhow::Result<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(driver);
    Ok(conn)
}

/// An answer's body that puts its connection back on the stack when it ends.
struct Pooled {
    inner: Option<Incoming>,
    back: Option<(SendRequest<Incoming>, Idle)>,
}

impl Pooled {
    fn new(inner: Incoming, conn: SendRequest<Incoming>, idle: Idle) -> Pooled {
        let mut body = Pooled {
            inner: Some(inner),
            back: Some((conn, idle)),
        };
        if body.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn empty() -> Pooled {
        Pooled {
            inner: None,
            back: None,
        }
    }

    fn give_back(&mut self) {
        let Some((mut conn, idle)) = self.back.take() else {
            return;
        };
        if conn.is_ready() {
            idle.borrow_mut().push(conn);
        } else if !conn.is_closed() {
            // The connection has not taken the answer's end in yet: back once it has, as
            // tollgate's pool does.
            tokio::task::spawn_local(async move {
                if conn.ready().await.is_ok() {
                    idle.borrow_mut().push(conn);
                }
            });
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.is_end_stream() {
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}
