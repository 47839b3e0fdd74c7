//! TLS on the proxy listener: the rustls server configuration built from the PEM files of
//! `[server.tls]`, kept in an `ArcSwap` so that a reload swaps the certificate for new
//! connections while established ones keep theirs.
//!
//! The PEM loaders are shared with the upstream client (`proxy::tls`): every certificate, key and
//! CA file tollgate reads goes through [`load_certs`], [`load_key`] and [`load_roots`], whose
//! errors name the file.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

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
}

// === impl TlsReloader ===

impl TlsReloader {
    pub(crate) fn new(acceptor: Option<TlsAcceptor>) -> Self {
        TlsReloader { acceptor }
    }

    /// Applies the `[server.tls]` of a reloaded configuration: the files are read again (also
    /// when their paths did not change, so a renewed certificate is picked up) and new
    /// connections use them. An error leaves the running certificate in place. Turning TLS on or
    /// off is refused: it needs a restart.
    pub fn reload_tls(&self, cfg: Option<&TlsConfig>) -> Result<(), String> {
        match (&self.acceptor, cfg) {
            (Some(acceptor), Some(cfg)) => acceptor.reload(cfg),
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

/// The crypto provider of every TLS configuration tollgate builds (aws-lc-rs), named explicitly
/// so that no process-wide default is needed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate of the PEM file `path` (a chain, leaf first). `key` is the configuration
/// key that named the file, for the error.
pub(crate) fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate (BEGIN CERTIFICATE) in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key of the PEM file `path`: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1
/// (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`); RSA, ECDSA or Ed25519.
pub(crate) fn load_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{key} {}: no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file",
            path.display()
        ),
        e => format!("{key} {}: {e}", path.display()),
    })
}

/// The certificates of the PEM file `path` as trust anchors.
pub(crate) fn load_roots(path: &Path, key: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, key)? {
        roots
            .add(cert)
            .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    }
    Ok(roots)
}
