//! Passive capture (design §6.5.4): in `creation = "passive"` the client logs in itself. Its
//! login call goes upstream (to the configured login path, whatever spelling the client used),
//! and the answer's cookies become the slot's session; they never reach the client.
//!
//! - before the call: the login body is read (bounded) and, with `passive_login_name_claim`,
//!   its `name` must be the token's claim; a session already in the slot is logged out, and a
//!   seat is taken, so the captured session is counted from its first moment;
//! - after the answer: a success is stored as the slot's session on that seat; a refusal gives
//!   the seat back and is answered with the gateway's own error (the upstream's status, never
//!   its body).

use http::header::{self, HeaderMap};
use http::Response;

use super::body::read_bounded;
use super::login::{self, LoginOutcome};
use super::pool::{Identity, Pool};
use super::{RefusedLogin, SessionError};
use crate::auth::Principal;
use crate::proxy::{self, UpstreamBody};
use crate::Body;

/// The largest client login body read in passive mode.
const MAX_LOGIN_BODY: usize = 64 * 1024;

/// Checks the client's login call and takes a seat for the session it will open. Returns the
/// seat; `body` is replaced by the same bytes, to be forwarded.
pub(super) async fn admit(
    pool: &Pool,
    who: &Identity,
    principal: &Principal,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<u64, SessionError> {
    let bytes = read_bounded(std::mem::replace(body, proxy::empty()), MAX_LOGIN_BODY)
        .await
        .ok_or(SessionError::BodyRead)?;
    if let Some(claim) = &pool.cfg.passive_login_name_claim {
        let name = login_name(headers, &bytes);
        let expected = principal.claims.get(claim).and_then(|v| v.as_str());
        if name.is_none() || name.as_deref() != expected {
            return Err(SessionError::LoginIdentityMismatch);
        }
    }
    pool.logout(&who.grant, Some(&who.slot)).await;
    let seat = pool.admit_capture().await?;
    *body = proxy::full(bytes);
    Ok(seat)
}

/// The upstream's answer to the client's login: the slot's session on `seat` (the answer goes
/// on to the client), or a refusal.
pub(super) async fn settle(
    pool: &Pool,
    who: &Identity,
    seat: u64,
    resp: Response<UpstreamBody>,
) -> Result<Response<UpstreamBody>, SessionError> {
    let status = resp.status();
    if status.is_success() {
        return match pool.capture(who, seat, resp.headers()).await {
            Ok(true) => Ok(resp),
            Ok(false) => Err(SessionError::LoginError),
            Err(e) => Err(e),
        };
    }
    pool.abandon_capture(seat).await;
    let answer = login::read_answer(resp, &pool.cfg).await;
    let retry_after = answer.retry_after.clone();
    let refused = match login::classify(answer, &pool.cfg) {
        LoginOutcome::LoginLimit => RefusedLogin::SeatLimit,
        LoginOutcome::BadCredentials => RefusedLogin::BadCredentials,
        LoginOutcome::Throttled { .. } => RefusedLogin::Throttled,
        LoginOutcome::Error(_) | LoginOutcome::Ok(_) => RefusedLogin::Error,
    };
    Err(SessionError::LoginRefused {
        status,
        refused,
        retry_after,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn login_names_from_json_and_form_bodies() {
        let mut h = HeaderMap::new();
        assert_eq!(
            login_name(&h, br#"{"name":"alice","password":"x"}"#).as_deref(),
            Some("alice")
        );
        assert_eq!(login_name(&h, br#"{"name":7}"#), None);
        assert_eq!(login_name(&h, b"not json"), None);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        assert_eq!(
            login_name(&h, b"password=x&name=bob%20b").as_deref(),
            Some("bob b")
        );
        assert_eq!(login_name(&h, b"password=x"), None);
    }
}
