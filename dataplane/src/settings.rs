//! The fleet settings a node receives from the control plane, as domain types.
//!
//! The control plane owns destinations, cache and breaker settings; a node swaps the whole
//! snapshot in at once (watch channel) when a Welcome or a settings push arrives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1 as pb;

use crate::config::{Forwarding, Protocol, TlsMode};
use crate::routekey::RouteKeyRule;

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

/// A byte bound an older control plane does not send (0) is the node's default.
fn or_default(bytes: u64, default: u64) -> u64 {
    if bytes == 0 {
        default
    } else {
        bytes
    }
}

/// Milliseconds, held to the bound the control plane's validation applies: a longer value
/// (from a control plane that did not bound it) would panic the route cache or a timer.
fn ms(v: u64) -> Duration {
    Duration::from_millis(v).min(crate::config::MAX_DURATION)
}

impl TryFrom<pb::Destination> for Destination {
    type Error = InvalidSettings;

    fn try_from(d: pb::Destination) -> Result<Self, Self::Error> {
        let tls = backend_tls(&d)?;
        let forwarding = |name: &str, default: Forwarding| match name {
            "" => Ok(default),
            name => Forwarding::from_name(name)
                .ok_or_else(|| InvalidSettings(format!("destination {}: forwarding {name:?}", d.id))),
        };
        let default_forwarding = forwarding(&d.forwarding, Forwarding::None)?;
        let mut endpoints = HashMap::new();
        for e in d.endpoints {
            // An endpoint for a protocol this node does not know is skipped, not fatal:
            // a newer control plane may declare protocols an older node never serves.
            let Some(protocol) = Protocol::from_name(&e.protocol) else {
                continue;
            };
            let tls = TlsMode::from_name(&e.tls)
                .ok_or_else(|| InvalidSettings(format!("destination {}: tls {:?}", d.id, e.tls)))?;
            let port = u16::try_from(e.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| InvalidSettings(format!("destination {}: port {}", d.id, e.port)))?;
            let forwarding = forwarding(&e.forwarding, default_forwarding)?;
            endpoints.insert(protocol, Endpoint { port, tls, forwarding });
        }
        Ok(Destination { tls, id: d.id, host: d.host, allow_plaintext_auth: d.allow_plaintext_auth, endpoints })
    }
}

/// The destination's TLS fields; empty strings are what an older control plane sends,
/// so they mean the defaults (system verification, the host as server name).
fn backend_tls(d: &pb::Destination) -> Result<BackendTls, InvalidSettings> {
    let bad = |what: String| InvalidSettings(format!("destination {}: {what}", d.id));
    let verify = match d.tls_verify.as_str() {
        "" | "system" => TlsVerify::System,
        "insecure" => TlsVerify::Insecure,
        "pinned" => {
            let pins = d
                .tls_pin_sha256
                .iter()
                .map(|p| crate::tls::parse_pin(p).ok_or_else(|| bad(format!("tls_pin_sha256 {p:?}"))))
                .collect::<Result<Vec<_>, _>>()?;
            if pins.is_empty() {
                return Err(bad("tls_verify = \"pinned\" without tls_pin_sha256".into()));
            }
            TlsVerify::Pinned(pins)
        }
        other => return Err(bad(format!("tls_verify {other:?}"))),
    };
    let server_name = match d.tls_server_name.trim() {
        "" => d.host.trim().to_owned(),
        name => name.to_owned(),
    };
    // A host that is no valid TLS name only matters once some endpoint uses TLS (the
    // control plane checks the same); an explicit tls_server_name must always parse.
    let uses_tls = d.endpoints.iter().any(|e| e.tls != TlsMode::Plain.as_str());
    let explicit = !d.tls_server_name.trim().is_empty();
    if (uses_tls || explicit) && crate::tls::server_name(&server_name).is_none() {
        return Err(bad(format!("TLS server name {server_name:?}")));
    }
    let client_cert = match (d.tls_client_cert.as_str(), d.tls_client_key.as_str()) {
        ("", "") => None,
        ("", _) | (_, "") => return Err(bad("tls_client_cert and tls_client_key go together".into())),
        (cert, key) => Some(ClientCert { cert: cert.into(), key: key.into() }),
    };
    Ok(BackendTls { verify, server_name, client_cert })
}

impl TryFrom<pb::FleetSettings> for FleetSettings {
    type Error = InvalidSettings;

