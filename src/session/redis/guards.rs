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
