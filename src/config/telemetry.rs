//! `[telemetry]` → [`TelemetryConfig`]: where OpenTelemetry spans go, with the standard `OTEL_*`
//! variables filling in what the file leaves out. A key written in the file (or set by a
//! `TOLLGATE__TELEMETRY__…` override) wins over the `OTEL_*` variable; `OTEL_SDK_DISABLED=true`
//! turns tracing off whatever the file says.
//!
//! The variables are read here, once, so that a wrong value is a configuration error that names
//! the variable rather than a warning at the first span. The exporter itself still honours the
//! ones about transport (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`) and the resource
//! (`OTEL_RESOURCE_ATTRIBUTES`).

use url::Url;

use super::check::{written_or, Checker};
use super::file::{self, TelemetrySection};
use super::TelemetryConfig;

/// How the environment is read (the process's, or a map in tests).
pub(crate) type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The process environment; empty values count as unset (the OpenTelemetry convention).
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub(crate) fn telemetry(
    c: &mut Checker<'_>,
    raw: &TelemetrySection,
    env: &Env<'_>,
) -> Option<TelemetryConfig> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    // Off when no endpoint is named anywhere; a wrong one is an error, and the other keys are
    // still checked so that every problem is reported at once.
    let traces_url = traces_url(c, raw, env)?;
    if let Some(p) =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
    {
        if p.trim() != "http/protobuf" {
            c.error(
                "telemetry.otlp_endpoint",
                format!("OTEL_EXPORTER_OTLP_PROTOCOL `{p}` is not supported; tollgate exports OTLP over HTTP with protobuf (`http/protobuf`)"),
            );
        }
    }
    let service_name = match &raw.service_name {
        Some(n) => n.clone(),
        None => env("OTEL_SERVICE_NAME").unwrap_or_else(|| file::default_service_name().to_owned()),
    };
    if service_name.trim().is_empty() {
        c.error("telemetry.service_name", "must not be empty");
    }
    let sample_ratio = match raw.sample_ratio {
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            c.error(
                "telemetry.sample_ratio",
                format!("{r} is not a ratio between 0 and 1"),
            );
            1.0
        }
        None => env_ratio(c, env),
    };
    let timeout = c
        .duration(
            "telemetry.timeout",
            written_or(&raw.timeout, file::default_telemetry_timeout),
        )
        .unwrap_or_default();
    c.nonzero("telemetry.timeout", Some(timeout));
    Some(TelemetryConfig {
        traces_url: traces_url?,
        service_name,
        sample_ratio,
        timeout,
    })
}

/// The traces URL: `otlp_endpoint` + `/v1/traces`, else the signal's own variable as it is,
/// else the general variable + `/v1/traces` (the OTLP exporter specification's rules).
/// `None`: no endpoint anywhere (tracing off); `Some(None)`: a wrong one (the error recorded).
fn traces_url(c: &mut Checker<'_>, raw: &TelemetrySection, env: &Env<'_>) -> Option<Option<Url>> {
    let (variable, base, append) = match &raw.otlp_endpoint {
        Some(e) => (None, e.clone(), true),
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e) => (Some("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), e, false),
            None => (
                Some("OTEL_EXPORTER_OTLP_ENDPOINT"),
                env("OTEL_EXPORTER_OTLP_ENDPOINT")?,
                true,
            ),
        },
    };
    let url = match Url::parse(base.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        _ => {
            let from = variable.map(|v| format!("{v} ")).unwrap_or_default();
            c.error(
                "telemetry.otlp_endpoint",
                format!(
                    "{from}`{}` is not an http:// or https:// URL",
                    crate::net::redact_url_value(&base)
                ),
            );
            return Some(None);
        }
    };
    if !append {
        return Some(Some(url));
    }
    let joined = format!("{}/v1/traces", url.as_str().trim_end_matches('/'));
    Some(Url::parse(&joined).ok())
}

