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
        // Read in place, not copied out as `set_cookies` does: this runs on every answer.
        let mut lines = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .peekable();
        if lines.peek().is_none() {
            return false;
        }
        let (max_c, max_b) = (self.cfg.max_jar_cookies, self.cfg.max_jar_bytes);
        let had_markers = self.has_markers(&lease.jar);
        let applied = lease.jar.apply_all(lines, SystemTime::now(), max_c, max_b);
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
pub(crate) fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::pool::testing::rig;
    use http::{HeaderValue, StatusCode};

    fn headers(name: header::HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[tokio::test]
    async fn an_expired_session_answers_401_or_redirects_to_the_login_page() {
        let r = rig(|_| {}).await;
        let to = |loc: &str| headers(header::LOCATION, &[loc]);
        let none = HeaderMap::new();
        let cases = [
            (401, &none, true),
            (302, &to("/Frames/Login.aspx?ReturnUrl=%2f"), true),
            (303, &to("https://erp.example/frames/login.aspx"), true),
            (302, &to("/Frames/Error.aspx"), false),
            (301, &to("/Frames/Login.aspx"), false),
            (302, &none, false),
            (403, &none, false),
            (200, &none, false),
        ];
        for (status, h, expired) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(r.pool.is_expired(status, h), expired, "{status} {h:?}");
        }
    }

    #[tokio::test]
    async fn absorbed_cookies_change_the_jar_and_a_deleted_marker_ends_the_session() {
        let r = rig(|_| {}).await;
        let mut held = r.pool.hold(&r.who("a")).await.unwrap();
        assert!(r.pool.has_markers(&held.jar));
        assert!(!r.pool.absorb(&mut held, &HeaderMap::new()));
        assert!(!held.jar_changed, "no Set-Cookie, nothing to write back");

        let renewed = headers(header::SET_COOKIE, &["requestid=fresh; path=/"]);
        assert!(!r.pool.absorb(&mut held, &renewed));
        assert!(held.jar_changed);
        assert!(held.jar.to_text().contains("requestid\t/\tfresh"));

        let signed_out = headers(
            header::SET_COOKIE,
            &[".ASPXAUTH=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/"],
        );
        assert!(
            r.pool.absorb(&mut held, &signed_out),
            "a marker was deleted"
        );
        assert!(!r.pool.has_markers(&held.jar));
        // Without markers to begin with, nothing can be signed out.
        assert!(!r.pool.absorb(&mut held, &signed_out));
    }

    #[test]
    fn set_cookie_lines_are_read_in_order() {
        let h = headers(header::SET_COOKIE, &["a=1", "b=2"]);
        assert_eq!(set_cookies(&h), vec!["a=1".to_owned(), "b=2".to_owned()]);
        assert!(set_cookies(&HeaderMap::new()).is_empty());
    }
}
