//! The forwarding step for routes whose upstream has sessions (design §6.5–6.7):
//!
//! ```text
//! login path (active)  ─▶ 204 Tollgate-Login: managed, nothing forwarded
//! identify             ─▶ grant key, mode, slot (handle checked)      400 / 401
//! logout path          ─▶ log the slot (or grant) out, 204, handle cleared
//! login path (passive) ─▶ forward, capture the Set-Cookies into the slot, strip them
//! buffer the body      ─▶ replayable when it fits max_replay_body
//! lease                ─▶ in-flight place (FIFO), login if needed      429 / 502 / 503
//! send with the jar    ─▶ expired? re-login once and replay once        503 / 502
//! absorb Set-Cookie    ─▶ jar updated; no upstream Set-Cookie reaches the client
//! respond              ─▶ the lease is held until the response body has been sent
//! ```
//!
//! The client's `Cookie` header never reaches the upstream: the upstream sees exactly the
//! session's jar.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::pool::{Identity, Lease, Pool};
use super::{SessionError, LOGIN_HEADER, SESSION_HEADER};
use crate::auth::Principal;
use crate::config::Creation;
use crate::error::GatewayError;
use crate::policy::Route;
use crate::proxy::{self, Upstream};
use crate::{Body, BoxError};

/// What `forward` needs besides the request.
pub struct Step<'a> {
    pub pool: &'a Arc<Pool>,
    pub upstream: &'a Upstream,
    pub route: &'a Route,
    /// `None` on public routes: forwarded without a session (cookies still never cross).
    pub principal: Option<&'a Principal>,
    pub token_digest: [u8; 32],
    pub path: &'a str,
    pub ctx: &'a proxy::Context<'a>,
    /// The client's external origin (`scheme://host`), for `Location` rewriting.
    pub origin: Option<String>,
    pub metrics: &'a crate::metrics::Metrics,
}

/// Forwards one request through the session layer.
pub async fn forward(
    step: Step<'_>,
    parts: Parts,
    body: Body,
) -> Result<Response<Body>, GatewayError> {
    let pool = step.pool;
    let cfg = &pool.cfg;
    let has_body = request_has_body(&parts.headers);

    if step.path == cfg.login_path && cfg.creation == Creation::Active {
        // SDKs that always call login get a success; the body (credentials) is never read.
        let mut r = empty(StatusCode::NO_CONTENT);
        r.headers_mut().insert(
            HeaderName::from_static(LOGIN_HEADER),
            HeaderValue::from_static("managed"),
        );
        if has_body {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(r);
    }

    let Some(principal) = step.principal else {
        return forward_without_session(&step, parts, body).await;
    };
    let who = pool.identify(principal, &step.token_digest, &parts.headers)?;

    if step.path == cfg.logout_path {
        let slot = who.had_handle.then_some(&who.slot);
        pool.logout(&who.grant, slot).await;
        let mut r = empty(StatusCode::NO_CONTENT);
        if who.concurrent && who.had_handle {
            set_cookie(r.headers_mut(), &pool.clear_handle_cookie());
        }
        if has_body {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(r);
    }

    if step.path == cfg.login_path && cfg.creation == Creation::Passive {
        return passive_login(&step, &who, principal, parts, body).await;
    }

    // Buffer the body when it may have to be replayed after a re-login.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let (buffered, mut streamed) = match (declared, chunked) {
        (Some(n), false) if n <= cfg.max_replay_body => {
            let bytes = collect_bounded(
                body,
                usize::try_from(cfg.max_replay_body).unwrap_or(usize::MAX),
            )
            .await
            .ok_or_else(|| {
                GatewayError::Proxy(proxy::ProxyError::BadRequest(
                    "the request body could not be read".to_owned(),
                ))
            })?;
            (Some(bytes), None)
        }
        (None, false) => (Some(Bytes::new()), None),
        _ => (None, Some(body)),
    };

    let head = proxy::prepare_parts(parts, step.path, step.route, step.upstream, step.ctx)?;
    let mut lease = pool.lease(&who).await?;
    let mut replayed = false;
    loop {
        let req_body: Body = match (&buffered, streamed.take()) {
            (Some(b), _) => proxy::full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => proxy::full(Bytes::new()),
        };
        let mut req = Request::from_parts(clone_head(&head), req_body);
        set_jar(req.headers_mut(), &lease, step.path);
        let sent = std::time::Instant::now();
        let resp = match step.upstream.send(req).await {
            Ok(r) => r,
            Err(e) => {
                pool.release(&mut lease, false).await;
                return Err(e.into());
            }
        };
        step.metrics
            .observe_upstream(&step.upstream.id, sent.elapsed().as_secs_f64());
        if !pool.is_expired(resp.status(), resp.headers()) || lease.jar.is_empty() {
            return Ok(respond(&step, &who, lease, resp).await);
        }
        // The upstream says the session has ended.
        if cfg.creation == Creation::Passive {
            pool.forget(&mut lease).await;
            return Ok(crate::error::reply(
                StatusCode::UNAUTHORIZED,
                "upstream_session_expired",
                "the upstream session has ended; sign in again",
                None,
                None,
            ));
        }
        if replayed {
            pool.give_up(&mut lease).await;
            return Err(SessionError::AuthFailed.into());
        }
        if buffered.is_none() {
            // The body was streamed and is gone: log in again for the next request only.
            let relogged = pool.relogin(&mut lease).await;
            pool.release(&mut lease, false).await;
            relogged?;
            return Err(SessionError::SessionExpired.into());
        }
        if let Err(e) = pool.relogin(&mut lease).await {
            pool.release(&mut lease, false).await;
            return Err(e.into());
        }
        replayed = true;
    }
}

/// Sends the upstream's answer back: cookies into the jar and out of the response, `Location`
/// rewritten, the session headers set, the lease held until the body is done.
async fn respond(
    step: &Step<'_>,
    who: &Identity,
    mut lease: Lease,
    resp: Response<Incoming>,
) -> Response<Body> {
    let pool = step.pool;
    step.pool.absorb(&mut lease, resp.headers()).await;
    let accepted = resp.status() == StatusCode::ACCEPTED;
    let (mut parts, body) = resp.into_parts();
    strip_set_cookies(&mut parts.headers);
    crate::proxy::headers::strip_hop_by_hop(&mut parts.headers);
    rewrite_location(&mut parts.headers, step);
    if lease.new_session {
        parts.headers.insert(
            HeaderName::from_static(SESSION_HEADER),
            HeaderValue::from_static("new"),
        );
    }
    if let Some(h) = &who.new_handle {
        set_cookie(&mut parts.headers, &pool.handle_cookie(h));
    }
    let body = LeasedBody {
        inner: body,
        guard: Some(Guard {
            pool: pool.clone(),
            lease: Some(lease),
            accepted,
        }),
    };
    Response::from_parts(parts, body.boxed())
}

/// A public route on a session upstream: no session, and still no cookie crosses either way.
async fn forward_without_session(
    step: &Step<'_>,
    parts: Parts,
    body: Body,
) -> Result<Response<Body>, GatewayError> {
    let mut head = proxy::prepare_parts(parts, step.path, step.route, step.upstream, step.ctx)?;
    head.headers.remove(header::COOKIE);
    let req = Request::from_parts(head, body);
    let resp = step.upstream.send(req).await?;
    let mut resp = proxy::finish(resp);
    strip_set_cookies(resp.headers_mut());
    Ok(resp)
}

/// Passive capture (design §6.5.4): the client's own login goes upstream; its cookies become the
/// slot's session and never reach the client.
async fn passive_login(
    step: &Step<'_>,
    who: &Identity,
    principal: &Principal,
    parts: Parts,
    body: Body,
) -> Result<Response<Body>, GatewayError> {
    let pool = step.pool;
    let body = collect_bounded(body, 64 * 1024).await.ok_or_else(|| {
        GatewayError::Proxy(proxy::ProxyError::BadRequest(
            "the login body could not be read".to_owned(),
        ))
    })?;
    if let Some(claim) = &pool.cfg.passive_login_name_claim {
        let name = login_name(&parts.headers, &body);
        let expected = principal.claims.get(claim).and_then(|v| v.as_str());
        if name.is_none() || name.as_deref() != expected {
            return Err(SessionError::LoginIdentityMismatch.into());
        }
    }
    let mut head = proxy::prepare_parts(parts, step.path, step.route, step.upstream, step.ctx)?;
    head.headers.remove(header::COOKIE);
    let resp = step
        .upstream
        .send(Request::from_parts(head, proxy::full(body)))
        .await?;
    if resp.status().is_success() {
        pool.capture(who, resp.headers()).await?;
    }
    let mut resp = proxy::finish(resp);
    strip_set_cookies(resp.headers_mut());
    if let Some(h) = &who.new_handle {
        set_cookie(resp.headers_mut(), &pool.handle_cookie(h));
    }
    Ok(resp)
}

/// Reads a whole body of at most `max` bytes; `None` when it is larger or fails.
async fn collect_bounded(mut body: Body, max: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if buf.len() + data.len() > max {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}

/// The `name` field of a JSON or form login body.
fn login_name(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.into_owned())
    } else {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()?
            .get("name")?
            .as_str()
            .map(str::to_owned)
    }
}

