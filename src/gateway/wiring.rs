//! The wiring: what a configuration becomes at startup and at each reload. A [`Snapshot`] holds
//! the routes, the upstreams with their session pools, the verifier of the issuers and the
//! prebuilt challenges; a reload builds a new one (keeping what did not change) and swaps it in
//! at once. The fleet, the IdP client and the memory store's seat tables live as long as the
//! process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::auth::fetch::IdpClient;
use crate::auth::introspect::SharedAnswers;
use crate::auth::{Kept, SubjectLogging, Verifier};
use crate::config::{
    Config, GrantSource, RedisConfig, SessionConfig, SessionMode, StoreConfig, UpstreamConfig,
};
use crate::error::Challenges;
use crate::fleet::{Fleet, RedisHandle, SharedIntrospection};
use crate::metadata::ResourceMetadata;
use crate::metrics::{Metrics, RouteSeries, UpstreamSeries};
use crate::policy::{Route, RouteAuth, RouteTable};
use crate::proxy::{self, Upstream};
use crate::session::redis::{Namespace, RedisStore};
use crate::session::store::{MemoryStore, SeatTable, SessionStore};
use crate::session::{self, Pool};
use crate::telemetry::Telemetry;

/// Why a configuration could not be put into service.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] proxy::SetupError),
    #[error("session store: {0}")]
    Store(String),
    #[error("{0}")]
    Telemetry(String),
}

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
    /// The `WWW-Authenticate` values of the realm, built once.
    pub challenges: Challenges,
    pub trust_forwarded: bool,
    /// `server.body_read_timeout`: the longest wait for the next piece of a request body.
    pub body_read_timeout: std::time::Duration,
    /// The RFC 9728 document, served before route choice.
    pub metadata: Option<Arc<ResourceMetadata>>,
    /// How the access log shows a token's subject (`log.subject`).
    pub subject_logging: SubjectLogging,
    /// Each route's metric series, in the route table's order.
    series: Arc<[Arc<RouteSeries>]>,
    /// Each upstream's metric series, by upstream index.
    pub upstream_series: Arc<[UpstreamSeries]>,
}

impl Snapshot {
    /// The metric series of `route`, one of this snapshot's routes.
    pub fn series_of(&self, route: &Route) -> Option<Arc<RouteSeries>> {
        let i = self.routes.iter().position(|r| std::ptr::eq(r, route))?;
        self.series.get(i).cloned()
    }

    /// The session pool of the upstream with id `id`, if it has one.
    fn pool_of(&self, id: &str) -> Option<Arc<Pool>> {
        self.upstream_configs
            .iter()
            .position(|u| &*u.id == id)
            .and_then(|i| self.pools[i].clone())
    }
}

