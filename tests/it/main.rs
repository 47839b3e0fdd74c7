#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

//! One integration-test binary: every module below tells one story over real sockets on
//! 127.0.0.1 (issuer → upstream → gateway → client → assertions).

#[macro_use]
mod support;

mod admin;
mod architecture;
mod cli;
mod connections;
mod cors;
mod demo;
mod errors_rfc6750;
mod faults;
mod fleet;
mod forwarding;
mod h2_abuse;
mod interop;
mod introspection;
mod jwt;
mod kept_connections;
mod logs;
mod metadata;
mod metrics;
mod per_core;
mod redis_store;
mod reload;
mod replicas;
mod session_edges;
mod session_model;
mod sessions;
mod slow_bodies;
mod smuggling;
mod step_up;
mod telemetry;
mod tls;
mod websocket;
