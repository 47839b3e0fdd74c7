//! The session layer's two steps of the request pipeline (design §6.5–6.7): [`lease`] before
//! the request is prepared, [`settle`] after each upstream answer.
//!
//! ```text
//! lease   login path (active)  ─▶ Answered: 204 Tollgate-Login: managed, nothing forwarded
//!                                 (every spelling the upstream routes there: see intercept)
//!         public route         ─▶ a lease without a session (no cookie crosses either way);
//!                                 its logout call is answered 204, a login call 401
//!         identify             ─▶ grant key, mode, slot (handle checked)        400 / 401
//!         logout path          ─▶ Answered: the slot (or grant) logged out, 204, handle cleared
//!         login path (passive) ─▶ a capture lease (see capture)                 403 / 503
//!         buffer the body      ─▶ replayable when it fits max_replay_body
//!         hold                 ─▶ in-flight place (FIFO), login if needed       429 / 502 / 503
//! settle  expired answer       ─▶ Replay once after a re-login, else Fail       503 / 502 / 401
//!         Set-Cookie           ─▶ into the jar; a deleted marker cookie ends the session
//!         capture              ─▶ the answer's cookies become the slot's session
//! ```
//!
//! The pipeline's `prepare` takes the lease's jar ([`Lease::cookie`]) in place of the client's
//! `Cookie`, its `finish` the lease's response edits ([`Lease::edits`]) and holds the lease until
//! the answer's body has been sent ([`Lease::hold_until_sent`]): ASP.NET keeps a session locked
//! until its answer is written, so the grant's next request must wait too.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;

use super::pool::{AtOnce, Held, Identity, Pool};
use super::{body, capture};
use super::{sanitize, SessionError};
use crate::config::Creation;
use crate::policy::Permit;
use crate::proxy::{self, headers, UpstreamBody};
use crate::{Body, BoxError};

/// What the `lease` step decided.
// Made once per request and unpacked at once: boxing the lease would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Leased {
    /// The upstream has no sessions: the request goes as it came.
    None,
    /// The request goes with this lease.
    Session(Lease),
    /// The session layer answered the request itself (an intercepted login or logout call).
    Answered(Response<Body>),
}

/// What the `settle` step made of an upstream answer.
pub enum Settled {
    /// The answer goes to the client.
    Keep(Response<UpstreamBody>),
    /// The session was logged in again: send the request once more, with the new jar.
    Replay,
    /// The request fails; the lease has already been given back as the failure requires.
    Fail(SessionError),
}

/// A request's hold on the session layer, from the `lease` step to the end of the answer's body.
pub struct Lease {
    pool: Arc<Pool>,
    kind: Kind,
    /// The request body, kept for one replay after a re-login.
    replay: Option<Bytes>,
    replayed: bool,
    /// The answer was `202 Accepted`: a long operation runs on the session after the answer.
    accepted: bool,
}

enum Kind {
    /// A public route on a session upstream: no session, and still no cookie crosses.
    Bare,
    /// One of the grant's sessions, with its in-flight place.
    Held { who: Identity, held: Held },
    /// Passive mode: the client's own login call, whose answer becomes the slot's session.
    /// `seat` is the seat taken for it, until the captured session (or a refusal) takes it.
    Capture { who: Identity, seat: Option<u64> },
}

/// The edits the `finish` step makes to an answer that went through the session layer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edits {
    /// Absolute `Location`s on the upstream's origin point at the gateway.
    pub rewrite_location: bool,
    /// `Tollgate-Session: new`: the session was logged in during this request.
    pub new_session: bool,
    /// A `Set-Cookie` line of the gateway's own (a concurrent-mode handle).
    pub set_cookie: Option<String>,
    /// Error answers lose the upstream's exception details (`error_bodies = "sanitize"`).
    pub sanitize: bool,
}

/// What a step of the session layer gives the pipeline: its outcome at once (the common
/// request, the common answer), or a boxed future for the rare cases that wait.
///
/// Not a future that may be ready: `Ready` holds its outcome inline, and the pipeline's own
/// future, which awaits it, would grow by that much for every request, on every route.
pub enum Step<'a, T> {
    Now(T),
    Later(Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>),
}

/// What the `lease` step gives.
type LeaseResult = Result<Leased, SessionError>;

