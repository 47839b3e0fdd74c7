//! The gateway: one request pipeline of named steps, over a snapshot of the configuration.
//!
//! ```text
//!  client request
//!       │
//!  framing    two Hosts, an authority that is not the Host, … ───────▶ 400 invalid_request
//!  normalize  the path as the routes see it ─────────────────────────▶ 400 invalid_request
//!  find       the route (host, method, path) ────────────────────────▶ 404
//!       │ Public ─────────────────────────────────────────────┐
//!  extract    the bearer token (RFC 6750 §2.1) ─── missing ───────────▶ 401 Bearer realm
//!       │                                     └─── malformed ─────────▶ 400 invalid_request
//!  verify     cache → iss → JWKS / introspection ─────────────────────▶ 401 invalid_token / 503
//!  authorize  issuer, scopes, claims → Permit ────────────────────────▶ 403 insufficient_scope
//!       │ ◀───────────────────────────────────────────────────┘
//!  limit      max_body: declared length refused, streamed body capped ▶ 413
//!             body_read_timeout: a client silent mid-body ───────────▶ 408
//!  lease      session upstreams: the session layer's first step ─────▶ its own answer (login,
//!       │                                                               logout) / 429 / 502 / 503
//!  prepare    path, hop-by-hop, identity and forwarded headers; the lease's jar as Cookie
//!  send       to the upstream (latency recorded here, once) ──────────▶ 502 / 504 / 503
//!  settle     session upstreams: expired? re-login and replay once ───▶ 502 / 503 / 401
//!  finish     hop-by-hop, the lease's cookie edits, error bodies sanitized, 101 joined
//!       │
//!  record     metrics: every outcome passes here, once; the access-log line is written when
//!             the answer's body ends (bytes in and out, the whole duration)
//! ```
//!
//! Every error is a typed value that leaves through one table ([`crate::error`]); nothing is
//! sent upstream for a refused request. The wiring (what a configuration becomes, and what a
//! reload swaps) lives apart in [`wiring`].
//!
//! | module | concern |
//! |---|---|
//! | `mod.rs` | the [`Gateway`] handle and its public face |
//! | `pipeline` | [`Gateway::handle`] and the steps above |
//! | `access` | the access-log line, written at the end of the answer's body |
//! | [`wiring`] | the snapshot of a configuration: build, start, apply (reload), shutdown |

mod access;
pub(crate) mod pipeline;
pub mod wiring;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::Pool;
pub use wiring::BuildError;
use wiring::Wiring;

/// The gateway: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Gateway {
    wiring: Arc<Wiring>,
}

/// The client connection a request arrived on.
///
/// Aligned to 8 bytes, like the request beside it in the pipeline's futures: an argument of an
/// `async fn` aligned to 4 is laid out at the end of the future's state, so creating or boxing
/// the future (before its first poll) copies the whole state, kilobytes, instead of the
/// arguments at its start.
#[derive(Debug, Clone, Copy)]
#[repr(align(8))]
pub struct Conn {
    pub remote: SocketAddr,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl Gateway {
    /// Builds the gateway from a frozen configuration. Does not fetch anything yet; call
    /// [`Gateway::start`] inside a Tokio runtime.
    pub fn new(config: &Config, metrics: Metrics) -> Result<Self, BuildError> {
        Ok(Gateway {
            wiring: Arc::new(Wiring::new(config, metrics)?),
        })
    }

    /// Starts the background work (key refresh, session upkeep, the fleet's heartbeat).
    pub fn start(&self) {
        self.wiring.start();
    }

    /// Applies a new configuration (a reload); see [`Wiring::apply`].
    pub async fn apply(&self, config: &Config) -> Result<(), BuildError> {
        self.wiring.apply(config).await
    }

    /// The session pools of the current configuration.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.wiring.pools()
    }

    /// Graceful shutdown of the session layer, within `bound`; see
    /// [`Wiring::shutdown_sessions`].
    pub async fn shutdown_sessions(&self, bound: Duration) {
        self.wiring.shutdown_sessions(bound).await;
    }

    /// `tollgate check --online`: each issuer's key set fetched, or introspection endpoint
    /// called, once; see [`crate::auth::Verifier::probe`].
    pub async fn probe_issuers(&self) -> Vec<(String, Result<String, String>)> {
        self.wiring.current().verifier.probe().await
    }

    /// `tollgate check --online --login-upstream`: one login and its logout per session upstream
    /// with credentials (`config` is the configuration this gateway was built from). Uses a
    /// licence seat for a moment.
    pub async fn probe_upstream_logins(
        &self,
        config: &Config,
    ) -> Vec<(String, Result<String, String>)> {
        use crate::session::login::{self, LoginOutcome};
        let snapshot = self.wiring.current();
        let mut out = Vec::new();
        for (upstream, cfg) in snapshot.upstreams.iter().zip(config.upstreams.iter()) {
            let Some(session) = &cfg.session else {
                continue;
            };
            let what = format!("upstream {}: login and logout", cfg.id);
            let Some(creds) = &session.credentials else {
                out.push((
                    what,
                    Ok("skipped: passive mode has no credentials".to_owned()),
                ));
                continue;
            };
            let outcome = match login::login(upstream, session, creds).await {
                LoginOutcome::Ok(jar) => {
                    if login::logout(upstream, session, &jar).await {
                        Ok("logged in and out".to_owned())
                    } else {
                        Err("logged in, but the logout failed: the seat stays taken until the upstream's idle timeout".to_owned())
                    }
                }
                LoginOutcome::Error(e) => {
                    Err(format!("login failed: {}", crate::net::redact_urls(&e)))
                }
                other => Err(format!("login refused: {}", other.label())),
            };
            out.push((what, outcome));
        }
        out
    }

    /// Ready when every issuer can validate tokens (key set loaded, introspection endpoint known).
    pub fn is_ready(&self) -> bool {
        self.wiring.is_ready()
    }

    pub fn metrics(&self) -> &Metrics {
        self.wiring.metrics()
    }

    /// Tracing (off unless `[telemetry]` or the `OTEL_*` variables name a collector).
    pub fn telemetry(&self) -> &crate::telemetry::Telemetry {
        self.wiring.telemetry()
    }

    /// Publishes gauges that are sampled rather than counted (called at each scrape).
    pub async fn sample_gauges(&self) {
        self.wiring.sample_gauges().await;
    }
}
