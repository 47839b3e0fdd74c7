//! Forwarding: build the upstream request from an authorised one, send it on the upstream's pooled
//! client, and clean the response. Bodies are streamed both ways and never buffered.

pub mod headers;
mod pool;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::Claims;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;
use crate::policy::Route;
use crate::{Body, BoxError};
use futures_util::future::{Either, FutureExt as _};
use headers::Forwarded;
use pool::Pool;
pub use pool::{Replayable, Unrepeatable, UpstreamBody};

/// Why forwarding failed. Details are logged; the client sees only the status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream {upstream} unreachable: {reason}")]
    Unreachable { upstream: String, reason: String },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    /// The upstream request could not be put together (an upstream URI that does not parse).
    #[error("could not build the upstream request: {0}")]
    UpstreamRequest(String),
    #[error("upstream {upstream} has max_concurrency requests in flight")]
    Overloaded { upstream: String },
}

/// Why an upstream's client could not be built from its configuration (at startup or reload).
/// The text names the upstream and the key or file at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// One configured upstream with its own connection pool.
///
/// Each upstream gets its own pooled client rather than one shared client because the connect
/// timeout is a property of the connector, and it is configured per upstream.
pub struct Upstream {
    pub id: std::sync::Arc<str>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// Path of the upstream URL without trailing slash ("" for the root), prepended to every path.
    base_path: String,
    timeout: Duration,
    /// `body_read_timeout`: the longest wait for the next piece of a response body.
    pub body_read_timeout: Duration,
    forward_authorization: bool,
    preserve_host: bool,
    /// `max_concurrency`: places for requests in flight; none left means 503 at once.
    limit: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    transport: Transport,
}

/// How requests reach the upstream.
enum Transport {
    /// HTTP/1.1 only: tollgate's own pool, one connection per request in flight.
    Http1(std::sync::Arc<Pool>),
    /// `http2 = true`: hyper-util's client, which multiplexes HTTP/2 (and speaks HTTP/1.1 when
    /// a TLS upstream picks it in ALPN). One client, with its own connections, per per-core
    /// runtime ([`crate::runtime::place`]): a connection is driven by the runtime that opened
    /// it, so a request on another thread's would cross threads to be sent and answered.
    Negotiated(Box<[Client<HttpsConnector<HttpConnector>, Body>]>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("id", &self.id)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream whose connections are not counted (for tests).
    #[cfg(test)]
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Self, SetupError> {
        Self::build(cfg, None)
    }

    /// An upstream that counts the connections it opens in `metrics`
    /// (`tollgate_upstream_connections_opened_total`; HTTP/1.1 upstreams).
    pub fn with_metrics(
        cfg: &UpstreamConfig,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, SetupError> {
        Self::build(cfg, Some(metrics))
    }

    fn build(
        cfg: &UpstreamConfig,
        metrics: Option<&crate::metrics::Metrics>,
    ) -> Result<Self, SetupError> {
        let uri: Uri = cfg
            .url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| {
                SetupError(format!("upstream \"{}\": url: {e}", cfg.id))
            })?;
        let parts = uri.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            return Err(SetupError(format!(
                "upstream \"{}\": url has no scheme or host",
                cfg.id
            )));
        };
        let base_path = cfg.url.path().trim_end_matches('/').to_owned();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = tls::client_config(cfg).map_err(SetupError)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        // `http2`: over TLS, ALPN offers h2 then http/1.1 and the client speaks what the upstream
        // picked; over plain http there is no negotiation, so HTTP/2 with prior knowledge.
        let transport = if cfg.http2 {
            let https = https.enable_all_versions().wrap_connector(http);
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(cfg.idle_timeout)
                .pool_max_idle_per_host(256);
            if scheme == http::uri::Scheme::HTTP {
                builder.http2_only(true);
            }
            Transport::Negotiated(
                (0..crate::runtime::shards())
                    .map(|_| builder.build(https.clone()))
                    .collect(),
            )
        } else {
            let https = https.enable_http1().wrap_connector(http);
            let counters = metrics.map(|m| pool::Counters {
                opened: m.upstream_connections_opened(&cfg.id),
                retried: m.upstream_retries(&cfg.id),
            });
            let pool = Pool::new(https, &scheme, &authority, cfg.idle_timeout, counters)
                .map_err(|e| SetupError(format!("upstream \"{}\": url: {e}", cfg.id)))?;
            Transport::Http1(std::sync::Arc::new(pool))
        };
        Ok(Upstream {
            id: cfg.id.clone(),
            scheme,
            authority,
            base_path,
            timeout: cfg.timeout,
            body_read_timeout: cfg.body_read_timeout,
            forward_authorization: cfg.forward_authorization,
            preserve_host: cfg.preserve_host,
            limit: cfg
                .max_concurrency
                .map(|n| std::sync::Arc::new(tokio::sync::Semaphore::new(n as usize))),
            transport,
        })
    }

