//! The node's own config file (`dataplane.toml`): typed, defaulted, validated.
//!
//! Everything a node learns from the control plane (destinations, cache, breaker) is not
//! here; see `settings`. The strict loading machinery and the wire enums come from
//! `switchyard-common`, shared with the control plane's config.

mod control_tls;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use switchyard_common::config::{
    check_at_most, check_http, check_log_level, check_positive, cleartext_off_loopback, key_path, load_token,
    parse_toml, read_file, ConfigError, Problems, MAX_DURATION,
};
pub use switchyard_common::wire::{Forwarding, Protocol, TlsMode};

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub node: NodeConfig,
    pub control: ControlConfig,
    pub health: HealthConfig,
    pub tls: TlsConfig,
    pub listener: BTreeMap<String, ListenerConfig>,
}

impl Config {
    /// Parses and validates; every problem is reported at once.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        parse_toml(s, validate::validate)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::from_toml_str(&read_file(path)?)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Stable across restarts: the control plane keys node state by it.
    pub id: String,
    pub log_level: String,
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// On SIGTERM: stop accepting, let live sessions run this long, then close them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: default_node_id(),
            log_level: "info".into(),
            metrics_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The host name (`/etc/hostname`, else `$HOSTNAME`), else `dataplane`.
fn default_node_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dataplane".into())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ControlConfig {
    /// Tried in turn on (re)connect; `http://` or `https://` URLs.
    pub endpoints: Vec<String>,
    pub node_token_file: Option<PathBuf>,
    pub node_token_env: String,
    /// How long a route lookup waits for the control plane before failing temporarily.
    #[serde(with = "humantime_serde")]
    pub resolve_timeout: Duration,
    /// PEM CA bundle trusted for `https://` endpoints; default: the system trust store.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key presented on `https://` endpoints (mTLS); both or neither.
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Accept `http://` endpoints off loopback (the token crosses the network in clear);
    /// each is logged as a warning at start.
    pub allow_insecure_control: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            endpoints: Vec::new(),
            node_token_file: None,
            node_token_env: "SWITCHYARD_NODE_TOKEN".into(),
            resolve_timeout: Duration::from_secs(5),
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
            allow_insecure_control: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    pub bind: SocketAddr,
    /// Connections held at once; a new one past it closes the oldest idle one.
    pub max_connections: usize,
    /// A request head not complete by then closes its connection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

impl HealthConfig {
    pub fn http_limits(&self) -> crate::http_server::HttpLimits {
        crate::http_server::HttpLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 7481)),
            max_connections: 64,
            header_read_timeout: crate::http_server::DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// `[tls]`: the certificates the node presents on client legs.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Keyed by an operator-chosen id that problems and logs name.
    pub certificate: BTreeMap<String, CertificateConfig>,
}

/// One `[tls.certificate.<id>]`; picked per connection by the client's SNI.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CertificateConfig {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Serves clients that send no SNI or a name no certificate lists.
    #[serde(default)]
    pub default: bool,
    /// Names this certificate answers for (`*.example.com` allowed); when absent, the DNS
    /// names in the certificate's subjectAltName.
    #[serde(default)]
    pub names: Option<Vec<String>>,
}

/// One `[listener.<id>]`. `protocol` and `tls` have no default: they decide whether
/// credentials cross the network in clear, so the operator writes them down.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ListenerConfig {
    pub protocol: Protocol,
    #[serde(default)]
    pub bind: Vec<SocketAddr>,
    pub tls: TlsMode,
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::preauth_timeout", with = "humantime_serde")]
    pub preauth_timeout: Duration,
    #[serde(default = "defaults::max_auth_attempts")]
    pub max_auth_attempts: u32,
    #[serde(default = "defaults::max_line_length")]
    pub max_line_length: usize,
    #[serde(default = "defaults::max_literal_size")]
    pub max_literal_size: usize,
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// smtp and lmtp only: every recipient goes to this destination id, without a lookup
    /// (fixed pass-through). Unset: each recipient is routed by its mailbox.
    #[serde(default)]
    pub pass_through: Option<String>,
    /// smtp and lmtp only: RCPT commands one transaction may have, whatever their answers
    /// (Postfix's `smtpd_recipient_limit`); the next get `452 4.5.3`. Unset: 1000.
    #[serde(default)]
    pub max_recipients: Option<u32>,
    /// smtp and lmtp only, routed by recipient: recipients one session may look up that are
    /// not in the route cache (each a `Resolve` to the control plane, and an entry cached);
    /// the next uncached ones get `451 4.7.1`, cached ones are still delivered. Unset: 1000.
    #[serde(default)]
    pub max_resolves: Option<u32>,
    /// Inbound PROXY protocol: `off`, `optional` or `required`; honoured only from
    /// `proxy_trusted` peers (a header from anyone else is ordinary protocol input).
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Networks (CIDR) whose PROXY headers are believed, e.g. the load balancers.
    #[serde(default)]
    pub proxy_trusted: Vec<ipnet::IpNet>,
    /// smtp and lmtp only: the longest a session may last, however busy the client keeps
    /// it (these listeners take no login, so no pre-auth budget ends them).
    #[serde(default, with = "humantime_serde")]
    pub session_timeout: Option<Duration>,
    /// smtp and lmtp only: commands that make no progress (all but MAIL, RCPT, DATA, QUIT,
    /// an accepted STARTTLS and the first greeting) allowed since the session began or its
    /// last delivered message.
    #[serde(default)]
    pub junk_command_limit: Option<u32>,
}

/// Whether a listener expects a PROXY protocol header from trusted peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    Optional,
    Required,
}

impl ListenerConfig {
    pub fn recipient_limit(&self) -> u32 {
        self.max_recipients.unwrap_or(defaults::MAX_RECIPIENTS)
    }

    pub fn resolve_limit(&self) -> u32 {
        self.max_resolves.unwrap_or(defaults::MAX_RESOLVES)
    }

    /// Does this listener read a PROXY header from a connection coming from `peer`?
    pub fn proxy_from(&self, peer: std::net::IpAddr) -> bool {
        self.proxy_protocol != ProxyProtocol::Off && self.proxy_trusted.iter().any(|net| net.contains(&peer))
    }

    /// `session_timeout`, or its default.
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout.unwrap_or(defaults::SESSION_TIMEOUT)
    }

    /// `junk_command_limit`, or its default.
    pub fn junk_command_limit(&self) -> u32 {
        self.junk_command_limit.unwrap_or(defaults::JUNK_COMMAND_LIMIT)
    }
}

mod defaults {
    use std::time::Duration;

    /// Long enough for a large message over a slow link; a sender whose session ends here
    /// reconnects, as it does after any 421.
    pub(super) const SESSION_TIMEOUT: Duration = Duration::from_secs(10 * 60);
    /// Postfix's `smtpd_junk_command_limit` default.
    pub(super) const JUNK_COMMAND_LIMIT: u32 = 100;
    pub(super) const MAX_RECIPIENTS: u32 = 1000;
    pub(super) const MAX_RESOLVES: u32 = 1000;

    pub(super) fn max_connections() -> usize {
        8192
    }
    pub(super) fn preauth_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn max_auth_attempts() -> u32 {
        3
    }
    pub(super) fn max_line_length() -> usize {
        8192
    }
    pub(super) fn max_literal_size() -> usize {
        65536
    }
    pub(super) fn idle_timeout() -> Duration {
        Duration::from_secs(30 * 60)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
