//! Test certificates: a throw-away CA and leaves generated with rcgen, written as PEM
//! files into a temporary directory so config loading reads them like real ones.

use std::path::PathBuf;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

use crate::config::CertificateConfig;

/// A leaf certificate and its key, in memory and on disk.
pub(crate) struct Issued {
    pub der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Issued {
    /// A `[tls.certificate.<id>]` for these files.
    pub fn config(&self, default: bool, names: Option<&[&str]>) -> CertificateConfig {
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
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key, dir: tempfile::tempdir().unwrap() }
    }

    /// Trusts only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A leaf for `sans` (DNS names or IP addresses) signed by the CA, saved as `stem`.
    pub fn issue(&self, stem: &str, sans: &[&str]) -> Issued {
        self.make(stem, sans, true)
    }

    /// A self-signed leaf, trusted by nobody.
    pub fn self_signed(&self, stem: &str, sans: &[&str]) -> Issued {
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
