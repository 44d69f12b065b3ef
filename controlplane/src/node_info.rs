//! What the control plane tells its nodes and hears back, as domain values: the commands
//! it sends and the acks they get. They become (and come from) `switchyard_proto`
//! messages only in [`crate::wire`], at the node stream.

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
