//! TLS on both legs: the client leg's SNI-selected certificates (`server`), the backend
//! leg's verification modes and client certificates (`client`, `verify`), and the
//! maybe-encrypted stream type sessions hold (`stream`).
//!
//! Everything uses the `ring` provider passed explicitly to each builder, so nothing
//! depends on (or fights over) a process-wide default provider.

mod client;
mod server;
mod stream;
mod verify;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::SupportedProtocolVersion;

pub use client::{connect_tls, Connector};
pub(crate) use server::check_certificates;
pub use server::{read_chain, read_key, TlsAcceptor};
pub use stream::MaybeTls;

/// TLS 1.2 and 1.3 only: rustls speaks nothing older, and this makes the floor explicit.
pub(crate) static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider every config is built with.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

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

/// Lower-case hex of the SHA-256 of `der`, as pins are written and logged.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(der))
}
