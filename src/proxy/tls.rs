//! The TLS side of an upstream's client: the roots an `https://` upstream's certificate must chain
//! to (`ca_file`, else the system's), and the client certificate tollgate presents
//! (`client_cert_file` + `client_key_file`). ALPN is left to the connector builder, which knows
//! whether HTTP/2 is wanted.

use hyper_rustls::ConfigBuilderExt as _;
use rustls::{ClientConfig, RootCertStore};

use crate::config::UpstreamConfig;
use crate::pem::{load_certs, load_key, load_roots, provider};

/// The rustls client configuration of the upstream `cfg`. The error names the upstream and the
/// file (or the pair of keys) at fault.
pub(crate) fn client_config(cfg: &UpstreamConfig) -> Result<ClientConfig, String> {
    let id = &cfg.id;
    let key = |name: &str| format!("upstream \"{id}\": {name}");
    let client_auth = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (None, None) => None,
        (Some(cert), Some(k)) => Some((
            load_certs(cert, &key("client_cert_file"))?,
            load_key(k, &key("client_key_file"))?,
        )),
        (Some(_), None) | (None, Some(_)) => {
            return Err(format!(
                "upstream \"{id}\": client_cert_file and client_key_file must be set together"
            ))
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstream \"{id}\": {e}"))?;
    let builder = match &cfg.ca_file {
        // Only these roots: a private CA must not widen to every public one, nor the reverse.
        Some(ca) => builder.with_root_certificates(load_roots(ca, &key("ca_file"))?),
        // A machine without a readable system store can still reach plain-http upstreams;
        // https ones then fail at connect time with an unknown-issuer error.
        None => match builder.clone().with_native_roots() {
            Ok(b) => b,
            Err(_) => builder.with_root_certificates(RootCertStore::empty()),
        },
    };
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((certs, k)) => builder.with_client_auth_cert(certs, k).map_err(|e| {
            format!("upstream \"{id}\": client_key_file does not fit client_cert_file: {e}")
        }),
    }
}