/// What lives as long as the process, and the current snapshot.
pub struct Wiring {
    snapshot: ArcSwap<Snapshot>,
    parts: Parts,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// The parts every snapshot is built with.
struct Parts {
    metrics: Metrics,
    /// Tracing, fixed for the life of the process (changing `[telemetry]` needs a restart).
    telemetry: Telemetry,
    client: IdpClient,
    /// The fleet (a shared store), fixed for the life of the process (changing it needs a
    /// restart).
    fleet: Option<(Arc<Fleet>, RedisConfig)>,
    /// The seats of each upstream with the memory store, by upstream id: kept across reloads so
    /// that a pool being retired and the one replacing it count against one cap.
    seats: Mutex<HashMap<Arc<str>, Arc<SeatTable>>>,
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

impl Wiring {
    /// The wiring of a frozen configuration. Does not fetch anything yet; call
    /// [`Wiring::start`] inside a Tokio runtime.
    pub fn new(config: &Config, metrics: Metrics) -> Result<Self, BuildError> {
        let fleet = match &config.store {
            StoreConfig::Memory => None,
            StoreConfig::Redis(r) => {
                let handle = RedisHandle::new(r, metrics.clone())
                    .map_err(|e| BuildError::Store(e.to_string()))?;
                Some((
                    Fleet::new(handle, &r.key_prefix, r.lease_ttl, metrics.clone()),
                    r.clone(),
                ))
            }
        };
        // The exporter shares the IdP client's connection pool (and its root certificates).
        let client = IdpClient::new();
        let telemetry = Telemetry::new(config.telemetry.as_ref(), client.http())
            .map_err(BuildError::Telemetry)?;
        let parts = Parts {
            metrics,
            telemetry,
            client,
            fleet,
            seats: Mutex::default(),
        };
        let snapshot = parts.build(config, None)?;
        Ok(Wiring {
            snapshot: ArcSwap::from_pointee(snapshot),
            parts,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The snapshot requests start with (they keep it to their end).
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.parts.telemetry
    }

    /// Starts the background work: every issuer's JWKS refresh and introspection discovery,
    /// every session pool's sweeper and upkeep, and (with a shared store) this replica's
    /// heartbeat in the fleet, announcing the profiles it serves.
    pub fn start(&self) {
        self.parts
            .metrics
            .config_loaded("startup", crate::clock::unix_secs_f64());
        let snapshot = self.current();
        snapshot.verifier.spawn_background();
        for pool in snapshot.pools.iter().flatten() {
            if let Some(fleet) = self.parts.fleet() {
                fleet.serve(&pool.upstream_id, &pool.profile);
            }
            pool.start();
        }
        if let Some(fleet) = self.parts.fleet() {
            fleet.start();
        }
    }

    /// Applies a new configuration (a reload): new issuers' keys are fetched before the new
    /// routes go live (bounded by their fetch timeouts); unchanged upstreams keep their
    /// connections and sessions, and so do upstreams whose session profile (URL, credentials,
    /// paths) is unchanged. Then the whole snapshot is swapped at once; in-flight requests
    /// finish on the old one. A retired profile's sessions are logged out once nothing uses
    /// them, and, in a fleet, only when no live replica still serves that profile.
    pub async fn apply(&self, config: &Config) -> Result<(), BuildError> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.current();
        let new = self.parts.build(config, Some(&old))?;
        new.verifier.prefetch().await;
        new.verifier.spawn_background();
        let kept: Vec<&Arc<Pool>> = new.pools.iter().flatten().collect();
        for pool in &kept {
            if old.pools.iter().flatten().any(|p| Arc::ptr_eq(p, pool)) {
                continue;
            }
            if let Some(fleet) = self.parts.fleet() {
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
        self.snapshot.store(Arc::new(new));
        for (pool, handed_over) in retired {
            tokio::spawn(retire(pool, handed_over, self.parts.fleet().cloned()));
        }
        Ok(())
    }

    /// The session pools of the current configuration.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.snapshot
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
    pub async fn shutdown_sessions(&self, bound: Duration) {
        let last = match self.parts.fleet() {
            None => true,
            Some(fleet) => match fleet.leave().await {
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
        self.snapshot.load().verifier.is_ready()
    }

    /// Publishes gauges that are sampled rather than counted (called at each scrape).
    pub async fn sample_gauges(&self) {
        {
            // Dropped before the awaits below: a snapshot guard is not held across them.
            let snapshot = self.snapshot.load();
            snapshot.verifier.sample_gauges();
            for upstream in snapshot.upstreams.iter() {
                if let Some(n) = upstream.idle_connections() {
                    self.parts
                        .metrics
                        .upstream_connections_idle(&upstream.id, n);
                }
            }
        }
        if let Some(fleet) = self.parts.fleet() {
            self.parts.metrics.fleet_reporter(fleet.is_reporter());
        }
        for pool in self.pools() {
            pool.sample_sessions().await;
        }
    }
}

/// What of a principal this configuration reads: the scopes and claims its routes test or
/// forward, and what its session upstreams derive grants from. The verified-token cache keeps
/// no more (see [`Kept`]).
pub(crate) fn kept(config: &Config) -> Kept {
    let requirements = || {
        config.routes.iter().filter_map(|r| match &r.auth {
            RouteAuth::Bearer(req) => Some(req),
            RouteAuth::Public => None,
        })
    };
    let sessions: Vec<&SessionConfig> = config
        .upstreams
        .iter()
        .filter_map(|u| u.session.as_ref())
        .collect();
    let scopes = requirements()
        .flat_map(|req| req.all_scopes.iter().chain(req.any_scopes.iter()))
        .map(|s| &**s)
        .chain(
            sessions
                .iter()
                .filter(|s| s.mode == SessionMode::ByScope)
                .map(|s| s.concurrent_scope.as_str()),
        );
    let claims = requirements()
        .flat_map(|req| req.claims.iter().map(|(name, _)| &**name))
        // Step-up reads the user's authentication (policy::step_up).
        .chain(
            requirements()
                .filter(|req| req.step_up.is_some())
                .flat_map(|_| ["acr", "auth_time"]),
        )
        .chain(
            config
                .routes
                .iter()
                .flat_map(|r| r.identity_headers.iter().map(|(_, claim)| &**claim)),
        )
        .chain(sessions.iter().flat_map(|s| {
            let named = s.grant_key.iter().filter_map(|g| match g {
                GrantSource::Claim(name) => Some(name.as_str()),
                _ => None,
            });
            // `sid+client_id` reads `sid`; `token` reads `jti`.
            named
                .chain(["sid", "jti"])
                .chain(s.passive_login_name_claim.as_deref())
        }));
    // The access log is the only reader of a principal's subject tag. Without it (its level is
    // fixed at start), no new token pays for the tag's HMAC, and the cache keeps no subject.
    let logging = if tracing::enabled!(target: "tollgate::access", tracing::Level::INFO) {
        subject_logging(&config.log)
    } else {
        SubjectLogging::Omitted
    };
    Kept::new(scopes, claims, !sessions.is_empty()).with_logging(logging)
}

/// `log.subject` with its key (`log.subject_key_file`, else this process's random key).
fn subject_logging(log: &crate::config::LogConfig) -> SubjectLogging {
    use crate::config::SubjectLog;
    use aws_lc_rs::hmac;
    match log.subject {
        SubjectLog::Hashed => {
            let key: &[u8; 32] = match &log.subject_key {
                Some(k) => &k.0,
                None => crate::auth::process_key(),
            };
            SubjectLogging::Hashed(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, key)))
        }
        SubjectLog::Plain => SubjectLogging::Plain,
        SubjectLog::Omitted => SubjectLogging::Omitted,
    }
}

impl Parts {
    fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref().map(|(f, _)| f)
    }

    /// A snapshot of `config`, reusing the upstreams (and session pools) of `previous` whose
    /// configuration did not change.
    fn build(&self, config: &Config, previous: Option<&Snapshot>) -> Result<Snapshot, BuildError> {
        let shared: Option<Arc<dyn SharedAnswers>> = match &self.fleet {
            Some((fleet, r)) if r.share_introspection => Some(Arc::new(SharedIntrospection::new(
                fleet.redis().clone(),
                &r.key_prefix,
            ))),
            _ => None,
        };
        let verifier = Arc::new(Verifier::with_previous(
            &config.issuers,
            (config.server.token_cache_capacity, kept(config)),
            &self.client,
            &self.metrics,
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
                    let upstream = Arc::new(Upstream::with_metrics(cfg, &self.metrics)?);
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
        Ok(Snapshot {
            routes: config.routes.clone(),
            upstreams: upstreams.into(),
            pools: pools.into(),
            verifier,
            upstream_configs: config.upstreams.clone().into(),
            challenges: Challenges::with_head(&config.challenge_head()),
            trust_forwarded: config.server.trust_forwarded_headers,
            body_read_timeout: config.server.body_read_timeout,
            metadata: config.metadata.clone(),
            subject_logging: subject_logging(&config.log),
            series: config
                .routes
                .iter()
                .map(|r| Arc::new(self.metrics.route_series(&r.id)))
                .collect(),
            upstream_series: config
                .upstreams
                .iter()
                .map(|u| self.metrics.upstream_series(&u.id))
                .collect(),
        })
    }

    /// The session pool of an upstream. The master key comes from `handle_key_file` (or, without
    /// one, is kept from the upstream's previous pool, else made at random for this process).
    /// A previous pool with the same profile hands its store over, so that its sessions go on.
    fn pool(
        &self,
        cfg: &UpstreamConfig,
        s: &SessionConfig,
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
        let store: Arc<dyn SessionStore> = match previous {
            Some(p) if p.profile == profile => p.store(),
            _ => match &self.fleet {
                None => {
                    let seats = self
                        .seats
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(cfg.id.clone())
                        .or_default()
                        .clone();
                    Arc::new(MemoryStore::with_seats(seats))
                }
                Some((fleet, r)) => Arc::new(RedisStore::new(
                    fleet.clone(),
                    &Namespace {
                        upstream: &cfg.id,
                        profile: &profile,
                        lease_ttl: r.lease_ttl,
                        idle_ttl: s.idle_ttl,
                        max_inflight: s.max_inflight_per_session,
                        seat_cap: s.max_upstream_sessions,
                        grant_cap: s.max_sessions_per_grant,
                        linger: r.linger,
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
            self.metrics.clone(),
            self.fleet().cloned(),
            profile,
        ))
    }
}

/// Retires a pool that a reload replaced: its successor with the same profile keeps the
/// sessions (only the background work stops); otherwise they are logged out once nothing uses
/// them, and in a fleet only when no live replica still serves the profile.
async fn retire(pool: Arc<Pool>, handed_over: bool, fleet: Option<Arc<Fleet>>) {
    let bound = Duration::from_secs(30);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;

    const CONFIG: &str = r#"
[[issuer]]
id = "idp"
issuer = "https://idp.example"
jwks_uri = "https://idp.example/jwks"
audiences = ["api"]

[[upstream]]
id = "backend"
url = "http://127.0.0.1:1"

[[route]]
id = "api"
prefix = "/"
upstream = "backend"
scopes = ["api"]
"#;

    /// The subject as a `log.subject = "hashed"` access log would show it, for a principal kept
    /// under `CONFIG`.
    fn shown() -> Option<String> {
        let config = crate::config::from_toml_str(CONFIG).unwrap();
        let claims = serde_json::json!({"sub": "alice", "scope": "api"});
        let serde_json::Value::Object(claims) = claims else {
            unreachable!()
        };
        let p = kept(&config).keep(Principal::new("idp".into(), claims, u64::MAX));
        let hashed = SubjectLogging::Hashed(Arc::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &[7; 32],
        )));
        p.logged_subject(&hashed)
    }

    #[test]
    fn a_kept_principal_has_a_subject_tag_only_when_the_access_log_is_on() {
        let off = tracing::subscriber::NoSubscriber::default();
        let untagged = tracing::subscriber::with_default(off, shown);
        assert_eq!(untagged, None, "no access log: no tag, no HMAC");
        let on = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish();
        let tag = tracing::subscriber::with_default(on, shown);
        assert!(
            tag.is_some_and(|t| t.len() == 16),
            "access log on: the tag is kept"
        );
    }
}
