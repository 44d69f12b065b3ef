//! [`FleetSettings`] → protobuf: what a control plane sends its nodes. Every field is
//! written out (none left to a default), in a stable order, so decoding the message gives
//! back exactly the value encoded.

use std::path::Path;
use std::time::Duration;

use switchyard_proto::v1 as pb;

use super::{BackendTls, BreakerSettings, CacheSettings, Destination, FleetSettings, TlsVerify};
use crate::wire::Forwarding;

/// Wire milliseconds; durations are bounded far below `u64::MAX` ms by validation.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A node-side path as the wire carries it; "" means none.
fn path_string(path: Option<&Path>) -> String {
    path.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

impl From<&FleetSettings> for pb::FleetSettings {
    fn from(s: &FleetSettings) -> Self {
        let mut destinations: Vec<pb::Destination> = s.destinations.values().map(|d| d.as_ref().into()).collect();
        destinations.sort_by(|a, b| a.id.cmp(&b.id));
        pb::FleetSettings {
            destinations,
            default_destination: s.default_destination.clone(),
            master_user_separators: s.route_key.master_user_separators.clone(),
            recipient_delimiter: Some(s.route_key.recipient_delimiter.clone()),
            normalize: if s.route_key.lowercase { "lowercase" } else { "none" }.to_string(),
            cache: Some((&s.cache).into()),
            breaker: Some((&s.breaker).into()),
            report_interval_ms: ms(s.report_interval),
            heartbeat_interval_ms: ms(s.heartbeat_interval),
        }
    }
}

/// `max_entries` is left 0: nodes bound their cache by bytes. A control plane that still
/// serves nodes older than the byte bounds sets it on the message.
impl From<&CacheSettings> for pb::CacheSettings {
    fn from(c: &CacheSettings) -> Self {
        pb::CacheSettings {
            positive_ttl_ms: ms(c.positive_ttl),
            negative_ttl_ms: ms(c.negative_ttl),
            max_entries: 0,
            max_stale_ms: ms(c.max_stale),
            max_bytes: c.max_bytes,
            negative_max_bytes: c.negative_max_bytes,
        }
    }
}

impl From<&BreakerSettings> for pb::BreakerSettings {
    fn from(b: &BreakerSettings) -> Self {
        pb::BreakerSettings {
            failure_threshold: b.failure_threshold,
            cooldown_ms: ms(b.cooldown),
            connect_timeout_ms: ms(b.connect_timeout),
            connect_retries: b.connect_retries,
            login_timeout_ms: Some(ms(b.login_timeout)),
        }
    }
}

/// Each endpoint carries its own forwarding, so the destination's is `none`.
impl From<&Destination> for pb::Destination {
    fn from(d: &Destination) -> Self {
        let mut endpoints: Vec<_> = d.endpoints.iter().collect();
        endpoints.sort_by_key(|(protocol, _)| **protocol);
        let endpoints = endpoints
            .into_iter()
            .map(|(protocol, e)| pb::Endpoint {
                protocol: protocol.as_str().to_string(),
                port: u32::from(e.port),
                tls: e.tls.as_str().to_string(),
                forwarding: e.forwarding.as_str().to_string(),
            })
            .collect();
        let (tls_verify, tls_pin_sha256) = verify(&d.tls.verify);
        pb::Destination {
            id: d.id.clone(),
            host: d.host.clone(),
            forwarding: Forwarding::None.as_str().to_string(),
            allow_plaintext_auth: d.allow_plaintext_auth,
            endpoints,
            tls_verify: tls_verify.to_string(),
            tls_server_name: server_name(d),
            tls_pin_sha256,
            tls_client_cert: path_string(d.tls.client_cert.as_ref().map(|c| c.cert.as_path())),
            tls_client_key: path_string(d.tls.client_cert.as_ref().map(|c| c.key.as_path())),
        }
    }
}

/// The verification mode's wire name and its pins in lower-case hex.
fn verify(verify: &TlsVerify) -> (&'static str, Vec<String>) {
    match verify {
        TlsVerify::System => ("system", Vec::new()),
        TlsVerify::Pinned(pins) => ("pinned", pins.iter().map(hex::encode).collect()),
        TlsVerify::Insecure => ("insecure", Vec::new()),
    }
}

/// "" when the server name is the host's (what a node assumes for an empty one): an
/// explicit name is judged even when no endpoint uses TLS, the host only when one does.
fn server_name(d: &Destination) -> String {
    let BackendTls { server_name, .. } = &d.tls;
    if server_name == d.host.trim() {
        String::new()
    } else {
        server_name.clone()
    }
}
