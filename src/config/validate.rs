//! Validate, then freeze: each section of the raw file becomes its runtime value, with one
//! [`Checker`] collecting every problem so that all of them are reported together. The sections
//! live in their own modules ([`server`](super::server), [`log`](super::log),
//! [`issuer`](super::issuer), [`upstream`](super::upstream) with its [`session`](super::session),
//! [`routes`](super::routes), [`store`](super::store), [`metadata`](super::metadata)); this
//! module only runs them in order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::check::Checker;
use super::file::{self, FileConfig};
use super::{
    issuer, log, metadata, routes, server, store, telemetry, upstream, Config, ConfigErrors, Origin,
};

pub(super) fn build(
    raw: FileConfig,
    routes_file: Option<(PathBuf, file::RoutesFile)>,
    origin: &Origin<'_>,
    source: Option<&Path>,
) -> Result<Config, ConfigErrors> {
    let mut c = Checker::new(origin);
    let base_dir = source
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let server = server::server(&mut c, &raw.server, &base_dir);
    let log = log::log(&mut c, &raw.log, &base_dir);
    let issuers = issuer::issuers(&mut c, &raw.issuer, &base_dir);
    let upstreams = upstream::upstreams(&mut c, &raw.upstream, &base_dir);

    let issuer_ids: Vec<(Arc<str>, Duration)> =
        issuers.iter().map(|i| (i.id.clone(), i.leeway)).collect();
    let upstream_ids: Vec<Arc<str>> = upstreams.iter().map(|u| u.id.clone()).collect();
    // The challenges of the routes name the metadata document, so the resource comes first.
    let resource = metadata::resource(&mut c, raw.metadata.as_ref());
    let challenge_head = crate::metadata::challenge_head(&server.realm, resource.as_ref());
    let mut sections = routes::Section::all(&raw.route, None);
    if let Some((path, parsed)) = &routes_file {
        sections.extend(routes::Section::all(
            &parsed.route,
            Some(path.display().to_string()),
        ));
    }
    let table = routes::compile(
        &mut c,
        &sections,
        &routes::Context {
            upstreams: &upstream_ids,
            issuers: &issuer_ids,
            challenge_head: &challenge_head,
            default_max_body: server.max_body,
        },
    );
    let metadata = metadata::document(&mut c, raw.metadata.as_ref(), resource, &issuers, &table);

    let store = store::store(&mut c, &raw.store, &upstreams);
    let telemetry = telemetry::telemetry(&mut c, &raw.telemetry, &telemetry::process_env);
    c.finish(Config {
        source: source.map(Path::to_path_buf),
        server,
        log,
        issuers,
        upstreams,
        routes: Arc::new(table),
        store,
        metadata,
        telemetry,
    })
}

/// A route file checked alone: references resolve to whatever the file names, and the realm,
/// body limit and issuer leeway are the defaults (the challenges name no metadata).
pub(super) fn build_routes_only(
    parsed: &file::RoutesFile,
    origin: &Origin<'_>,
) -> Result<usize, ConfigErrors> {
    let mut c = Checker::new(origin);
    let defaults = server::server(&mut c, &file::ServerSection::default(), Path::new(""));
    let named = |f: fn(&file::RouteSection) -> Option<&String>| -> Vec<Arc<str>> {
        parsed
            .route
            .iter()
            .filter_map(f)
            .map(|s| Arc::from(s.as_str()))
            .collect()
    };
    let upstreams = named(|r| r.upstream.as_ref());
    let leeway = c
        .duration("issuer.leeway", file::default_leeway())
        .unwrap_or_default();
    let issuers: Vec<(Arc<str>, Duration)> = named(|r| r.issuer.as_ref())
        .into_iter()
        .map(|id| (id, leeway))
        .collect();
    let sections = routes::Section::all(&parsed.route, None);
    let table = routes::compile(
        &mut c,
        &sections,
        &routes::Context {
            upstreams: &upstreams,
            issuers: &issuers,
            challenge_head: &crate::metadata::challenge_head(&defaults.realm, None),
            default_max_body: defaults.max_body,
        },
    );
    c.finish(table.len())
}
