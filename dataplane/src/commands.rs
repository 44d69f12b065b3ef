//! What a node does with the control plane's route updates and commands, and what it reports.

use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use switchyard_proto::v1 as pb;

use crate::node::Node;

/// How long a kick waits for the sessions it closed to be gone before it says they are not.
const KICK_WAIT: Duration = Duration::from_secs(2);

/// A command's ack: at once, or once what the command started is over (a kick: once every
/// session it closed has closed its connections, so a move never reports `complete` while
/// one of them could still reach the old server).
pub(crate) enum Acked {
    Now(pb::CommandAck),
    Later(BoxFuture<'static, pb::CommandAck>),
}

/// Applies a route update in order and returns the ack. Updates for another epoch or at
/// or below the applied revision are acked without being applied again (idempotent).
pub(crate) async fn apply_update(node: &Node, update: pb::RouteUpdate) -> pb::RevisionAck {
    let (epoch, applied) = node.revision();
    let current = epoch == update.epoch && update.revision <= applied;
    if !current {
        if let Some(routes) = node.routes() {
            if update.flush {
                routes.clear();
            }
            for change in &update.changes {
                match &change.change {
                    Some(pb::route_change::Change::Upsert(destination)) => routes.upsert(&change.key, destination),
                    Some(pb::route_change::Change::Remove(_)) | None => routes.remove(&change.key),
                }
            }
        }
        node.set_revision(&update.epoch, update.revision);
        tracing::debug!(
            revision = update.revision,
            changes = update.changes.len(),
            flush = update.flush,
            "route update applied"
        );
    }
    let (epoch, revision) = node.revision();
    pb::RevisionAck { epoch, revision }
}

/// Runs one command (its effect takes place before this returns, in the order commands
/// arrive) and says what it did.
pub(crate) fn apply_command(node: &Node, command: pb::Command) -> Acked {
    use pb::command::Kind;
    let (result, count, detail) = match command.kind {
        Some(Kind::BreakerReset(reset)) => {
            let count = node.breakers.reset(&reset.destination);
            tracing::info!(destination = %reset.destination, was_down = count, "breaker reset by the control plane");
            (pb::CommandResult::Applied, count, String::new())
        }
        Some(Kind::Invalidate(inv)) => {
            if let Some(routes) = node.routes() {
                if inv.key.is_empty() {
                    routes.clear();
                } else {
                    routes.remove(&inv.key);
                }
            }
            (pb::CommandResult::Applied, 0, String::new())
        }
        Some(Kind::Kick(kick)) => return kick_sessions(node, command.id, &kick.key),
        Some(Kind::Delay(delay)) => {
            node.delay(&delay.key, delay.seconds);
            tracing::info!(account = %crate::routekey::redact(&delay.key), seconds = delay.seconds, "login delay set");
            (pb::CommandResult::Applied, 0, String::new())
        }
        Some(Kind::Probe(_)) => (pb::CommandResult::Applied, 0, String::new()),
        None => (pb::CommandResult::Rejected, 0, "unknown command".to_string()),
    };
    Acked::Now(pb::CommandAck { command_id: command.id, result: result.into(), count, detail })
}

/// Closes every session of `key`, opening or bridged; acked once they are all gone.
fn kick_sessions(node: &Node, command_id: String, key: &str) -> Acked {
    let kicked = node.sessions.kick(key);
    let count = kicked.count;
    tracing::info!(account = %crate::routekey::redact(key), sessions = count, "sessions kicked");
    let ack = async move {
        let (result, detail) = if kicked.ended_within(KICK_WAIT).await {
            (pb::CommandResult::Applied, String::new())
        } else {
            (pb::CommandResult::Rejected, format!("a kicked session did not end within {KICK_WAIT:?}"))
        };
        pb::CommandAck { command_id, result: result.into(), count, detail }
    };
    Acked::Later(ack.boxed())
}

/// The node's cumulative counters and destination health.
pub(crate) async fn report(node: &Node) -> pb::Report {
    if let Some(routes) = node.routes() {
        routes.sync();
    }
    let cache = node.cache_stats();
    let active = node.sessions.active();
    let sessions = &node.sessions;
    use std::sync::atomic::Ordering::Relaxed;
    pb::Report {
        cache_hits: cache.hits,
        cache_misses: cache.misses,
        cache_entries: cache.entries,
        active_connections: active.values().sum(),
        active_by_protocol: active.iter().map(|(p, n)| (p.as_str().to_string(), *n)).collect(),
        bytes_from_clients: sessions.bytes_from_clients.load(Relaxed),
        bytes_to_clients: sessions.bytes_to_clients.load(Relaxed),
        sessions_total: sessions.total.load(Relaxed),
        destinations: node
            .breakers
            .health()
            .into_iter()
            .map(|(destination, h)| pb::DestinationHealth {
                destination,
                consecutive_failures: h.consecutive_failures,
                down: h.down,
            })
            .collect(),
    }
}