    /// The absolute URI of `path_and_query` (already normalised) on this upstream.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        self.uri_with_query(path_and_query, None)
    }

    /// The upstream URI of `path` with `query`: one string built once, its path parsed once.
    pub fn uri_with_query(&self, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
        let q = query.map_or(0, |q| q.len() + 1);
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + q);
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq))
            .map_err(|e| ProxyError::UpstreamRequest(e.to_string()))?;
        self.uri_with(pq)
    }

    /// The absolute URI of `pq` on this upstream, as it is.
    fn uri_with(&self, pq: http::uri::PathAndQuery) -> Result<Uri, ProxyError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).map_err(|e| ProxyError::UpstreamRequest(e.to_string()))
    }

    /// The connections kept open for this upstream's next requests; `None` for an `http2`
    /// upstream, whose client does not say.
    pub fn idle_connections(&self) -> Option<usize> {
        match &self.transport {
            Transport::Http1(pool) => Some(pool.idle_count()),
            Transport::Negotiated(_) => None,
        }
    }

    /// The scheme and authority of this upstream, to recognise absolute `Location`s on it.
    pub fn origin(&self) -> (&http::uri::Scheme, &http::uri::Authority) {
        (&self.scheme, &self.authority)
    }

    /// Sends the request; the timeout covers connecting and waiting for the response headers,
    /// not the streaming of the body afterwards.
    ///
    /// Not an `async fn`: that would wrap [`Upstream::send_within`]'s future in one more that
    /// every request builds and moves.
    pub fn send(
        &self,
        req: Request<Body>,
    ) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, ProxyError>> + '_ {
        self.send_within(req, self.timeout)
    }

    /// [`Upstream::send`] with another timeout (logins and logouts have their own).
    ///
    /// The exchange is one boxed future. The transport's future and the timer beside it are
    /// several hundred bytes, and every layer that wraps a future (the timeout, the mapping of
    /// the outcome, the pipeline's record of it, the pipeline's own state) moves it whole, on
    /// every request: about 7 KB of copies, against one allocation of the size of one copy.
    /// Inside, the transport's future is pinned where it was made, and the timeout holds a
    /// reference to it.
    pub fn send_within(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, ProxyError>> + '_ {
        // Shed load instead of queueing behind a saturated upstream.
        let place = match &self.limit {
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(place) => Some(place),
                Err(_) => {
                    return Either::Left(std::future::ready(Err(ProxyError::Overloaded {
                        upstream: self.id.to_string(),
                    })))
                }
            },
            None => None,
        };
        Either::Right(Box::pin(async move {
            // Each transport's future is pinned where it is made (no `Either` around it, which
            // would be one more move of it).
            let outcome = match &self.transport {
                Transport::Http1(pool) => {
                    tokio::time::timeout(timeout, std::pin::pin!(pool.send(req))).await
                }
                Transport::Negotiated(clients) => {
                    let client = &clients[crate::runtime::place(clients.len())];
                    let sent = client.request(req).map(|r| {
                        r.map(|resp| resp.map(UpstreamBody::unpooled))
                            .map_err(BoxError::from)
                    });
                    tokio::time::timeout(timeout, std::pin::pin!(sent)).await
                }
            };
            // The place is held until the answer's head is in (or the send failed).
            drop(place);
            match outcome {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(ProxyError::Unreachable {
                    upstream: self.id.to_string(),
                    reason: describe(&*e),
                }),
                Err(_) => Err(ProxyError::Timeout {
                    upstream: self.id.to_string(),
                    timeout,
                }),
            }
        }))
    }
}

/// The error and its sources, one after another: "tcp connect error: Connection refused".
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// What [`prepare_parts`] needs to know about the connection and the decision.
#[derive(Debug)]
pub struct Context<'a> {
    pub remote: SocketAddr,
    pub proto: &'static str,
    pub trust_forwarded: bool,
    pub request_id: &'a HeaderValue,
    /// The claims of the verified token; `None` on public routes.
    pub claims: Option<&'a Claims>,
}

/// The headers a request gains between the client and the upstream besides its route's
/// identity headers and a preserved `Host`: `Forwarded`, `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Request-Id` and a session's `Cookie`. (A
/// sampled request's trace context is not counted: most are not sampled.)
const ADDED_HEADERS: usize = 6;

