//! A request on a session, from its cookies to its answer's last cookie: the session checks
//! (both cookies of one live session), the per-session lock, the request rate, and what the
//! answer does to its session afterwards (renewal of `.ASPXAUTH`, a sign-out by the answer, a
//! session that ended while the request ran). What the request itself does is in `data`.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::data::DataOp;
use super::replies::{
    add_cookie, add_request_cookies, delete_auth_cookie, json_response, login_redirect,
};
use super::state::{random_hex, Auth, InFlight, Session};
use super::{FakeLegacy, AUTH_COOKIE};
use crate::Body;

const DENIED: &str = "Authorization has been denied for this request.";
const THROTTLED: &str = "The number of requests per minute has exceeded the limit of the license.";

impl FakeLegacy {
    /// A request that needs a session: a data endpoint (`data` is `Some`) or a page.
    pub(super) async fn session_request(
        &self,
        req: Request<Incoming>,
        cookies: &[(String, String)],
        data: Option<(String, DataOp)>,
    ) -> Response<Body> {
        let refuse = |data: &Option<(String, DataOp)>, path: &str| match data {
            Some(_) => json_response(StatusCode::UNAUTHORIZED, &json!({"message": DENIED})),
            None => login_redirect(path),
        };
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let entered = {
            let mut st = self.inner.lock();
            let entered = match st.resolve(cookies) {
                Auth::Session(ordinal) => st
                    .enter(ordinal)
                    .map(|lock| (ordinal, lock, st.opts.serialize_per_session)),
                Auth::Mixed => {
                    st.counters.mixed_session_cookies += 1;
                    None
                }
                Auth::None => None,
            };
            if entered.is_none() {
                st.counters.requests_unauthenticated += 1;
            }
            entered
        };
        let Some((ordinal, lock, serialize)) = entered else {
            return refuse(&data, &path);
        };
        let _in_flight = InFlight {
            inner: self.inner.clone(),
            ordinal,
        };
        let _turn = if serialize {
            Some(lock.lock_owned().await)
        } else {
            None
        };
        let throttled = {
            let mut st = self.inner.lock();
            if !st.sessions.contains_key(&ordinal) {
                // The session ended while this request waited for its turn.
                st.counters.requests_unauthenticated += 1;
                None
            } else {
                if st.uses_stale_auth(ordinal, cookies) {
                    st.counters.stale_auth_cookie += 1;
                }
                Some(if data.is_some() { st.over_rate() } else { None })
            }
        };
        let retry_after = match throttled {
            None => return refuse(&data, &path),
            Some(r) => r,
        };
        if let Some(secs) = retry_after {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"message": THROTTLED}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        let (body_bytes, body_sha256) = drain(body).await;
        let is_data = data.is_some();
        // A streamed answer keeps its session in use (and its turn) until it has been sent.
        let streams = matches!(&data, Some((_, DataOp::Stream)));
        let mut resp = match data {
            None => json_response(
                StatusCode::OK,
                &json!({"session": ordinal, "path": path, "method": parts.method.as_str(), "body_bytes": body_bytes, "body_sha256": body_sha256}),
            ),
            Some((prefix, op)) => {
                self.data_op(ordinal, &prefix, op, &parts, body_bytes, &body_sha256)
                    .await
            }
        };
        // What the session came to while the request ran: ended (logout, expiry), signed out
        // by this very answer, due for a renewed `.ASPXAUTH`, or simply on.
        let mut st = self.inner.lock();
        let renew_every = st.opts.renew_auth_every;
        let rotate = st.opts.rotate_cookies;
        let ended = match st.sessions.get_mut(&ordinal) {
            None => true,
            Some(s) if s.sign_out_next => {
                st.sessions.remove(&ordinal);
                st.counters.signed_out_by_answer += 1;
                st.counters.expiries += 1;
                st.update_seats();
                delete_auth_cookie(resp.headers_mut());
                false
            }
            Some(s) => {
                s.answers += 1;
                if is_data && renew_every > 0 && s.answers >= renew_every {
                    let fresh = renew_auth(s);
                    add_cookie(
                        resp.headers_mut(),
                        &format!("{AUTH_COOKIE}={fresh}; path=/; HttpOnly"),
                    );
                    st.counters.auth_renewed += 1;
                }
                false
            }
        };
        if ended {
            // The real API fails a request whose session ended under it: not signed in.
            st.counters.ended_mid_request += 1;
            st.counters.requests_unauthenticated += 1;
            drop(st);
            let mut r = if is_data {
                json_response(StatusCode::UNAUTHORIZED, &json!({"message": DENIED}))
            } else {
                login_redirect(&path)
            };
            delete_auth_cookie(r.headers_mut());
            return r;
        }
        let seq = rotate.then(|| st.next_seq());
        drop(st);
        if let Some(seq) = seq {
            add_request_cookies(resp.headers_mut(), seq, &path);
        }
        if streams {
            return resp.map(|body| {
                http_body_util::BodyExt::boxed(Holding {
                    body,
                    _held: (_in_flight, _turn),
                })
            });
        }
        resp
    }
}

