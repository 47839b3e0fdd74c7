//! What this replica holds in the shared store, and keeps alive: in-flight places, queue
//! tickets and login locks, each with an expiry of `lease_ttl` that one task renews for all of
//! them in a single round trip every third of `lease_ttl`. A crashed replica's holdings run out
//! by themselves.
//!
//! A lease that expired while Redis was unreachable is restored when nobody took its place; if
//! somebody did, the request that held it is told (its `lost` signal) and stops using the
//! session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What a ticket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// An in-flight place (`f`).
    InFlight,
    /// A place in a session's queue (`q`).
    Queued,
    /// A login lock (`l`); the ticket is the lock's token.
    Login,
    /// The credential trial lock (`t`); the ticket is its token, the slot its key.
    Trial,
}

impl Kind {
    pub(super) fn code(self) -> &'static str {
        match self {
            Kind::InFlight => "f",
            Kind::Queued => "q",
            Kind::Login => "l",
            Kind::Trial => "t",
        }
    }
}

/// One holding.
#[derive(Debug)]
pub(super) struct Held {
    pub kind: Kind,
    pub slot: String,
    pub id: u64,
    /// Told when an in-flight place could not be kept.
    pub lost: Option<watch::Sender<bool>>,
}

/// This replica's holdings in one store, by ticket.
#[derive(Debug, Default, Clone)]
pub(super) struct Holdings(Arc<Mutex<HashMap<String, Held>>>);

impl Holdings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn hold(&self, ticket: &str, kind: Kind, slot: &str, id: u64) {
        self.lock().insert(
            ticket.to_owned(),
            Held {
                kind,
                slot: slot.to_owned(),
                id,
                lost: None,
            },
        );
    }

    /// The ticket now holds an in-flight place; returns the receiver of its `lost` signal.
    pub(super) fn granted(&self, ticket: &str, slot: &str, id: u64) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        self.lock().insert(
            ticket.to_owned(),
            Held {
                kind: Kind::InFlight,
                slot: slot.to_owned(),
                id,
                lost: Some(tx),
            },
        );
        rx
    }

    /// True while `ticket` is held (not given back, not lost).
    pub(super) fn holds(&self, ticket: &str) -> bool {
        self.lock().contains_key(ticket)
    }

    /// The tickets of the in-flight places this replica holds (or keeps) on session `id`.
    pub(super) fn places_on(&self, id: u64) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, h)| h.kind == Kind::InFlight && h.id == id)
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub(super) fn drop_ticket(&self, ticket: &str) {
        self.lock().remove(ticket);
    }

    /// `(kind, slot, id, ticket)` of every holding, for the renewal.
    pub(super) fn snapshot(&self) -> Vec<(Kind, String, u64, String)> {
        self.lock()
            .iter()
            .map(|(t, h)| (h.kind, h.slot.clone(), h.id, t.clone()))
            .collect()
    }

    /// A holding the store could not keep: its request is told, and it is forgotten.
    pub(super) fn lose(&self, ticket: &str) -> Option<Kind> {
        let held = self.lock().remove(ticket)?;
        if let Some(tx) = &held.lost {
            let _ = tx.send(true);
        }
        Some(held.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_are_the_renewal_script_s() {
        let codes = [Kind::InFlight, Kind::Queued, Kind::Login, Kind::Trial].map(Kind::code);
        assert_eq!(codes, ["f", "q", "l", "t"]);
    }

    #[test]
    fn holdings_are_renewed_until_dropped() {
        let h = Holdings::default();
        h.hold("t1", Kind::Queued, "", 7);
        h.hold("t2", Kind::Login, "g|-", 8);
        let mut held = h.snapshot();
        held.sort_by(|a, b| a.3.cmp(&b.3));
        assert_eq!(
            held,
            vec![
                (Kind::Queued, String::new(), 7, "t1".to_owned()),
                (Kind::Login, "g|-".to_owned(), 8, "t2".to_owned()),
            ]
        );
        h.drop_ticket("t1");
        h.drop_ticket("unknown");
        assert_eq!(h.snapshot().len(), 1);
    }

    #[test]
    fn a_queued_ticket_granted_a_place_becomes_an_in_flight_holding() {
        let h = Holdings::default();
        h.hold("t", Kind::Queued, "", 7);
        let lost = h.granted("t", "g|-", 7);
        assert_eq!(
            h.snapshot(),
            vec![(Kind::InFlight, "g|-".to_owned(), 7, "t".to_owned())]
        );
        assert!(!*lost.borrow());
    }

    #[test]
    fn a_lost_holding_tells_its_request_and_is_forgotten() {
        let h = Holdings::default();
        let lost = h.granted("t", "g|-", 7);
        h.hold("q", Kind::Queued, "", 7);
        assert_eq!(h.lose("t"), Some(Kind::InFlight));
        assert!(*lost.borrow(), "the request is told");
        assert_eq!(h.lose("t"), None, "once");
        assert_eq!(h.lose("q"), Some(Kind::Queued), "nobody to tell");
        assert!(h.snapshot().is_empty());
    }
}
