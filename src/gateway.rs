//! The request pipeline: one short function that calls named steps.
//!
//! ```text
//!  client request
//!       │
//!  normalize path ──────────────── bad path ─────────────▶ 400 invalid_request
//!       │
//!  routes.find(host, method, path) ── none ──────────────▶ 404
//!       │
//!  route.auth ── Public ─────────────────────────────┐
//!       │ Bearer                                      │
//!  bearer::extract ── missing ───────────────────────▶ 401 Bearer realm
//!       │          └─ malformed ─────────────────────▶ 400 invalid_request
//!  verifier.verify (cache → iss → JWKS → signature) ─▶ 401 invalid_token / 503 IdP
//!       │
//!  policy::authorize (issuer, scopes, claims) ───────▶ 403 insufficient_scope
//!       │ Permit                                      │
//!  proxy::prepare (path, headers, identity) ◀─────────┘
//!       │
//!  upstream.send ── refused ─────────────────────────▶ 502 / timeout ▶ 504
//!       │
//!  proxy::finish ──▶ response streamed to the client
//!       │
//!  record: metrics + one access-log line (every outcome passes here)
//! ```
//!
//! Nothing is sent upstream for a refused request, and the only place where per-request metrics
//! and the access log are written is [`Gateway::handle`]'s epilogue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use sha2::Digest as _;

use crate::auth::fetch::IdpClient;
use crate::auth::{bearer, AuthError, Verifier};
use crate::config::{Config, RedisConfig, StoreConfig, UpstreamConfig};
use crate::error::{Fault, GatewayError};
use crate::fleet::{Fleet, RedisHandle};
use crate::metrics::{Decision, Metrics};
use crate::policy::{self, matcher, RouteAuth, RouteTable};
use crate::proxy::{self, headers, ProxyError, Upstream};
use crate::session::store::{MemoryStore, SeatTable};
use crate::session::{self, Pool};
use crate::Body;

/// The part of the configuration a reload swaps as one value: routes, the upstreams they point
/// at (with their session pools) and the verifier of the issuers. In-flight requests keep the
/// snapshot they started with.
pub struct Snapshot {
    pub routes: Arc<RouteTable>,
    pub upstreams: Arc<[Arc<Upstream>]>,
    /// The session pool of each upstream that has `[upstream.session]`, by upstream index.
    pub pools: Arc<[Option<Arc<Pool>>]>,
    pub verifier: Arc<Verifier>,
    /// The configuration of each upstream (by index), to keep unchanged upstreams (and their
    /// live sessions) across a reload.
    upstream_configs: Arc<[UpstreamConfig]>,
    realm: Arc<str>,
    /// The bare challenge of a 401 without a token, built once.
    missing_challenge: HeaderValue,
    trust_forwarded: bool,
}

impl Snapshot {
    /// The session pool of the upstream with id `id`, if it has one.
    fn pool_of(&self, id: &str) -> Option<Arc<Pool>> {
        self.upstream_configs
            .iter()
            .position(|u| &*u.id == id)
            .and_then(|i| self.pools[i].clone())
    }
}

/// The gateway: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    snapshot: ArcSwap<Snapshot>,
    metrics: Metrics,
    client: IdpClient,
    /// The fleet (a shared store), fixed for the life of the process (changing it needs a
    /// restart).
    fleet: Option<(Arc<Fleet>, RedisConfig)>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// The seats of each upstream with the memory store, by upstream id: kept across reloads so
    /// that a pool being retired and the one replacing it count against one cap.
    seats: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<SeatTable>>>,
}

/// The client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub remote: SocketAddr,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

/// What the epilogue needs to know about one request.
#[derive(Debug, Default)]
struct RequestCtx {
    route: Option<Arc<str>>,
    decision: Option<Decision>,
    upstream_status: Option<u16>,
}

