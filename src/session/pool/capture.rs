//! The pool's side of passive session creation (design §6.5.4): the client logs in itself
//! through the gateway, and the cookies of that login become the slot's session. Its seat is
//! taken before the login is forwarded, so the session counts from its first moment, and every
//! way the session cannot be kept gives the seat back (and logs out a session that exists).
//!
//! The request's side (forwarding the login, the name check) is `session::capture`.

use std::time::SystemTime;

use http::header::HeaderMap;

use super::answer::set_cookies;
use super::{now_ms, Identity, Pool, Retire};
use crate::session::jar::Jar;
use crate::session::store::{Created, SessionRecord, SessionState};
use crate::session::SessionError;

// === impl Pool ===

impl Pool {
    /// Passive mode: takes a seat for a client's own login before that login is forwarded, so
    /// the captured session is counted from its first moment. Returns the new session's id.
    pub async fn admit_capture(&self) -> Result<u64, SessionError> {
        let id = self.next_id();
        self.admit(id).await?;
        Ok(id)
    }

    /// The forwarded login did not create a session: its seat goes back.
    pub async fn abandon_capture(&self, id: u64) {
        self.give_back_seat(id).await;
    }

    /// Stores the cookies of a client-made login as the slot's session, on the seat taken by
    /// [`Pool::admit_capture`]. A session that cannot be stored (the slot was taken meanwhile,
    /// the grant is full) is logged out at once and its seat given back. False when the answer
    /// carried no session (the marker cookies are missing): the seat goes back too.
    pub async fn capture(
        &self,
        who: &Identity,
        id: u64,
        headers: &HeaderMap,
    ) -> Result<bool, SessionError> {
        let mut jar = Jar::default();
        let lines = set_cookies(headers);
        jar.apply_all(
            lines.iter().map(String::as_str),
            SystemTime::now(),
            self.cfg.max_jar_cookies,
            self.cfg.max_jar_bytes,
        );
        if !self.has_markers(&jar) {
            self.give_back_seat(id).await;
            return Ok(false);
        }
        let mut record = SessionRecord::new(id, who.concurrent, now_ms());
        record.retire_at_ms = who.retire_at_ms;
        record.state = SessionState::Active;
        record.seated = true;
        record.jar = jar.clone();
        let cap = self.grant_cap(who.concurrent);
        let created = self
            .store
            .create(&who.slot, record, cap, self.cfg.max_inflight_per_session)
            .await;
        match created {
            Ok(Created::New(_)) => {
                self.metrics.upstream_login(&self.upstream_id, "captured");
                self.sample_sessions().await;
                Ok(true)
            }
            Ok(Created::Existing(_) | Created::GrantFull { .. }) => {
                tracing::info!(upstream = %self.upstream_id, "a captured session found its slot taken: logging it out");
                self.logout_jar(&jar, Retire::Logout).await;
                self.give_back_seat(id).await;
                Ok(false)
            }
            Err(e) => {
                self.logout_jar(&jar, Retire::Logout).await;
                self.give_back_seat(id).await;
                Err(e.into())
            }
        }
    }
}
