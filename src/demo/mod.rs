//! `tollgate demo`: a demo issuer, a demo legacy API and the gateway in front of it, in one
//! process, on loopback. Prints ready-to-paste curl commands.
//!
//! The default ports are fixed so that the README's commands work as printed; a port that is
//! already taken is replaced by a free one, and the printed commands say which.

pub mod issuer;
pub mod keys;
pub mod legacy;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::server::{App, Listeners};

/// Where the demo's four servers listen.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub issuer_listen: SocketAddr,
    pub legacy_listen: SocketAddr,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            issuer_listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            legacy_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
        }
    }
}

/// The running demo.
pub struct Demo {
    pub app: App,
    pub issuer_url: String,
    pub legacy_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Demo {
    /// Starts everything and waits (up to 10 s) until the gateway has the issuer's keys.
    pub async fn start(opts: &DemoOptions) -> anyhow::Result<Demo> {
        let issuer_l = bind(opts.issuer_listen, "issuer").await?;
        let legacy_l = bind(opts.legacy_listen, "legacy API").await?;
        // The gateway runs on as many per-core threads as `tollgate run` would by default.
        let threads = crate::runtime::threads(None).map_err(anyhow::Error::msg)?;
        let (proxy_l, per_core) = bind_proxy(opts.listen, threads).await?;
        let admin_l = bind(opts.admin_listen, "admin").await?;
        let issuer_url = format!("http://{}", issuer_l.local_addr()?);
        let legacy_addr = legacy_l.local_addr()?;

        let issuer = issuer::DemoIssuer::new(&issuer_url, Duration::from_secs(300))
            .map_err(anyhow::Error::msg)?;
        let tasks = vec![issuer.spawn(issuer_l), legacy::spawn(legacy_l)];

        let config = crate::config::from_toml_str(&demo_config(
            &issuer_url,
            legacy_addr,
            proxy_l.local_addr()?,
            admin_l.local_addr()?,
        ))
        .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
        let app = App::start(
            &config,
            Listeners {
                proxy: proxy_l,
                per_core,
                admin: admin_l,
            },
        )?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !app.gateway.is_ready() {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the demo issuer's keys did not load within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Demo {
            app,
            issuer_url,
            legacy_addr,
            tasks,
        })
    }

    /// The instructions printed by `tollgate demo`.
    pub fn instructions(&self) -> String {
        let gw = format!("http://{}", self.app.proxy_addr);
        let admin = format!("http://{}", self.app.admin_addr);
        let iss = &self.issuer_url;
        let entity = format!("{gw}/entity/Default/24.200.001/Customer");
        format!(
            r#"tollgate demo is running.
  gateway    {gw}
  admin      {admin}   (/metrics, /healthz, /readyz)
  issuer     {iss}   (users: reader/reader with scope api; demo/demo with api erp:write reports)
  legacy API http://{legacy}

1. Get an access token (password grant) for the read-only user:
   TOKEN=$(curl -s -d grant_type=password -d username=reader -d password=reader -d client_id=demo-client {iss}/token | sed -E 's/.*"access_token":"([^"]+)".*/\1/')

2. Call the legacy API through the gateway (200). tollgate logs in to the legacy API for the
   token's grant (Tollgate-Session: new) and reuses that session for every later call:
   curl -i -H "Authorization: Bearer $TOKEN" {entity}
   curl -s -H "Authorization: Bearer $TOKEN" {gw}/entity/Default/24.200.001/Echo

3. Without a token (401, WWW-Authenticate: Bearer realm="tollgate"):
   curl -i {entity}

4. Write with the read-only token (403, error="insufficient_scope", scope="api erp:write"):
   curl -i -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{{}}' {entity}

5. The upstream sessions (never a cookie value) and the metrics:
   curl -s {admin}/sessions
   curl -s {admin}/metrics | grep ^tollgate_

Press Ctrl-C to stop.
"#,
            legacy = self.legacy_addr,
        )
    }

    pub async fn shutdown(self) {
        self.app.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Binds `addr`, or a free port on the same address when it is taken.
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    or_free_port(addr, what, |a| async move {
        let l = TcpListener::bind(a).await?;
        let at = l.local_addr()?;
        Ok((l, at))
    })
    .await
}

/// The gateway's sockets ([`crate::server::bind_proxy`]) for `threads`, moved to a free port
/// as [`bind`] does when the port is taken.
async fn bind_proxy(
    addr: SocketAddr,
    threads: usize,
) -> anyhow::Result<(TcpListener, Vec<std::net::TcpListener>)> {
    or_free_port(addr, "gateway", |a| async move {
        let l = crate::server::bind_proxy(a, threads).await?;
        let at = l.0.local_addr()?;
        Ok((l, at))
    })
    .await
}

/// `bind(addr)`, or `bind` on port 0 of the same address when `addr` is taken (logged, with
/// the port it got); `bind` answers what it bound and where.
async fn or_free_port<T, F, Fut>(addr: SocketAddr, what: &str, bind: F) -> anyhow::Result<T>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(T, SocketAddr)>>,
{
    match bind(addr).await {
        Ok((l, _)) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let (l, now) = bind(SocketAddr::new(addr.ip(), 0)).await?;
            tracing::warn!(%addr, %now, "{what} port taken; using a free one");
            Ok(l)
        }
        Err(e) => Err(anyhow::anyhow!("{what} on {addr}: {e}")),
    }
}

/// The demo's configuration: the reference example (`config/tollgate.toml`), pointed at the demo
/// servers.
pub fn demo_config(
    issuer: &str,
    legacy: SocketAddr,
    listen: SocketAddr,
    admin: SocketAddr,
) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "{admin}"
realm = "tollgate"

[log]
level = "info"

[[issuer]]
id = "demo"
issuer = "{issuer}"
discovery = true
audiences = ["{aud}"]
algorithms = ["RS256"]
leeway = "30s"
jwks_refresh = "10m"
jwks_min_refresh = "30s"
require_typ = true

[[upstream]]
id = "erp"
url = "http://{legacy}"
connect_timeout = "2s"
timeout = "60s"

# The demo legacy API works like Acumatica: session cookies from a login, two licence seats.
[upstream.session]
mode = "by_scope"
max_upstream_sessions = 2
idle_ttl = "300s"
[upstream.session.credentials]
name = "admin"
password = "123"
tenant = "MyStore"
branch = "HQ"

[[route]]
id = "erp-read"
prefix = "/entity/Default/"
methods = ["GET", "HEAD"]
upstream = "erp"
scopes = ["api"]
[route.headers]
"X-Auth-Subject" = "sub"

[[route]]
id = "erp-write"
prefix = "/entity/Default/"
methods = ["PUT", "POST", "PATCH", "DELETE"]
upstream = "erp"
scopes = ["api", "erp:write"]

[[route]]
id = "health"
exact = "/health"
upstream = "erp"
auth = "none"

[[route]]
id = "reports"
prefix = "/reports/"
upstream = "erp"
any_scopes = ["reports", "admin"]
[route.claims]
tenant = ["MyStore"]
[route.headers]
"X-Auth-Subject" = "sub"
"X-Auth-Client" = "client_id"
"#,
        aud = issuer::AUDIENCE,
    )
}