/// True when two upstream configurations are the same, secrets included (their `Debug` hides
/// them, so they are compared apart).
fn same_upstream(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    let secrets = |u: &UpstreamConfig| {
        u.session.as_ref().map(|s| {
            (
                s.key.clone(),
                s.credentials.as_ref().map(|c| c.password.clone()),
            )
        })
    };
    format!("{a:?}") == format!("{b:?}") && secrets(a) == secrets(b)
}

impl Gateway {
    /// Builds the gateway from a frozen configuration. Does not fetch anything yet; call
    /// [`Gateway::start`] inside a Tokio runtime.
    pub fn new(config: &Config, metrics: Metrics) -> Result<Self, ProxyError> {
        let fleet = match &config.store {
            StoreConfig::Memory => None,
            StoreConfig::Redis(r) => {
                let handle = RedisHandle::new(r, metrics.clone())
                    .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
                Some((
                    Fleet::new(handle, &r.key_prefix, r.lease_ttl, metrics.clone()),
                    r.clone(),
                ))
            }
        };
        let inner = Inner {
            snapshot: ArcSwap::from_pointee(Snapshot {
                routes: Arc::new(RouteTable::default()),
                upstreams: Arc::new([]),
                pools: Arc::new([]),
                verifier: Arc::new(Verifier::new(&[], 1, &IdpClient::new(), &metrics, None)),
                upstream_configs: Arc::new([]),
                realm: Arc::from("tollgate"),
                missing_challenge: HeaderValue::from_static("Bearer"),
                trust_forwarded: false,
            }),
            metrics,
            client: IdpClient::new(),
            fleet,
            reloading: tokio::sync::Mutex::new(()),
            seats: std::sync::Mutex::default(),
        };
        let gateway = Gateway {
            inner: Arc::new(inner),
        };
        let snapshot = gateway.build(config, None)?;
        gateway.inner.snapshot.store(Arc::new(snapshot));
        Ok(gateway)
    }

    /// A snapshot of `config`, reusing the upstreams (and session pools) of `previous` whose
    /// configuration did not change.
    fn build(&self, config: &Config, previous: Option<&Snapshot>) -> Result<Snapshot, ProxyError> {
        let metrics = &self.inner.metrics;
        let shared: Option<Arc<dyn crate::auth::introspect::SharedAnswers>> = match &self
            .inner
            .fleet
        {
            Some((fleet, r)) if r.share_introspection => Some(Arc::new(
                crate::auth::shared::SharedIntrospection::new(fleet.redis().clone(), &r.key_prefix),
            )),
            _ => None,
        };
        let verifier = Arc::new(Verifier::with_previous(
            &config.issuers,
            config.server.token_cache_capacity,
            &self.inner.client,
            metrics,
            shared,
            previous.map(|p| &*p.verifier),
        ));
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        let mut pools = Vec::with_capacity(config.upstreams.len());
        for cfg in &config.upstreams {
            let kept = previous.and_then(|p| {
                p.upstream_configs
                    .iter()
                    .position(|old| old.id == cfg.id && same_upstream(old, cfg))
                    .map(|i| (p.upstreams[i].clone(), p.pools[i].clone()))
            });
            let (upstream, pool) = match kept {
                Some(k) => k,
                None => {
                    let upstream = Arc::new(Upstream::new(cfg)?);
                    let before = previous.and_then(|p| p.pool_of(&cfg.id));
                    let pool = cfg
                        .session
                        .as_ref()
                        .map(|s| self.pool(cfg, s, &upstream, before.as_deref()));
                    (upstream, pool)
                }
            };
            upstreams.push(upstream);
            pools.push(pool);
        }
        let realm = config.server.realm.clone();
        let missing_challenge = HeaderValue::from_str(&format!("Bearer realm=\"{realm}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        Ok(Snapshot {
            routes: config.routes.clone(),
            upstreams: upstreams.into(),
            pools: pools.into(),
            verifier,
            upstream_configs: config.upstreams.clone().into(),
            realm,
            missing_challenge,
            trust_forwarded: config.server.trust_forwarded_headers,
        })
    }