/// The `lease` step: decides what the session layer does with a request on a session upstream,
/// before anything is sent. `body` may be read here (a passive login is checked, a replayable
/// body is kept) and is then replaced by an equal one.
///
/// Not an `async fn`: the common request (a body that needs no read, and a place had at once
/// on a session logged in already) is leased here and now, without a future to box for every
/// request. The others (a wait for the place or a login, a body to read, a logout, a capture)
/// go on in a boxed future ([`Step::Later`]): inline, every request's future would be as large
/// as theirs.
pub fn lease<'a>(
    pool: &'a Arc<Pool>,
    permit: Option<&'a Permit>,
    token: &str,
    head: &'a Parts,
    path: &str,
    body: &'a mut Body,
) -> Step<'a, LeaseResult> {
    let now = Step::Now;
    let cfg = &pool.cfg;
    let (login, logout) = pool.actions.classify(path);

    if login && cfg.creation == Creation::Active {
        // SDKs that always call login get a success; the body (credentials) is never read.
        let mut r = empty(StatusCode::NO_CONTENT);
        r.headers_mut().insert(
            headers::TOLLGATE_LOGIN.clone(),
            HeaderValue::from_static("managed"),
        );
        return now(Ok(Leased::Answered(r)));
    }
    let Some(permit) = permit else {
        if logout {
            // No grant, so no session to end; the call is never forwarded (it would sign out
            // whatever its cookies named).
            return now(Ok(Leased::Answered(empty(StatusCode::NO_CONTENT))));
        }
        if login {
            // A passive login needs the grant its session will belong to: forwarded without one,
            // it would open an upstream session that nobody counts or logs out.
            return now(Err(SessionError::GrantRequired));
        }
        return now(Ok(Leased::Session(Lease::new(pool, Kind::Bare, None))));
    };
    let who = match pool.identify(&permit.principal, token, &head.headers) {
        Ok(who) => who,
        Err(e) => return now(Err(e)),
    };
    if logout || login {
        return Step::Later(Box::pin(logout_or_capture(
            pool, permit, who, head, body, login,
        )));
    }
    let session =
        |who, held, replay| Leased::Session(Lease::new(pool, Kind::Held { who, held }, replay));
    match replay_at_once(body, cfg.max_replay_body) {
        Some(replay) => {
            let first = match pool.hold_at_once(&who) {
                AtOnce::Held(held) => return now(Ok(session(who, held, replay))),
                AtOnce::Login(leased) => Some(leased),
                AtOnce::Wait => None,
            };
            Step::Later(Box::pin(async move {
                let held = pool.hold_from(&who, first).await?;
                Ok(session(who, held, replay))
            }))
        }
        None => Step::Later(Box::pin(async move {
            let replay = keep_for_replay(body, cfg.max_replay_body).await?;
            let held = pool.hold(&who).await?;
            Ok(session(who, held, replay))
        })),
    }
}

/// The `lease` step for the upstream's logout call (the slot or grant logged out, answered
/// 204), and for its login call in passive mode (a capture lease).
async fn logout_or_capture(
    pool: &Arc<Pool>,
    permit: &Permit,
    who: Identity,
    head: &Parts,
    body: &mut Body,
    login: bool,
) -> LeaseResult {
    if !login {
        let slot = who.had_handle.then_some(&who.slot);
        pool.logout(&who.grant, slot).await;
        let mut r = empty(StatusCode::NO_CONTENT);
        if who.concurrent && who.had_handle {
            headers::append_set_cookie(r.headers_mut(), &pool.clear_handle_cookie());
        }
        return Ok(Leased::Answered(r));
    }
    let seat = capture::admit(pool, &who, &permit.principal, &head.headers, body).await?;
    let kind = Kind::Capture {
        who,
        seat: Some(seat),
    };
    Ok(Leased::Session(Lease::new(pool, kind, None)))
}

/// What [`keep_for_replay`] decides without reading the body: `Some` of what is kept (the empty
/// body; nothing, for a body too large or of unknown size), or `None` when it must be read.
fn replay_at_once(body: &Body, max: u64) -> Option<Option<Bytes>> {
    if body.is_end_stream() {
        return Some(Some(Bytes::new()));
    }
    if body.size_hint().upper().is_none_or(|n| n > max) {
        return Some(None);
    }
    None
}

