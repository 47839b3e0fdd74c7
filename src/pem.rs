//! PEM files as rustls values: every certificate, private key and CA file tollgate reads (the
//! proxy listener's `[server.tls]`, an upstream's `ca_file` and client certificate) goes through
//! here, so that each error names the configuration key and the file. Also the one crypto provider
//! every TLS configuration is built with.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

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
