//! The control plane's side of the node stream's protobuf messages: domain values become
//! `switchyard_proto` messages here, just before a node's stream sends them, and nowhere
//! deeper. The fleet settings every node gets in its Welcome are built from the config here.

use switchyard_proto::v1 as pb;

use crate::config::Config;
use crate::node_info::{
    CommandAck, CommandKind, DestinationState, ListenerInfo, NodeCommand, NodeEvent, NodeHello, NodeReport,
};
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

impl From<CommandKind> for pb::command::Kind {
    fn from(kind: CommandKind) -> Self {
        match kind {
            CommandKind::BreakerReset { destination } => Self::BreakerReset(pb::BreakerReset { destination }),
            CommandKind::Invalidate { key } => Self::Invalidate(pb::Invalidate { key }),
            CommandKind::Kick { key } => Self::Kick(pb::Kick { key }),
            CommandKind::Delay { key, seconds } => Self::Delay(pb::Delay { key, seconds }),
            CommandKind::Probe => Self::Probe(pb::Probe {}),
        }
    }
}

/// A command as a message on a node's stream.
pub fn command_message(NodeCommand { id, kind }: NodeCommand) -> pb::ControlMessage {
    let command = pb::Command { id, kind: Some(kind.into()) };
    pb::ControlMessage { kind: Some(pb::control_message::Kind::Command(command)) }
}

impl From<pb::CommandAck> for CommandAck {
    fn from(ack: pb::CommandAck) -> Self {
        let applied = ack.result == pb::CommandResult::Applied as i32;
        CommandAck { command_id: ack.command_id, applied, count: ack.count }
    }
}

impl From<pb::Hello> for NodeHello {
    fn from(hello: pb::Hello) -> Self {
        let pb::Hello { node_id, instance_id, version, listeners, epoch, last_revision } = hello;
        let listeners = listeners.into_iter().map(ListenerInfo::from).collect();
        NodeHello { node_id, instance_id, version, listeners, epoch, last_revision }
    }
}

impl From<pb::Listener> for ListenerInfo {
    fn from(pb::Listener { id, protocol, bind, tls }: pb::Listener) -> Self {
        ListenerInfo { id, protocol, bind, tls }
    }
}

impl From<pb::Report> for NodeReport {
    fn from(report: pb::Report) -> Self {
        NodeReport {
            cache_hits: report.cache_hits,
            cache_misses: report.cache_misses,
            cache_entries: report.cache_entries,
            active_connections: report.active_connections,
            active_by_protocol: report.active_by_protocol,
            bytes_from_clients: report.bytes_from_clients,
            bytes_to_clients: report.bytes_to_clients,
            sessions_total: report.sessions_total,
            destinations: report.destinations.into_iter().map(DestinationState::from).collect(),
        }
    }
}

impl From<pb::DestinationHealth> for DestinationState {
    fn from(pb::DestinationHealth { destination, consecutive_failures, down }: pb::DestinationHealth) -> Self {
        DestinationState { destination, consecutive_failures, down }
    }
}

impl From<pb::node_message::Kind> for NodeEvent {
    fn from(kind: pb::node_message::Kind) -> Self {
        use pb::node_message::Kind;
        match kind {
            Kind::Report(report) => NodeEvent::Report(report.into()),
            Kind::RevisionAck(pb::RevisionAck { epoch, revision }) => NodeEvent::RevisionAck { epoch, revision },
            Kind::CommandAck(ack) => NodeEvent::CommandAck(ack.into()),
            Kind::Heartbeat(_) | Kind::Hello(_) => NodeEvent::Alive,
        }
    }
}

/// The Welcome message, carrying the fleet settings.
pub fn welcome_message(welcome: Welcome, settings: &pb::FleetSettings) -> pb::ControlMessage {
    let Welcome { epoch, revision, flush_cache } = welcome;
    let welcome = pb::Welcome { epoch, revision, settings: Some(settings.clone()), flush_cache };
    pb::ControlMessage { kind: Some(pb::control_message::Kind::Welcome(welcome)) }
}

/// The settings every node gets in its Welcome: the config's fleet settings through the
/// shared encoder (`switchyard-common`, which also holds the node's decoder).
pub fn fleet_settings(config: &Config) -> pb::FleetSettings {
    let mut settings = pb::FleetSettings::from(&config.fleet_settings());
    // Still sent for nodes older than the byte bounds, which bound their cache by entries.
    if let Some(cache) = settings.cache.as_mut() {
        cache.max_entries = config.cache.max_entries;
    }
    settings
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

    #[test]
    fn a_command_keeps_its_id_and_kind() {
        let command = NodeCommand { id: "c".into(), kind: CommandKind::Delay { key: "alice".into(), seconds: 60 } };
        let Some(pb::control_message::Kind::Command(sent)) = command_message(command).kind else { panic!() };
        assert_eq!(sent.id, "c");
        assert_eq!(sent.kind, Some(pb::command::Kind::Delay(pb::Delay { key: "alice".into(), seconds: 60 })));
    }

    #[test]
    fn a_report_keeps_its_counters_and_breakers_and_a_heartbeat_only_says_alive() {
        let health = pb::DestinationHealth { destination: "new".into(), consecutive_failures: 3, down: true };
        let report = pb::Report { cache_hits: 4, destinations: vec![health], ..Default::default() };
        let NodeEvent::Report(got) = NodeEvent::from(pb::node_message::Kind::Report(report)) else { panic!() };
        assert_eq!(got.cache_hits, 4);
        assert_eq!(
            got.destinations,
            [DestinationState { destination: "new".into(), consecutive_failures: 3, down: true }]
        );
        let beat = pb::node_message::Kind::Heartbeat(pb::Heartbeat::default());
        assert_eq!(NodeEvent::from(beat), NodeEvent::Alive);
    }

    #[test]
    fn only_an_applied_ack_counts_as_applied() {
        let ack = |result: pb::CommandResult| pb::CommandAck {
            command_id: "c".into(),
            result: result as i32,
            count: 2,
            ..Default::default()
        };
        assert!(CommandAck::from(ack(pb::CommandResult::Applied)).applied);
        assert!(!CommandAck::from(ack(pb::CommandResult::Rejected)).applied);
        assert!(!CommandAck::from(ack(pb::CommandResult::Unspecified)).applied);
    }
}
