//! One upstream session as the store keeps it: where it lives ([`SlotKey`]), its life
//! ([`SessionState`]), the record itself and the edits applied to it.

use super::super::grant::GrantKey;
use super::super::handle::Nonce;
use super::super::jar::Jar;

/// Where one upstream session lives: a grant, and in concurrent mode one of its handles.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub grant: GrantKey,
    pub handle: Option<Nonce>,
}

/// The life of an upstream session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Created; no login has succeeded yet (or the upstream session expired).
    NeedsLogin,
    /// A login is running.
    LoggingIn,
    Active,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::NeedsLogin => "needs_login",
            SessionState::LoggingIn => "logging_in",
            SessionState::Active => "active",
        }
    }
}

/// One upstream session as the store keeps it. Times are Unix milliseconds so that a shared
/// store can hold them.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Unique for the life of the record: a slot reused after a logout gets a new id.
    pub id: u64,
    pub concurrent: bool,
    pub state: SessionState,
    pub jar: Jar,
    /// True while the record holds a seat (from the start of its login until its logout).
    pub seated: bool,
    pub created_ms: u64,
    pub last_used_ms: u64,
    /// When a `202 Accepted` (a long-running operation) was last seen.
    pub last_op_ms: Option<u64>,
    pub in_flight: u32,
    pub queued: u32,
    /// `token` grant keys: the session ends with its access token, at this time.
    pub retire_at_ms: Option<u64>,
    /// How many times the jar was written back (a shared store keeps the freshest copy when
    /// sessions are registered again after a loss).
    pub jar_version: u64,
}

impl SessionRecord {
    pub fn new(id: u64, concurrent: bool, now_ms: u64) -> Self {
        SessionRecord {
            id,
            concurrent,
            state: SessionState::NeedsLogin,
            jar: Jar::default(),
            seated: false,
            created_ms: now_ms,
            last_used_ms: now_ms,
            last_op_ms: None,
            in_flight: 0,
            queued: 0,
            retire_at_ms: None,
            jar_version: 0,
        }
    }

    /// Requests holding or waiting for this session.
    pub fn users(&self) -> u32 {
        self.in_flight + self.queued
    }
}

/// A change to one record, applied atomically by the store. A shared store may run it again on
/// a fresh copy when another writer got there first (compare and set), so it must depend only
/// on the record it is given.
pub type Edit = Box<dyn Fn(&mut SessionRecord) + Send + Sync + 'static>;
