//! TLS at both edges, with certificates made at run time (rcgen; nothing is committed):
//! the proxy listener over HTTP/1.1 and HTTP/2 (ALPN), every key kind and PEM encoding, client
//! certificates (mTLS), a certificate reload, and `https://` and HTTP/2 upstreams.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{Response, StatusCode, Version};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::connections::{get1, get2, h1, h2, start};
use crate::support::certs::{client_config, tls_connect, tls_table, Ca, Files, Leaf};
use crate::support::RecordingUpstream;
use tollgate::config::TlsConfig;

/// One `GET /public/…` over a new TLS connection with HTTP/1.1; any failure (handshake,
/// certificate, request) is an `Err`.
async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<crate::connections::Answer, String> {
    let tls = tls_connect(addr, config).await.map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut sender = sender;
    get1(&mut sender, path).await.map_err(|e| e.to_string())
}

/// A PKCS#8 private key's inner key (PKCS#1 `RSAPrivateKey` or SEC1 `ECPrivateKey`).
fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    // (tag, contents, rest) of one DER element.
    fn element(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, at) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            let len = b[2..2 + n]
                .iter()
                .fold(0usize, |l, x| (l << 8) | *x as usize);
            (len, 2 + n)
        };
        (tag, &b[at..at + len], &b[at + len..])
    }
    let (tag, info, _) = element(der);
    assert_eq!(tag, 0x30, "PrivateKeyInfo is a SEQUENCE");
    let (_, _, rest) = element(info); // version
    let (_, _, rest) = element(rest); // algorithm
    let (tag, key, _) = element(rest);
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    key.to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[tokio::test]
async fn https_over_http1_and_http2_with_alpn_reaches_a_plain_upstream() {
    let ca = Ca::new("tollgate test CA");
    let files = Files::new();
    let (cert, key) = files.leaf("server", &ca.server());
    let upstream = RecordingUpstream::start().await;
    let app = start("", &upstream.url(), "", &tls_table(&cert, &key, None)).await;

    // HTTP/1.1 (ALPN http/1.1).
    let tls = tls_connect(
        app.proxy_addr,
        client_config(&ca.pem(), None, &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, _conn) = h1(tls).await;
    let a = get1(&mut sender, "/public/one").await.unwrap();
    assert_eq!((a.status, a.version), (StatusCode::OK, Version::HTTP_11));
    let seen = upstream.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.uri, "/public/one");

    // HTTP/2 (ALPN h2, the gateway's first choice when offered both).
    let tls = tls_connect(
        app.proxy_addr,
        client_config(&ca.pem(), None, &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, _conn) = h2(tls).await.unwrap();
    let a = get2(&mut sender, "/public/two").await.unwrap();
    assert_eq!((a.status, a.version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "https");

    // No ALPN at all: HTTP/1.1.
    let a = https_get(
        app.proxy_addr,
        client_config(&ca.pem(), None, &[]),
        "/public/three",
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);

    // Plain HTTP on the TLS port is not served.
    let (mut sender, _conn) = h1(TcpStream::connect(app.proxy_addr).await.unwrap()).await;
    assert!(get1(&mut sender, "/public/plain").await.is_err());
    assert_eq!(upstream.count(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn rsa_ecdsa_and_ed25519_keys_load_from_pkcs8_pkcs1_and_sec1() {
    let ca = Ca::new("tollgate test CA");
    let upstream = RecordingUpstream::start().await;
    let files = Files::new();
    let rsa = ca.leaf_with(&rcgen::PKCS_RSA_SHA256, ExtendedKeyUsagePurpose::ServerAuth);
    let ec = ca.server();
    let ed = ca.leaf_with(&rcgen::PKCS_ED25519, ExtendedKeyUsagePurpose::ServerAuth);
    let inner = |leaf: &Leaf| {
        pkcs8_inner(
            PrivateKeyDer::from_pem_slice(leaf.key.as_bytes())
                .unwrap()
                .secret_der(),
        )
    };
    let cases = [
        ("rsa-pkcs8", &rsa, rsa.key.clone()),
        ("rsa-pkcs1", &rsa, pem("RSA PRIVATE KEY", &inner(&rsa))),
        ("ecdsa-pkcs8", &ec, ec.key.clone()),
        ("ecdsa-sec1", &ec, pem("EC PRIVATE KEY", &inner(&ec))),
        ("ed25519-pkcs8", &ed, ed.key.clone()),
    ];
    for (name, leaf, key_pem) in cases {
        let cert = files.write(&format!("{name}.crt"), &leaf.cert);
        let key = files.write(&format!("{name}.key"), &key_pem);
        let app = start("", &upstream.url(), "", &tls_table(&cert, &key, None)).await;
        let a = https_get(
            app.proxy_addr,
            client_config(&ca.pem(), None, &[]),
            "/public/k",
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.status, StatusCode::OK, "{name}");
        app.shutdown().await;
    }
}

#[tokio::test]
async fn an_unusable_certificate_or_key_file_is_a_start_error_naming_it() {
    let ca = Ca::new("tollgate test CA");
    let files = Files::new();
    let (cert, key) = files.leaf("server", &ca.server());
    let garbage = files.write("garbage.pem", "not a PEM file\n");
    let other_key = files.write("other.key", &KeyPair::generate().unwrap().serialize_pem());
    let upstream = RecordingUpstream::start().await;
    for (cert, key, named) in [
        (&cert, &garbage, &garbage),
        (&garbage, &key, &garbage),
        (&cert, &other_key, &other_key),
    ] {
        let toml = format!(
            "[[upstream]]\nid = \"up\"\nurl = \"{}\"\n{}",
            upstream.url(),
            tls_table(cert, key, None)
        );
        let config = tollgate::config::from_toml_str(&toml).unwrap();
        let err =
            match tollgate::App::start(&config, tollgate::Listeners::ephemeral().await.unwrap()) {
                Ok(_) => panic!("started with {}", named.display()),
                Err(e) => e.to_string(),
            };
        assert!(
            err.contains(&named.display().to_string()),
            "the error does not name {}: {err}",
            named.display()
        );
    }
}

#[tokio::test]
async fn client_certificates_are_required_with_client_ca_file() {
    let ca = Ca::new("tollgate test CA");
    let clients = Ca::new("client CA");
    let strangers = Ca::new("another CA");
    let files = Files::new();
    let (cert, key) = files.leaf("server", &ca.server());
    let client_ca = files.write("clients.pem", &clients.pem());
    let upstream = RecordingUpstream::start().await;
    let app = start(
        "",
        &upstream.url(),
        "",
        &tls_table(&cert, &key, Some(&client_ca)),
    )
    .await;

    // Signed by the client CA: served, over HTTP/1.1 and HTTP/2.
    let me = clients.client();
    let a = https_get(
        app.proxy_addr,
        client_config(&ca.pem(), Some(&me), &[]),
        "/public/m",
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let tls = tls_connect(
        app.proxy_addr,
        client_config(&ca.pem(), Some(&me), &[b"h2"]),
    )
    .await
    .unwrap();
    let (mut sender, _conn) = h2(tls).await.unwrap();
    assert_eq!(get2(&mut sender, "/public/m2").await.unwrap().status, 200);

    // No certificate, or one from another CA: the handshake fails (with TLS 1.3 the client may
    // only learn it at its first read), and nothing reaches the upstream.
    let none = https_get(
        app.proxy_addr,
        client_config(&ca.pem(), None, &[]),
        "/public/x",
    )
    .await;
    assert!(none.is_err(), "served without a client certificate");
    let stranger = strangers.client();
    let other = https_get(
        app.proxy_addr,
        client_config(&ca.pem(), Some(&stranger), &[]),
        "/public/y",
    )
    .await;
    assert!(other.is_err(), "served with a certificate of another CA");
    assert_eq!(upstream.count(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn reload_tls_serves_a_new_certificate_to_new_connections() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let files = Files::new();
    let (cert, key) = files.leaf("server", &old_ca.server_until((2031, 5, 17)));
    let upstream = RecordingUpstream::start().await;
    let app = start("", &upstream.url(), "", &tls_table(&cert, &key, None)).await;
    let expiry = || async {
        crate::support::metrics::scrape(&format!("http://{}", app.admin_addr))
            .await
            .value(r#"tollgate_tls_certificate_expiry_timestamp_seconds{certificate="server"}"#)
    };
    assert_eq!(
        expiry().await,
        Some(1_936_742_400.0),
        "2031-05-17T00:00:00Z"
    );
    let trusts_old = client_config(&old_ca.pem(), None, &[]);
    let trusts_new = client_config(&new_ca.pem(), None, &[]);

    assert!(https_get(app.proxy_addr, trusts_old.clone(), "/public/a")
        .await
        .is_ok());
    assert!(https_get(app.proxy_addr, trusts_new.clone(), "/public/a")
        .await
        .is_err());
    // A connection opened before the reload.
    let tls = tls_connect(app.proxy_addr, trusts_old.clone())
        .await
        .unwrap();
    let (mut before, _conn) = h1(tls).await;
    assert_eq!(get1(&mut before, "/public/b").await.unwrap().status, 200);

    // A broken key: refused, with the file named, and the old certificate keeps serving.
    let broken = files.write(
        "broken.key",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let err = app
        .reload_tls(Some(&TlsConfig {
            cert_file: cert.clone(),
            key_file: broken.clone(),
            client_ca_file: None,
        }))
        .unwrap_err();
    assert!(err.contains(&broken.display().to_string()), "{err}");
    assert!(https_get(app.proxy_addr, trusts_old.clone(), "/public/c")
        .await
        .is_ok());
    // TLS cannot be switched off by a reload.
    assert!(app.reload_tls(None).is_err());

    assert_eq!(
        expiry().await,
        Some(1_936_742_400.0),
        "a failed reload keeps the old figure"
    );
    // The renewed certificate, written over the same files (as a renewal would).
    let renewed = new_ca.server_until((2032, 1, 2));
    std::fs::write(&cert, &renewed.cert).unwrap();
    std::fs::write(&key, &renewed.key).unwrap();
    app.tls_reloader()
        .reload_tls(Some(&TlsConfig {
            cert_file: cert.clone(),
            key_file: key.clone(),
            client_ca_file: None,
        }))
        .unwrap();
    assert!(https_get(app.proxy_addr, trusts_new, "/public/d")
        .await
        .is_ok());
    assert_eq!(
        expiry().await,
        Some(1_956_614_400.0),
        "2032-01-02T00:00:00Z"
    );
    assert!(https_get(app.proxy_addr, trusts_old, "/public/d")
        .await
        .is_err());
    // The connection from before keeps its session.
    assert_eq!(get1(&mut before, "/public/e").await.unwrap().status, 200);
    app.shutdown().await;
}

/// What a test upstream saw: the HTTP version of each request.
type Versions = Arc<Mutex<Vec<Version>>>;

/// A TLS upstream (ALPN h2 and http/1.1) answering 200 `secure`; with `client_ca`, it requires a
/// client certificate signed by it.
async fn tls_upstream(
    leaf: &Leaf,
    client_ca: Option<&Ca>,
) -> (SocketAddr, Versions, JoinHandle<()>) {
    let certs = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let versions = Versions::default();
    let seen = versions.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    seen.lock().unwrap().push(req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            "secure",
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, versions, task)
}

/// A cleartext upstream that speaks only HTTP/2 (prior knowledge) and answers with the version.
async fn h2c_upstream() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let v = format!("{:?}", req.version());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(v))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// `GET /public/…` through a cleartext gateway whose upstream is `url` with `extra` keys.
async fn through(url: &str, extra: &str) -> crate::connections::Answer {
    let app = start("", url, extra, "").await;
    let (mut sender, _conn) = h1(TcpStream::connect(app.proxy_addr).await.unwrap()).await;
    let a = get1(&mut sender, "/public/up").await.unwrap();
    app.shutdown().await;
    a
}

#[tokio::test]
async fn an_https_upstream_is_trusted_through_ca_file_only() {
    let upstream_ca = Ca::new("upstream CA");
    let (addr, versions, task) = tls_upstream(&upstream_ca.server(), None).await;
    let files = Files::new();
    let ca_file = files.write("upstream-ca.pem", &upstream_ca.pem());
    let url = format!("https://127.0.0.1:{}", addr.port());

    let ca = format!("ca_file = {:?}", ca_file.display().to_string());
    let a = through(&url, &ca).await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "secure"));
    // The system roots do not know this CA.
    assert_eq!(through(&url, "").await.status, StatusCode::BAD_GATEWAY);
    // HTTP/1.1 unless `http2`; with it, ALPN picks h2.
    let a = through(&url, &format!("{ca}\nhttp2 = true")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        *versions.lock().unwrap(),
        [Version::HTTP_11, Version::HTTP_2]
    );
    task.abort();
}

#[tokio::test]
async fn an_upstream_that_requires_a_client_certificate_gets_the_configured_one() {
    let upstream_ca = Ca::new("upstream CA");
    let client_ca = Ca::new("tollgate client CA");
    let (addr, _versions, task) = tls_upstream(&upstream_ca.server(), Some(&client_ca)).await;
    let files = Files::new();
    let ca_file = files.write("upstream-ca.pem", &upstream_ca.pem());
    let (cert, key) = files.leaf("tollgate", &client_ca.client());
    let url = format!("https://127.0.0.1:{}", addr.port());
    let ca = format!("ca_file = {:?}", ca_file.display().to_string());

    let with_cert = format!(
        "{ca}\nclient_cert_file = {:?}\nclient_key_file = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let a = through(&url, &with_cert).await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "secure"));
    assert_eq!(through(&url, &ca).await.status, StatusCode::BAD_GATEWAY);

    // A certificate without its key (or the reverse) is an error naming the upstream.
    let half = format!("{ca}\nclient_cert_file = {:?}", cert.display().to_string());
    let toml = format!("[[upstream]]\nid = \"half\"\nurl = \"{url}\"\n{half}\n");
    let err = match tollgate::config::from_toml_str(&toml) {
        Err(e) => e.to_string(),
        Ok(config) => {
            match tollgate::App::start(&config, tollgate::Listeners::ephemeral().await.unwrap()) {
                Ok(_) => panic!("started with a client certificate but no key"),
                Err(e) => e.to_string(),
            }
        }
    };
    assert!(
        err.contains("half") && err.contains("client_key_file"),
        "{err}"
    );
    task.abort();
}

#[tokio::test]
async fn an_upstream_with_http2_gets_http2_with_prior_knowledge() {
    let (addr, task) = h2c_upstream().await;
    let url = format!("http://{addr}");
    let a = through(&url, "http2 = true").await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "HTTP/2.0"));
    // Without it the gateway speaks HTTP/1.1, which this upstream does not understand.
    assert_eq!(through(&url, "").await.status, StatusCode::BAD_GATEWAY);
    task.abort();
}
