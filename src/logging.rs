//! Logging set-up: `[log] level` and `format`, with `RUST_LOG` overriding the level.
//!
//! Logs go to standard error so that standard output stays for command results (`check`,
//! `demo`'s instructions). Nothing logged anywhere contains a token, a cookie value or a secret:
//! tokens are never passed to a log macro, and the types that hold them redact themselves in
//! `Debug`.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt as _};
use tracing_subscriber::fmt::{self, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// The access log's file when `log.access_file` is set, for [`reopen_access_file`].
static ACCESS_FILE: OnceLock<Arc<AccessFile>> = OnceLock::new();

/// The target of the access-log lines.
const ACCESS: &str = "tollgate::access";

/// Installs the global subscriber. Returns an error if one is already installed.
///
/// With `log.access_file`, the access lines go to that file (whatever the level: they are what
/// it is for) and the rest to standard error; without it, everything goes to standard error.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::builder()
            .parse(&v)
            .map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => EnvFilter::builder()
            .parse(&cfg.level)
            .map_err(|e| format!("log.level: {e}"))?,
    };
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let json = cfg.format == LogFormat::Json;
    let access_file = match &cfg.access_file {
        Some(path) => Some(Arc::new(AccessFile::open(path)?)),
        None => None,
    };
    let separate = access_file.is_some();
    let stderr = fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let main_filter = filter.and(filter_fn(move |m| !(separate && m.target() == ACCESS)));
    let main: Box<dyn Layer<Registry> + Send + Sync> = if json {
        Box::new(stderr.json().flatten_event(true).with_filter(main_filter))
    } else {
        Box::new(stderr.with_filter(main_filter))
    };
    let access: Option<Box<dyn Layer<Registry> + Send + Sync>> = access_file.map(|file| {
        let _ = ACCESS_FILE.set(file.clone());
        let only_access = filter_fn(|m| m.target() == ACCESS && *m.level() <= Level::INFO);
        let layer = fmt::layer().with_ansi(false).with_writer(Access(file));
        let boxed: Box<dyn Layer<Registry> + Send + Sync> = if json {
            Box::new(layer.json().flatten_event(true).with_filter(only_access))
        } else {
            Box::new(layer.with_filter(only_access))
        };
        boxed
    });
    let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        std::iter::once(main).chain(access).collect();
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| e.to_string())
}

/// SIGUSR1: opens `log.access_file` again by name, so that a rotated file (renamed by
/// logrotate) is left to its rotator and new lines go to a fresh one. A no-op without the
/// setting; an error (the folder is gone) keeps the old file and is returned.
pub fn reopen_access_file() -> std::io::Result<()> {
    match ACCESS_FILE.get() {
        Some(file) => file.reopen(),
        None => Ok(()),
    }
}

/// The access log's file, appended to, swapped whole on reopen.
struct AccessFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl AccessFile {
    fn open(path: &Path) -> Result<AccessFile, String> {
        let file =
            Self::append(path).map_err(|e| format!("log.access_file {}: {e}", path.display()))?;
        Ok(AccessFile {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    fn append(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn reopen(&self) -> std::io::Result<()> {
        let fresh = Self::append(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

/// One line's writer: the file, locked while the line is written.
struct AccessWriter<'a>(MutexGuard<'a, File>);

impl Write for AccessWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The access layer's writer factory: one locked file per line.
struct Access(Arc<AccessFile>);

impl<'a> MakeWriter<'a> for Access {
    type Writer = AccessWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        AccessWriter(self.0.file.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Colour codes belong to a terminal: none when standard error is a file or a pipe (a log
/// collector, `journald`, a test), and none when `NO_COLOR` is set to anything but the empty
/// string (no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
