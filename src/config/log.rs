//! `[log]` → [`LogConfig`]: the `tracing` filter (checked here, so a typo is a configuration
//! error rather than a silent default) and the output format.

use super::check::{written_or, Checker};
use super::file::{self, LogSection};
use super::{LogConfig, LogFormat};

pub(crate) fn log(c: &mut Checker<'_>, raw: &LogSection) -> LogConfig {
    let level = written_or(&raw.level, file::default_log_level).to_owned();
    if tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .is_err()
    {
        c.error(
            "log.level",
            format!(
                "`{level}` is not a level (error, warn, info, debug, trace) or filter directive"
            ),
        );
    }
    let format = match written_or(&raw.format, file::default_log_format) {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            c.error(
                "log.format",
                format!("`{other}` is not a log format; use \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    LogConfig { level, format }
}
