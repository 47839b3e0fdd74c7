//! Listeners and connections: the proxy listener and the separate admin listener, each an accept
//! loop serving HTTP/1.1 and HTTP/2 (hyper-util's auto builder), with graceful shutdown.
//!
//! Tests and the demo bind their own listeners (port 0) and pass them in through [`Listeners`], so
//! no port is ever probed and released.

pub mod admin;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::Body;

/// How long shutdown waits for the upstream logouts of every session.
const SESSION_LOGOUT_BOUND: Duration = Duration::from_secs(10);

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The two bound listeners.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses of the configuration.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let proxy = TcpListener::bind(config.server.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("server.listen {}: {e}", config.server.listen),
            )
        })?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("server.admin_listen {}: {e}", config.server.admin_listen),
                )
            })?;
        Ok(Listeners { proxy, admin })
    }

    /// Binds both on `127.0.0.1:0` (tests).
    pub async fn ephemeral() -> std::io::Result<Self> {
        Ok(Listeners {
            proxy: TcpListener::bind("127.0.0.1:0").await?,
            admin: TcpListener::bind("127.0.0.1:0").await?,
        })
    }
}

/// A running gateway.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Gateway,
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Starts the gateway on the given listeners: JWKS fetches begin at once, `/readyz` turns
    /// 200 when every issuer has keys.
    pub fn start(config: &Config, listeners: Listeners) -> anyhow::Result<App> {
        let metrics = Metrics::new()?;
        let gateway = Gateway::new(config, metrics)?;
        gateway.start();
        let proxy_addr = listeners.proxy.local_addr()?;
        let admin_addr = listeners.admin.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let draining = Arc::new(AtomicBool::new(false));
        let grace = config.server.shutdown_grace;

        let gw = gateway.clone();
        let proxy = tokio::spawn(serve(
            listeners.proxy,
            rx.clone(),
            grace,
            move |req, remote| {
                let gw = gw.clone();
                async move {
                    gw.handle(req, crate::gateway::Conn { remote, tls: false })
                        .await
                }
            },
        ));
        let admin_state = admin::Admin::new(gateway.clone(), draining.clone());
        let admin = tokio::spawn(serve(listeners.admin, rx, grace, move |req, _| {
            let a = admin_state.clone();
            async move { a.handle(req).await }
        }));
        tracing::info!(%proxy_addr, %admin_addr, "tollgate listening");
        Ok(App {
            proxy_addr,
            admin_addr,
            gateway,
            shutdown,
            draining,
            tasks: vec![proxy, admin],
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to `server.shutdown_grace`), then ends.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Requests are drained: give every licence seat back.
        self.gateway.shutdown_sessions(SESSION_LOGOUT_BOUND).await;
    }
}

/// One accept loop. Each connection is served by hyper-util's auto builder (HTTP/1.1 with
/// upgrades, or HTTP/2 by preface) and watched for graceful shutdown.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let h = handler.clone();
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req, remote).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %remote, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "shutdown grace elapsed with requests still in flight");
        }
    }
}