    /// The session pool of an upstream. The master key comes from `handle_key_file` (or, without
    /// one, is kept from the upstream's previous pool, else made at random for this process).
    /// A previous pool with the same profile hands its store over, so that its sessions go on.
    fn pool(
        &self,
        cfg: &UpstreamConfig,
        s: &crate::config::SessionConfig,
        upstream: &Arc<Upstream>,
        previous: Option<&Pool>,
    ) -> Arc<Pool> {
        let key: [u8; 32] = match (&s.key, previous) {
            (Some(k), _) => *k.0,
            (None, Some(p)) => *p.master(),
            (None, None) => {
                tracing::warn!(upstream = %cfg.id, "no handle_key_file: using a random key for this process; handles and grant keys change at every restart");
                rand::random()
            }
        };
        let profile = session::profile(cfg.url.as_str(), s, &key);
        let store: Arc<dyn session::store::SessionStore> = match previous {
            Some(p) if p.profile == profile => p.store(),
            _ => match &self.inner.fleet {
                None => {
                    let seats = self
                        .inner
                        .seats
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(cfg.id.clone())
                        .or_default()
                        .clone();
                    Arc::new(MemoryStore::with_seats(seats))
                }
                Some((fleet, r)) => Arc::new(session::redis::RedisStore::new(
                    fleet.clone(),
                    &session::redis::Namespace {
                        upstream: &cfg.id,
                        profile: &profile,
                        lease_ttl: r.lease_ttl,
                        idle_ttl: s.idle_ttl,
                        max_inflight: s.max_inflight_per_session,
                        seat_cap: s.max_upstream_sessions,
                        grant_cap: s.max_sessions_per_grant,
                    },
                    &key,
                )),
            },
        };
        Arc::new(Pool::new(
            upstream.clone(),
            s.clone(),
            &key,
            store,
            self.inner.metrics.clone(),
            self.inner.fleet.as_ref().map(|(f, _)| f.clone()),
            profile,
        ))
    }

    /// Starts the background work: every issuer's JWKS refresh and introspection discovery,
    /// every session pool's sweeper and upkeep, and (with a shared store) this replica's
    /// heartbeat in the fleet, announcing the profiles it serves.
    pub fn start(&self) {
        let now = crate::clock::unix_secs_f64();
        self.inner.metrics.config_loaded("startup", now);
        let snapshot = self.inner.snapshot.load_full();
        snapshot.verifier.spawn_background();
        for pool in snapshot.pools.iter().flatten() {
            if let Some((fleet, _)) = &self.inner.fleet {
                fleet.serve(&pool.upstream_id, &pool.profile);
            }
            pool.start();
        }
        if let Some((fleet, _)) = &self.inner.fleet {
            fleet.start();
        }
    }