/// The head of the upstream request: the normalised path (what was authorised) with the
/// original query, the upstream's scheme and authority, and the header edits of [`headers`].
pub fn prepare_parts(
    mut parts: Parts,
    path: &str,
    route: &Route,
    upstream: &Upstream,
    ctx: &Context<'_>,
) -> Result<Parts, ProxyError> {
    let uri = match parts.uri.path_and_query() {
        // The path goes upstream as the client sent it (the usual case): its bytes are shared
        // with the request's URI, not put together again.
        Some(sent) if upstream.base_path.is_empty() && sent.path() == path => {
            upstream.uri_with(sent.clone())?
        }
        _ => upstream.uri_with_query(path, parts.uri.query())?,
    };

    // Taken out of the map (one lookup, no copy) unless it stays there; put back below when
    // the upstream preserves it. Without one, the client sets Host from the URI's authority.
    let sent_host = if upstream.preserve_host {
        parts.headers.get(header::HOST).cloned()
    } else {
        parts.headers.remove(header::HOST)
    };
    let original_host = sent_host.or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    if !upstream.forward_authorization {
        h.remove(header::AUTHORIZATION);
    }
    // Room for what the gateway adds, made once and after what it takes out: a map read off
    // the wire is sized to the client's headers, and growing it by doubling rehashes it at
    // each step. An error means the map is at its maximum size already, which hyper's header
    // limit never lets it reach.
    let _ = h.try_reserve(
        ADDED_HEADERS + route.identity_headers.len() + usize::from(upstream.preserve_host),
    );
    headers::set_identity(h, &route.identity_headers, ctx.claims);
    headers::set_forwarded(
        h,
        &Forwarded {
            client_ip: ctx.remote.ip(),
            proto: ctx.proto,
            host: original_host.as_ref(),
            trust_client: ctx.trust_forwarded,
        },
    );
    h.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    if upstream.preserve_host {
        if let Some(host) = original_host {
            h.insert(header::HOST, host);
        }
    }

    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok(parts)
}

