//! The fleet settings a node receives from the control plane, as domain types, and their
//! protobuf form both ways: `encode` (what the control plane sends) and `decode` (what a
//! node accepts) side by side, so one round-trip test holds them in agreement.
//!
//! The control plane owns destinations, cache and breaker settings; a node swaps the whole
//! snapshot in at once (watch channel) when a Welcome or a settings push arrives.

mod decode;
mod encode;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::routekey::RouteKeyRule;
use crate::wire::{Forwarding, Protocol, TlsMode};

/// One backend mail server (or cluster address) that accounts are routed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub id: String,
    pub host: String,
    pub allow_plaintext_auth: bool,
    pub endpoints: HashMap<Protocol, Endpoint>,
    /// Used by every endpoint whose `tls` is `starttls` or `implicit`.
    pub tls: BackendTls,
}

/// How the node checks a backend's certificate and identifies itself to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendTls {
    pub verify: TlsVerify,
    /// Sent as SNI and checked in `System` mode; a DNS name or an IP address.
    pub server_name: String,
    pub client_cert: Option<ClientCert>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsVerify {
    /// The node's system trust store and the certificate's names.
    System,
    /// The SHA-256 of the backend's leaf certificate must be one of these.
    Pinned(Vec<[u8; 32]>),
    /// Any certificate (handshake signatures are still checked).
    Insecure,
}

/// PEM files on the node's own filesystem, read when the node first connects with them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Endpoint {
    pub port: u16,
    pub tls: TlsMode,
    /// How the backend learns the client's address (the destination's setting unless
    /// the endpoint overrides it).
    pub forwarding: Forwarding,
}

/// The route cache's lifetimes and byte bounds. Mapped routes and unmapped answers have
/// separate bounds, so answers about invented addresses never evict a real route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSettings {
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_stale: Duration,
    pub max_bytes: u64,
    pub negative_max_bytes: u64,
}

/// `cache.max_bytes` unless set: about a million mapped routes of 20–30-byte keys (an
/// entry costs its key, its destination id and ~450 bytes), as `max_entries` allowed.
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;
/// `cache.negative_max_bytes` unless set: some 70,000 unmapped answers of such keys within
/// their short lifetime, and little memory for a client inventing addresses.
pub const DEFAULT_NEGATIVE_MAX_BYTES: u64 = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub cooldown: Duration,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    /// How long the backend may take to answer the replayed credential; no answer in time
    /// is a breaker failure.
    pub login_timeout: Duration,
}

/// The login timeout of a control plane that sends none (older than the setting): the
/// fixed wait nodes had before it was configurable.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The one set of breaker defaults: the control plane's `[breaker]` when the config says
/// nothing, and what a node's breakers use before its first Welcome.
impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            connect_retries: 1,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
        }
    }
}

/// An immutable snapshot of everything the control plane tells a node.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub destinations: HashMap<String, Arc<Destination>>,
    pub default_destination: String,
    pub route_key: RouteKeyRule,
    pub cache: CacheSettings,
    pub breaker: BreakerSettings,
    pub report_interval: Duration,
    pub heartbeat_interval: Duration,
}

impl FleetSettings {
    pub fn destination(&self, id: &str) -> Option<&Arc<Destination>> {
        self.destinations.get(id)
    }
}

/// A settings message the node cannot use (a newer control plane, or a bug).
#[derive(Debug, thiserror::Error)]
#[error("invalid fleet settings from the control plane: {0}")]
pub struct InvalidSettings(pub String);
