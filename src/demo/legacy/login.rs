//! Signing in and out: `POST /entity/auth/login` (the form, the lockout, the credentials, the
//! tenant and branch, the seat limit, the login delay) and `POST /entity/auth/logout`.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::replies::{
    add_cookie, add_request_cookies, delete_auth_cookie, empty, json_response, px_error,
};
use super::routing::read_limited;
use super::state::{Auth, Lockout};
use super::{FakeLegacy, LegacyUser, LimitShape, AUTH_COOKIE, SESSION_COOKIE};
use crate::Body;

const INVALID_CREDENTIALS: &str = "Error: Invalid credentials. Please try again.";
const NO_COMPANY: &str = "A proper company ID cannot be determined for the request.";
const LOGIN_LIMIT: &str = "API Login Limit";
const LOCKED_OUT: &str = "Error: Your account is locked out.";
/// Where the login limit redirects in the `Redirect` shape.
const LIMIT_REDIRECT: &str = "/Frames/Error.aspx?exceptionID=PX.Data.PXException&typeID=Login&message=Login%20failed.%20The%20number%20of%20concurrent%20API%20logins%20exceeds%20the%20license%20limit.";

struct LoginForm {
    name: String,
    password: String,
    tenant: Option<String>,
    branch: Option<String>,
}

