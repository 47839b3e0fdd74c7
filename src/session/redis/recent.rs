//! This replica's memory of the sessions it logged in or used lately, with their jars. When the
//! store loses its state they are registered again (`upkeep`); a lease that finds a session's
//! jar unchanged since this replica last had it is not sent the jar again (`lease`). The memory
//! follows a jar as releases write it back, and forgets what was not used for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::jar::Jar;
use super::super::store::{SessionRecord, SessionState, SlotKey};
use super::codec::slot_text;
use super::lock;

/// A session this replica logged in or used lately, with its jar (for store-loss repair).
#[derive(Debug, Clone)]
pub(super) struct Remembered {
    pub(super) slot: SlotKey,
    pub(super) record: SessionRecord,
    touched: Instant,
}

/// The remembered sessions, shared with the releases of this store's leases (a lease may be
/// released anywhere).
#[derive(Debug, Clone, Default)]
pub(super) struct Recent {
    /// By slot text and session id.
    sessions: Arc<Mutex<HashMap<(String, u64), Remembered>>>,
    /// The session id and jar version this replica last knew for each slot, whose jar is in
    /// `sessions`: a lease that finds them unchanged is not sent the jar again.
    latest: Arc<Mutex<HashMap<String, (u64, u64)>>>,
}

impl Recent {
    pub(super) fn remember(&self, slot: &SlotKey, record: &SessionRecord) {
        let text = slot_text(slot);
        lock(&self.latest).insert(text.clone(), (record.id, record.jar_version));
        lock(&self.sessions).insert(
            (text, record.id),
            Remembered {
                slot: slot.clone(),
                record: record.clone(),
                touched: Instant::now(),
            },
        );
    }

    pub(super) fn forget(&self, slot_text: &str, id: u64) {
        lock(&self.sessions).remove(&(slot_text.to_owned(), id));
        let mut latest = lock(&self.latest);
        if latest.get(slot_text).is_some_and(|(i, _)| *i == id) {
            latest.remove(slot_text);
        }
    }