/// Keeps the body for a replay when it may be needed and fits `max`: decided from the body (its
/// end and its size hint), never from framing headers, which HTTP/2 does not send.
async fn keep_for_replay(body: &mut Body, max: u64) -> Result<Option<Bytes>, SessionError> {
    if let Some(kept) = replay_at_once(body, max) {
        return Ok(kept);
    }
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let bytes = body::read_bounded(std::mem::replace(body, proxy::empty()), max)
        .await
        .ok_or(SessionError::BodyRead)?;
    *body = proxy::full(bytes.clone());
    Ok(Some(bytes))
}

/// The `settle` step: what the session layer makes of the upstream's answer to one attempt.
///
/// Not an `async fn`: the common answer (the session still good, its cookies taken into the
/// jar) is settled here and now, without a future to box for every request; only the rare
/// ones (the session ended, a capture) wait, in a boxed future ([`Step::Later`]).
pub fn settle<'a>(lease: &'a mut Lease, resp: Response<UpstreamBody>) -> Step<'a, Settled> {
    let now = Step::Now;
    let rare = match &lease.kind {
        Kind::Bare => false,
        Kind::Held { held, .. } => {
            lease.pool.is_expired(resp.status(), resp.headers()) && !held.jar.is_empty()
        }
        Kind::Capture { .. } => true,
    };
    if rare {
        return Step::Later(Box::pin(settle_rare(lease, resp)));
    }
    let Kind::Held { held, .. } = &mut lease.kind else {
        // A public route's answer goes as it came.
        return now(Settled::Keep(resp));
    };
    lease.accepted = resp.status() == StatusCode::ACCEPTED;
    if !lease.pool.absorb(held, resp.headers()) {
        return now(Settled::Keep(resp));
    }
    // The answer deleted a marker cookie: the upstream signed the session out. The answer
    // itself stands; the next request logs in again.
    let pool = &lease.pool;
    Step::Later(Box::pin(async move {
        match pool.ended_upstream(held).await {
            Ok(()) => Settled::Keep(resp),
            Err(e) => Settled::Fail(e),
        }
    }))
}

/// [`settle`] for a capture's answer, and for an answer that says the session has ended.
async fn settle_rare(lease: &mut Lease, resp: Response<UpstreamBody>) -> Settled {
    let pool = lease.pool.clone();
    match &mut lease.kind {
        Kind::Bare => Settled::Keep(resp),
        Kind::Capture { who, seat } => match seat.take() {
            Some(seat) => match Box::pin(capture::settle(&pool, who, seat, resp)).await {
                Ok(resp) => Settled::Keep(resp),
                Err(e) => Settled::Fail(e),
            },
            None => Settled::Fail(SessionError::LoginError),
        },
        // The upstream says the session has ended (`settle` answered every other case).
        Kind::Held { held, .. } => {
            if pool.cfg.creation == Creation::Passive {
                Box::pin(pool.forget(held)).await;
                return Settled::Fail(SessionError::SignedOut);
            }
            if lease.replayed {
                Box::pin(pool.give_up(held)).await;
                return Settled::Fail(SessionError::AuthFailed);
            }
            if lease.replay.is_none() {
                // The body was streamed and is gone: log in again for the next request only.
                let relogged = pool.relogin(held).await;
                pool.release(held, false).await;
                return Settled::Fail(relogged.err().unwrap_or(SessionError::SessionExpired));
            }
            if let Err(e) = pool.relogin(held).await {
                pool.release(held, false).await;
                return Settled::Fail(e);
            }
            lease.replayed = true;
            Settled::Replay
        }
    }
}

impl Lease {
    fn new(pool: &Arc<Pool>, kind: Kind, replay: Option<Bytes>) -> Self {
        Lease {
            pool: pool.clone(),
            kind,
            replay,
            replayed: false,
            accepted: false,
        }
    }

    /// The `Cookie` header the upstream gets: exactly the session's jar (none without a
    /// session; the client's own cookies never cross).
    pub fn cookie(&self, path: &str) -> Option<HeaderValue> {
        match &self.kind {
            Kind::Held { held, .. } => held
                .jar
                .cookie_header(path)
                .and_then(|c| HeaderValue::from_maybe_shared(bytes::Bytes::from(c)).ok()),
            Kind::Bare | Kind::Capture { .. } => None,
        }
    }

