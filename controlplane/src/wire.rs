//! The control plane's side of the node stream's protobuf messages: domain values become
//! `switchyard_proto` messages here, just before a node's stream sends them, and nowhere
//! deeper. The fleet settings every node gets in its Welcome are built from the config here.

use switchyard_proto::v1 as pb;

use crate::config::Config;
use crate::publisher::Welcome;
use crate::route::{RouteChange, RouteUpdate};

impl From<RouteUpdate> for pb::RouteUpdate {
    fn from(update: RouteUpdate) -> Self {
        let RouteUpdate { epoch, revision, changes, flush } = update;
        let changes = changes.into_iter().map(pb::RouteChange::from).collect();
        pb::RouteUpdate { epoch, revision, changes, flush }
    }
}

impl From<RouteChange> for pb::RouteChange {
    fn from(RouteChange { key, destination }: RouteChange) -> Self {
        let change = match destination {
            Some(d) => pb::route_change::Change::Upsert(d),
            None => pb::route_change::Change::Remove(true),
        };
        pb::RouteChange { key, change: Some(change) }
    }
}

/// A route update as a message on a node's stream.
pub fn route_update_message(update: RouteUpdate) -> pb::ControlMessage {
    pb::ControlMessage { kind: Some(pb::control_message::Kind::RouteUpdate(update.into())) }
}

/// The Welcome message, carrying the fleet settings.
pub fn welcome_message(welcome: Welcome, settings: &pb::FleetSettings) -> pb::ControlMessage {
    let Welcome { epoch, revision, flush_cache } = welcome;
    let welcome = pb::Welcome { epoch, revision, settings: Some(settings.clone()), flush_cache };
    pb::ControlMessage { kind: Some(pb::control_message::Kind::Welcome(welcome)) }
}

/// A node-side path as the wire carries it; "" means none.
fn path_string(path: Option<&std::path::Path>) -> String {
    path.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The settings every node gets in its Welcome, from the control plane's own config.
pub fn fleet_settings(config: &Config) -> pb::FleetSettings {
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    pb::FleetSettings {
        destinations: config
            .destination
            .iter()
            .map(|(id, d)| pb::Destination {
                id: id.clone(),
                host: d.host.clone(),
                forwarding: d.forwarding.as_str().to_string(),
                allow_plaintext_auth: d.allow_plaintext_auth,
                endpoints: d
                    .protocol
                    .iter()
                    .map(|(protocol, e)| pb::Endpoint {
                        protocol: protocol.clone(),
                        port: u32::from(e.port),
                        tls: e.tls.as_str().to_string(),
                        forwarding: e.forwarding.map(|f| f.as_str().to_string()).unwrap_or_default(),
                    })
                    .collect(),
                tls_verify: d.tls_verify.as_str().to_string(),
                tls_server_name: d.tls_server_name.clone().unwrap_or_default(),
                tls_pin_sha256: d.tls_pin_sha256.clone(),
                tls_client_cert: path_string(d.tls_client_cert.as_deref()),
                tls_client_key: path_string(d.tls_client_key.as_deref()),
            })
            .collect(),
        default_destination: config.routing.default_destination.clone(),
        master_user_separators: config.routing.master_user_separators.clone(),
        recipient_delimiter: Some(config.routing.recipient_delimiter.clone()),
        normalize: config.mapping.normalize.as_str().to_string(),
        cache: Some(pb::CacheSettings {
            positive_ttl_ms: ms(config.cache.positive_ttl),
            negative_ttl_ms: ms(config.cache.negative_ttl),
            max_entries: config.cache.max_entries,
            max_stale_ms: ms(config.cache.max_stale),
            max_bytes: config.cache.max_bytes,
            negative_max_bytes: config.cache.negative_max_bytes,
        }),
        breaker: Some(pb::BreakerSettings {
            failure_threshold: config.breaker.failure_threshold,
            cooldown_ms: ms(config.breaker.cooldown),
            connect_timeout_ms: ms(config.breaker.connect_timeout),
            connect_retries: config.breaker.connect_retries,
            login_timeout_ms: Some(ms(config.breaker.login_timeout)),
        }),
        report_interval_ms: ms(config.server.report_interval),
        heartbeat_interval_ms: ms(config.server.heartbeat_interval),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_update_becomes_upserts_and_removals_in_order() {
        let update = RouteUpdate {
            epoch: "e".into(),
            revision: 5,
            changes: vec![
                RouteChange { key: "alice".into(), destination: Some("new".into()) },
                RouteChange { key: "bob".into(), destination: None },
            ],
            flush: true,
        };
        let sent = pb::RouteUpdate::from(update);
        assert_eq!((sent.epoch.as_str(), sent.revision, sent.flush), ("e", 5, true));
        assert_eq!(sent.changes[0].key, "alice");
        assert_eq!(sent.changes[0].change, Some(pb::route_change::Change::Upsert("new".into())));
        assert_eq!(sent.changes[1].change, Some(pb::route_change::Change::Remove(true)));
    }
}