    /// Applies a new configuration (a reload): new issuers' keys are fetched before the new
    /// routes go live (bounded by their fetch timeouts); unchanged upstreams keep their
    /// connections and sessions, and so do upstreams whose session profile (URL, credentials,
    /// paths) is unchanged. Then the whole snapshot is swapped at once; in-flight requests
    /// finish on the old one. A retired profile's sessions are logged out once nothing uses
    /// them, and, in a fleet, only when no live replica still serves that profile.
    pub async fn apply(&self, config: &Config) -> Result<(), ProxyError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let old = self.inner.snapshot.load_full();
        let new = self.build(config, Some(&old))?;
        new.verifier.prefetch().await;
        new.verifier.spawn_background();
        let kept: Vec<&Arc<Pool>> = new.pools.iter().flatten().collect();
        for pool in &kept {
            if old.pools.iter().flatten().any(|p| Arc::ptr_eq(p, pool)) {
                continue;
            }
            if let Some((fleet, _)) = &self.inner.fleet {
                fleet.serve_now(&pool.upstream_id, &pool.profile).await;
            }
            pool.start();
        }
        let retired: Vec<(Arc<Pool>, bool)> = old
            .pools
            .iter()
            .flatten()
            .filter(|p| !kept.iter().any(|k| Arc::ptr_eq(k, p)))
            .map(|p| {
                let handed_over = kept
                    .iter()
                    .any(|k| k.upstream_id == p.upstream_id && k.profile == p.profile);
                (p.clone(), handed_over)
            })
            .collect();
        self.inner.snapshot.store(Arc::new(new));
        for (pool, handed_over) in retired {
            let fleet = self.inner.fleet.as_ref().map(|(f, _)| f.clone());
            tokio::spawn(retire(pool, handed_over, fleet));
        }
        Ok(())
    }

    /// The session pools of the current configuration.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.inner
            .snapshot
            .load()
            .pools
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Graceful shutdown of the session layer, within `bound`. Alone (the memory store), or as
    /// the last live replica of a fleet, tollgate logs every session out. A replica that stops
    /// while others run leaves the sessions to them (a rolling restart costs no login and no
    /// logout): it only lets its running logins finish. If the store cannot be asked, the
    /// sessions are left too (the others, if any, still use them; the idle sweep or the
    /// upstream ends them otherwise).
    pub async fn shutdown_sessions(&self, bound: std::time::Duration) {
        let last = match &self.inner.fleet {
            None => true,
            Some((fleet, _)) => match fleet.leave().await {
                Ok(others) => {
                    tracing::info!(replica = fleet.id(), others, "left the fleet");
                    others == 0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the session store at shutdown: the sessions are left to the fleet");
                    false
                }
            },
        };
        for pool in self.pools() {
            if last {
                pool.shutdown(bound).await;
            } else {
                pool.leave(bound).await;
            }
        }
    }

    /// Ready when every issuer can validate tokens (key set loaded, introspection endpoint known).
    pub fn is_ready(&self) -> bool {
        self.inner.snapshot.load().verifier.is_ready()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Publishes gauges that are sampled rather than counted (called at each scrape).
    pub async fn sample_gauges(&self) {
        self.inner.snapshot.load().verifier.sample_gauges();
        if let Some((fleet, _)) = &self.inner.fleet {
            self.inner.metrics.fleet_reporter(fleet.is_reporter());
        }
        for pool in self.pools() {
            pool.sample_sessions().await;
        }
    }

    /// Handles one request end to end. Never fails: every error becomes its response here.
    pub async fn handle(&self, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let start = Instant::now();
        let method = req.method().clone();
        let request_id = headers::request_id(req.headers());
        let unread_body = req.version() < Version::HTTP_2 && has_body(&req);
        let mut ctx = RequestCtx::default();

        let mut resp = match self.process(req, conn, &request_id, &mut ctx).await {
            Ok(resp) => resp,
            Err(e) => {
                if ctx.decision.is_none() {
                    ctx.decision = e.decision();
                }
                log_error(&e, &request_id);
                let snapshot = self.inner.snapshot.load();
                let mut resp = e.into_response(&snapshot.realm, &snapshot.missing_challenge);
                if unread_body {
                    // The request body was never read: the connection cannot be reused safely.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        resp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
        self.record(&ctx, &method, &resp, start, &request_id);
        resp
    }

    /// The pipeline proper (see the module docs).
    async fn process(
        &self,
        req: Request<Incoming>,
        conn: Conn,
        request_id: &HeaderValue,
        ctx: &mut RequestCtx,
    ) -> Result<Response<Body>, GatewayError> {
        let (parts, body) = req.into_parts();
        let path = policy::normalize(parts.uri.path())?.into_owned();
        let snapshot = self.inner.snapshot.load_full();
        let host = request_host(&parts);
        let route = snapshot
            .routes
            .find(host.as_deref(), &parts.method, &path)
            .ok_or(GatewayError::NoRoute)?;
        ctx.route = Some(route.id.clone());

        let pool = snapshot.pools[route.upstream].clone();
        let mut token_digest = [0u8; 32];
        let permit = match &route.auth {
            RouteAuth::Public => {
                ctx.decision = Some(Decision::Public);
                None
            }
            RouteAuth::Bearer(requirement) => {
                let token = bearer::extract(&parts.headers).map_err(AuthError::from)?;
                if pool.is_some() {
                    // The `token` grant-key source names a session after the token itself.
                    token_digest = sha2::Sha256::digest(token.as_str().as_bytes()).into();
                }
                let principal = snapshot
                    .verifier
                    .verify(token, requirement.issuer.as_ref())
                    .await?;
                let permit =
                    policy::authorize(route, requirement, principal).map_err(|reason| {
                        GatewayError::Denied {
                            reason,
                            challenge: requirement.insufficient_scope_challenge.clone(),
                            route: route.id.clone(),
                        }
                    })?;
                ctx.decision = Some(Decision::Allowed);
                Some(permit)
            }
        };

        // Body limit: a declared length over it is refused before anything is forwarded; a
        // body of unknown length is cut off at the limit while it streams.
        crate::limits::check_declared(&parts.headers, route.max_body)?;
        let (body, exceeded) = crate::limits::Capped::new(body, route.max_body);
        let body: Body = body.boxed();

        let upstream = &snapshot.upstreams[route.upstream];
        let forward_ctx = proxy::Context {
            remote: conn.remote,
            proto: if conn.tls { "https" } else { "http" },
            trust_forwarded: snapshot.trust_forwarded,
            request_id,
            claims: permit.as_ref().map(|p| &p.principal.claims),
        };
        if let Some(pool) = &pool {
            let origin = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| format!("{}://{h}", forward_ctx.proto));
            let resp = session::forward(
                session::flow::Step {
                    pool,
                    upstream,
                    route,
                    principal: permit.as_ref().map(|p| &*p.principal),
                    token_digest,
                    path: &path,
                    ctx: &forward_ctx,
                    origin,
                    metrics: &self.inner.metrics,
                },
                parts,
                body,
            )
            .await
            .map_err(|e| too_large_or(e, &exceeded))?;
            ctx.upstream_status = Some(resp.status().as_u16());
            return Ok(resp);
        }
        // WebSocket routes: the upgrade survives the hop-by-hop clean-up, and a 101 joins the
        // two connections.
        let mut parts = parts;
        let upgrade = (route.websocket && crate::upgrade::is_upgrade(&parts.headers))
            .then(|| parts.headers.get(http::header::UPGRADE).cloned())
            .flatten()
            .map(|u| (u, parts.extensions.remove::<hyper::upgrade::OnUpgrade>()));
        let mut head = proxy::prepare_parts(parts, &path, route, upstream, &forward_ctx)?;
        if let Some((u, _)) = &upgrade {
            crate::upgrade::restore(&mut head.headers, u);
        }
        let upstream_req = Request::from_parts(head, body);
        let sent = Instant::now();
        let resp = upstream.send(upstream_req).await;
        self.inner
            .metrics
            .observe_upstream(&upstream.id, sent.elapsed().as_secs_f64());
        let mut resp = resp.map_err(|e| too_large_or(GatewayError::from(e), &exceeded))?;
        ctx.upstream_status = Some(resp.status().as_u16());
        if let (Some((_, Some(client))), http::StatusCode::SWITCHING_PROTOCOLS) =
            (upgrade, resp.status())
        {
            let upgrade_header = resp.headers().get(http::header::UPGRADE).cloned();
            crate::upgrade::join(client, hyper::upgrade::on(&mut resp));
            let mut resp = proxy::finish(resp);
            if let Some(u) = upgrade_header {
                crate::upgrade::restore(resp.headers_mut(), &u);
            }
            return Ok(resp);
        }
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // A protocol switch the gateway did not ask for cannot be relayed.
            return Err(ProxyError::Unreachable {
                upstream: upstream.id.to_string(),
                reason: "answered 101 to a request that was not an upgrade".to_owned(),
            }
            .into());
        }
        Ok(proxy::finish(resp))
    }

    /// The epilogue: metrics and the access-log line, for every outcome.
    fn record(
        &self,
        ctx: &RequestCtx,
        method: &Method,
        resp: &Response<Body>,
        start: Instant,
        request_id: &HeaderValue,
    ) {
        let elapsed = start.elapsed();
        let route = ctx.route.as_deref().unwrap_or("none");
        let status = resp.status().as_u16();
        self.inner.metrics.record_request(
            route,
            method,
            status,
            ctx.decision,
            elapsed.as_secs_f64(),
        );
        if tracing::enabled!(target: "tollgate::access", tracing::Level::INFO) {
            tracing::info!(
                target: "tollgate::access",
                route,
                method = method.as_str(),
                status,
                decision = ctx.decision.map_or("-", Decision::as_str),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                upstream_status = ctx.upstream_status,
                request_id = request_id.to_str().unwrap_or("-"),
                "request"
            );
        }
    }
}

/// Retires a pool that a reload replaced: its successor with the same profile keeps the
/// sessions (only the background work stops); otherwise they are logged out once nothing uses
/// them, and in a fleet only when no live replica still serves the profile.
async fn retire(pool: Arc<Pool>, handed_over: bool, fleet: Option<Arc<Fleet>>) {
    let bound = std::time::Duration::from_secs(30);
    let last = match &fleet {
        Some(f) => match f.retire(&pool.upstream_id, &pool.profile).await {
            Ok(others) => others == 0,
            Err(e) => {
                tracing::warn!(upstream = %pool.upstream_id, error = %e, "cannot reach the session store to retire a profile; its sessions are left to the idle sweep");
                false
            }
        },
        None => !handed_over,
    };
    if handed_over {
        tracing::info!(upstream = %pool.upstream_id, "upstream changed by the reload with the same session profile: its sessions go on");
        pool.stop();
    } else if last {
        tracing::info!(upstream = %pool.upstream_id, "upstream removed, or its session profile changed, by the reload: logging its sessions out");
        pool.shutdown(bound).await;
    } else {
        tracing::info!(upstream = %pool.upstream_id, "upstream's session profile retired here but still served by other replicas: its sessions stay");
        pool.leave(bound).await;
    }
}

/// A request whose streamed body went over its limit ends in 413, whatever the upstream call
/// made of the cut-off body.
fn too_large_or(e: GatewayError, exceeded: &std::sync::atomic::AtomicBool) -> GatewayError {
    if exceeded.load(std::sync::atomic::Ordering::SeqCst) {
        GatewayError::TooLarge(crate::limits::TooLarge)
    } else {
        e
    }
}

/// Client and auth faults are routine (DEBUG); IdP, upstream and internal ones need an operator.
fn log_error(e: &GatewayError, request_id: &HeaderValue) {
    let id = request_id.to_str().unwrap_or("-");
    match e.fault() {
        Fault::Client | Fault::Auth => {
            tracing::debug!(request_id = id, error = %e, "request refused")
        }
        Fault::Idp | Fault::Upstream => {
            tracing::warn!(request_id = id, error = %e, "request failed")
        }
        Fault::Internal => tracing::error!(request_id = id, error = %e, "request failed"),
    }
}

/// The host the request is for: the URI authority (HTTP/2, absolute-form) or the Host header,
/// lower-cased and without port.
fn request_host(parts: &http::request::Parts) -> Option<std::borrow::Cow<'_, str>> {
    let raw = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts.headers.get(header::HOST)?.to_str().ok()?,
    };
    Some(matcher::host_of(raw))
}

fn has_body(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}