    /// The upstream path when it is not the request's: a passive login goes to the configured
    /// login path, whatever spelling the client used.
    pub fn upstream_path(&self) -> Option<&str> {
        match &self.kind {
            Kind::Capture { .. } => Some(&self.pool.cfg.login_path),
            Kind::Bare | Kind::Held { .. } => None,
        }
    }

    /// The body of a replay (the one kept by the `lease` step).
    pub fn replay_body(&self) -> Body {
        proxy::full(self.replay.clone().unwrap_or_default())
    }

    /// Turns true if a shared store could not keep this lease (it expired during an outage
    /// and another request took the session): the request must stop before its answer.
    pub fn lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        match &self.kind {
            Kind::Held { held, .. } => held.lost(),
            Kind::Bare | Kind::Capture { .. } => None,
        }
    }

    /// What the `finish` step changes in an answer with this status.
    pub fn edits(&self, status: StatusCode) -> Edits {
        let cfg = &self.pool.cfg;
        let sanitize = cfg.sanitize_errors && sanitize::applies(status);
        match &self.kind {
            Kind::Bare => Edits {
                sanitize,
                ..Edits::default()
            },
            Kind::Held { who, held } => Edits {
                rewrite_location: true,
                new_session: held.new_session,
                set_cookie: who.new_handle.as_ref().map(|h| self.pool.handle_cookie(h)),
                sanitize,
            },
            Kind::Capture { who, .. } => Edits {
                set_cookie: who.new_handle.as_ref().map(|h| self.pool.handle_cookie(h)),
                ..Edits::default()
            },
        }
    }

    /// Gives the lease back now (the request failed): the in-flight place, and a capture's seat.
    pub async fn release(mut self) {
        match &mut self.kind {
            Kind::Held { held, .. } => self.pool.release(held, false).await,
            Kind::Capture { seat, .. } => {
                if let Some(seat) = seat.take() {
                    self.pool.abandon_capture(seat).await;
                }
            }
            Kind::Bare => {}
        }
    }

    /// The answer's body, holding the lease until it has been sent (or dropped).
    pub fn hold_until_sent(self, body: Body) -> Body {
        if matches!(self.kind, Kind::Held { .. }) {
            LeasedBody {
                inner: body,
                lease: Some(self),
            }
            .boxed()
        } else {
            body
        }
    }
}

impl Drop for Lease {
    /// A lease dropped without a release (its answer's body ended, or the client went away
    /// mid-request) gives its place and seat back: here when that needs no wait (the memory
    /// store's releases never do, and go without a future), else on a task of its own.
    fn drop(&mut self) {
        let accepted = self.accepted;
        type Work = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
        // The pool (and the runtime's handle, below) only for work left to do: a release in the
        // memory store is done here, and that is every answer of a session route of one replica.
        let work: Option<Work> = match std::mem::replace(&mut self.kind, Kind::Bare) {
            Kind::Held { mut held, .. } => {
                self.pool.release_at_once(&mut held, accepted).map(|rest| {
                    let pool = self.pool.clone();
                    Box::pin(async move { pool.release_rest(rest).await }) as Work
                })
            }
            Kind::Capture {
                seat: Some(seat), ..
            } => {
                let pool = self.pool.clone();
                Some(Box::pin(async move { pool.abandon_capture(seat).await }))
            }
            Kind::Capture { .. } | Kind::Bare => None,
        };
        let Some(mut work) = work else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            // One poll without a waker: a release that has to wait (a shared store's round
            // trip) goes on to a task, whose first poll registers its own waker and so misses
            // no wake-up; one that does not wait costs no task.
            let mut cx = TaskContext::from_waker(std::task::Waker::noop());
            if work.as_mut().poll(&mut cx).is_pending() {
                handle.spawn(work);
            }
        }
    }
}

