//! Protobuf → [`FleetSettings`]: what a node accepts from the control plane. Empty fields
//! are what an older control plane sends and mean the defaults; values past the bounds the
//! control plane validates are held to them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1 as pb;

use super::{
    BackendTls, BreakerSettings, CacheSettings, ClientCert, Destination, Endpoint, FleetSettings, InvalidSettings,
    TlsVerify, DEFAULT_LOGIN_TIMEOUT, DEFAULT_MAX_BYTES, DEFAULT_NEGATIVE_MAX_BYTES,
};
use crate::routekey::RouteKeyRule;
use crate::wire::{Forwarding, Protocol, TlsMode};

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
