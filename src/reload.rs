//! Configuration reload: on SIGHUP, and when the configuration file or its route file changes
//! (polled, debounced). The new file is parsed and validated like at start; a bad file keeps
//! the running configuration and says why in the log (with its file and key). A good one is
//! applied with [`Gateway::apply`]: everything swaps at once, in-flight requests finish on the
//! old configuration.
//!
//! Listen addresses, the threads and their scheduler, the log settings, the `[store]` and `[telemetry]` are fixed at start: changing them needs
//! a restart, which the log says.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock;
use crate::config::{self, Config};
use crate::gateway::Gateway;

/// Extra work of a reload that belongs to the server (the TLS certificates).
pub type Hook = std::sync::Arc<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// Reloads `path` into `gateway`. Returns the new configuration's summary, or every problem.
pub async fn reload(
    path: &Path,
    gateway: &Gateway,
    running: &Config,
    hook: Option<&Hook>,
) -> Result<Config, String> {
    let metrics = gateway.metrics();
    let fail = |message: String| {
        metrics.config_loaded("failure", clock::unix_secs_f64());
        tracing::error!(config = %path.display(), errors = %message, "configuration reload failed; the running configuration stays");
        Err(message)
    };
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if let Some(hook) = hook {
        if let Err(e) = hook(&cfg) {
            return fail(e);
        }
    }
    if let Err(e) = gateway.apply(&cfg).await {
        return fail(e.to_string());
    }
    for (what, changed) in [
        ("server.listen", cfg.server.listen != running.server.listen),
        (
            "server.admin_listen",
            cfg.server.admin_listen != running.server.admin_listen,
        ),
        (
            "server.threads",
            cfg.server.threads != running.server.threads,
        ),
        (
            "server.scheduler",
            cfg.server.scheduler != running.server.scheduler,
        ),
        ("[store]", cfg.store != running.store),
        ("[telemetry]", cfg.telemetry != running.telemetry),
        (
            "[log]",
            cfg.log.level != running.log.level || cfg.log.format != running.log.format,
        ),
    ] {
        if changed {
            tracing::warn!(
                setting = what,
                "this setting changed but takes effect only at the next start"
            );
        }
    }
    metrics.config_loaded("success", clock::unix_secs_f64());
    tracing::info!(config = %path.display(), summary = %cfg.summary(), "configuration reloaded");
    Ok(cfg)
}

/// What identifies a file's version for the watcher.
fn fingerprint(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// The files a configuration was read from: the file itself and its route file.
fn watched(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(table) = text.parse::<toml::Table>() {
            if let Some(rel) = table
                .get("server")
                .and_then(|s| s.get("routes_file"))
                .and_then(|r| r.as_str())
            {
                files.push(path.parent().unwrap_or(Path::new("")).join(rel));
            }
        }
    }
    files
}

/// Reloads on SIGHUP and on file changes until the task is aborted. `every` is the polling
/// period of the watcher (a change is applied once the file has been stable for one period).
pub fn spawn(
    path: PathBuf,
    gateway: Gateway,
    initial: Config,
    hook: Option<Hook>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    // The files' versions are taken now, not when the task first runs: a change made right
    // after start must count as a change.
    let mut files = watched(&path);
    let mut seen = fingerprint(&files);
    tokio::spawn(async move {
        let mut running = initial;
        let watch = running.server.watch_config;
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<()>();
            let by_signal = tokio::select! {
                _ = signalled => true,
                _ = tokio::time::sleep(every) => false,
            };
            if !by_signal {
                if !watch {
                    continue;
                }
                let now = fingerprint(&files);
                if now == seen {
                    continue;
                }
                // Debounce: wait until the file stops changing (editors write in steps).
                tokio::time::sleep(every).await;
                let settled = fingerprint(&files);
                if settled != now {
                    continue;
                }
                seen = settled;
            } else {
                tracing::info!("SIGHUP: reloading the configuration");
            }
            if let Ok(cfg) = reload(&path, &gateway, &running, hook.as_ref()).await {
                files = watched(&path);
                seen = fingerprint(&files);
                running = cfg;
            }
        }
    })
}
