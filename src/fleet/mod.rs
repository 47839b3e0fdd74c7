//! The fleet: several replicas sharing one Redis (`[store] kind = "redis"`).
//!
//! | module | concern |
//! |---|---|
//! | [`connection`] | the connection to Redis, direct or through Sentinel, bounded and counted |
//! | [`version`] | the oldest Redis the store runs on, checked when the store connects |
//! | [`membership`] | who is alive (heartbeats), who serves which upstream profile, who reports the fleet's gauges, and the wake-ups of waiting requests |
//! | [`seal`] | session jars sealed at rest (AES-256-GCM) |
//! | [`introspection`] | introspection answers shared by the replicas |
//!
//! The session table itself is [`crate::session::redis`].

pub mod connection;
pub mod introspection;
pub mod membership;
pub mod seal;
pub mod version;

pub use connection::{RedisHandle, StoreError};
pub use introspection::SharedIntrospection;
pub use membership::Fleet;