/// The ratio of `OTEL_TRACES_SAMPLER` (with `OTEL_TRACES_SAMPLER_ARG` for the ratio samplers);
/// 1 when unset.
fn env_ratio(c: &mut Checker<'_>, env: &Env<'_>) -> f64 {
    let Some(sampler) = env("OTEL_TRACES_SAMPLER") else {
        return 1.0;
    };
    match sampler.trim() {
        "always_on" | "parentbased_always_on" => 1.0,
        "always_off" | "parentbased_always_off" => 0.0,
        "traceidratio" | "parentbased_traceidratio" => {
            let arg = env("OTEL_TRACES_SAMPLER_ARG");
            match arg.as_deref().map(str::trim).map(str::parse::<f64>) {
                None => 1.0,
                Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
                Some(_) => {
                    c.error(
                        "telemetry.sample_ratio",
                        format!(
                            "OTEL_TRACES_SAMPLER_ARG `{}` is not a ratio between 0 and 1",
                            arg.unwrap_or_default()
                        ),
                    );
                    1.0
                }
            }
        }
        other => {
            c.error(
                "telemetry.sample_ratio",
                format!("OTEL_TRACES_SAMPLER `{other}` is not supported; use always_on, always_off, traceidratio or their parentbased_ forms (sampling is always parent-based), or set telemetry.sample_ratio"),
            );
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Origin;

    fn run(
        raw: &TelemetrySection,
        vars: &[(&str, &str)],
    ) -> (Option<TelemetryConfig>, Vec<String>) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let figment = figment::Figment::new();
        let origin = Origin::new(&figment, Some(std::path::Path::new("tollgate.toml")));
        let mut c = Checker::new(&origin);
        let t = telemetry(&mut c, raw, &|k| vars.get(k).cloned());
        (t, c.errors.iter().map(|e| e.to_string()).collect())
    }

    fn section(endpoint: Option<&str>, ratio: Option<f64>) -> TelemetrySection {
        TelemetrySection {
            otlp_endpoint: endpoint.map(str::to_owned),
            sample_ratio: ratio,
            ..TelemetrySection::default()
        }
    }

    #[test]
    fn off_without_an_endpoint_anywhere() {
        assert_eq!(run(&TelemetrySection::default(), &[]), (None, vec![]));
    }

    #[test]
    fn the_file_endpoint_gets_the_traces_path_and_defaults() {
        let (t, errors) = run(&section(Some("http://127.0.0.1:4318/"), None), &[]);
        assert!(errors.is_empty(), "{errors:?}");
        let t = t.unwrap();
        assert_eq!(t.traces_url.as_str(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.service_name, "tollgate");
        assert_eq!(t.sample_ratio, 1.0);
        assert_eq!(t.timeout, std::time::Duration::from_secs(10));
    }

    #[test]
    fn otel_variables_fill_in_what_the_file_leaves_out() {
        let (t, _) = run(
            &TelemetrySection::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SERVICE_NAME", "gw-eu"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ],
        );
        let t = t.unwrap();
        assert_eq!(t.traces_url.as_str(), "http://collector:4318/v1/traces");
        assert_eq!((t.service_name.as_str(), t.sample_ratio), ("gw-eu", 0.25));
        // The signal's own variable is taken as it is.
        let (t, _) = run(
            &TelemetrySection::default(),
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom")],
        );
        assert_eq!(t.unwrap().traces_url.as_str(), "http://c:4318/custom");
        // The file wins over the environment.
        let (t, _) = run(
            &section(Some("http://file:4318"), Some(0.5)),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ],
        );
        let t = t.unwrap();
        assert_eq!(t.traces_url.host_str(), Some("file"));
        assert_eq!(t.sample_ratio, 0.5);
    }

    #[test]
    fn otel_sdk_disabled_turns_it_off() {
        let (t, _) = run(
            &section(Some("http://127.0.0.1:4318"), None),
            &[("OTEL_SDK_DISABLED", "TRUE")],
        );
        assert!(t.is_none());
    }

    #[test]
    fn wrong_values_name_the_key_or_the_variable() {
        let (_, e) = run(&section(Some("127.0.0.1:4318"), Some(1.5)), &[]);
        assert!(
            e.iter().any(|e| e.contains("telemetry.otlp_endpoint")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("telemetry.sample_ratio") && e.contains("1.5")),
            "{e:?}"
        );
        let (_, e) = run(
            &section(Some("http://127.0.0.1:4318"), None),
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ],
        );
        assert!(
            e.iter()
                .any(|e| e.contains("OTEL_TRACES_SAMPLER_ARG `half`")),
            "{e:?}"
        );
        let (_, e) = run(
            &section(Some("http://127.0.0.1:4318"), None),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
        );
        assert!(
            e.iter().any(|e| e.contains("`grpc` is not supported")),
            "{e:?}"
        );
        // Credentials in a bad endpoint are not echoed.
        let (_, e) = run(&section(Some("ftp://user:hunter2@collector"), None), &[]);
        assert!(!e.iter().any(|e| e.contains("hunter2")), "{e:?}");
    }
}
