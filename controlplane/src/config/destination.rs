//! `[destination.<id>]`: the backends accounts are routed to, their endpoints and how
//! nodes check their certificates.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Forwarding, TlsMode};

/// One `[destination.<id>]`: a backend that accounts are routed to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DestinationConfig {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub forwarding: Forwarding,
    /// May credentials cross a `tls = "plain"` backend leg? If not, the node refuses
    /// such logins at login time (the config itself stays valid).
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// Keyed by protocol name (`imap`, `pop3`, ...).
    #[serde(default)]
    pub protocol: BTreeMap<String, EndpointConfig>,
    /// How nodes check the certificate of a `starttls`/`implicit` endpoint.
    #[serde(default)]
    pub tls_verify: TlsVerify,
    /// SNI and the name checked against the certificate; default: `host`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Hex SHA-256 of the leaf certificate's DER; required for `tls_verify = "pinned"`.
    /// Several allow a certificate rotation without downtime.
    #[serde(default)]
    pub tls_pin_sha256: Vec<String>,
    /// Client certificate and key (PEM) for backends that demand one. Paths on each
    /// node's filesystem: the control plane only passes them on.
    #[serde(default)]
    pub tls_client_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_client_key: Option<PathBuf>,
}

/// `tls_verify`: whom a destination's certificate must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsVerify {
    /// The node's system trust store, and the certificate must name `tls_server_name`.
    #[default]
    System,
    /// The leaf certificate's SHA-256 must be one of `tls_pin_sha256`.
    Pinned,
    /// Any certificate: encrypts without authenticating the backend.
    Insecure,
}

impl TlsVerify {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVerify::System => "system",
            TlsVerify::Pinned => "pinned",
            TlsVerify::Insecure => "insecure",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct EndpointConfig {
    pub port: u16,
    /// Defaults to `starttls` so that an endpoint written without `tls` never sends
    /// credentials in clear.
    #[serde(default = "starttls")]
    pub tls: TlsMode,
    /// Overrides the destination's `forwarding` for this protocol.
    #[serde(default)]
    pub forwarding: Option<Forwarding>,
}

fn starttls() -> TlsMode {
    TlsMode::Starttls
}