/// A JSON response the gateway (or its admin and demo servers) writes itself, not cacheable.
pub fn json_response(status: http::StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An empty body; unlike `full(Bytes::new())`, it allocates nothing.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body the gateway writes itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(upstream_url: &str) -> (Upstream, crate::config::Config) {
        public_with(upstream_url, "")
    }

    /// [`public`], with more `[[upstream]]` keys.
    fn public_with(upstream_url: &str, keys: &str) -> (Upstream, crate::config::Config) {
        let config = crate::config::from_toml_str(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[upstream]]
id = "api"
url = "{upstream_url}"
{keys}

[[route]]
id = "public"
prefix = "/"
upstream = "api"
auth = "none"
"#
        ))
        .unwrap();
        (Upstream::new(&config.upstreams[0]).unwrap(), config)
    }

    /// `http2 = true` to an h2c upstream: each per-core thread opens its own connection and
    /// multiplexes its requests on it, rather than sending them over another thread's.
    #[tokio::test]
    async fn each_per_core_thread_has_its_own_http2_connection() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let worker = crate::runtime::Worker::start(1).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full(Bytes::from_static(
                        b"ok",
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(io), service),
                );
            }
        });
        let config = crate::config::from_toml_str(&format!(
            "[[upstream]]\nid = \"api\"\nurl = \"http://{addr}\"\nhttp2 = true\n"
        ))
        .unwrap();
        let upstream = std::sync::Arc::new(Upstream::new(&config.upstreams[0]).unwrap());
        let get = |u: std::sync::Arc<Upstream>| async move {
            let req = Request::get(u.uri_for("/x").unwrap())
                .body(empty())
                .unwrap();
            let resp = u.send(req).await.unwrap();
            assert_eq!(resp.status(), http::StatusCode::OK);
            use http_body_util::BodyExt as _;
            resp.into_body().collect().await.unwrap().to_bytes()
        };
        for _ in 0..3 {
            let on_worker = worker.handle().spawn(get(upstream.clone()));
            assert_eq!(on_worker.await.unwrap(), "ok");
            assert_eq!(get(upstream.clone()).await, "ok");
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "one connection per thread"
        );
        worker.stop().await;
    }

    /// A plain-HTTP client at 127.0.0.1, not trusted for forwarding headers, without a token.
    fn context(request_id: &HeaderValue) -> Context<'_> {
        Context {
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            proto: "http",
            trust_forwarded: false,
            request_id,
            claims: None,
        }
    }

    /// The upstream URI keeps the client's own path and query when normalising changed
    /// nothing, and is put together otherwise: a normalised path, an upstream base path, or
    /// both, always with the query as sent.
    #[test]
    fn the_upstream_uri_is_the_normalised_path_on_the_upstream_with_the_query() {
        let request_id = HeaderValue::from_static("r-1");
        let ctx = context(&request_id);
        for (base, sent, normalised, expected) in [
            ("http://up:9", "/a/b?x=1&y", "/a/b", "http://up:9/a/b?x=1&y"),
            ("http://up:9", "/a/b", "/a/b", "http://up:9/a/b"),
            ("http://up:9", "/a/b?", "/a/b", "http://up:9/a/b?"),
            ("http://up:9", "//a/./c/../b?q", "/a/b", "http://up:9/a/b?q"),
            ("http://up:9", "/%7Ea?q", "/~a", "http://up:9/~a?q"),
            (
                "http://up:9/base/",
                "/a/b?q",
                "/a/b",
                "http://up:9/base/a/b?q",
            ),
            ("http://up:9/base", "//a?q", "/a", "http://up:9/base/a?q"),
            ("http://up:9", "*", "/", "http://up:9/"),
        ] {
            let (upstream, config) = public(base);
            let route = config.routes.iter().next().unwrap();
            let (parts, ()) = Request::options(sent).body(()).unwrap().into_parts();
            let prepared = prepare_parts(parts, normalised, route, &upstream, &ctx).unwrap();
            assert_eq!(prepared.uri.to_string(), expected, "{base} {sent}");
        }
    }

    /// The client's `Host` (or, without one, the target's authority) goes upstream as
    /// `X-Forwarded-Host` and in `Forwarded`; as `Host` itself only with `preserve_host`.
    #[test]
    fn the_clients_host_goes_upstream_as_host_only_when_preserved() {
        let request_id = HeaderValue::from_static("r-1");
        let ctx = context(&request_id);
        for preserve in [false, true] {
            let (upstream, config) =
                public_with("http://127.0.0.1:9", &format!("preserve_host = {preserve}"));
            let route = config.routes.iter().next().unwrap();
            for (target, host) in [
                ("/a", Some("api.example.com")),
                ("http://api.example.com/a", Some("api.example.com")),
                ("http://api.example.com/a", None),
            ] {
                let mut req = Request::get(target);
                if let Some(host) = host {
                    req = req.header(header::HOST, host);
                }
                let (parts, ()) = req.body(()).unwrap().into_parts();
                let h = prepare_parts(parts, "/a", route, &upstream, &ctx)
                    .unwrap()
                    .headers;
                let case = format!("preserve_host = {preserve}, {target}, Host {host:?}");
                assert_eq!(h["x-forwarded-host"], "api.example.com", "{case}");
                assert_eq!(
                    h["forwarded"], "for=127.0.0.1;proto=http;host=\"api.example.com\"",
                    "{case}"
                );
                let sent: Vec<_> = h.get_all(header::HOST).iter().collect();
                if preserve {
                    assert_eq!(sent, ["api.example.com"], "{case}");
                } else {
                    assert!(sent.is_empty(), "{case}: {sent:?}");
                }
            }
        }
    }

    /// A request read off the wire has a header map sized to its own headers. The prepared
    /// head holds what the gateway added, and room for a session's `Cookie` besides: a copy
    /// for a replay is sized to what it holds, so the `Cookie` goes in before the copy.
    #[test]
    fn a_prepared_head_has_room_for_what_the_gateway_adds() {
        let (upstream, config) = public("http://127.0.0.1:9");
        let route = config.routes.iter().next().unwrap();
        let request_id = HeaderValue::from_static("r-1");
        let ctx = context(&request_id);
        for client in [&["host"][..], &["host", "authorization", "cookie"]] {
            // As hyper reads it: a map of the client's headers' size.
            let (mut parts, ()) = Request::get("/orders/1").body(()).unwrap().into_parts();
            parts.headers = http::HeaderMap::with_capacity(client.len());
            for name in client {
                parts.headers.insert(*name, HeaderValue::from_static("x"));
            }
            assert!(parts.headers.capacity() < parts.headers.len() + ADDED_HEADERS);
            let prepared = prepare_parts(parts, "/orders/1", route, &upstream, &ctx).unwrap();
            for added in [
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-request-id",
            ] {
                assert!(prepared.headers.contains_key(added), "{added}");
            }
            assert!(
                prepared.headers.capacity() > prepared.headers.len(),
                "no room for a session's Cookie after {client:?}: {:?}",
                prepared.headers
            );
        }
    }
}