enum LoginOutcome {
    Ok {
        session_id: String,
        auth: String,
        branch_no: usize,
        tenant: Option<String>,
        seq: u64,
    },
    Refused(StatusCode, &'static str),
    /// The login limit as a redirect to the error page.
    LimitRedirect,
    BadBranch(String),
}

impl FakeLegacy {
    pub(super) async fn login(&self, req: Request<Incoming>) -> Response<Body> {
        let traceparent = req
            .headers()
            .get("traceparent")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        {
            let mut st = self.inner.lock();
            if st.login_traceparents.len() >= 1_000 {
                st.login_traceparents.pop_front();
            }
            st.login_traceparents.push_back(traceparent);
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = match read_limited(req.into_body()).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let Some(form) = parse_login(content_type.as_deref(), &body) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"message": "The request is invalid."}),
            );
        };
        let delay = self.inner.lock().opts.login_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self.try_login(&form) {
            LoginOutcome::Ok {
                session_id,
                auth,
                branch_no,
                tenant,
                seq,
            } => {
                let mut resp = empty(StatusCode::NO_CONTENT);
                let h = resp.headers_mut();
                add_cookie(
                    h,
                    &format!("{SESSION_COOKIE}={session_id}; path=/; HttpOnly; SameSite=Lax"),
                );
                add_cookie(h, &format!("{AUTH_COOKIE}={auth}; path=/; HttpOnly"));
                add_cookie(h, &format!("UserBranch={branch_no}; path=/"));
                add_cookie(h, "Locale=Culture=en-US&TimeZone=GMTM0800A; path=/");
                add_request_cookies(h, seq, "/entity/auth/login");
                if let Some(t) = tenant {
                    add_cookie(h, &format!("CompanyID={t}; path=/"));
                }
                resp
            }
            LoginOutcome::Refused(status, text) => px_error(status, text),
            LoginOutcome::LimitRedirect => {
                let mut r = empty(StatusCode::FOUND);
                r.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static(LIMIT_REDIRECT));
                r
            }
            LoginOutcome::BadBranch(b) => px_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Error: The branch '{b}' is not available to the user."),
            ),
        }
    }

    /// The login checks, in Acumatica's order: lockout, credentials, tenant, seat.
    fn try_login(&self, form: &LoginForm) -> LoginOutcome {
        let mut guard = self.inner.lock();
        guard.sweep();
        let now = guard.now();
        let st = &mut *guard;
        let key = form.name.to_lowercase();

        let lockout = st.lockouts.entry(key).or_default();
        match lockout.locked_until {
            Some(until) if until > now => {
                st.counters.logins_locked += 1;
                note_login(&mut st.logins, "locked");
                return LoginOutcome::Refused(StatusCode::INTERNAL_SERVER_ERROR, LOCKED_OUT);
            }
            Some(_) => *lockout = Lockout::default(),
            None => {}
        }

        let Some(user) = st
            .opts
            .users
            .iter()
            .find(|u| u.name.eq_ignore_ascii_case(&form.name) && u.password == form.password)
        else {
            st.counters.logins_bad_credentials += 1;
            note_login(&mut st.logins, "bad_credentials");
            let reset = st.opts.lockout_reset;
            while lockout
                .failures
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > reset)
            {
                lockout.failures.pop_front();
            }
            lockout.failures.push_back(now);
            let threshold = st.opts.lockout_threshold as usize;
            if threshold > 0 && lockout.failures.len() >= threshold {
                lockout.failures.clear();
                lockout.locked_until = now.checked_add(st.opts.lockout_duration);
            }
            return LoginOutcome::Refused(StatusCode::INTERNAL_SERVER_ERROR, INVALID_CREDENTIALS);
        };
        lockout.failures.clear();

        let Some(tenant) = determine_tenant(&st.opts.tenants, user, form.tenant.as_deref()) else {
            return LoginOutcome::Refused(StatusCode::INTERNAL_SERVER_ERROR, NO_COMPANY);
        };
        let Some((branch, branch_no)) = determine_branch(user, form.branch.as_deref()) else {
            return LoginOutcome::BadBranch(form.branch.clone().unwrap_or_default());
        };

        let taken = st.sessions.len() as u64 + u64::from(st.reserved);
        if taken >= u64::from(st.opts.max_api_users) {
            st.counters.logins_rejected_limit += 1;
            note_login(&mut st.logins, "limit");
            if st.opts.login_limit_shape == LimitShape::Redirect {
                return LoginOutcome::LimitRedirect;
            }
            let status = StatusCode::from_u16(st.opts.login_limit_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return LoginOutcome::Refused(status, LOGIN_LIMIT);
        }

        let user_name = user.name.clone();
        let (_, session_id, auth) = st.open_session(user_name, tenant.clone(), branch, now);
        st.counters.logins_ok += 1;
        note_login(&mut st.logins, "ok");
        let seq = st.next_seq();
        LoginOutcome::Ok {
            session_id,
            auth,
            branch_no,
            // CompanyID is set only when the client named a tenant.
            tenant: form.tenant.as_ref().and(tenant),
            seq,
        }
    }

    /// Ends the session at once (not behind its lock); idempotent.
    pub(super) fn logout(&self, cookies: &[(String, String)]) -> Response<Body> {
        let ended = {
            let mut st = self.inner.lock();
            match st.resolve(cookies) {
                Auth::Session(ordinal) => {
                    // Counted as a request on the session: signing out of a session with a
                    // request in flight shows as concurrency.
                    if st.enter(ordinal).is_some() {
                        st.sessions.remove(&ordinal);
                    }
                    st.counters.logouts += 1;
                    st.update_seats();
                    let rotate = st.opts.rotate_cookies;
                    Some((rotate, st.next_seq()))
                }
                Auth::Mixed => {
                    st.counters.mixed_session_cookies += 1;
                    None
                }
                Auth::None => None,
            }
        };
        let mut resp = empty(StatusCode::NO_CONTENT);
        if let Some((rotate, seq)) = ended {
            delete_auth_cookie(resp.headers_mut());
            if rotate {
                add_request_cookies(resp.headers_mut(), seq, "/entity/auth/logout");
            }
        }
        resp
    }
}

