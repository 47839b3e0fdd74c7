//! What the store's operations answer besides records: creation, removal, expiry, upkeep and
//! restoration results, and the counts behind the gauges.

use super::record::{SessionRecord, SlotKey};
#[cfg(doc)]
use super::SessionStore;

/// Why [`SessionStore::take_expired`] took a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    Age,
    /// The access token that named the session (`token` grant keys) expired.
    TokenExpired,
}

/// The result of [`SessionStore::create`].
#[derive(Debug)]
pub enum Created {
    /// The record was stored.
    New(SessionRecord),
    /// Another request created the slot first: use its record.
    Existing(SessionRecord),
    /// The grant already has its maximum number of sessions; the earliest idle expiry among them.
    GrantFull { earliest_idle_ms: u64 },
}

/// The result of [`SessionStore::remove_unused`].
#[derive(Debug)]
pub enum Removal {
    /// The record was removed; the caller retires it.
    Removed(SessionRecord),
    /// A request holds or waits for the session: nothing was removed.
    Busy,
    /// No record with that id is at the slot any more.
    Gone,
}

/// What periodic upkeep found.
#[derive(Debug, Default)]
pub struct Maintenance {
    /// Records of logins whose replica is gone (their seats are given back by the caller).
    pub abandoned: Vec<SessionRecord>,
    /// The store lost its state (it came back empty, or as another instance) since the last
    /// upkeep.
    pub reset: bool,
    /// Sessions this replica logged in or used lately that the store no longer has, though
    /// nobody removed them: they hold seats at the upstream that the fleet no longer counts.
    pub lost: Vec<(SlotKey, SessionRecord)>,
}

/// What [`SessionStore::restore`] did with a lost session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Registered again, with its seat.
    Registered,
    /// Its slot is taken by a newer session, or no seat is free: the caller logs it out.
    NoRoom,
    /// No room, but a request of this replica still holds a place on it (one that began
    /// before the loss, or a place kept from then): the caller logs it out only once that
    /// request is over, so that a logout never meets a request on its session.
    InUse,
}

/// Session counts for the gauges, read in one step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub needs_login: usize,
    pub logging_in: usize,
    pub active: usize,
    pub seats: u32,
}
