//! tollgate: an OAuth 2.0 bearer-token gateway for legacy HTTP APIs.
//!
//! The crate is one binary with a library face so that the integration tests (and the benchmark)
//! can start the real gateway in-process on sockets they bound themselves. `ARCHITECTURE.md`
//! draws the floors; from the top down:
//!
//! | module      | concern                                                                  |
//! |-------------|--------------------------------------------------------------------------|
//! | [`demo`]    | the self-contained `tollgate demo` (issuer, fake legacy API, gateway)     |
//! | [`server`]  | listeners, connection handling, graceful shutdown, the admin endpoints    |
//! | [`reload`]  | configuration reloads (SIGHUP, file watch)                                |
//! | [`gateway`] | the request pipeline of named steps, and the wiring a reload swaps        |
//! | [`error`]   | every error the gateway answers itself, classified and mapped in one table |
//! | [`session`] | upstream sessions: the `lease` and `settle` steps, pools, stores          |
//! | [`fleet`]   | replicas sharing one Redis: connection, membership, sealing, shared answers |
//! | [`proxy`]   | upstream clients and the header edits of both directions                  |
//! | [`config`]  | parse → validate → freeze the TOML configuration (and the route file)    |
//! | [`policy`]  | path normalisation, route choice, scope and claim checks                 |
//! | [`auth`]    | bearer extraction, JWT validation against JWKS, introspection, the cache  |
//! | [`metrics`] | metric names (one constant each) and the Prometheus registry              |
//! | [`metadata`] | the RFC 9728 protected resource metadata document and its challenge parameter |
//! | [`limits`], [`upgrade`], [`logging`] | body limits, WebSocket pass-through, log set-up |
//!
//! The arrows run one way: [`config`] builds the runtime values that [`auth`] and [`policy`]
//! consume (issuer settings, the route table), and neither of them imports [`config`].
//!
//! Below them sit leaf modules that import nothing of the crate, so that no two layers need each
//! other for a helper: [`clock`] (Unix time as numbers), [`net`] (loopback hosts, credential
//! redaction), [`hop_by_hop`] (the connection-scoped header list), [`runtime`] (the threads
//! requests run on: per-core runtimes or one work-stealing runtime), [`framing`] (the request
//! framing and target checks) and `pem` (certificate and key files), next to the [`secret`] type that keeps credentials out of logs.

pub mod auth;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod fleet;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod hop_by_hop;
pub mod limits;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod net;
mod pem;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod upgrade;

#[cfg(test)]
mod testing;

pub use config::Config;
pub use gateway::Gateway;
pub use server::{serve, App, Listeners};

/// The body type of every response tollgate produces: either a small buffer the gateway wrote
/// itself or an upstream body streamed through unchanged.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// The error type carried by [`Body`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The version string reported by `--version` and `tollgate_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The compiler that built this binary (`rustc --version`), from `build.rs`.
pub const RUSTC: &str = env!("TOLLGATE_RUSTC");
/// The source's commit (`git rev-parse --short=12 HEAD`, or `TOLLGATE_COMMIT`, or `unknown`),
/// from `build.rs`.
pub const COMMIT: &str = env!("TOLLGATE_COMMIT");
