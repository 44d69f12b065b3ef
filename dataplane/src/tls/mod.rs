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
use rustls::SupportedProtocolVersion;

pub(crate) use client::Connector;
pub(crate) use server::check_certificates;
pub(crate) use server::TlsAcceptor;
pub(crate) use stream::MaybeTls;
pub(crate) use switchyard_common::tls::{read_chain, read_key, server_name};

/// TLS 1.2 and 1.3 only: rustls speaks nothing older, and this makes the floor explicit.
pub(crate) static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider every config is built with.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// Lower-case hex of the SHA-256 of `der`, as pins are written and logged.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(der))
}
