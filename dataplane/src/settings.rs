//! The fleet settings a node receives from the control plane, as domain types.
//!
//! The control plane owns destinations, cache and breaker settings; a node swaps the whole
//! snapshot in at once (watch channel) when a Welcome or a settings push arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1 as pb;

use crate::config::{Protocol, TlsMode};
use crate::routekey::RouteKeyRule;

/// One backend mail server (or cluster address) that accounts are routed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub id: String,
    pub host: String,
    pub forwarding: String,
    pub allow_plaintext_auth: bool,
    pub endpoints: HashMap<Protocol, Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Endpoint {
    pub port: u16,
    pub tls: TlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSettings {
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
    pub max_stale: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub cooldown: Duration,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
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

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl TryFrom<pb::Destination> for Destination {
    type Error = InvalidSettings;

    fn try_from(d: pb::Destination) -> Result<Self, Self::Error> {
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
            endpoints.insert(protocol, Endpoint { port, tls });
        }
        Ok(Destination {
            id: d.id,
            host: d.host,
            forwarding: d.forwarding,
            allow_plaintext_auth: d.allow_plaintext_auth,
            endpoints,
        })
    }
}

impl TryFrom<pb::FleetSettings> for FleetSettings {
    type Error = InvalidSettings;

    fn try_from(s: pb::FleetSettings) -> Result<Self, Self::Error> {
        let cache = s
            .cache
            .ok_or_else(|| InvalidSettings("no cache settings".into()))?;
        let breaker = s
            .breaker
            .ok_or_else(|| InvalidSettings("no breaker settings".into()))?;
        let mut destinations = HashMap::new();
        for d in s.destinations {
            let d = Destination::try_from(d)?;
            destinations.insert(d.id.clone(), Arc::new(d));
        }
        if !destinations.contains_key(&s.default_destination) {
            return Err(InvalidSettings(format!(
                "default destination {:?} is not declared",
                s.default_destination
            )));
        }
        Ok(FleetSettings {
            destinations,
            default_destination: s.default_destination,
            route_key: RouteKeyRule {
                master_user_separators: s.master_user_separators,
                lowercase: s.normalize != "none",
            },
            cache: CacheSettings {
                positive_ttl: ms(cache.positive_ttl_ms),
                negative_ttl: ms(cache.negative_ttl_ms),
                max_entries: cache.max_entries,
                max_stale: ms(cache.max_stale_ms),
            },
            breaker: BreakerSettings {
                failure_threshold: breaker.failure_threshold.max(1),
                cooldown: ms(breaker.cooldown_ms),
                connect_timeout: ms(breaker.connect_timeout_ms),
                connect_retries: breaker.connect_retries,
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
            endpoints: vec![pb::Endpoint {
                protocol: "imap".into(),
                port,
                tls: "plain".into(),
            }],
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
            }),
            breaker: Some(pb::BreakerSettings {
                failure_threshold: 5,
                cooldown_ms: 30_000,
                connect_timeout_ms: 10_000,
                connect_retries: 1,
            }),
            report_interval_ms: 10_000,
            heartbeat_interval_ms: 5_000,
        }
    }

    #[test]
    fn converts_a_valid_message() {
        let s = FleetSettings::try_from(sample()).unwrap();
        assert_eq!(s.destinations.len(), 2);
        let new = s.destination("new").unwrap();
        assert_eq!(
            new.endpoints[&Protocol::Imap],
            Endpoint {
                port: 2143,
                tls: TlsMode::Plain
            }
        );
        assert_eq!(s.cache.negative_ttl, Duration::from_secs(30));
        assert!(s.route_key.lowercase);
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
    fn unknown_protocols_are_skipped() {
        let mut m = sample();
        m.destinations[0].endpoints.push(pb::Endpoint {
            protocol: "gopher".into(),
            port: 70,
            tls: "plain".into(),
        });
        let s = FleetSettings::try_from(m).unwrap();
        assert_eq!(s.destination("legacy").unwrap().endpoints.len(), 1);
    }
}
