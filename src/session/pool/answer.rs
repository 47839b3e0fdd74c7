//! What an upstream answer on a held session says about that session: that it has ended
//! (design §6.7.1: a 401, or a redirect to the login page), and which cookies change in its jar
//! (design §6.6.2; the jar goes back to the store with the release). A `Set-Cookie` that
//! deletes a marker cookie also ends the session: the upstream signed it out.

use std::time::SystemTime;

use http::header::{self, HeaderMap};

use super::{Held, Pool};
use crate::session::jar::Jar;

// === impl Pool ===

impl Pool {
    /// True when a response to a request that carried the jar says the session has ended
    /// (design §6.7.1): 401, or a 302/303 to the login page.
    pub fn is_expired(&self, status: http::StatusCode, headers: &HeaderMap) -> bool {
        if status == http::StatusCode::UNAUTHORIZED {
            return true;
        }
        if status == http::StatusCode::FOUND || status == http::StatusCode::SEE_OTHER {
            if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
                let path = loc
                    .parse::<http::Uri>()
                    .map(|u| u.path().to_owned())
                    .unwrap_or_else(|_| loc.to_owned());
                return self.cfg.expired_redirect.is_match(&path);
            }
        }
        false
    }

    /// Records the upstream's `Set-Cookie`s in the session's jar (and in the lease). Returns
    /// true when they deleted a marker cookie: the upstream signed the session out.
    pub fn absorb(&self, lease: &mut Held, headers: &HeaderMap) -> bool {
        let lines = set_cookies(headers);
        if lines.is_empty() {
            return false;
        }
        let (max_c, max_b) = (self.cfg.max_jar_cookies, self.cfg.max_jar_bytes);
        let had_markers = self.has_markers(&lease.jar);
        let applied = lease.jar.apply_all(
            lines.iter().map(String::as_str),
            SystemTime::now(),
            max_c,
            max_b,
        );
        if applied.overflow > 0 {
            tracing::warn!(upstream = %self.upstream_id, dropped = applied.overflow, "session jar full; cookies dropped");
        }
        // The jar goes back to the store with the release (one round trip, not two).
        lease.jar_changed |= applied.set + applied.deleted > 0;
        had_markers && !self.has_markers(&lease.jar)
    }

    /// True when the jar holds every marker cookie: the proof of a login.
    pub(super) fn has_markers(&self, jar: &Jar) -> bool {
        self.cfg.marker_cookies.iter().all(|m| jar.has(m))
    }
}

/// The `Set-Cookie` lines of an answer (those that are text).
pub(super) fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}
