//! TLS on the proxy listener: the rustls server configuration built from the PEM files of
//! `[server.tls]`, kept in an `ArcSwap` so that a reload swaps the certificate for new
//! connections while established ones keep theirs.
//!
//! The PEM files are read by `crate::pem`, shared with the upstream client (`proxy::tls`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;
use crate::pem::{load_certs, load_key, load_roots, provider};

/// The ALPN protocols the proxy listener offers, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Accepts TLS connections with the current certificate. Cheap to clone: clones share the
/// configuration, so a [`TlsAcceptor::reload`] on one is seen by all.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ArcSwap<ServerConfig>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

// === impl TlsAcceptor ===

impl TlsAcceptor {
    /// Reads the certificate chain, the key and (for mTLS) the client CA file. The error names
    /// the file that could not be used.
    pub fn new(cfg: &TlsConfig) -> Result<Self, String> {
        Ok(TlsAcceptor {
            config: Arc::new(ArcSwap::from_pointee(server_config(cfg)?)),
        })
    }

    /// Re-reads the files of `cfg` and, when they make a valid configuration, uses it for every
    /// connection accepted from now on. Connections already established keep their session. On
    /// an error nothing changes: the previous certificate keeps serving.
    pub fn reload(&self, cfg: &TlsConfig) -> Result<(), String> {
        let config = server_config(cfg)?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// Runs the server side of the handshake on `stream` (no timeout: the caller bounds it).
    pub(crate) async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
            .accept(stream)
            .await
    }
}

/// What a configuration reload can change about TLS on the proxy listener. Whether the listener
/// speaks TLS at all is fixed at start; the certificate, key and client CA are re-read. Cheap to
/// clone (a reload hook holds one).
#[derive(Clone, Debug)]
pub struct TlsReloader {
    acceptor: Option<TlsAcceptor>,
    metrics: crate::metrics::Metrics,
}

// === impl TlsReloader ===

impl TlsReloader {
    pub(crate) fn new(acceptor: Option<TlsAcceptor>, metrics: crate::metrics::Metrics) -> Self {
        TlsReloader { acceptor, metrics }
    }

    /// Publishes the notAfter of the certificate now in use.
    pub(crate) fn publish_expiry(&self, cfg: &TlsConfig) {
        match leaf_expiry(cfg) {
            Ok(not_after) => self.metrics.tls_certificate_expiry("server", not_after),
            Err(e) => tracing::warn!(error = %e, "cannot read the certificate's expiry"),
        }
    }

    /// Applies the `[server.tls]` of a reloaded configuration: the files are read again (also
    /// when their paths did not change, so a renewed certificate is picked up) and new
    /// connections use them. An error leaves the running certificate in place. Turning TLS on or
    /// off is refused: it needs a restart.
    pub fn reload_tls(&self, cfg: Option<&TlsConfig>) -> Result<(), String> {
        match (&self.acceptor, cfg) {
            (Some(acceptor), Some(cfg)) => {
                acceptor.reload(cfg)?;
                self.publish_expiry(cfg);
                Ok(())
            }
            (None, None) => Ok(()),
            (None, Some(_)) => Err(
                "server.tls: the proxy listener started without TLS; turning it on needs a restart"
                    .to_owned(),
            ),
            (Some(_), None) => Err(
                "server.tls: the proxy listener started with TLS; turning it off needs a restart"
                    .to_owned(),
            ),
        }
    }
}

/// When the leaf certificate of `cert_file` (its first PEM block) expires, in Unix seconds.
pub fn leaf_expiry(cfg: &TlsConfig) -> Result<i64, String> {
    let certs = load_certs(&cfg.cert_file, "server.tls.cert_file")?;
    let leaf = certs.first().ok_or_else(|| {
        format!(
            "server.tls.cert_file {}: no certificate",
            cfg.cert_file.display()
        )
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        format!(
            "server.tls.cert_file {}: not an X.509 certificate ({e})",
            cfg.cert_file.display()
        )
    })?;
    Ok(cert.validity().not_after.timestamp())
}

/// The rustls server configuration of `[server.tls]`: the certificate chain and key, a client
/// certificate verifier when `client_ca_file` is set (a client certificate is then required),
/// and ALPN `h2`, `http/1.1`.
pub fn server_config(cfg: &TlsConfig) -> Result<ServerConfig, String> {
    let provider = provider();
    let certs = load_certs(&cfg.cert_file, "server.tls.cert_file")?;
    let key = load_key(&cfg.key_file, "server.tls.key_file")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server.tls: {e}"))?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(ca, "server.tls.client_ca_file")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("server.tls.client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "server.tls: the key {} does not fit the certificate {}: {e}",
            cfg.key_file.display(),
            cfg.cert_file.display()
        )
    })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
