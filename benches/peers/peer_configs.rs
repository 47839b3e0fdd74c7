//! The peers' configurations, written by this project from each peer's own documentation (nginx's
//! `ngx_http_upstream_module` and `ngx_http_proxy_module`; HAProxy 2.6's `configuration.txt`,
//! shipped in Debian's package, for `http_auth_bearer`, `jwt_header_query`, `jwt_payload_query`,
//! `jwt_verify`, `date` and `sub`; Envoy's `jwt_authn` v3 API for `local_jwks`,
//! `require_expiration` and `jwt_cache_config`). Each is the plain form a user would write; the
//! only tuning is what makes every gateway do the same work: one worker or thread (one core),
//! keep-alive both ways without a request limit, no access log.

use std::net::SocketAddr;
use std::path::Path;

/// What a validating peer checks: the claims a token must carry, and where the key is.
pub(crate) struct JwtCheck<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) audience: &'a str,
    /// HAProxy: the signing key's PEM public key; Envoy: a JWKS file.
    pub(crate) key_file: &'a Path,
}

/// The header every nginx instance shares: one worker, in the foreground, its pid file and
/// error log in `dir` (so that instances do not collide, and nothing goes to /var/log), no
/// access log, and keep-alive connections that are not closed after nginx's default 1000
/// requests (wrk and the gateways would otherwise reconnect during the measurement).
fn nginx_head(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
"#
    )
}

/// The upstream of every row: `return 200` with a small JSON body.
pub(crate) fn nginx_upstream(dir: &Path, listen: SocketAddr, body: &str) -> String {
    format!(
        r#"{head}    server {{
        listen {listen};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"#,
        head = nginx_head(dir)
    )
}

/// nginx as a plain reverse proxy: an upstream block with a keep-alive pool (HTTP/1.1 and an
/// empty `Connection` header to the upstream, as `ngx_http_upstream_module`'s `keepalive`
/// documentation says).
pub(crate) fn nginx_proxy(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"{head}    upstream backend {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
        head = nginx_head(dir)
    )
}

/// HAProxy in HTTP mode with one thread, without auth or with `jwt`.
///
/// HAProxy's `jwt_verify` checks the signature only ("does not perform a full JWT validation"),
/// so the claims are checked by rules written here the way `configuration.txt` shows: the token
/// from `http_auth_bearer`, the header's `alg` pinned to RS256 before `jwt_verify` uses it, `iss`
/// and `aud` compared as strings, and `exp - now > 0` (which also denies a token without `exp`:
/// a missing value fails the comparison). Failures answer 401. There is no `nbf` rule because
/// the brief asks for the exp/iss/aud checks only: the correctness matrix shows what that leaves
/// open.
pub(crate) fn haproxy(listen: SocketAddr, upstream: SocketAddr, jwt: Option<&JwtCheck>) -> String {
    let rules = jwt.map(haproxy_jwt_rules).unwrap_or_default();
    format!(
        r#"global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s

frontend gateway
    bind {listen}
{rules}    default_backend upstream

backend upstream
    server nginx {upstream}
"#
    )
}

fn haproxy_jwt_rules(jwt: &JwtCheck) -> String {
    let JwtCheck {
        issuer, audience, ..
    } = jwt;
    let key = jwt.key_file.display();
    format!(
        r#"    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.jwt_alg) -m str RS256 }}
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
    http-request deny deny_status 401 unless {{ var(txn.iss) -m str "{issuer}" }}
    http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
    http-request deny deny_status 401 unless {{ var(txn.aud) -m str "{audience}" }}
    http-request set-var(txn.now) date()
    http-request set-var(txn.exp_left) var(txn.bearer),jwt_payload_query('$.exp','int'),sub(txn.now)
    http-request deny deny_status 401 unless {{ var(txn.exp_left) -m int gt 0 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.jwt_alg,"{key}") -m int 1 }}
"#
    )
}

/// Envoy with one listener, the `jwt_authn` filter (one provider, required on every path) and
/// the router to one static upstream cluster. `jwt_authn` checks the signature, `iss`, `aud`,
/// `exp` and `nbf` itself; `require_expiration` makes it deny a token without `exp`, as tollgate
/// does. With `cache_size`, `jwt_cache_config` caches that many verified tokens (Envoy's default
/// is 100, too few for 10,000 tokens in turn).
pub(crate) fn envoy(
    listen: SocketAddr,
    upstream: SocketAddr,
    jwt: &JwtCheck,
    cache_size: Option<usize>,
) -> String {
    let JwtCheck {
        issuer, audience, ..
    } = jwt;
    let jwks = jwt.key_file.display();
    let cache = cache_size
        .map(|n| {
            format!(
                "\n                  jwt_cache_config:\n                    jwt_cache_size: {n}"
            )
        })
        .unwrap_or_default();
    let (ip, port) = (listen.ip(), listen.port());
    let (up_ip, up_port) = (upstream.ip(), upstream.port());
    format!(
        r#"static_resources:
  listeners:
  - name: gateway
    address:
      socket_address: {{ address: {ip}, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            name: all
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: "{issuer}"
                  audiences: ["{audience}"]
                  require_expiration: true
                  local_jwks:
                    filename: "{jwks}"{cache}
              rules:
              - match: {{ prefix: "/" }}
                requires: {{ provider_name: bench }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {up_ip}, port_value: {up_port} }}
"#
    )
}
