//! Test certificates: a throw-away CA and leaves generated with rcgen, written as PEM
//! files into a temporary directory so config loading reads them like real ones, and the
//! client-leg TLS pair (node acceptor, trusting client) the protocol tests share.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;

use super::{provider, TlsAcceptor, PROTOCOL_VERSIONS};
use crate::config::{CertificateConfig, TlsConfig};

/// A leaf certificate and its key, in memory and on disk.
pub(crate) struct Issued {
    pub der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Issued {
    /// A `[tls.certificate.<id>]` for these files.
    pub(crate) fn config(&self, default: bool, names: Option<&[&str]>) -> CertificateConfig {
        CertificateConfig {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            default,
            names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
        }
    }
}

pub(crate) struct Pki {
    ca: Certificate,
    ca_key: KeyPair,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key, dir: tempfile::tempdir().unwrap() }
    }

    /// Trusts only this CA.
    pub(crate) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A leaf for `sans` (DNS names or IP addresses) signed by the CA, saved as `stem`.
    pub(crate) fn issue(&self, stem: &str, sans: &[&str]) -> Issued {
        self.make(stem, sans, true)
    }

    /// A self-signed leaf, trusted by nobody.
    pub(crate) fn self_signed(&self, stem: &str, sans: &[&str]) -> Issued {
        self.make(stem, sans, false)
    }

    fn make(&self, stem: &str, sans: &[&str], by_ca: bool) -> Issued {
        let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = match by_ca {
            true => params.signed_by(&key, &self.ca, &self.ca_key).unwrap(),
            false => params.self_signed(&key).unwrap(),
        };
        let cert_path = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            der: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            cert_path,
            key_path,
        }
    }
}

/// Client-leg TLS for protocol tests: the node's acceptor serving one certificate for
/// [`TestTls::NAME`] (the default), and a client that trusts only the CA that issued it,
/// so a test's handshake really verifies what the node presented.
pub(crate) struct TestTls {
    _pki: Pki,
    pub acceptor: TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl TestTls {
    pub(crate) const NAME: &'static str = "mail.example.test";

    pub(crate) fn new() -> TestTls {
        let pki = Pki::new();
        let leaf = pki.issue("node", &[Self::NAME]);
        let mut tls = TlsConfig::default();
        tls.certificate.insert("main".into(), leaf.config(true, None));
        let acceptor = TlsAcceptor::from_config(&tls).unwrap().expect("one certificate is configured");
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
        TestTls { _pki: pki, acceptor, connector: tokio_rustls::TlsConnector::from(Arc::new(client)) }
    }

    /// The client handshake on `stream` (fresh for implicit TLS, or after the protocol's
    /// go-ahead), checking the node's certificate for [`TestTls::NAME`].
    pub(crate) async fn connect<S>(&self, stream: S) -> tokio_rustls::client::TlsStream<S>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(Self::NAME).unwrap().to_owned();
        self.connector.connect(name, stream).await.expect("client TLS handshake")
    }

    /// Takes a line-read plain connection past the protocol's TLS go-ahead into TLS. The
    /// reader must hold nothing beyond the go-ahead: the node sends nothing else in clear.
    pub(crate) async fn upgrade(
        &self,
        client: BufReader<TcpStream>,
    ) -> BufReader<tokio_rustls::client::TlsStream<TcpStream>> {
        assert!(client.buffer().is_empty(), "bytes after the TLS go-ahead: {:?}", client.buffer());
        BufReader::new(self.connect(client.into_inner()).await)
    }
}
