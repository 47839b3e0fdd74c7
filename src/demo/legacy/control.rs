//! The test-control side of the fake: the HTTP control API under `/_fake/` and the Rust knobs
//! tests call directly (state, counters, forced expiry, sign-out, seats, options, clock, reset).
//! Control requests are routed before the leak detectors see them, so driving the fake never
//! shows up as a gateway's leak.

use crate::clock::millis;
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::replies::{control_error, json_response};
use super::routing::read_limited;
use super::state::{running_op, Session};
use super::{Counters, FakeLegacy, LegacyOptions, LimitShape};
use crate::Body;

impl FakeLegacy {
    /// The same JSON as `GET /_fake/state`.
    pub fn state(&self) -> Value {
        let mut st = self.inner.lock();
        st.sweep();
        let now = st.now();
        let mut sessions: Vec<&Session> = st.sessions.values().collect();
        sessions.sort_by_key(|s| s.ordinal);
        let sessions: Vec<Value> = sessions
            .iter()
            .map(|s| {
                json!({
                    "session": s.ordinal,
                    "user": s.user,
                    "tenant": s.tenant,
                    "branch": s.branch,
                    "created_ms_ago": millis(now.saturating_duration_since(s.created)),
                    "idle_ms": millis(now.saturating_duration_since(s.last_seen)),
                    "in_flight": s.in_flight,
                    "max_in_flight": s.max_in_flight,
                    "counter": s.counter,
                    "long_op_running": running_op(s, now, st.opts.long_op_duration).is_some(),
                })
            })
            .collect();
        let mut locked: Vec<&str> = st
            .lockouts
            .iter()
            .filter(|(_, l)| l.locked_until.is_some_and(|t| t > now))
            .map(|(name, _)| name.as_str())
            .collect();
        locked.sort_unstable();
        json!({
            "counters": serde_json::to_value(st.counters).unwrap_or(Value::Null),
            "sessions": sessions,
            "reserved_seats": st.reserved,
            "max_api_users": st.opts.max_api_users,
            "locked_users": locked,
            "clock_offset_ms": millis(st.offset),
        })
    }

    /// The counters, after closing idle sessions.
    pub fn counters(&self) -> Counters {
        let mut st = self.inner.lock();
        st.sweep();
        st.counters
    }

    /// Closes session `session` (by ordinal), or every session for `None`, without a logout:
    /// the seat is freed and the closing counted in `expiries`.
    pub fn expire(&self, session: Option<u64>) {
        self.expire_sessions(session);
    }

    fn expire_sessions(&self, session: Option<u64>) -> usize {
        let mut st = self.inner.lock();
        let n = match session {
            None => {
                let n = st.sessions.len();
                st.sessions.clear();
                n
            }
            Some(ordinal) => usize::from(st.sessions.remove(&ordinal).is_some()),
        };
        st.counters.expiries += n as u64;
        st.update_seats();
        n
    }

    /// Session `session`'s next data answer ends it: the answer is served and deletes
    /// `.ASPXAUTH` (the upstream signing the session out by itself). False if no such session.
    pub fn sign_out_on_next_answer(&self, session: u64) -> bool {
        let mut st = self.inner.lock();
        match st.sessions.get_mut(&session) {
            Some(s) => {
                s.sign_out_next = true;
                true
            }
            None => false,
        }
    }

    /// The login attempts so far, oldest first: when they were answered (on the real clock)
    /// and how (`ok`, `bad_credentials`, `limit`, `locked`). Tests check the spacing of
    /// refused attempts with it.
    pub fn login_attempts(&self) -> Vec<(Instant, &'static str)> {
        self.inner.lock().logins.iter().copied().collect()
    }

    /// The `traceparent` header of each login request so far (the last 1,000), oldest first.
    pub fn login_traceparents(&self) -> Vec<Option<String>> {
        self.inner
            .lock()
            .login_traceparents
            .iter()
            .cloned()
            .collect()
    }

    /// Replaces the password of user `name` (the account's password changed upstream).
    pub fn set_password(&self, name: &str, password: &str) {
        let mut st = self.inner.lock();
        for u in &mut st.opts.users {
            if u.name.eq_ignore_ascii_case(name) {
                u.password = password.to_owned();
            }
        }
    }