/// A body that holds `G` (the request's in-flight mark and its turn on the session) until it
/// has been sent or dropped.
struct Holding<G> {
    body: Body,
    _held: G,
}

impl<G: Unpin> http_body::Body for Holding<G> {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Gives the session a fresh `.ASPXAUTH` value and returns it; the replaced one is kept.
fn renew_auth(s: &mut Session) -> String {
    s.answers = 0;
    let fresh = random_hex(4);
    let old = std::mem::replace(&mut s.auth, fresh.clone());
    // Old tickets lapse in time; the last few are kept to recognise them.
    if s.old_auth.len() >= 16 {
        s.old_auth.remove(0);
    }
    s.old_auth.push(old);
    fresh
}

/// Reads and discards a body of any size; returns its length and SHA-256 (hex), so that tests
/// can check that a body arrived byte for byte.
async fn drain(mut body: Incoming) -> (u64, String) {
    use sha2::Digest as _;
    let mut n = 0u64;
    let mut digest = sha2::Sha256::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                    digest.update(d);
                }
            }
            Err(_) => break,
        }
    }
    let hex = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (n, hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, Instant};

    use serde_json::json;

    use crate::demo::legacy::harness::{cookie_value, start, ECHO};
    use crate::demo::legacy::state::State;
    use crate::demo::legacy::{LegacyOptions, SESSION_COOKIE};

    #[test]
    fn a_renewal_keeps_the_last_sixteen_values() {
        let mut st = State::new(LegacyOptions::default());
        let now = st.now();
        let (ordinal, _, first) = st.open_session("admin".to_owned(), None, None, now);
        let s = st.sessions.get_mut(&ordinal).unwrap();
        s.answers = 3;
        let fresh = renew_auth(s);
        assert_eq!((s.answers, s.auth.as_str()), (0, fresh.as_str()));
        assert_ne!(fresh, first);
        assert_eq!(s.old_auth, std::slice::from_ref(&first));
        for _ in 0..16 {
            renew_auth(s);
        }
        assert_eq!(s.old_auth.len(), 16);
        assert!(!s.old_auth.contains(&first));
        assert_eq!(s.old_auth.first(), Some(&fresh));
    }

    #[tokio::test]
    async fn data_needs_both_cookies_of_one_live_session() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let ok = f.echo(&jar).await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.json(),
            json!({"session": 1, "user": "admin", "tenant": "MyStore", "branch": "HQ"})
        );
        // Fresh request cookies on every authenticated answer.
        let rotated = ok.set_cookies();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(rotated[0].starts_with("requestid="));
        assert!(rotated[1].contains(&format!("+sc:~{ECHO}+")));

        let no = f.echo("").await;
        assert_eq!(no.status, 401);
        assert_eq!(no.json(), json!({"message": DENIED}));
        assert!(no.set_cookies().is_empty());
        let only_sid = format!("ASP.NET_SessionId={}", cookie_value(&jar, SESSION_COOKIE));
        assert_eq!(f.echo(&only_sid).await.status, 401);
        let only_auth = format!(".ASPXAUTH={}", cookie_value(&jar, AUTH_COOKIE));
        assert_eq!(f.echo(&only_auth).await.status, 401);
        // Two Cookie headers are merged.
        let r = f
            .call(
                "GET",
                ECHO,
                &[("cookie", &only_sid), ("cookie", &only_auth)],
                "",
            )
            .await;
        assert_eq!(r.status, 200);
        // Pages outside /entity redirect to the login page.
        let page = f.call("GET", "/Main?ScreenId=AR303000", &[], "").await;
        assert_eq!(page.status, 302);
        assert_eq!(
            page.headers.get("location").unwrap(),
            "/Frames/Login.aspx?ReturnUrl=%2FMain"
        );
        assert_eq!(
            f.call("GET", "/Main", &[("cookie", &jar)], "").await.status,
            200
        );
        assert_eq!(f.fake.counters().requests_unauthenticated, 4);
        let h = f.call("GET", "/health", &[], "").await;
        assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));

        // Generic data paths answer 200 with the session.
        let r = f
            .call(
                "PUT",
                "/entity/Default/24.200.001/Customer",
                &[("cookie", &jar)],
                "{\"a\":1}",
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["session"], 1);
        assert_eq!(r.json()["path"], "/entity/Default/24.200.001/Customer");
        assert_eq!(r.json()["body_bytes"], 7);
        // Without rotation (and renewal), no Set-Cookie at all.
        f.call(
            "POST",
            "/_fake/config",
            &[],
            r#"{"rotate_cookies":false,"renew_auth_every":0}"#,
        )
        .await;
        assert!(f.echo(&jar).await.set_cookies().is_empty());
    }

    #[tokio::test]
    async fn mixed_session_cookies_are_detected() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let b = f.login().await;
        let mixed = format!(
            "ASP.NET_SessionId={}; .ASPXAUTH={}",
            cookie_value(&a, SESSION_COOKIE),
            cookie_value(&b, AUTH_COOKIE)
        );
        let r = f.echo(&mixed).await;
        assert_eq!(r.status, 401);
        let n = f.fake.counters();
        assert_eq!(
            (n.mixed_session_cookies, n.requests_unauthenticated),
            (1, 1)
        );
        // Both jars in one request are mixed too.
        assert_eq!(f.echo(&format!("{a}; {b}")).await.status, 401);
        assert_eq!(f.fake.counters().mixed_session_cookies, 2);
        assert_eq!(f.fake.counters().foreign_cookie, 0);
    }

    #[tokio::test]
    async fn concurrency_per_session_is_measured_before_the_lock() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let slow = "/entity/Default/24.200.001/Slow?ms=150";
        let started = Instant::now();
        let h = [("cookie", jar.as_str())];
        let (a, b) = tokio::join!(f.call("GET", slow, &h, ""), f.call("GET", slow, &h, ""));
        assert_eq!((a.status, b.status), (200, 200));
        assert_eq!(a.json(), json!({"session": 1}));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "serialised"
        );
        assert_eq!(f.fake.counters().max_concurrency_per_session, 2);
        let state = f.fake.state();
        assert_eq!(state["sessions"][0]["max_in_flight"], 2);
        assert_eq!(state["sessions"][0]["in_flight"], 0);

        // One at a time stays at 1.
        f.fake.reset();
        let jar = f.login().await;
        for _ in 0..3 {
            f.call("GET", slow, &[("cookie", &jar)], "").await;
        }
        assert_eq!(f.fake.counters().max_concurrency_per_session, 1);
        assert_eq!(
            f.call(
                "GET",
                "/entity/Default/1/Slow?ms=x",
                &[("cookie", &jar)],
                ""
            )
            .await
            .status,
            400
        );
    }

    #[tokio::test]
    async fn auth_cookies_are_renewed_and_the_old_ones_counted() {
        let f = start(LegacyOptions {
            renew_auth_every: 2,
            rotate_cookies: false,
            ..LegacyOptions::default()
        })
        .await;
        let jar = f.login().await;
        assert!(f.echo(&jar).await.set_cookies().is_empty());
        let renewed = f.echo(&jar).await;
        let fresh = renewed.set_cookies();
        assert_eq!(fresh.len(), 1, "{fresh:?}");
        let new_auth = fresh[0].split(';').next().unwrap().to_owned();
        assert!(new_auth.starts_with(".ASPXAUTH=") && new_auth.len() > 20);
        // The replaced value still authenticates, and is counted.
        assert_eq!(f.echo(&jar).await.status, 200);
        assert_eq!(f.fake.counters().stale_auth_cookie, 1);
        let followed = format!(
            "ASP.NET_SessionId={}; {new_auth}",
            cookie_value(&jar, "ASP.NET_SessionId")
        );
        assert_eq!(f.echo(&followed).await.status, 200);
        let c = f.fake.counters();
        assert_eq!((c.stale_auth_cookie, c.auth_renewed), (1, 2), "{c:?}");
    }

    #[tokio::test]
    async fn a_session_signed_out_by_an_answer_deletes_its_cookie() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        assert!(f.fake.sign_out_on_next_answer(1));
        let last = f.echo(&jar).await;
        assert_eq!(last.status, 200);
        assert!(last
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(".ASPXAUTH=;") && c.contains("1970")));
        assert_eq!(f.echo(&jar).await.status, 401);
        let c = f.fake.counters();
        assert_eq!((c.signed_out_by_answer, c.seats_in_use), (1, 0), "{c:?}");
        // Over the control API too.
        let jar = f.login().await;
        let r = f
            .call("POST", "/_fake/sign-out", &[], r#"{"session":2}"#)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(f
            .echo(&jar)
            .await
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(".ASPXAUTH=;")));
        assert_eq!(
            f.call("POST", "/_fake/sign-out", &[], r#"{"session":2}"#)
                .await
                .status,
            404
        );
    }

    #[tokio::test]
    async fn data_requests_are_limited_per_minute() {
        let f = start(LegacyOptions {
            max_requests_per_minute: 2,
            ..LegacyOptions::default()
        })
        .await;
        let jar = f.login().await;
        for _ in 0..2 {
            assert_eq!(f.echo(&jar).await.status, 200);
        }
        let r = f.echo(&jar).await;
        assert_eq!(r.status, 429);
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        // Logins and logouts are not data requests; a new minute starts afresh.
        f.fake.advance_clock(Duration::from_secs(61));
        let jar = f.login().await;
        assert_eq!(f.echo(&jar).await.status, 200);
        assert_eq!(f.fake.counters().requests_throttled, 1);
    }
}
