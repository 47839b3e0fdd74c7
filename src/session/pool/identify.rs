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
        let derived = grant::derive(
            &self.grant_key,
            &self.cfg.grant_key,
            &principal.issuer,
            &self.upstream_id,
            principal,
            &token_digest,
        )
        .map_err(|_| SessionError::NoGrant)?;
        if derived.source == "subject" {
            let client = principal.client_id.as_deref().unwrap_or("-").to_owned();
            if lock(&self.warned_subject).insert(client.clone()) {
                tracing::warn!(upstream = %self.upstream_id, client_id = %client, "grant key falls back to client_id+sub: all of this user's grants in this client share one upstream session");
            }
        }
        let retire_at_ms = (derived.source == "token" && principal.expires_at != u64::MAX)
            .then(|| principal.expires_at.saturating_mul(1000));
        let grant = derived.key;
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