    fn try_from(s: pb::FleetSettings) -> Result<Self, Self::Error> {
        let cache = s.cache.ok_or_else(|| InvalidSettings("no cache settings".into()))?;
        let breaker = s.breaker.ok_or_else(|| InvalidSettings("no breaker settings".into()))?;
        let mut destinations = HashMap::new();
        for d in s.destinations {
            let d = Destination::try_from(d)?;
            destinations.insert(d.id.clone(), Arc::new(d));
        }
        if !destinations.contains_key(&s.default_destination) {
            return Err(InvalidSettings(format!("default destination {:?} is not declared", s.default_destination)));
        }
        Ok(FleetSettings {
            destinations,
            default_destination: s.default_destination,
            route_key: RouteKeyRule {
                master_user_separators: s.master_user_separators,
                recipient_delimiter: s
                    .recipient_delimiter
                    .unwrap_or_else(|| RouteKeyRule::default().recipient_delimiter),
                lowercase: s.normalize != "none",
            },
            cache: CacheSettings {
                positive_ttl: ms(cache.positive_ttl_ms),
                negative_ttl: ms(cache.negative_ttl_ms),
                max_stale: ms(cache.max_stale_ms),
                max_bytes: or_default(cache.max_bytes, DEFAULT_MAX_BYTES),
                negative_max_bytes: or_default(cache.negative_max_bytes, DEFAULT_NEGATIVE_MAX_BYTES),
            },
            breaker: BreakerSettings {
                failure_threshold: breaker.failure_threshold.max(1),
                cooldown: ms(breaker.cooldown_ms),
                connect_timeout: ms(breaker.connect_timeout_ms),
                connect_retries: breaker.connect_retries,
                // Zero would fail every login at once; a control plane validates it away.
                login_timeout: breaker.login_timeout_ms.filter(|v| *v > 0).map_or(DEFAULT_LOGIN_TIMEOUT, ms),
            },
            report_interval: ms(s.report_interval_ms.max(100)),
            heartbeat_interval: ms(s.heartbeat_interval_ms.max(100)),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid settings message with destinations `legacy` (default) and `new`.
    pub fn sample() -> pb::FleetSettings {
        let dest = |id: &str, port: u32| pb::Destination {
            id: id.into(),
            host: "127.0.0.1".into(),
            forwarding: "none".into(),
            allow_plaintext_auth: true,
            endpoints: vec![pb::Endpoint { protocol: "imap".into(), port, tls: "plain".into(), ..Default::default() }],
            ..Default::default()
        };
        pb::FleetSettings {
            destinations: vec![dest("legacy", 1143), dest("new", 2143)],
            default_destination: "legacy".into(),
            master_user_separators: vec!["%".into()],
            normalize: "lowercase".into(),
            cache: Some(pb::CacheSettings {
                positive_ttl_ms: 600_000,
                negative_ttl_ms: 30_000,
                max_entries: 1000,
                max_stale_ms: 3_600_000,
                max_bytes: 1 << 20,
                negative_max_bytes: 0,
            }),
            breaker: Some(pb::BreakerSettings {
                failure_threshold: 5,
                cooldown_ms: 30_000,
                connect_timeout_ms: 10_000,
                connect_retries: 1,
                login_timeout_ms: Some(20_000),
            }),
            report_interval_ms: 10_000,
            heartbeat_interval_ms: 5_000,
            recipient_delimiter: Some("+".into()),
        }
    }

    #[test]
    fn converts_a_valid_message() {
        let s = FleetSettings::try_from(sample()).unwrap();
        assert_eq!(s.destinations.len(), 2);
        let new = s.destination("new").unwrap();
        assert_eq!(
            new.endpoints[&Protocol::Imap],
            Endpoint { port: 2143, tls: TlsMode::Plain, forwarding: Forwarding::None }
        );
        assert_eq!(s.cache.negative_ttl, Duration::from_secs(30));
        // An older control plane sends no byte bound: the node's default applies.
        assert_eq!((s.cache.max_bytes, s.cache.negative_max_bytes), (1 << 20, DEFAULT_NEGATIVE_MAX_BYTES));
        assert!(s.route_key.lowercase);
        assert_eq!(s.route_key.recipient_delimiter, "+");
    }

    /// A control plane that did not bound its durations cannot make the cache panic.
    #[test]
    fn durations_past_the_bound_are_held_to_it() {
        let mut m = sample();
        m.cache.as_mut().unwrap().max_stale_ms = u64::MAX;
        let s = FleetSettings::try_from(m).unwrap();
        assert_eq!(s.cache.max_stale, crate::config::MAX_DURATION);
    }

    /// An older control plane sends no login timeout: the 30 s nodes always waited.
    #[test]
    fn login_timeout_unset_is_the_old_fixed_wait() {
        assert_eq!(FleetSettings::try_from(sample()).unwrap().breaker.login_timeout, Duration::from_secs(20));
        for unusable in [None, Some(0)] {
            let mut m = sample();
            m.breaker.as_mut().unwrap().login_timeout_ms = unusable;
            assert_eq!(FleetSettings::try_from(m).unwrap().breaker.login_timeout, Duration::from_secs(30));
        }
    }

    /// An older control plane does not send the field: the default `+` applies, as it
    /// does for a current one without the key; an explicit empty string cuts nothing.
    #[test]
    fn recipient_delimiter_unset_is_the_default_and_empty_disables() {
        let mut m = sample();
        m.recipient_delimiter = None;
        assert_eq!(FleetSettings::try_from(m).unwrap().route_key.recipient_delimiter, "+");
        let mut m = sample();
        m.recipient_delimiter = Some(String::new());
        assert_eq!(FleetSettings::try_from(m).unwrap().route_key.recipient_delimiter, "");
        let mut m = sample();
        m.recipient_delimiter = Some("+-".into());
        assert_eq!(FleetSettings::try_from(m).unwrap().route_key.recipient_delimiter, "+-");
    }

    #[test]
    fn rejects_an_undeclared_default_and_bad_endpoints() {
        let mut m = sample();
        m.default_destination = "nowhere".into();
        assert!(FleetSettings::try_from(m).is_err());
        let mut m = sample();
        m.destinations[0].endpoints[0].tls = "maybe".into();
        assert!(FleetSettings::try_from(m).is_err());
        let mut m = sample();
        m.destinations[0].endpoints[0].port = 70_000;
        assert!(FleetSettings::try_from(m).is_err());
    }

    #[test]
    fn backend_tls_defaults_to_system_roots_and_the_host() {
        let s = FleetSettings::try_from(sample()).unwrap();
        let tls = &s.destination("legacy").unwrap().tls;
        assert_eq!(tls.verify, TlsVerify::System);
        assert_eq!(tls.server_name, "127.0.0.1");
        assert_eq!(tls.client_cert, None);
        // Plain endpoints only: the host never becomes a TLS name, so it is not judged.
        let mut m = sample();
        m.destinations[0].host = "back end".into();
        assert!(FleetSettings::try_from(m).is_ok());
    }

    #[test]
    fn backend_tls_fields_convert() {
        let mut m = sample();
        let d = &mut m.destinations[0];
        d.tls_verify = "pinned".into();
        d.tls_pin_sha256 = vec!["AB:".repeat(31) + "AB", "00".repeat(32)];
        d.tls_server_name = "imap.example.test".into();
        d.tls_client_cert = "/etc/sy/client.pem".into();
        d.tls_client_key = "/etc/sy/client.key".into();
        m.destinations[1].tls_verify = "insecure".into();
        let s = FleetSettings::try_from(m).unwrap();
        let tls = &s.destination("legacy").unwrap().tls;
        assert_eq!(tls.verify, TlsVerify::Pinned(vec![[0xab; 32], [0; 32]]));
        assert_eq!(tls.server_name, "imap.example.test");
        assert_eq!(
            tls.client_cert,
            Some(ClientCert { cert: "/etc/sy/client.pem".into(), key: "/etc/sy/client.key".into() })
        );
        let new = &s.destination("new").unwrap().tls;
        assert_eq!(new.verify, TlsVerify::Insecure);
    }

    #[test]
    fn rejects_unusable_backend_tls() {
        let cases: [fn(&mut pb::Destination); 6] = [
            |d| d.tls_verify = "maybe".into(),
            |d| d.tls_verify = "pinned".into(),
            |d| {
                d.tls_verify = "pinned".into();
                d.tls_pin_sha256 = vec!["abc".into()];
            },
            |d| d.tls_client_cert = "/c.pem".into(),
            |d| d.tls_server_name = "not a name".into(),
            |d| {
                d.host = "back end".into();
                d.endpoints[0].tls = "implicit".into();
            },
        ];
        for (i, case) in cases.into_iter().enumerate() {
            let mut m = sample();
            case(&mut m.destinations[0]);
            assert!(FleetSettings::try_from(m).is_err(), "case {i}");
        }
    }

    #[test]
    fn unknown_protocols_are_skipped() {
        let mut m = sample();
        m.destinations[0].endpoints.push(pb::Endpoint {
            protocol: "gopher".into(),
            port: 70,
            tls: "plain".into(),
            ..Default::default()
        });
        let s = FleetSettings::try_from(m).unwrap();
        assert_eq!(s.destination("legacy").unwrap().endpoints.len(), 1);
    }
}
