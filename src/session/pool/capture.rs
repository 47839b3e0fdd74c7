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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Creation, Credentials, Secret};
    use crate::session::login::{self, LoginOutcome};
    use crate::session::pool::testing::{rig, Rig};
    use http::{header, HeaderValue};

    async fn passive() -> Rig {
        rig(|c| {
            c.creation = Creation::Passive;
            c.credentials = None;
        })
        .await
    }

    /// The `Set-Cookie`s of a client's own login at the upstream.
    async fn client_login(r: &Rig) -> HeaderMap {
        let creds = Credentials {
            name: "admin".to_owned(),
            password: Secret::new("123".to_owned()),
            tenant: None,
            branch: None,
            locale: None,
        };
        let LoginOutcome::Ok(jar) = login::login(&r.pool.upstream, &r.pool.cfg, &creds).await
        else {
            panic!("the client's login failed")
        };
        let mut h = HeaderMap::new();
        for line in jar.to_text().lines() {
            let [name, path, value] = line.splitn(3, '\t').collect::<Vec<_>>()[..] else {
                panic!("a jar line: {line}")
            };
            let v = format!("{name}={value}; path={path}");
            h.append(header::SET_COOKIE, HeaderValue::from_str(&v).unwrap());
        }
        h
    }

    #[tokio::test]
    async fn a_captured_login_becomes_the_slots_session_on_its_seat() {
        let r = passive().await;
        let who = r.who("a");
        let id = r.pool.admit_capture().await.unwrap();
        assert_eq!(r.seats().await, 1, "counted before the login is forwarded");
        assert!(r
            .pool
            .capture(&who, id, &client_login(&r).await)
            .await
            .unwrap());
        let rec = r.record(&who.slot).await.unwrap();
        assert_eq!(
            (rec.id, rec.state, rec.seated),
            (id, SessionState::Active, true)
        );
        assert_eq!(
            r.metric(r#"tollgate_upstream_logins_total{result="captured",upstream="erp"}"#),
            1.0
        );
        // The next request of the grant is served by it, without a login of the gateway.
        let held = r.pool.hold(&who).await.unwrap();
        assert_eq!(held.id, id);
        assert!(!held.new_session);
        assert_eq!(held.jar.to_text(), rec.jar.to_text());
        assert_eq!(r.fake.counters().logins_ok, 1);
    }

    #[tokio::test]
    async fn a_session_that_cannot_be_kept_gives_its_seat_back() {
        let r = passive().await;
        let who = r.who("a");
        // The forwarded login went wrong: nothing to keep.
        let id = r.pool.admit_capture().await.unwrap();
        r.pool.abandon_capture(id).await;
        assert_eq!(r.seats().await, 0);
        // An answer without the marker cookies holds no session.
        let id = r.pool.admit_capture().await.unwrap();
        let no_markers = {
            let mut h = HeaderMap::new();
            h.append(
                header::SET_COOKIE,
                HeaderValue::from_static("Locale=x; path=/"),
            );
            h
        };
        assert!(!r.pool.capture(&who, id, &no_markers).await.unwrap());
        assert_eq!(r.seats().await, 0);
        assert!(r.records().await.is_empty());
        // A slot taken meanwhile: the second upstream session is signed out at once.
        let first = r.pool.admit_capture().await.unwrap();
        assert!(r
            .pool
            .capture(&who, first, &client_login(&r).await)
            .await
            .unwrap());
        let second = r.pool.admit_capture().await.unwrap();
        assert!(!r
            .pool
            .capture(&who, second, &client_login(&r).await)
            .await
            .unwrap());
        let c = r.fake.counters();
        assert_eq!((c.logins_ok, c.logouts, c.seats_in_use), (2, 1, 1), "{c:?}");
        assert_eq!(r.seats().await, 1);
        assert_eq!(r.record(&who.slot).await.unwrap().id, first);
    }
}
