//! `[log]` → [`LogConfig`]: the `tracing` filter (checked here, so a typo is a configuration
//! error rather than a silent default) and the output format.

use std::path::Path;

use super::check::{written_or, Checker};
use super::file::{self, LogSection};
use super::{LogConfig, LogFormat, SubjectLog};

pub(crate) fn log(c: &mut Checker<'_>, raw: &LogSection, base: &Path) -> LogConfig {
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
    // The folder must exist: the file itself is created (and re-created after rotation).
    let access_file = raw.access_file.as_ref().and_then(|f| {
        let path = base.join(f);
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                c.error(
                    "log.access_file",
                    format!("the folder {} does not exist", dir.display()),
                );
                None
            }
            _ => Some(path),
        }
    });
    let subject = match written_or(&raw.subject, file::default_log_subject) {
        "hashed" => SubjectLog::Hashed,
        "plain" => SubjectLog::Plain,
        "none" => SubjectLog::Omitted,
        other => {
            c.error(
                "log.subject",
                format!("`{other}` is not a subject mode; use \"hashed\", \"plain\" or \"none\""),
            );
            SubjectLog::Hashed
        }
    };
    let subject_key = raw
        .subject_key_file
        .as_ref()
        .and_then(|f| super::session::handle_key(c, "log.subject_key_file", &base.join(f)));
    LogConfig {
        level,
        format,
        access_file,
        subject,
        subject_key,
    }
}
