//! The fleet settings this config gives every node, as the domain value
//! `switchyard-common` encodes for the Welcome (and nodes decode back).

use std::collections::HashMap;
use std::sync::Arc;

use switchyard_common::settings::{
    BackendTls, BreakerSettings, CacheSettings, ClientCert, Destination, Endpoint, FleetSettings, TlsVerify as Verify,
};
use switchyard_common::tls::parse_pin;
use switchyard_common::wire::Protocol;

use super::{Config, DestinationConfig, TlsVerify};

impl Config {
    /// What every node is told. The config is validated, so every protocol name and pin
    /// parses; one that did not would be left out rather than sent.
    pub fn fleet_settings(&self) -> FleetSettings {
        let cache = &self.cache;
        let breaker = &self.breaker;
        FleetSettings {
            destinations: self.destination.iter().map(|(id, d)| (id.clone(), Arc::new(destination(id, d)))).collect(),
            default_destination: self.routing.default_destination.clone(),
            route_key: self.route_key_rule(),
            cache: CacheSettings {
                positive_ttl: cache.positive_ttl,
                negative_ttl: cache.negative_ttl,
                max_stale: cache.max_stale,
                max_bytes: cache.max_bytes,
                negative_max_bytes: cache.negative_max_bytes,
            },
            breaker: BreakerSettings {
                failure_threshold: breaker.failure_threshold,
                cooldown: breaker.cooldown,
                connect_timeout: breaker.connect_timeout,
                connect_retries: breaker.connect_retries,
                login_timeout: breaker.login_timeout,
            },
            report_interval: self.server.report_interval,
            heartbeat_interval: self.server.heartbeat_interval,
        }
    }
}

/// One destination; an endpoint without its own `forwarding` takes the destination's.
fn destination(id: &str, d: &DestinationConfig) -> Destination {
    let endpoints: HashMap<Protocol, Endpoint> = d
        .protocol
        .iter()
        .filter_map(|(name, e)| {
            let forwarding = e.forwarding.unwrap_or(d.forwarding);
            Some((Protocol::from_name(name)?, Endpoint { port: e.port, tls: e.tls, forwarding }))
        })
        .collect();
    Destination {
        id: id.to_string(),
        host: d.host.clone(),
        allow_plaintext_auth: d.allow_plaintext_auth,
        endpoints,
        tls: backend_tls(d),
    }
}

/// Without `tls_server_name` a node checks the host, as it does for an empty wire field.
fn backend_tls(d: &DestinationConfig) -> BackendTls {
    let verify = match d.tls_verify {
        TlsVerify::System => Verify::System,
        TlsVerify::Pinned => Verify::Pinned(d.tls_pin_sha256.iter().filter_map(|p| parse_pin(p)).collect()),
        TlsVerify::Insecure => Verify::Insecure,
    };
    let server_name = match d.tls_server_name.as_deref().map(str::trim) {
        None | Some("") => d.host.trim().to_string(),
        Some(name) => name.to_string(),
    };
    let client_cert = match (&d.tls_client_cert, &d.tls_client_key) {
        (Some(cert), Some(key)) => Some(ClientCert { cert: cert.clone(), key: key.clone() }),
        _ => None,
    };
    BackendTls { verify, server_name, client_cert }
}

#[cfg(test)]
mod tests {
    use switchyard_common::wire::{Forwarding, TlsMode};
    use switchyard_proto::v1 as pb;

    use super::*;

    const CONFIG: &str = r#"
[routing]
default_destination = "legacy"
[destination.legacy]
host = "10.0.1.10"
forwarding = "xclient"
[destination.legacy.protocol.imap]
port = 143
[destination.legacy.protocol.lmtp]
port = 24
tls = "plain"
forwarding = "proxy"
[destination.new]
host = "imap.new.test"
tls_verify = "pinned"
tls_pin_sha256 = ["AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB"]
tls_server_name = "backend.new.test"
tls_client_cert = "/etc/sy/client.pem"
tls_client_key = "/etc/sy/client.key"
[destination.new.protocol.imap]
port = 993
tls = "implicit"
"#;

    /// Endpoints inherit the destination's forwarding unless they set their own; pins are
    /// parsed; a server name defaults to the host. A node decodes exactly this value.
    #[test]
    fn the_config_becomes_the_settings_nodes_decode() {
        let settings = Config::from_toml_str(CONFIG).unwrap().fleet_settings();
        let legacy = &settings.destinations["legacy"];
        assert_eq!(
            legacy.endpoints[&Protocol::Imap],
            Endpoint { port: 143, tls: TlsMode::Starttls, forwarding: Forwarding::Xclient }
        );
        assert_eq!(legacy.endpoints[&Protocol::Lmtp].forwarding, Forwarding::Proxy);
        assert_eq!(
            legacy.tls,
            BackendTls { verify: Verify::System, server_name: "10.0.1.10".into(), client_cert: None }
        );
        let new = &settings.destinations["new"].tls;
        assert_eq!(new.verify, Verify::Pinned(vec![[0xab; 32]]));
        assert_eq!(new.server_name, "backend.new.test");
        assert_eq!(new.client_cert.as_ref().map(|c| c.key.clone()), Some("/etc/sy/client.key".into()));
        assert_eq!(FleetSettings::try_from(pb::FleetSettings::from(&settings)).unwrap(), settings);
    }
}
