//! The forwarding step for routes whose upstream has sessions (design §6.5–6.7):
//!
//! ```text
//! login path (active)  ─▶ 204 Tollgate-Login: managed, nothing forwarded (every spelling the
//!                         upstream routes there: see [`super::intercept`])
//! identify             ─▶ grant key, mode, slot (handle checked)      400 / 401
//! logout path          ─▶ log the slot (or grant) out, 204, handle cleared
//! login path (passive) ─▶ forward, capture the Set-Cookies into the slot, strip them
//! buffer the body      ─▶ replayable when it fits max_replay_body
//! lease                ─▶ in-flight place (FIFO), login if needed      429 / 502 / 503
//! send with the jar    ─▶ expired? re-login once and replay once        503 / 502
//! absorb Set-Cookie    ─▶ jar updated; no upstream Set-Cookie reaches the client
//! error answer         ─▶ exception details withheld (see [`super::sanitize`])
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

use super::login::{self, LoginOutcome};
use super::pool::{Identity, Lease, Pool};
use super::{intercept, sanitize, SessionError, LOGIN_HEADER, SESSION_HEADER};
use crate::auth::{AuthError, BearerError, Principal};
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
    // The body itself says whether one was sent: HTTP/2 has no framing headers for it.
    let has_body = !body.is_end_stream();
    let login = intercept::is_action(step.path, &cfg.login_path);
    let logout = !login && intercept::is_action(step.path, &cfg.logout_path);

    if login && cfg.creation == Creation::Active {
        // SDKs that always call login get a success; the body (credentials) is never read.
        let mut r = empty(StatusCode::NO_CONTENT);
        r.headers_mut().insert(
            HeaderName::from_static(LOGIN_HEADER),
            HeaderValue::from_static("managed"),
        );
        close_if_unread(&mut r, has_body);
        return Ok(r);
    }

    let Some(principal) = step.principal else {
        if logout {
            // A public route reaching the logout call: no grant, so no session to end; the
            // call is never forwarded (it would sign out whatever its cookies named).
            let mut r = empty(StatusCode::NO_CONTENT);
            close_if_unread(&mut r, has_body);
            return Ok(r);
        }
        if login {
            // A passive login needs the grant its session will belong to: forwarded without one,
            // it would open an upstream session that nobody counts or logs out.
            return Err(AuthError::Bearer(BearerError::Missing).into());
        }
        return forward_without_session(&step, parts, body).await;
    };
    let who = pool.identify(principal, &step.token_digest, &parts.headers)?;

    if logout {
        let slot = who.had_handle.then_some(&who.slot);
        pool.logout(&who.grant, slot).await;
        let mut r = empty(StatusCode::NO_CONTENT);
        if who.concurrent && who.had_handle {
            set_cookie(r.headers_mut(), &pool.clear_handle_cookie());
        }
        close_if_unread(&mut r, has_body);
        return Ok(r);
    }

    if login {
        return passive_login(&step, &who, principal, parts, body).await;
    }

    // Buffer the body when it may have to be replayed after a re-login: decided from the body
    // (its end and its size hint), never from framing headers, which HTTP/2 does not send.
    let (buffered, mut streamed) = if body.is_end_stream() {
        (Some(Bytes::new()), None)
    } else if body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= cfg.max_replay_body)
    {
        let max = usize::try_from(cfg.max_replay_body).unwrap_or(usize::MAX);
        let bytes = collect_bounded(body, max)
            .await
            .ok_or(GatewayError::BodyRead)?;
        (Some(bytes), None)
    } else {
        (None, Some(body))
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
        let resp = match send_while_held(step.upstream, req, lease.lost()).await {
            Ok(r) => r,
            Err(e) => {
                pool.release(&mut lease, false).await;
                return Err(e);
            }
        };
        step.metrics
            .observe_upstream(&step.upstream.id, sent.elapsed().as_secs_f64());
        if !pool.is_expired(resp.status(), resp.headers()) || lease.jar.is_empty() {
            return respond(&step, &who, lease, resp).await;
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

/// Sends the request upstream while the lease holds. A shared store that lost the lease (it
/// expired during an outage and another request took the session) stops the request before
/// its answer: 503 with `Retry-After`, never two requests on one session.
async fn send_while_held(
    upstream: &Upstream,
    req: Request<Body>,
    lost: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Response<Incoming>, GatewayError> {
    let Some(mut lost) = lost else {
        return upstream.send(req).await.map_err(GatewayError::from);
    };
    tokio::select! {
        r = upstream.send(req) => r.map_err(GatewayError::from),
        _ = lost.wait_for(|l| *l) => Err(SessionError::Store(
            "the session's lease was lost in the store".to_owned(),
        )
        .into()),
    }
}

/// An intercepted call whose body was not read: the connection cannot carry another request.
fn close_if_unread(r: &mut Response<Body>, has_body: bool) {
    if has_body {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Sends the upstream's answer back: cookies into the jar and out of the response, `Location`
/// rewritten, error details withheld, the session headers set, the lease held until the body
/// is done.
async fn respond(
    step: &Step<'_>,
    who: &Identity,
    mut lease: Lease,
    resp: Response<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let pool = step.pool;
    if pool.absorb(&mut lease, resp.headers()) {
        // The answer deleted a marker cookie: the upstream signed the session out. The answer
        // itself stands; the next request logs in again.
        pool.ended_upstream(&mut lease).await?;
    }
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
    if pool.cfg.sanitize_errors && sanitize::applies(parts.status) {
        // Error answers are small: read here (the session is held meanwhile), then released.
        let clean = sanitize::error_body(parts.status, &mut parts.headers, body).await;
        pool.release(&mut lease, accepted).await;
        return Ok(Response::from_parts(parts, proxy::full(clean)));
    }
    let body = LeasedBody {
        inner: body,
        guard: Some(Guard {
            pool: pool.clone(),
            lease: Some(lease),
            accepted,
        }),
    };
    Ok(Response::from_parts(parts, body.boxed()))
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
    let (mut parts, body) = resp.into_parts();
    strip_set_cookies(&mut parts.headers);
    crate::proxy::headers::strip_hop_by_hop(&mut parts.headers);
    if step.pool.cfg.sanitize_errors && sanitize::applies(parts.status) {
        let clean = sanitize::error_body(parts.status, &mut parts.headers, body).await;
        return Ok(Response::from_parts(parts, proxy::full(clean)));
    }
    Ok(Response::from_parts(
        parts,
        body.map_err(BoxError::from).boxed(),
    ))
}

/// Passive capture (design §6.5.4): the client's own login goes upstream, to the configured
/// login path whatever spelling the client used; its cookies become the slot's session and
/// never reach the client. The seat is taken before the login is forwarded, so the captured
/// session is counted from its first moment; a session already in the slot is logged out
/// first. A refused login is answered with the gateway's own error (the upstream's status, never
/// its body).
async fn passive_login(
    step: &Step<'_>,
    who: &Identity,
    principal: &Principal,
    parts: Parts,
    body: Body,
) -> Result<Response<Body>, GatewayError> {
    let pool = step.pool;
    let body = collect_bounded(body, MAX_PASSIVE_LOGIN_BODY)
        .await
        .ok_or(GatewayError::BodyRead)?;
    if let Some(claim) = &pool.cfg.passive_login_name_claim {
        let name = login_name(&parts.headers, &body);
        let expected = principal.claims.get(claim).and_then(|v| v.as_str());
        if name.is_none() || name.as_deref() != expected {
            return Err(SessionError::LoginIdentityMismatch.into());
        }
    }
    pool.logout(&who.grant, Some(&who.slot)).await;
    let seat = pool.admit_capture().await?;
    let mut head = proxy::prepare_parts(
        parts,
        &pool.cfg.login_path,
        step.route,
        step.upstream,
        step.ctx,
    )?;
    head.headers.remove(header::COOKIE);
    let resp = match step
        .upstream
        .send(Request::from_parts(head, proxy::full(body)))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            pool.abandon_capture(seat).await;
            return Err(e.into());
        }
    };
    if resp.status().is_success() {
        let captured = pool.capture(who, seat, resp.headers()).await?;
        if !captured {
            return Err(SessionError::LoginError.into());
        }
        let mut resp = proxy::finish(resp);
        strip_set_cookies(resp.headers_mut());
        if let Some(h) = &who.new_handle {
            set_cookie(resp.headers_mut(), &pool.handle_cookie(h));
        }
        return Ok(resp);
    }
    pool.abandon_capture(seat).await;
    let status = resp.status();
    let answer = login::read_answer(resp, &pool.cfg).await;
    let retry_after = answer.retry_after.clone();
    let (code, desc) = match login::classify(answer, &pool.cfg) {
        LoginOutcome::LoginLimit => (
            "upstream_seats_exhausted",
            "the upstream has no free session seat",
        ),
        LoginOutcome::BadCredentials => (
            "upstream_login_failed",
            "the upstream refused the credentials",
        ),
        LoginOutcome::Throttled { .. } => ("upstream_throttled", "the upstream throttles logins"),
        LoginOutcome::Error(_) | LoginOutcome::Ok(_) => {
            ("upstream_login_error", "the upstream login failed")
        }
    };
    let mut r = crate::error::reply(status, code, desc, None, None);
    if let Some(v) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(r)
}

/// The largest client login body read in passive mode.
const MAX_PASSIVE_LOGIN_BODY: usize = 64 * 1024;

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
