//! Certificates made at run time (rcgen; nothing is committed) and a rustls client for them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A certificate authority made for one test.
pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// Where a test writes its PEM files.
pub struct Files(pub tempfile::TempDir);

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost (ECDSA P-256).
    pub fn server(&self) -> Leaf {
        self.leaf_with(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A server certificate that expires at midnight (UTC) on `(year, month, day)`.
    pub fn server_until(&self, (year, month, day): (i32, u8, u8)) -> Leaf {
        self.leaf_for(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            ExtendedKeyUsagePurpose::ServerAuth,
            |p| p.not_after = rcgen::date_time_ymd(year, month, day),
        )
    }

    /// A client certificate (ECDSA P-256).
    pub fn client(&self) -> Leaf {
        self.leaf_with(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    pub fn leaf_with(
        &self,
        alg: &'static SignatureAlgorithm,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        self.leaf_for(alg, usage, |_| {})
    }

    fn leaf_for(
        &self,
        alg: &'static SignatureAlgorithm,
        usage: ExtendedKeyUsagePurpose,
        customize: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test");
        params.extended_key_usages = vec![usage];
        customize(&mut params);
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Files {
    pub fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    pub fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// Writes `leaf` as `{name}.crt` and `{name}.key`.
    pub fn leaf(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), &leaf.cert),
            self.write(&format!("{name}.key"), &leaf.key),
        )
    }
}

/// The `[server.tls]` table for these files.
pub fn tls_table(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut t = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    if let Some(ca) = client_ca {
        t.push_str(&format!(
            "client_ca_file = {:?}\n",
            ca.display().to_string()
        ));
    }
    t
}

/// A rustls client trusting `ca_pem`, presenting `client` if given, offering `alpn`.
pub fn client_config(
    ca_pem: &str,
    client: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(LOCALHOST.into()), tcp)
        .await
}
