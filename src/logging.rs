//! Logging set-up: `[log] level` and `format`, with `RUST_LOG` overriding the level.
//!
//! Logs go to standard error so that standard output stays for command results (`check`,
//! `demo`'s instructions). Nothing logged anywhere contains a token, a cookie value or a secret:
//! tokens are never passed to a log macro, and the types that hold them redact themselves in
//! `Debug`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Returns an error if one is already installed.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::builder()
            .parse(&v)
            .map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => EnvFilter::builder()
            .parse(&cfg.level)
            .map_err(|e| format!("log.level: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}
