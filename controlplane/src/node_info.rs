//! What the control plane tells its nodes and hears back, as domain values: a node's
//! Hello and reports, the commands it is sent and their acks. They become (and come from)
//! protobuf messages only in [`crate::wire`], at the node stream.

use std::collections::HashMap;

/// How a node process introduces itself when its stream opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHello {
    /// Stable across restarts.
    pub node_id: String,
    /// New on every process start.
    pub instance_id: String,
    pub version: String,
    pub listeners: Vec<ListenerInfo>,
    /// The epoch of the last revision it applied ("" on first start).
    pub epoch: String,
    /// The last route revision it applied (0 on first start).
    pub last_revision: u64,
}

/// One listener a node runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerInfo {
    pub id: String,
    pub protocol: String,
    /// The addresses actually bound.
    pub bind: Vec<String>,
    pub tls: String,
}

/// A node instance's cumulative counters, as it last reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_entries: u64,
    pub active_connections: u64,
    pub active_by_protocol: HashMap<String, u64>,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    pub sessions_total: u64,
    pub destinations: Vec<DestinationState>,
}

/// One destination's breaker as a node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationState {
    pub destination: String,
    pub consecutive_failures: u32,
    pub down: bool,
}

/// One message from a node's stream after its Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    Report(NodeReport),
    /// It applied `revision` of `epoch`.
    RevisionAck {
        epoch: String,
        revision: u64,
    },
    CommandAck(CommandAck),
    /// A heartbeat (or a repeated Hello): it is alive, nothing more.
    Alive,
}

/// What a command asks a node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// Closes the breaker of one destination ("": every destination).
    BreakerReset { destination: String },
    /// Drops one account's cached route ("": the whole cache).
    Invalidate { key: String },
    /// Ends the account's sessions.
    Kick { key: String },
    /// Holds the account's logins for `seconds` (0 releases a pending delay).
    Delay { key: String, seconds: u64 },
    /// Asks the node to answer, nothing more.
    Probe,
}

/// A command with its id, which the node acks once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCommand {
    pub id: String,
    pub kind: CommandKind,
}

/// A node's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAck {
    pub command_id: String,
    /// The node applied it (anything else counts as rejected).
    pub applied: bool,
    /// What it touched, e.g. sessions kicked or breakers reset.
    pub count: u64,
}