    /// Forgets what was used longer ago than `keep` (upkeep).
    pub(super) fn prune(&self, keep: Duration) {
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, r| now.duration_since(r.touched) < keep);
        let mut latest = lock(&self.latest);
        latest.retain(|s, (id, _)| sessions.contains_key(&(s.clone(), *id)));
    }

    /// The jar this replica has for session `id` of slot `s`, if it is of version `jv`.
    pub(super) fn jar(&self, s: &str, id: u64, jv: u64) -> Option<Jar> {
        lock(&self.sessions)
            .get(&(s.to_owned(), id))
            .filter(|r| r.record.jar_version == jv)
            .map(|r| r.record.jar.clone())
    }

    /// True when session `id` of slot `s` is remembered as logged in.
    pub(super) fn active(&self, s: &str, id: u64) -> bool {
        lock(&self.sessions)
            .get(&(s.to_owned(), id))
            .is_some_and(|r| r.record.state == SessionState::Active)
    }

    /// The record of session `id` of slot `s` as this replica last had it, if logged in.
    pub(super) fn record(&self, s: &str, id: u64) -> Option<SessionRecord> {
        let mut sessions = lock(&self.sessions);
        let r = sessions
            .get_mut(&(s.to_owned(), id))
            .filter(|r| r.record.state == SessionState::Active)?;
        r.touched = Instant::now();
        Some(r.record.clone())
    }

    /// The jar the last request on session `id` of slot `s` left, while this replica keeps its
    /// place and has not written it yet (its version stays the stored one's).
    pub(super) fn hold_jar(&self, s: &str, id: u64, jar: &Jar) {
        if let Some(r) = lock(&self.sessions).get_mut(&(s.to_owned(), id)) {
            r.record.jar = jar.clone();
            r.touched = Instant::now();
        }
    }

    /// The session id and jar version last known for slot `s`, as text (both empty when none).
    pub(super) fn latest(&self, s: &str) -> (String, String) {
        lock(&self.latest)
            .get(s)
            .map_or((String::new(), String::new()), |(id, jv)| {
                (id.to_string(), jv.to_string())
            })
    }

    /// A release wrote `jar` back as version `version` of session `id` of slot `s`: the memory
    /// keeps it unless it already has a newer one.
    pub(super) fn wrote_jar(&self, s: &str, id: u64, version: u64, jar: Jar) {
        if let Some(r) = lock(&self.sessions).get_mut(&(s.to_owned(), id)) {
            if version > r.record.jar_version {
                r.record.jar = jar;
                r.record.jar_version = version;
                if let Some(l) = lock(&self.latest).get_mut(s).filter(|l| l.0 == id) {
                    l.1 = version;
                }
            }
            r.touched = Instant::now();
        }
    }

    /// Slot text and id of every remembered session.
    pub(super) fn keys(&self) -> Vec<(String, u64)> {
        lock(&self.sessions).keys().cloned().collect()
    }

    /// Takes out those of `which` that are remembered.
    pub(super) fn take(&self, which: impl IntoIterator<Item = (String, u64)>) -> Vec<Remembered> {
        let mut sessions = lock(&self.sessions);
        which
            .into_iter()
            .filter_map(|key| sessions.remove(&key))
            .collect()
    }

    /// Takes out everything.
    pub(super) fn drain(&self) -> Vec<Remembered> {
        let all = lock(&self.sessions).drain().map(|(_, r)| r).collect();
        lock(&self.latest).clear();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::grant::GrantKey;

    fn session(id: u64, jv: u64, jar: &str) -> (SlotKey, SessionRecord) {
        let slot = SlotKey {
            grant: GrantKey("g".into()),
            handle: None,
        };
        let mut r = SessionRecord::new(id, false, 0);
        r.jar_version = jv;
        r.jar = Jar::from_text(jar);
        (slot, r)
    }

    /// A memory of session 1 (jar version 3) of slot `g|-`, that slot's text and the record.
    fn one_remembered() -> (Recent, String, SlotKey, SessionRecord) {
        let recent = Recent::default();
        let (slot, r) = session(1, 3, "a\t/\t1");
        recent.remember(&slot, &r);
        (recent, slot_text(&slot), slot, r)
    }

    fn unknown() -> (String, String) {
        (String::new(), String::new())
    }

    #[test]
    fn a_jar_is_known_only_at_the_version_remembered() {
        let (recent, s, _, r) = one_remembered();
        assert_eq!(recent.latest(&s), ("1".to_owned(), "3".to_owned()));
        assert_eq!(recent.jar(&s, 1, 3), Some(r.jar));
        assert_eq!(recent.jar(&s, 1, 4), None, "a newer jar elsewhere");
        assert_eq!(recent.jar(&s, 2, 3), None, "another session of the slot");
        assert_eq!(recent.latest("other|-"), unknown());
    }

    #[test]
    fn a_written_back_jar_is_followed_unless_it_is_older() {
        let (recent, s, _, r) = one_remembered();
        recent.wrote_jar(&s, 1, 2, Jar::from_text("a\t/\told"));
        assert_eq!(recent.jar(&s, 1, 3), Some(r.jar), "older: ignored");
        let newer = Jar::from_text("a\t/\t2");
        recent.wrote_jar(&s, 1, 4, newer.clone());
        assert_eq!(recent.jar(&s, 1, 4), Some(newer));
        assert_eq!(recent.latest(&s), ("1".to_owned(), "4".to_owned()));
        recent.wrote_jar(&s, 9, 5, Jar::default());
        assert_eq!(
            recent.keys(),
            vec![(s, 1)],
            "an unknown session is not added"
        );
    }

    #[test]
    fn forgetting_an_older_session_keeps_the_slot_s_latest() {
        let (recent, s, slot, _) = one_remembered();
        let (_, newer) = session(2, 0, "a\t/\t2");
        recent.remember(&slot, &newer);
        recent.forget(&s, 1);
        assert_eq!(recent.latest(&s), ("2".to_owned(), "0".to_owned()));
        recent.forget(&s, 2);
        assert_eq!(recent.latest(&s), unknown());
        assert!(recent.keys().is_empty());
    }

    #[test]
    fn pruning_taking_and_draining() {
        let (recent, s, slot, r) = one_remembered();
        recent.prune(Duration::from_secs(60));
        assert_eq!(recent.keys().len(), 1, "used just now");
        recent.prune(Duration::ZERO);
        assert!(recent.keys().is_empty());
        assert_eq!(recent.latest(&s), unknown());
        recent.remember(&slot, &r);
        let taken = recent.take([(s.clone(), 1), (s.clone(), 2)]);
        assert_eq!(taken.len(), 1);
        assert_eq!(
            (taken[0].slot.clone(), taken[0].record.id),
            (slot.clone(), 1)
        );
        recent.remember(&slot, &r);
        assert_eq!(recent.drain().len(), 1);
        assert!(recent.keys().is_empty());
        assert_eq!(recent.latest(&s), unknown());
    }
}