    /// The live sessions' ordinals, in order.
    pub fn live_sessions(&self) -> Vec<u64> {
        let mut st = self.inner.lock();
        st.sweep();
        let mut v: Vec<u64> = st.sessions.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Seats held by "other integrations" (replaces the previous number).
    pub fn reserve_seats(&self, n: u32) {
        self.inner.lock().reserved = n;
    }

    /// Changes options at run time, as `POST /_fake/config` does.
    pub fn configure_with(&self, change: impl FnOnce(&mut LegacyOptions)) {
        let mut st = self.inner.lock();
        change(&mut st.opts);
        st.sweep();
    }

    /// The status of the "API Login Limit" answer (an invalid status is answered as 500).
    pub fn set_login_limit_status(&self, s: u16) {
        self.inner.lock().opts.login_limit_status = s;
    }

    pub fn set_idle_timeout(&self, d: Duration) {
        let mut st = self.inner.lock();
        st.opts.idle_timeout = d;
        st.sweep();
    }

    /// Moves the fake's clock forward: idle expiry, lockouts and long operations use the real
    /// monotonic clock plus the sum of all advances.
    pub fn advance_clock(&self, d: Duration) {
        let mut st = self.inner.lock();
        st.offset = st.offset.saturating_add(d);
        st.sweep();
    }

    /// Drops all sessions, counters, lockouts and reserved seats. Options (including those changed
    /// at run time), the clock and the session ordinals are kept.
    pub fn reset(&self) {
        let mut st = self.inner.lock();
        st.sessions.clear();
        st.counters = Counters::default();
        st.lockouts.clear();
        st.reserved = 0;
    }

    /// `/_fake/...`.
    pub(super) async fn control(&self, req: Request<Incoming>, path: &str) -> Response<Body> {
        let sub = path.strip_prefix("/_fake").unwrap_or_default();
        let method = req.method().clone();
        if sub == "/state" {
            return if method == Method::GET {
                json_response(StatusCode::OK, &self.state())
            } else {
                control_error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            };
        }
        if !matches!(
            sub,
            "/expire" | "/reserve-seats" | "/config" | "/reset" | "/advance-clock" | "/sign-out"
        ) {
            return control_error(StatusCode::NOT_FOUND, "unknown control endpoint");
        }
        if method != Method::POST {
            return control_error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        }
        let body = match read_limited(req.into_body()).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return control_error(StatusCode::BAD_REQUEST, "body must be a JSON object"),
            }
        };
        match sub {
            "/expire" => {
                let which = if v["all"] == Value::Bool(true) {
                    None
                } else if let Some(n) = v["session"].as_u64() {
                    Some(n)
                } else {
                    return control_error(
                        StatusCode::BAD_REQUEST,
                        "expected {\"session\": <ordinal>} or {\"all\": true}",
                    );
                };
                let n = self.expire_sessions(which);
                json_response(StatusCode::OK, &json!({"expired": n}))
            }
            "/reserve-seats" => match v["n"].as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => {
                    self.reserve_seats(n);
                    json_response(StatusCode::OK, &json!({"reserved_seats": n}))
                }
                None => control_error(StatusCode::BAD_REQUEST, "expected {\"n\": <seats>}"),
            },
            "/advance-clock" => match v["ms"].as_u64() {
                Some(ms) => {
                    self.advance_clock(Duration::from_millis(ms));
                    json_response(StatusCode::OK, &json!({"advanced_ms": ms}))
                }
                None => control_error(StatusCode::BAD_REQUEST, "expected {\"ms\": <millis>}"),
            },
            "/reset" => {
                self.reset();
                json_response(StatusCode::OK, &json!({"reset": true}))
            }
            "/sign-out" => match v["session"].as_u64() {
                Some(n) if self.sign_out_on_next_answer(n) => {
                    json_response(StatusCode::OK, &json!({"sign_out_next": n}))
                }
                Some(_) => control_error(StatusCode::NOT_FOUND, "no such session"),
                None => control_error(StatusCode::BAD_REQUEST, "expected {\"session\": <ordinal>}"),
            },
            _ => self.configure(&v),
        }
    }

    /// `POST /_fake/config`: validates every member first, then applies them all.
    fn configure(&self, v: &Value) -> Response<Body> {
        let Some(obj) = v.as_object() else {
            return control_error(StatusCode::BAD_REQUEST, "body must be a JSON object");
        };
        let mut st = self.inner.lock();
        let mut opts = st.opts.clone();
        for (key, value) in obj {
            let ok = match key.as_str() {
                "login_limit_status" => value
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| StatusCode::from_u16(*s).is_ok())
                    .map(|s| opts.login_limit_status = s),
                "idle_timeout_ms" => value
                    .as_u64()
                    .map(|ms| opts.idle_timeout = Duration::from_millis(ms)),
                "long_op_duration_ms" => value
                    .as_u64()
                    .map(|ms| opts.long_op_duration = Duration::from_millis(ms)),
                "max_api_users" => value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(|n| opts.max_api_users = n),
                "serialize_per_session" => value.as_bool().map(|b| opts.serialize_per_session = b),
                "rotate_cookies" => value.as_bool().map(|b| opts.rotate_cookies = b),
                "strict_content_length" => value.as_bool().map(|b| opts.strict_content_length = b),
                "renew_auth_every" => value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(|n| opts.renew_auth_every = n),
                "max_requests_per_minute" => value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(|n| opts.max_requests_per_minute = n),
                "login_delay_ms" => value
                    .as_u64()
                    .map(|ms| opts.login_delay = Duration::from_millis(ms)),
                "unavailable" => value.as_bool().map(|b| opts.unavailable = b),
                "login_limit_shape" => match value.as_str() {
                    Some("error") => Some(LimitShape::Error),
                    Some("redirect") => Some(LimitShape::Redirect),
                    _ => None,
                }
                .map(|shape| opts.login_limit_shape = shape),
                _ => {
                    return control_error(StatusCode::BAD_REQUEST, &format!("unknown option {key}"))
                }
            };
            if ok.is_none() {
                return control_error(StatusCode::BAD_REQUEST, &format!("invalid value for {key}"));
            }
        }
        st.opts = opts;
        st.sweep();
        let o = &st.opts;
        json_response(
            StatusCode::OK,
            &json!({
                "login_limit_status": o.login_limit_status,
                "idle_timeout_ms": millis(o.idle_timeout),
                "long_op_duration_ms": millis(o.long_op_duration),
                "max_api_users": o.max_api_users,
                "serialize_per_session": o.serialize_per_session,
                "rotate_cookies": o.rotate_cookies,
                "strict_content_length": o.strict_content_length,
                "renew_auth_every": o.renew_auth_every,
                "login_delay_ms": millis(o.login_delay),
                "unavailable": o.unavailable,
                "max_requests_per_minute": o.max_requests_per_minute,
                "login_limit_shape": match o.login_limit_shape {
                    LimitShape::Error => "error",
                    LimitShape::Redirect => "redirect",
                },
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::demo::legacy::harness::start;

    fn opts_of(fake: &FakeLegacy) -> LegacyOptions {
        fake.inner.lock().opts.clone()
    }

    #[test]
    fn a_config_with_one_bad_member_changes_nothing() {
        let fake = FakeLegacy::new(LegacyOptions::default());
        for bad in [
            json!({"max_api_users": 5, "login_limit_status": 99}),
            json!({"max_api_users": 5, "renew_auth_every": -1}),
            json!({"max_api_users": 5, "login_limit_shape": "teapot"}),
            json!({"max_api_users": 5, "unknown": true}),
            json!({"max_api_users": 5, "unavailable": "yes"}),
            json!([1]),
        ] {
            assert_eq!(fake.configure(&bad).status(), 400, "{bad}");
            assert_eq!(opts_of(&fake).max_api_users, 2, "{bad}");
        }
    }

    #[test]
    fn a_config_applies_every_member() {
        let fake = FakeLegacy::new(LegacyOptions::default());
        let r = fake.configure(&json!({
            "max_api_users": 7,
            "idle_timeout_ms": 1500,
            "long_op_duration_ms": 20,
            "login_delay_ms": 5,
            "renew_auth_every": 0,
            "max_requests_per_minute": 9,
            "rotate_cookies": false,
            "serialize_per_session": false,
            "strict_content_length": false,
            "unavailable": true,
            "login_limit_status": 429,
            "login_limit_shape": "redirect",
        }));
        assert_eq!(r.status(), 200);
        let o = opts_of(&fake);
        assert_eq!(o.max_api_users, 7);
        assert_eq!(o.idle_timeout, Duration::from_millis(1500));
        assert_eq!(o.long_op_duration, Duration::from_millis(20));
        assert_eq!(o.login_delay, Duration::from_millis(5));
        assert_eq!((o.renew_auth_every, o.max_requests_per_minute), (0, 9));
        assert!(!o.rotate_cookies && !o.serialize_per_session && !o.strict_content_length);
        assert!(o.unavailable);
        assert_eq!(o.login_limit_status, 429);
        assert_eq!(o.login_limit_shape, LimitShape::Redirect);
        // Untouched members stay as they were.
        assert_eq!(o.lockout_threshold, 3);
    }

    #[test]
    fn a_reset_keeps_the_options_the_clock_and_the_ordinals() {
        let fake = FakeLegacy::new(LegacyOptions::default());
        fake.set_idle_timeout(Duration::from_secs(5));
        fake.advance_clock(Duration::from_secs(1));
        fake.reserve_seats(1);
        {
            let mut st = fake.inner.lock();
            let now = st.now();
            st.open_session("admin".to_owned(), None, None, now);
            st.lockouts.insert("admin".to_owned(), Default::default());
        }
        assert_eq!(fake.live_sessions(), [1]);
        fake.reset();
        assert_eq!(fake.live_sessions(), Vec::<u64>::new());
        assert_eq!(fake.counters(), Counters::default());
        let st = fake.inner.lock();
        assert!(st.lockouts.is_empty());
        assert_eq!(st.reserved, 0);
        assert_eq!(st.opts.idle_timeout, Duration::from_secs(5));
        assert_eq!(st.offset, Duration::from_secs(1));
        drop(st);
        let mut st = fake.inner.lock();
        let now = st.now();
        assert_eq!(st.open_session("admin".to_owned(), None, None, now).0, 2);
    }

    #[test]
    fn forced_expiry_counts_what_it_closed() {
        let fake = FakeLegacy::new(LegacyOptions {
            max_api_users: 5,
            ..LegacyOptions::default()
        });
        {
            let mut st = fake.inner.lock();
            let now = st.now();
            for _ in 0..3 {
                st.open_session("admin".to_owned(), None, None, now);
            }
        }
        assert_eq!(fake.expire_sessions(Some(2)), 1);
        assert_eq!(fake.expire_sessions(Some(2)), 0);
        assert!(!fake.sign_out_on_next_answer(2));
        assert!(fake.sign_out_on_next_answer(3));
        assert_eq!(fake.expire_sessions(None), 2);
        let c = fake.counters();
        assert_eq!((c.expiries, c.seats_in_use, c.peak_seats), (3, 0, 3));
    }

    #[tokio::test]
    async fn the_control_api_shows_and_changes_state() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let _b = f.login().await;
        f.call("PUT", "/entity/Default/1/Counter", &[("cookie", &a)], "")
            .await;
        let s = f.call("GET", "/_fake/state", &[], "").await;
        assert_eq!(s.status, 200);
        let s = s.json();
        assert_eq!(s["counters"], f.fake.state()["counters"]);
        assert_eq!(s["counters"]["logins_ok"], 2);
        assert_eq!(s["counters"]["seats_in_use"], 2);
        assert_eq!(s["reserved_seats"], 0);
        let first = &s["sessions"][0];
        assert_eq!(first["session"], 1);
        assert_eq!(first["user"], "admin");
        assert_eq!(first["tenant"], "MyStore");
        assert_eq!(first["in_flight"], 0);
        assert_eq!(first["counter"], 1);
        assert!(first["created_ms_ago"].is_u64() && first["idle_ms"].is_u64());
        assert_eq!(s["sessions"][1]["session"], 2);

        let r = f
            .call("POST", "/_fake/expire", &[], r#"{"session":1}"#)
            .await;
        assert_eq!(r.json(), json!({"expired": 1}));
        assert_eq!(f.echo(&a).await.status, 401);
        let n = f.fake.counters();
        assert_eq!((n.expiries, n.seats_in_use, n.logouts), (1, 1, 0));
        let r = f
            .call("POST", "/_fake/expire", &[], r#"{"all":true}"#)
            .await;
        assert_eq!(r.json(), json!({"expired": 1}));
        assert_eq!(f.call("POST", "/_fake/expire", &[], "{}").await.status, 400);
        assert_eq!(
            f.call("POST", "/_fake/expire", &[], "nope").await.status,
            400
        );
        assert_eq!(f.call("POST", "/_fake/nothing", &[], "").await.status, 404);
        assert_eq!(f.call("GET", "/_fake/reset", &[], "").await.status, 405);

        f.fake.reserve_seats(1);
        f.login_as("admin", "x", None).await;
        assert_eq!(f.call("POST", "/_fake/reset", &[], "").await.status, 200);
        assert_eq!(f.fake.counters(), Counters::default());
        let s = f.fake.state();
        assert_eq!(s["reserved_seats"], 0);
        assert_eq!(s["sessions"], json!([]));
        // Ordinals keep counting after a reset.
        let c = f.login().await;
        assert_eq!(f.echo(&c).await.json()["session"], 3);

        // serialize_per_session off: parallel requests really run in parallel.
        f.call(
            "POST",
            "/_fake/config",
            &[],
            r#"{"serialize_per_session":false}"#,
        )
        .await;
        let slow = "/entity/Default/1/Slow?ms=200";
        let started = Instant::now();
        let h = [("cookie", c.as_str())];
        let _ = tokio::join!(f.call("GET", slow, &h, ""), f.call("GET", slow, &h, ""));
        assert!(started.elapsed() < Duration::from_millis(390));
        assert_eq!(f.fake.counters().max_concurrency_per_session, 2);
    }
}