/// An answer's body that holds its lease until the body ends.
struct LeasedBody {
    inner: Body,
    lease: Option<Lease>,
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || self.inner.is_end_stream()
        {
            self.lease.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A gateway-made answer without a body, not cacheable.
fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(proxy::full(Bytes::new()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Chunks;

    #[tokio::test]
    async fn a_lease_dropped_on_the_memory_store_gives_its_place_back_at_once() {
        use futures_util::FutureExt as _;
        let r = crate::session::pool::testing::rig(|_| {}).await;
        let who = r.who("a");
        let held = r.pool.hold(&who).await.unwrap();
        let slot = held.slot.clone();
        drop(Lease::new(&r.pool, Kind::Held { who, held }, None));
        // Read without letting another task run: the place is free already, not on a task
        // still to be scheduled.
        let record = r
            .record(&slot)
            .now_or_never()
            .expect("the memory store never waits");
        assert_eq!(record.unwrap().in_flight, 0);
    }

    #[tokio::test]
    async fn the_common_request_and_answer_are_settled_at_once_and_the_rest_waits() {
        use crate::session::pool::testing::{principal, rig};
        let r = rig(|_| {}).await;
        let permit = Permit {
            route: "r".into(),
            principal: principal(serde_json::json!({"grant_id": "a", "scope": "api"})),
        };
        let head = http::Request::get("/entity/Default/24.200.001/Customer")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let path = head.uri.path().to_owned();
        /// The lease, and whether it was had at once.
        async fn lease_of(step: Step<'_, LeaseResult>) -> (bool, Lease) {
            let (now, leased) = match step {
                Step::Now(l) => (true, l),
                Step::Later(waits) => (false, waits.await),
            };
            match leased {
                Ok(Leased::Session(lease)) => (now, lease),
                _ => panic!("a session lease"),
            }
        }
        // The fake's own answers: with the lease's jar (200, fresh cookies), and without (401).
        let answer = |cookie: Option<HeaderValue>| {
            let mut req = http::Request::get(r.pool.upstream.uri_for(&path).unwrap())
                .body(proxy::empty())
                .unwrap();
            if let Some(c) = cookie {
                req.headers_mut().insert(header::COOKIE, c);
            }
            r.pool.upstream.send(req)
        };
        let mut body = proxy::empty();

        // The first request logs in: it waits.
        let step = lease(&r.pool, Some(&permit), "t", &head, &path, &mut body);
        let (now, mut first) = lease_of(step).await;
        assert!(!now, "a login was waited for");
        let ok = answer(first.cookie(&path)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(matches!(
            settle(&mut first, ok),
            Step::Now(Settled::Keep(_))
        ));
        drop(first);

        // The next finds its session logged in and its place free: no future at all.
        let step = lease(&r.pool, Some(&permit), "t", &head, &path, &mut body);
        let (now, mut second) = lease_of(step).await;
        assert!(now, "the common request waited");
        // An answer that says the session ended waits for the re-login.
        let ended = answer(None).await.unwrap();
        assert_eq!(ended.status(), StatusCode::UNAUTHORIZED);
        match settle(&mut second, ended) {
            Step::Later(waits) => assert!(matches!(waits.await, Settled::Replay)),
            Step::Now(_) => panic!("an ended session was settled at once"),
        }
        assert_eq!(r.fake.counters().logins_ok, 2);
    }

    #[tokio::test]
    async fn a_body_is_kept_for_a_replay_only_when_its_size_is_known_and_fits() {
        let mut empty = proxy::full(Bytes::new());
        assert_eq!(keep_for_replay(&mut empty, 4).await, Ok(Some(Bytes::new())));

        let mut small = proxy::full("abcd");
        assert_eq!(
            keep_for_replay(&mut small, 4).await,
            Ok(Some(Bytes::from("abcd")))
        );
        let again = small.collect().await.unwrap().to_bytes();
        assert_eq!(again, "abcd", "the body goes on, equal, after it was read");

        let mut large = proxy::full("abcde");
        assert_eq!(keep_for_replay(&mut large, 4).await, Ok(None));
        assert_eq!(large.collect().await.unwrap().to_bytes(), "abcde");

        // Unknown length (a chunked or HTTP/2 body without content-length): streamed as it is.
        let mut unknown = Chunks(vec![Bytes::from("ab")])
            .map_err(|never| match never {})
            .boxed();
        assert_eq!(keep_for_replay(&mut unknown, 4).await, Ok(None));
        assert_eq!(unknown.collect().await.unwrap().to_bytes(), "ab");
    }
}