/// Records a login attempt (the most recent 10,000 are kept).
fn note_login(log: &mut VecDeque<(Instant, &'static str)>, outcome: &'static str) {
    if log.len() >= 10_000 {
        log.pop_front();
    }
    log.push_back((Instant::now(), outcome));
}

/// The tenant of the session (`None` only when no tenant is configured and none was named), or
/// `None` when it cannot be determined.
fn determine_tenant(
    tenants: &[String],
    user: &LegacyUser,
    requested: Option<&str>,
) -> Option<Option<String>> {
    let allowed =
        |t: &str| user.tenants.is_empty() || user.tenants.iter().any(|u| u.eq_ignore_ascii_case(t));
    match requested {
        Some(r) => tenants
            .iter()
            .find(|t| t.eq_ignore_ascii_case(r) && allowed(t))
            .map(|t| Some(t.clone())),
        None => match tenants {
            [] => Some(None),
            [only] if allowed(only) => Some(Some(only.clone())),
            _ => None,
        },
    }
}

/// The branch of the session and its number (the `UserBranch` cookie), or `None` when the user
/// does not have the requested branch.
fn determine_branch(user: &LegacyUser, requested: Option<&str>) -> Option<(Option<String>, usize)> {
    match requested {
        Some(r) if user.branches.is_empty() => Some((Some(r.to_owned()), 1)),
        Some(r) => user
            .branches
            .iter()
            .position(|b| b.eq_ignore_ascii_case(r))
            .map(|i| (user.branches.get(i).cloned(), i + 1)),
        None => Some((
            user.branches.first().cloned(),
            usize::from(!user.branches.is_empty()),
        )),
    }
}

/// `name`, `password` (required strings), `tenant` or `company`, `branch` from a JSON or
/// form-encoded body; field names are case-insensitive (ASP.NET model binding).
fn parse_login(content_type: Option<&str>, body: &[u8]) -> Option<LoginForm> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let fields: HashMap<String, String> = if ct.starts_with("application/x-www-form-urlencoded") {
        url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.to_lowercase(), v.into_owned()))
            .collect()
    } else if ct.is_empty() || ct.starts_with("application/json") || ct.contains("+json") {
        match serde_json::from_slice::<Value>(body).ok()? {
            Value::Object(m) => m
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k.to_lowercase(), s)),
                    _ => None,
                })
                .collect(),
            _ => return None,
        }
    } else {
        return None;
    };
    let opt = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    Some(LoginForm {
        name: fields.get("name")?.clone(),
        password: fields.get("password")?.clone(),
        tenant: opt("tenant").or_else(|| opt("company")),
        branch: opt("branch"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use crate::demo::legacy::harness::{cookie_value, start};
    use crate::demo::legacy::routing::MAX_BODY;
    use crate::demo::legacy::LegacyOptions;

    #[tokio::test]
    async fn login_sets_the_seven_cookies_and_takes_a_seat() {
        let f = start(LegacyOptions::default()).await;
        let r = f.login_as("admin", "123", Some("MyStore")).await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let c = r.set_cookies();
        assert_eq!(c.len(), 7, "{c:?}");
        let sid = c[0]
            .strip_prefix("ASP.NET_SessionId=")
            .and_then(|r| r.strip_suffix("; path=/; HttpOnly; SameSite=Lax"))
            .unwrap();
        assert_eq!(sid.len(), 24);
        assert!(sid
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'0'..=b'5').contains(&b)));
        let auth = c[1]
            .strip_prefix(".ASPXAUTH=")
            .and_then(|r| r.strip_suffix("; path=/; HttpOnly"))
            .unwrap();
        assert!(!auth.is_empty() && auth.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(c[2], "UserBranch=1; path=/");
        assert_eq!(c[3], "Locale=Culture=en-US&TimeZone=GMTM0800A; path=/");
        let rid = c[4]
            .strip_prefix("requestid=")
            .and_then(|r| r.strip_suffix("; path=/"))
            .unwrap();
        assert_eq!(rid.len(), 32);
        assert!(rid.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            c[5].starts_with("requeststat=+st:")
                && c[5].contains("+sc:~/entity/auth/login+start:")
                && c[5].ends_with("+tg:; path=/"),
            "{}",
            c[5]
        );
        assert_eq!(c[6], "CompanyID=MyStore; path=/");
        let n = f.fake.counters();
        assert_eq!((n.logins_ok, n.seats_in_use, n.peak_seats), (1, 1, 1));

        // Without a tenant (one configured): no CompanyID, the session is still in MyStore.
        let r = f.login_as("admin", "123", None).await;
        assert_eq!(r.status, 204);
        assert_eq!(r.set_cookies().len(), 6);
        let e = f.echo(&r.jar()).await;
        assert_eq!(e.json()["tenant"], "MyStore");
        assert_eq!(e.json()["branch"], "HQ");
        assert_eq!(f.fake.counters().seats_in_use, 2);
    }

    #[tokio::test]
    async fn login_with_a_live_sessions_cookies_still_opens_a_new_session() {
        let f = start(LegacyOptions {
            max_api_users: 5,
            ..LegacyOptions::default()
        })
        .await;
        let jar = f.login().await;
        let r = f
            .call(
                "POST",
                "/entity/auth/login",
                &[("content-type", "application/json"), ("cookie", &jar)],
                r#"{"name":"admin","password":"123"}"#,
            )
            .await;
        assert_eq!(r.status, 204);
        assert_eq!(f.echo(&jar).await.json()["session"], 1);
        assert_eq!(f.echo(&r.jar()).await.json()["session"], 2);
        assert_eq!(f.fake.counters().seats_in_use, 2);
    }

    #[tokio::test]
    async fn login_accepts_forms_and_refuses_garbage() {
        let f = start(LegacyOptions::default()).await;
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let r = f
            .call(
                "POST",
                "/entity/auth/login",
                &form,
                "name=admin&password=123&company=MyStore&locale=en-US",
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert!(r.jar().contains("CompanyID=MyStore"));
        let json = [("content-type", "application/json")];
        for (headers, body) in [
            (&json[..], "{not json"),
            (&json[..], r#"{"name":"admin"}"#),
            (&json[..], r#"["admin","123"]"#),
            (&form[..], "password=123"),
            (
                &[("content-type", "text/plain")][..],
                r#"{"name":"admin","password":"123"}"#,
            ),
        ] {
            let r = f.call("POST", "/entity/auth/login", headers, body).await;
            assert_eq!(r.status, 400, "{body}");
        }
        let big = "x".repeat(MAX_BODY + 1);
        assert_eq!(
            f.call("POST", "/entity/auth/login", &json, &big)
                .await
                .status,
            413
        );
        let n = f.fake.counters();
        assert_eq!((n.logins_ok, n.logins_bad_credentials), (1, 0));
        assert_eq!(
            f.call("GET", "/entity/auth/login", &[], "").await.status,
            405
        );
    }

    #[tokio::test]
    async fn three_wrong_passwords_lock_the_account() {
        let f = start(LegacyOptions::default()).await;
        for _ in 0..3 {
            let r = f.login_as("admin", "wrong", None).await;
            assert_eq!(r.status, 500);
            assert_eq!(r.exception(), INVALID_CREDENTIALS);
            assert_eq!(r.json()["message"], "An error has occurred.");
            assert_eq!(r.json()["exceptionType"], "PX.Data.PXException");
        }
        let r = f.login_as("admin", "123", None).await;
        assert_eq!(r.status, 500);
        assert_eq!(r.exception(), LOCKED_OUT);
        let n = f.fake.counters();
        assert_eq!(
            (
                n.logins_bad_credentials,
                n.logins_locked,
                n.logins_ok,
                n.seats_in_use
            ),
            (3, 1, 0, 0)
        );
        assert_eq!(f.fake.state()["locked_users"], json!(["admin"]));
        f.fake.advance_clock(Duration::from_secs(901));
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
    }

    #[tokio::test]
    async fn failures_older_than_the_reset_window_do_not_lock() {
        let f = start(LegacyOptions::default()).await;
        for _ in 0..2 {
            assert_eq!(
                f.login_as("admin", "x", None).await.exception(),
                INVALID_CREDENTIALS
            );
        }
        f.fake.advance_clock(Duration::from_secs(601));
        assert_eq!(
            f.login_as("admin", "x", None).await.exception(),
            INVALID_CREDENTIALS
        );
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
        // A success clears the failures.
        for _ in 0..2 {
            assert_eq!(
                f.login_as("admin", "x", None).await.exception(),
                INVALID_CREDENTIALS
            );
        }
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
    }

    #[tokio::test]
    async fn a_tenant_is_required_when_there_are_several() {
        let f = start(LegacyOptions {
            tenants: vec!["MyStore".to_owned(), "Other".to_owned()],
            users: vec![
                LegacyUser::new("admin", "123", &[], &["HQ", "EAST"]),
                LegacyUser::new("clerk", "c", &["MyStore"], &[]),
            ],
            ..LegacyOptions::default()
        })
        .await;
        let r = f.login_as("admin", "123", None).await;
        assert_eq!((r.status, r.exception().as_str()), (500, NO_COMPANY));
        let r = f.login_as("clerk", "c", Some("Other")).await;
        assert_eq!((r.status, r.exception().as_str()), (500, NO_COMPANY));
        let r = f
            .call(
                "POST",
                "/entity/auth/login",
                &[("content-type", "application/json")],
                r#"{"name":"ADMIN","password":"123","company":"other","branch":"east"}"#,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let jar = r.jar();
        assert_eq!(cookie_value(&jar, "CompanyID"), "Other");
        assert_eq!(cookie_value(&jar, "UserBranch"), "2");
        let e = f.echo(&jar).await.json();
        assert_eq!(
            e,
            json!({"session": 1, "user": "admin", "tenant": "Other", "branch": "EAST"})
        );
        let n = f.fake.counters();
        assert_eq!((n.logins_ok, n.logins_bad_credentials), (1, 0));
    }

    #[tokio::test]
    async fn the_seat_limit_answers_api_login_limit() {
        let f = start(LegacyOptions::default()).await;
        let a = f.login().await;
        let _b = f.login().await;
        let r = f.login_as("admin", "123", None).await;
        assert_eq!((r.status, r.exception().as_str()), (500, LOGIN_LIMIT));
        f.fake.set_login_limit_status(429);
        assert_eq!(f.login_as("admin", "123", None).await.status, 429);
        assert_eq!(f.logout(&a).await.status, 204);
        // One seat free, but held by another integration.
        let r = f
            .call("POST", "/_fake/reserve-seats", &[], r#"{"n":1}"#)
            .await;
        assert_eq!(r.status, 200);
        let r = f.login_as("admin", "123", None).await;
        assert_eq!((r.status, r.exception().as_str()), (429, LOGIN_LIMIT));
        f.fake.reserve_seats(0);
        assert_eq!(f.login_as("admin", "123", None).await.status, 204);
        let n = f.fake.counters();
        assert_eq!(
            (
                n.logins_ok,
                n.logins_rejected_limit,
                n.seats_in_use,
                n.peak_seats
            ),
            (3, 3, 2, 2)
        );
        // The status can be set over HTTP too; nonsense is refused.
        let r = f
            .call(
                "POST",
                "/_fake/config",
                &[],
                r#"{"login_limit_status":500}"#,
            )
            .await;
        assert_eq!(r.json()["login_limit_status"], 500);
        let r = f
            .call(
                "POST",
                "/_fake/config",
                &[],
                r#"{"login_limit_status":1000}"#,
            )
            .await;
        assert_eq!(r.status, 400);
        let r = f.call("POST", "/_fake/config", &[], r#"{"bogus":1}"#).await;
        assert_eq!(r.status, 400);
        assert_eq!(f.login_as("admin", "123", None).await.status, 500);
    }

    #[tokio::test]
    async fn the_login_limit_can_be_a_redirect_to_the_error_page() {
        let f = start(LegacyOptions {
            max_api_users: 1,
            login_limit_shape: LimitShape::Redirect,
            ..LegacyOptions::default()
        })
        .await;
        f.login().await;
        let r = f.login_as("admin", "123", None).await;
        assert_eq!(r.status, 302);
        let loc = r.headers.get("location").unwrap().to_str().unwrap();
        assert!(
            loc.starts_with("/Frames/Error.aspx?") && loc.contains("concurrent%20API%20logins"),
            "{loc}"
        );
        assert_eq!(f.fake.counters().logins_rejected_limit, 1);
    }

    #[tokio::test]
    async fn logout_does_not_wait_for_the_session_lock() {
        let f = start(LegacyOptions::default()).await;
        let jar = f.login().await;
        let h = [("cookie", jar.as_str())];
        let slow = f.call("GET", "/entity/Default/24.200.001/Slow?ms=300", &h, "");
        let logout = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            let r = f.logout(&jar).await;
            (r, started.elapsed())
        };
        let (slow, (out, took)) = tokio::join!(slow, logout);
        assert_eq!(out.status, 204);
        assert!(took < Duration::from_millis(200), "{took:?}");
        // The request whose session ended under it fails as the real API fails it.
        assert_eq!(slow.status, 401, "{}", slow.body);
        assert!(slow
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(".ASPXAUTH=;")));
        let n = f.fake.counters();
        assert_eq!((n.logouts, n.seats_in_use), (1, 0));
        assert_eq!(n.ended_mid_request, 1);
        // The logout was seen while a request was in flight.
        assert_eq!(n.max_concurrency_per_session, 2);
    }
}
