//! What one node answered to a fleet-wide command or write, and how it is found out:
//! a command is sent and acked within its deadline, a write is applied when the node's
//! current process acked its revision.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use switchyard_proto::v1 as pb;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{CommandSender, NodeState};
use crate::node_info::CommandAck;

/// One node's result for a fleet-wide command or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOutcome {
    Applied,
    NotConnected,
    Timeout,
    Rejected,
    /// Applied a route to a destination its fleet settings do not declare: the node answers
    /// the account with a temporary failure (only in a write's answer).
    Undeclared,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeResult {
    pub node_id: String,
    /// The process the result is about (absent from an older peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub result: NodeOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Several live processes claim this node id (through different replicas): `result`
    /// is the worst of theirs, `applied` only if every one applied it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conflict: bool,
}

impl NodeResult {
    pub fn new(node_id: &str, instance_id: &str, result: NodeOutcome) -> Self {
        let instance_id = Some(instance_id.to_string()).filter(|i| !i.is_empty());
        NodeResult { node_id: node_id.to_string(), instance_id, result, count: None, conflict: false }
    }

    fn counted(self, count: u64) -> Self {
        NodeResult { count: Some(count), ..self }
    }
}

/// Sends one command and waits for its ack, both by `deadline`; `result` names the node
/// and comes back with the outcome.
pub(super) async fn send_command(
    result: NodeResult,
    tx: CommandSender,
    message: pb::ControlMessage,
    ack: oneshot::Receiver<CommandAck>,
    deadline: Instant,
) -> NodeResult {
    let outcome = |o| NodeResult { result: o, ..result.clone() };
    match tokio::time::timeout_at(deadline, tx.send(message)).await {
        Err(_) => return outcome(NodeOutcome::Timeout),
        Ok(Err(_)) => return outcome(NodeOutcome::NotConnected),
        Ok(Ok(())) => {}
    }
    match tokio::time::timeout_at(deadline, ack).await {
        Ok(Ok(ack)) if ack.applied => outcome(NodeOutcome::Applied).counted(ack.count),
        Ok(Ok(_)) => outcome(NodeOutcome::Rejected),
        Ok(Err(_)) => outcome(NodeOutcome::NotConnected),
        Err(_) => outcome(NodeOutcome::Timeout),
    }
}

/// Where one node's current process stands with `revision` of `epoch`.
pub(super) fn applied_result(nodes: &HashMap<String, NodeState>, id: &str, epoch: &str, revision: u64) -> NodeResult {
    let instance = nodes.get(id).map_or("", |e| e.hello.instance_id.as_str());
    NodeResult::new(id, instance, applied_outcome(nodes, id, epoch, revision))
}

/// Where one node stands with `revision` of `epoch`.
pub(super) fn applied_outcome(nodes: &HashMap<String, NodeState>, id: &str, epoch: &str, revision: u64) -> NodeOutcome {
    match nodes.get(id) {
        Some(e) if e.applied.0 == epoch && e.applied.1 >= revision => NodeOutcome::Applied,
        Some(e) if e.tx.is_some() => NodeOutcome::Timeout,
        _ => NodeOutcome::NotConnected,
    }
}
