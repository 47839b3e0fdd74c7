//! Who a request belongs to, as the session layer sees it (design §6.2–6.4): the grant key of its
//! token, the mode it is served in, and the slot of the session it uses, named in concurrent mode
//! by the handle cookie the gateway issued to that grant.
//!
//! Nothing here touches the store or the upstream: a request whose handle does not verify is
//! refused before anything is routed or created.

use http::header::{self, HeaderMap};
use sha2::Digest as _;

use super::{lock, Pool};
use crate::auth::Principal;
use crate::config::{GrantSource, SessionMode, WithoutHandle};
use crate::session::grant::{self, GrantKey};
use crate::session::handle;
use crate::session::store::SlotKey;
use crate::session::SessionError;

thread_local! {
    /// The grant key's message of this thread's latest request ([`grant::write_message`]): one
    /// buffer, not an allocation a request, to look up a key signed already.
    static MESSAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest message buffer a thread keeps between requests (a claim value may be long).
const MESSAGE_KEPT: usize = 1024;

/// Who a request belongs to, as the session layer sees it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub grant: GrantKey,
    pub concurrent: bool,
    pub slot: SlotKey,
    /// A handle cookie value to set on the response (concurrent mode, new handle).
    pub new_handle: Option<String>,
    /// True when the request named its session with a handle.
    pub had_handle: bool,
    /// `token` grant keys: the session ends with the token (Unix ms).
    pub retire_at_ms: Option<u64>,
}

// === impl Pool ===

impl Pool {
    /// The grant, mode and session slot of a request (design §6.2–6.4). `token` is the bearer
    /// token, hashed only when the `token` grant-key source names the session after it.
    pub fn identify(
        &self,
        principal: &Principal,
        token: &str,
        headers: &HeaderMap,
    ) -> Result<Identity, SessionError> {
        let token_digest: [u8; 32] = if self.cfg.grant_key.contains(&GrantSource::Token) {
            sha2::Sha256::digest(token.as_bytes()).into()
        } else {
            [0; 32]
        };
        let (source, grant) = MESSAGE.with_borrow_mut(|message| {
            let source = grant::write_message(
                &self.cfg.grant_key,
                &principal.issuer,
                &self.upstream_id,
                principal,
                &token_digest,
                message,
            )
            .map_err(|_| SessionError::NoGrant)?;
            let grant = match self.grant_keys.get(message.as_slice()) {
                Some(key) => key,
                None => {
                    let key = grant::sign(&self.grant_key, message);
                    self.grant_keys.insert(message.clone(), key.clone());
                    key
                }
            };
            if message.capacity() > MESSAGE_KEPT {
                *message = Vec::new();
            }
            Ok::<_, SessionError>((source, grant))
        })?;
        if source == "subject" {
            let client = principal.client_id().unwrap_or("-").to_owned();
            if lock(&self.warned_subject).insert(client.clone()) {
                tracing::warn!(upstream = %self.upstream_id, client_id = %client, "grant key falls back to client_id+sub: all of this user's grants in this client share one upstream session");
            }
        }
        let retire_at_ms = (source == "token" && principal.expires_at != u64::MAX)
            .then(|| principal.expires_at.saturating_mul(1000));
        let concurrent = match self.cfg.mode {
            SessionMode::Single => false,
            SessionMode::Concurrent => true,
            SessionMode::ByScope => principal.scopes.contains(&self.cfg.concurrent_scope),
        };
        let identity = |grant: GrantKey, handle, new_handle, had_handle| Identity {
            slot: SlotKey {
                grant: grant.clone(),
                handle,
            },
            grant,
            concurrent,
            new_handle,
            had_handle,
            retire_at_ms,
        };
        if !concurrent {
            return Ok(identity(grant, None, None, false));
        }
        match cookie_value(headers, &self.cfg.handle_cookie) {
            Some(value) => {
                let nonce = handle::verify(&self.handle_key, &grant, &value)
                    .ok_or(SessionError::InvalidHandle)?;
                Ok(identity(grant, Some(nonce), None, true))
            }
            None if self.cfg.without_handle == WithoutHandle::Reject => {
                Err(SessionError::HandleRequired)
            }
            None => {
                let (nonce, value) = handle::issue(&self.handle_key, &grant);
                Ok(identity(grant, Some(nonce), Some(value), false))
            }
        }
    }

