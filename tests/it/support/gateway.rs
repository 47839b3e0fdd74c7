//! The real gateway, started in-process on listeners bound to 127.0.0.1:0.

use std::time::Duration;

use tollgate::{App, Config, Listeners};

use super::metrics::Metrics;

pub struct TestGateway {
    pub app: Option<App>,
    pub base: String,
    pub admin: String,
}

impl TestGateway {
    /// Starts from TOML text; `listen` and `admin_listen` are ignored (ephemeral listeners are
    /// used). Waits until ready when `wait_ready`.
    pub async fn start(toml: &str, wait_ready: bool) -> TestGateway {
        let config: Config =
            tollgate::config::from_toml_str(toml).unwrap_or_else(|e| panic!("config: {e}"));
        Self::start_config(&config, wait_ready).await
    }

    /// Starts from a configuration already loaded (from a file, say).
    pub async fn start_config(config: &Config, wait_ready: bool) -> TestGateway {
        Self::start_on(config, Listeners::ephemeral().await.unwrap(), wait_ready).await
    }

    /// Starts on listeners the test bound first (a configuration that names the gateway's own
    /// address, such as a metadata resource, needs the port before it exists).
    pub async fn start_on(config: &Config, listeners: Listeners, wait_ready: bool) -> TestGateway {
        let app = App::start(config, listeners).unwrap();
        let gw = TestGateway {
            base: format!("http://{}", app.proxy_addr),
            admin: format!("http://{}", app.admin_addr),
            app: Some(app),
        };
        if wait_ready {
            let app = gw.app.as_ref().unwrap();
            super::eventually(
                "the gateway is ready",
                Duration::from_secs(10),
                || std::future::ready(app.gateway.is_ready()),
                |ready| *ready,
            )
            .await;
        }
        gw
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One scrape of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        super::metrics::scrape(&self.admin).await
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// The standard test configuration: one issuer (JWKS URL of `issuer`), one upstream, and the
/// four routes of `config/tollgate.toml` plus a catch-all public route under /public/.
pub fn config(issuer: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
realm = "tollgate"

[[issuer]]
id = "erp"
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["api"]
algorithms = ["RS256"]
leeway = "5s"
jwks_refresh = "10m"
jwks_min_refresh = "30s"
fetch_timeout = "2s"

[[upstream]]
id = "erp"
url = "{upstream}"
connect_timeout = "1s"
timeout = "2s"

[[route]]
id = "erp-read"
prefix = "/entity/Default/"
methods = ["GET", "HEAD"]
upstream = "erp"
scopes = ["api"]

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
id = "public"
prefix = "/public/"
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
{extra}
"#
    )
}
