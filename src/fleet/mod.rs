//! The fleet: several replicas sharing one Redis (`[store] kind = "redis"`).
//!
//! | module | concern |
//! |---|---|
//! | [`connection`] | the connection to Redis, direct or through Sentinel, bounded and counted |
//! | [`membership`] | who is alive (heartbeats), who serves which upstream profile, who reports the fleet's gauges, and the wake-ups of waiting requests |
//! | [`seal`] | session jars sealed at rest (AES-256-GCM) |
//!
//! The session table itself is [`crate::session::redis`]; shared introspection answers are
//! [`crate::auth::shared`].

pub mod connection;
pub mod membership;
pub mod seal;

pub use connection::{RedisHandle, StoreError};
pub use membership::Fleet;