    /// The `Set-Cookie` value of a handle.
    pub fn handle_cookie(&self, value: &str) -> String {
        format!(
            "{}={value}; Path=/; Secure; HttpOnly; SameSite=Strict",
            self.cfg.handle_cookie
        )
    }

    /// The `Set-Cookie` value that clears the handle.
    pub fn clear_handle_cookie(&self) -> String {
        format!(
            "{}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
            self.cfg.handle_cookie
        )
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::pool::testing::{principal, rig, CONCURRENT};
    use http::HeaderValue;
    use serde_json::json;

    fn cookies(line: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_str(line).unwrap());
        h
    }

    #[tokio::test]
    async fn single_mode_gives_each_grant_one_slot_without_a_handle() {
        let r = rig(|_| {}).await;
        let a = r.who("a");
        assert!(!a.concurrent && a.slot.handle.is_none());
        assert!(a.new_handle.is_none() && !a.had_handle);
        assert_eq!(a.slot.grant, a.grant);
        assert_eq!(
            r.who("a").slot,
            a.slot,
            "every token of a grant names one slot"
        );
        assert_ne!(r.who("b").grant, a.grant, "grants never share a key");
        // A handle cookie means nothing to a single-mode request.
        let with_cookie = r.who_with("a", "api", &cookies("tollgate_session=garbage"));
        assert_eq!(with_cookie.slot, a.slot);
    }

    #[tokio::test]
    async fn a_grant_key_is_signed_once_and_remembered_as_signed() {
        let r = rig(|_| {}).await;
        let a = r.who("a");
        let (_, message) = grant::message(
            &r.pool.cfg.grant_key,
            &principal(json!({})).issuer,
            &r.pool.upstream_id,
            &principal(json!({"grant_id": "a"})),
            &[0; 32],
        )
        .unwrap();
        let signed = grant::sign(&r.pool.grant_key, &message);
        assert_eq!(a.grant, signed);
        assert_eq!(r.pool.grant_keys.len(), 1);
        // The grant's next request finds its key; another grant gets its own.
        assert_eq!(r.who("a").grant, a.grant);
        assert_eq!(r.pool.grant_keys.len(), 1);
        assert_ne!(r.who("b").grant, a.grant);
        assert_eq!(r.pool.grant_keys.len(), 2);
    }

    #[tokio::test]
    async fn by_scope_serves_the_concurrent_scope_with_handles() {
        let r = rig(|_| {}).await;
        let first = r.who_with("a", CONCURRENT, &HeaderMap::new());
        assert!(first.concurrent && !first.had_handle);
        let handle = first.new_handle.clone().expect("a new handle to set");
        assert!(first.slot.handle.is_some());
        // The issued handle names that slot again, and no new one is issued.
        let again = r.who_with(
            "a",
            CONCURRENT,
            &cookies(&format!("x=1; tollgate_session={handle}")),
        );
        assert_eq!(again.slot, first.slot);
        assert!(again.had_handle && again.new_handle.is_none());
        // Without a handle, each request opens a slot of its own.
        let other = r.who_with("a", CONCURRENT, &HeaderMap::new());
        assert_ne!(other.slot, first.slot);
        assert_eq!(other.grant, first.grant);
    }

