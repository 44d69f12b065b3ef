//! TLS syntax both sides judge alike: a certificate pin, a backend's server name (the
//! control plane validates them, nodes use them), and the PEM files both read.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Parses a `tls_pin_sha256` entry: 64 hex digits, either case, optionally with `:`
/// between bytes as `openssl x509 -fingerprint -sha256` prints them.
pub fn parse_pin(pin: &str) -> Option<[u8; 32]> {
    let digits: String = pin.trim().chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// The name a backend is addressed by in SNI and checked against: a DNS name, or an IP
/// address (which is then matched against the certificate's IP SANs and sends no SNI).
pub fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.trim().to_owned()).ok()
}

/// Reads a PEM certificate chain (or CA bundle); the message names the file.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("no PEM CERTIFICATE in {}", path.display()));
    }
    Ok(chain)
}

/// Reads a PEM private key; the message names the file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM) in {}", path.display())
        }
        e => format!("{}: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_either_case_with_or_without_colons() {
        assert_eq!(parse_pin(&"Ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_pin(&["0f"; 32].join(":")), Some([0x0f; 32]));
        assert_eq!(parse_pin(&"ab".repeat(31)), None);
        assert_eq!(parse_pin(&"zz".repeat(32)), None);
        assert!(matches!(server_name("10.0.0.1"), Some(ServerName::IpAddress(_))));
        assert!(matches!(server_name("imap.example.test"), Some(ServerName::DnsName(_))));
        assert!(server_name("not a name").is_none());
    }
}
