//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (the process is alive) and
//! `/readyz` (configuration loaded and every issuer has a usable key set; 503 while draining).
//! Never served on the proxy port.
//!
//! With `server.admin_token_file`, everything but `/healthz` and `/readyz` (and `/metrics`
//! unless `server.admin_metrics_auth`) asks for `Authorization: Bearer <token>`: the session
//! table names grants, and `DELETE /sessions/{grant}` logs users out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};

use crate::config::ServerConfig;
use crate::gateway::Gateway;
use crate::{proxy, Body};

#[derive(Clone)]
pub struct Admin {
    gateway: Gateway,
    draining: Arc<AtomicBool>,
    access: AdminAccess,
}

/// Who may call the admin port's protected endpoints. Cheap to clone; a reload swaps the rule
/// ([`AdminAccess::apply`]), so a rotated token file takes effect without a restart.
#[derive(Clone)]
pub struct AdminAccess(Arc<ArcSwap<Rule>>);

struct Rule {
    /// SHA-256 of the token: compared digest to digest, so neither the token's bytes nor its
    /// length can be learnt from the comparison's timing.
    token: Option<[u8; 32]>,
    metrics: bool,
}

impl AdminAccess {
    pub fn new(server: &ServerConfig) -> Self {
        AdminAccess(Arc::new(ArcSwap::from_pointee(Rule::of(server))))
    }

    /// Takes the token and `admin_metrics_auth` of a reloaded configuration.
    pub fn apply(&self, server: &ServerConfig) {
        self.0.store(Arc::new(Rule::of(server)));
    }

    /// `path` may be served to a request with these headers.
    fn permits(&self, path: &str, headers: &HeaderMap) -> bool {
        let rule = self.0.load();
        let Some(expected) = &rule.token else {
            return true;
        };
        let open = matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && !rule.metrics);
        if open {
            return true;
        }
        let Ok(token) = crate::auth::bearer::extract(headers) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        aws_lc_rs::constant_time::verify_slices_are_equal(&given, expected).is_ok()
    }
}

impl Rule {
    fn of(server: &ServerConfig) -> Rule {
        Rule {
            token: server
                .admin_token
                .as_ref()
                .map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            metrics: server.admin_metrics_auth,
        }
    }
}

impl Admin {
    pub fn new(gateway: Gateway, draining: Arc<AtomicBool>, access: AdminAccess) -> Self {
        Admin {
            gateway,
            draining,
            access,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if !self.access.permits(path, req.headers()) {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "the admin token is missing or wrong\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
            return r;
        }
        if let Some(grant) = path.strip_prefix("/sessions/") {
            if req.method() != Method::DELETE {
                return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            }
            return self.logout_grant(grant).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match path {
            "/sessions" => {
                let mut sessions = Vec::new();
                for pool in self.gateway.pools() {
                    sessions.extend(pool.describe().await);
                }
                proxy::json_response(StatusCode::OK, &serde_json::json!({ "sessions": sessions }))
            }
            "/metrics" => {
                self.gateway.sample_gauges().await;
                let mut r = Response::new(proxy::full(self.gateway.metrics().render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::SeqCst) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.gateway.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "waiting for issuer keys\n")
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Admin {
    /// `DELETE /sessions/{grant}`: logs out every session of the grant (after their in-flight
    /// and queued requests). 200 with the count, 404 when the grant holds none, 409 when its
    /// sessions stayed in use for the whole wait (nothing was logged out).
    async fn logout_grant(&self, grant: &str) -> Response<Body> {
        let key = crate::session::grant::GrantKey(grant.into());
        let (mut done, mut busy) = (0, 0);
        for pool in self.gateway.pools() {
            let (d, b) = pool.logout(&key, None).await;
            done += d;
            busy += b;
        }
        // 404: the grant holds no session; 409: it does, but they stayed in use throughout.
        let status = match (done, busy) {
            (0, 0) => StatusCode::NOT_FOUND,
            (0, _) => StatusCode::CONFLICT,
            _ => StatusCode::OK,
        };
        proxy::json_response(
            status,
            &serde_json::json!({ "logged_out": done, "busy": busy }),
        )
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(proxy::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