    #[tokio::test]
    async fn a_handle_of_another_grant_or_a_garbled_one_is_refused() {
        let r = rig(|_| {}).await;
        let handle = r
            .who_with("a", CONCURRENT, &HeaderMap::new())
            .new_handle
            .unwrap();
        let p = principal(json!({"grant_id": "b", "scope": CONCURRENT}));
        let theirs = cookies(&format!("tollgate_session={handle}"));
        assert_eq!(
            r.pool.identify(&p, "t", &theirs).unwrap_err(),
            SessionError::InvalidHandle
        );
        for garbled in [
            "tollgate_session=",
            "tollgate_session=not-base64!",
            &format!("tollgate_session={handle}x"),
        ] {
            assert_eq!(
                r.pool.identify(&p, "t", &cookies(garbled)).unwrap_err(),
                SessionError::InvalidHandle,
                "{garbled}"
            );
        }
    }

    #[tokio::test]
    async fn the_reject_policy_requires_a_handle() {
        let r = rig(|c| c.without_handle = WithoutHandle::Reject).await;
        let p = principal(json!({"grant_id": "a", "scope": CONCURRENT}));
        assert_eq!(
            r.pool.identify(&p, "t", &HeaderMap::new()).unwrap_err(),
            SessionError::HandleRequired
        );
        let grant = r.who("a").grant;
        let (nonce, value) = handle::issue(&r.pool.handle_key, &grant);
        let who = r
            .pool
            .identify(&p, "t", &cookies(&format!("tollgate_session={value}")))
            .unwrap();
        assert_eq!(who.slot.handle, Some(nonce));
    }

    #[tokio::test]
    async fn a_fixed_mode_ignores_the_scope() {
        let single = rig(|c| c.mode = SessionMode::Single).await;
        assert!(
            !single
                .who_with("a", CONCURRENT, &HeaderMap::new())
                .concurrent
        );
        let concurrent = rig(|c| c.mode = SessionMode::Concurrent).await;
        assert!(concurrent.who("a").concurrent);
    }

    #[tokio::test]
    async fn token_grant_keys_name_the_session_after_the_token_and_end_with_it() {
        let r = rig(|c| c.grant_key = vec![GrantSource::Token]).await;
        let p = principal(json!({"scope": "api", "exp": 2_000_000_000u64}));
        let one = r.pool.identify(&p, "token-1", &HeaderMap::new()).unwrap();
        let two = r.pool.identify(&p, "token-2", &HeaderMap::new()).unwrap();
        assert_ne!(one.grant, two.grant, "a session per token");
        assert_eq!(one.retire_at_ms, Some(2_000_000_000_000));
        // Other sources do not tie the session to the token.
        let claim = rig(|_| {}).await;
        assert_eq!(claim.who("a").retire_at_ms, None);
        let p = principal(json!({"scope": "api"}));
        assert_eq!(
            claim.pool.identify(&p, "t", &HeaderMap::new()).unwrap_err(),
            SessionError::NoGrant,
            "no grant_id, no sid, no client: the default fallback has nothing to key on"
        );
    }

    #[tokio::test]
    async fn handle_cookies_are_secure_and_clearing_expires_them() {
        let r = rig(|_| {}).await;
        assert_eq!(
            r.pool.handle_cookie("v"),
            "tollgate_session=v; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            r.pool.clear_handle_cookie(),
            "tollgate_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn cookie_value_finds_the_exact_name_in_any_cookie_header() {
        let mut h = cookies("a=1; xtollgate_session=no");
        h.append(
            header::COOKIE,
            HeaderValue::from_static(" tollgate_session = yes ; b=2"),
        );
        assert_eq!(cookie_value(&h, "tollgate_session").as_deref(), Some("yes"));
        assert_eq!(cookie_value(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie_value(&h, "gw"), None, "no prefix match");
        assert_eq!(cookie_value(&HeaderMap::new(), "tollgate_session"), None);
        assert_eq!(
            cookie_value(&cookies("tollgate_session=a=b"), "tollgate_session").as_deref(),
            Some("a=b")
        );
    }
}
