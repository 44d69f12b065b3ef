//! A throwaway certificate authority per test (rcgen): leaf certificates for Dovecot, Postfix
//! and the proxy, the CA file clients verify them with, and leaf fingerprints for pinning.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// A CA and the PEM files issued from it. Files live in a temp dir that is deleted on drop,
/// so a server must not outlive the `TestPki` unless it copied its files (as `Dovecot` and
/// `Postfix` do, because they may restart later).
pub struct TestPki {
    ca: Certificate,
    ca_key: KeyPair,
    issued: AtomicU32,
    dir: TempDir,
}

impl TestPki {
    /// A fresh CA (ECDSA P-256, like every leaf: quick to generate, and Dovecot, Postfix,
    /// Python and rustls all accept it).
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "Switchyard test CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca = params.self_signed(&ca_key)?;
        let dir = tempfile::Builder::new().prefix("switchyard-pki-").tempdir()?;
        // Servers that drop privileges (Dovecot's login processes, Postfix's smtpd) may read
        // these after switching users; test keys need no secrecy.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        fs::write(dir.path().join("ca.pem"), ca.pem())?;
        Ok(Self { ca, ca_key, issued: AtomicU32::new(0), dir })
    }

    /// The CA certificate (PEM) for clients: Python's `cafile`, curl's `--cacert`, rustls.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The directory holding the CA and every issued pair.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server leaf for `names` (DNS names and/or IP addresses such as `127.0.0.1`,
    /// which rcgen puts into IP SANs so clients verifying a numeric host accept it) and
    /// returns `(cert_pem_path, key_pem_path)`.
    pub fn issue(&self, names: &[&str]) -> Result<(PathBuf, PathBuf)> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params =
            CertificateParams::new(names.clone()).with_context(|| format!("certificate parameters for {names:?}"))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, names.first().map_or("switchyard test leaf", String::as_str));
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        // Key identifiers let OpenSSL (Dovecot, Postfix, Python) build the chain cleanly.
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca, &self.ca_key)?;
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let cert_path = self.dir.path().join(format!("leaf{n}.pem"));
        let key_path = self.dir.path().join(format!("leaf{n}.key"));
        fs::write(&cert_path, cert.pem())?;
        fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

/// SHA-256 of the DER of the first certificate in a PEM file, lowercase hex: the pin format
/// of a destination's TLS verification.
pub fn leaf_sha256_hex(cert_pem_path: &Path) -> Result<String> {
    let pem = fs::read_to_string(cert_pem_path).with_context(|| format!("reading {}", cert_pem_path.display()))?;
    Ok(hex::encode(Sha256::digest(first_certificate_der(&pem)?)))
}

/// The DER bytes of the first `CERTIFICATE` block of a PEM text.
pub fn first_certificate_der(pem: &str) -> Result<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let Some(start) = pem.find(BEGIN) else {
        bail!("no certificate in the PEM text");
    };
    let body = &pem[start + BEGIN.len()..];
    let Some(end) = body.find(END) else {
        bail!("unterminated certificate in the PEM text");
    };
    let b64: String = body[..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).context("certificate PEM is not valid base64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_distinct_leaves_and_pins_their_der() {
        let pki = TestPki::new().unwrap();
        let (cert, key) = pki.issue(&["127.0.0.1", "localhost"]).unwrap();
        let (other, _) = pki.issue(&["localhost"]).unwrap();
        assert!(fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
        assert!(fs::read_to_string(pki.ca_pem_path()).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        let pin = leaf_sha256_hex(&cert).unwrap();
        assert_eq!(pin.len(), 64);
        assert!(pin.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(pin, leaf_sha256_hex(&other).unwrap());
        assert_ne!(pin, leaf_sha256_hex(&pki.ca_pem_path()).unwrap());
        // DER starts with a SEQUENCE tag.
        let der = first_certificate_der(&fs::read_to_string(&cert).unwrap()).unwrap();
        assert_eq!(der[0], 0x30);
        assert!(first_certificate_der("nothing here").is_err());
    }
}