fn request_has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(proxy::full(Bytes::new()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn set_cookie(h: &mut HeaderMap, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.append(header::SET_COOKIE, v);
    }
}

/// The client's `Cookie` header is replaced by exactly the session's jar.
fn set_jar(h: &mut HeaderMap, lease: &Lease, path: &str) {
    h.remove(header::COOKIE);
    if let Some(c) = lease.jar.cookie_header(path) {
        if let Ok(mut v) = HeaderValue::from_str(&c) {
            v.set_sensitive(true);
            h.insert(header::COOKIE, v);
        }
    }
}

fn strip_set_cookies(h: &mut HeaderMap) {
    h.remove(header::SET_COOKIE);
    h.remove(HeaderName::from_static("set-cookie2"));
}

/// An absolute `Location` on the upstream's origin points at the gateway instead.
fn rewrite_location(h: &mut HeaderMap, step: &Step<'_>) {
    let Some(origin) = &step.origin else { return };
    let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Ok(uri) = loc.parse::<http::Uri>() else {
        return;
    };
    let (scheme, authority) = step.upstream.origin();
    if uri.scheme() == Some(scheme) && uri.authority() == Some(authority) {
        let rest = uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(v) = HeaderValue::from_str(&format!("{origin}{rest}")) {
            h.insert(header::LOCATION, v);
        }
    }
}

fn clone_head(p: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

/// Releases the lease when the response body has been sent (or dropped).
struct Guard {
    pool: Arc<Pool>,
    lease: Option<Lease>,
    accepted: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut lease) = self.lease.take() {
            let pool = self.pool.clone();
            let accepted = self.accepted;
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { pool.release(&mut lease, accepted).await });
            }
        }
    }
}

/// The upstream's body, holding the session's in-flight place until it ends: ASP.NET keeps the
/// session locked until its answer is written, so the next request of the grant must wait too.
struct LeasedBody {
    inner: Incoming,
    guard: Option<Guard>,
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                self.guard.take();
            }
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            self.guard.take();
        }
        polled.map(|o| o.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
