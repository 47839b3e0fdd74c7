//! A request's place on a session: the in-flight lease, how it ends, and why none was granted.

use super::super::jar::Jar;
use super::record::{SessionRecord, SlotKey};
#[cfg(doc)]
use super::SessionStore;

/// Why no in-flight lease was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRefused {
    /// The queue is full, or the wait ran out.
    Busy,
    /// The session was removed while waiting.
    Gone,
    /// The store could not be asked (a shared store is down).
    Unavailable,
    /// The grant already holds its maximum number of sessions; the earliest idle expiry among
    /// them (last use, Unix ms).
    GrantFull { earliest_idle_ms: u64 },
}

/// How an in-flight lease ends.
#[derive(Debug, Default)]
pub struct Release {
    /// The answer was `202 Accepted` (a long-running operation is under way).
    pub op: bool,
    /// The jar as the answer left it, when it changed.
    pub jar: Option<Jar>,
}

/// A held in-flight lease. Release it with [`SessionStore::release`]; a lease dropped without
/// release (its request was cancelled) is released by its drop.
pub struct InFlight {
    pub slot: SlotKey,
    pub id: u64,
    /// Gives the place back.
    finish: Option<Finish>,
    /// Turns true when a shared store could not keep the lease (it expired during an outage
    /// and another request took the place): the request must stop using the session.
    lost: Option<tokio::sync::watch::Receiver<bool>>,
}

/// How a lease gives its place back.
enum Finish {
    /// A place in the memory store: no box, as it is every request's on a session route of
    /// one replica.
    Memory(super::memory::Place),
    /// Any other store's release.
    Boxed(Box<dyn FnOnce(Release) + Send + Sync>),
}

impl InFlight {
    /// A lease whose release runs `finish`.
    pub fn new(slot: SlotKey, id: u64, finish: Box<dyn FnOnce(Release) + Send + Sync>) -> Self {
        InFlight {
            slot,
            id,
            finish: Some(Finish::Boxed(finish)),
            lost: None,
        }
    }

    /// A lease on `place`, in the memory store.
    pub(super) fn memory(slot: SlotKey, id: u64, place: super::memory::Place) -> Self {
        InFlight {
            slot,
            id,
            finish: Some(Finish::Memory(place)),
            lost: None,
        }
    }

    fn give_back(&mut self, how: Release) {
        match self.finish.take() {
            Some(Finish::Memory(place)) => place.finish(&self.slot, self.id, how),
            Some(Finish::Boxed(f)) => f(how),
            None => {}
        }
    }

    /// The same lease, with a signal that it was lost.
    pub fn with_lost(mut self, lost: tokio::sync::watch::Receiver<bool>) -> Self {
        self.lost = Some(lost);
        self
    }

    /// A receiver that turns true if the store lost this lease (`None`: it cannot be lost).
    pub fn lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.lost.clone()
    }

    /// Gives the place back now.
    pub fn finish(mut self, how: Release) {
        self.give_back(how);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.give_back(Release::default());
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A request's hold on its slot's session: the record as it was when the place was granted.
#[derive(Debug)]
pub struct Leased {
    pub record: SessionRecord,
    pub in_flight: InFlight,
    /// The record was created by this call.
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::session::grant::GrantKey;

    #[test]
    fn a_lease_is_given_back_once_by_its_finish_or_by_its_drop() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lease = |id: u64| {
            let seen = seen.clone();
            let slot = SlotKey {
                grant: GrantKey("g".into()),
                handle: None,
            };
            InFlight::new(
                slot,
                id,
                Box::new(move |how: Release| {
                    seen.lock().unwrap().push((id, how.op, how.jar.is_some()));
                }),
            )
        };
        lease(1).finish(Release {
            op: true,
            jar: Some(Jar::default()),
        });
        drop(lease(2));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, true, true), (2, false, false)],
            "a finished lease is not released again by its drop; a dropped one releases plainly"
        );
        assert!(lease(3).lost().is_none(), "a lease that cannot be lost");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let held = lease(4).with_lost(rx);
        tx.send(true).unwrap();
        assert!(*held.lost().unwrap().borrow());
    }
}
