//! Actions that answer for the whole fleet: run on this replica's nodes while every peer
//! is asked, at once, to run them on theirs; the results are merged per node. A command
//! is sent to the nodes; a mapping write happens once, in the store, through the replica
//! asked, and every replica waits for its own nodes' acks (`POST /fleet/wait`, the peer
//! side of a write, lives here too).
//!
//! A write naming a destination some replica does not declare is refused first
//! ([`super::declared`]); should one slip through anyway (a peer silent at the check),
//! that peer's nodes are reported `undeclared`, not `applied`.

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiState;
use crate::cluster::{gather, merge_results, PeerCall, PeerStatus, Scope};
use crate::error::Result;
use crate::fleet::{NodeOutcome, NodeResult};
use crate::node_info::CommandKind;
use crate::publisher::Committed;
use crate::undeclared::Conflict;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/fleet/wait", post(wait))
}

/// How far an action reached: each node's result, merged over the replicas, and how each
/// peer fared.
#[derive(Debug)]
pub struct Fleetwide {
    pub nodes: Vec<NodeResult>,
    pub peers: Vec<PeerStatus>,
}

/// A mapping write that reached the fleet (as far as [`Fleetwide`] says).
#[derive(Debug)]
pub struct Written {
    pub revision: u64,
    pub fleet: Fleetwide,
    /// Peers that acked a destination they do not declare: their nodes cannot route it.
    pub conflicts: Vec<Conflict>,
}

/// The per-node results in a peer's answer.
#[derive(Deserialize)]
pub(super) struct PeerNodes {
    pub nodes: Vec<NodeResult>,
}

impl ApiState {
    /// Runs `kind` on this replica's nodes while `peers` asks every peer to run it on theirs.
    pub async fn fleet_command(&self, scope: Scope, kind: CommandKind, peers: PeerCall) -> Fleetwide {
        let timeout = self.shared.config.api.ack_timeout;
        let here = self.shared.fleet.command(kind, None, timeout);
        let call = peers.waits(timeout);
        let (here, replies) = tokio::join!(here, self.cluster.call(scope, &call));
        let (answers, peers) = gather::<PeerNodes>(replies);
        let nodes = merge_results(here.into_iter().chain(answers.into_iter().flat_map(|(_, a)| a.nodes)));
        Fleetwide { nodes, peers }
    }

    /// Maps `key` to `destination`, then waits until every node of the fleet acked it.
    pub async fn fleet_put(&self, scope: Scope, key: &str, destination: &str) -> Result<Written> {
        let committed = self.shared.publisher.put(key, destination).await?;
        Ok(self.wait_fleet(scope, committed, Some(destination)).await)
    }

    /// Removes `key`'s mapping, then waits like [`fleet_put`](Self::fleet_put). `None`:
    /// nothing to remove.
    pub async fn fleet_remove(&self, scope: Scope, key: &str) -> Result<Option<Written>> {
        let Some(committed) = self.shared.publisher.remove(key).await? else { return Ok(None) };
        Ok(Some(self.wait_fleet(scope, committed, None).await))
    }

    /// Waits for this replica's nodes and, all at once, each peer's to ack a write.
    async fn wait_fleet(&self, scope: Scope, committed: Committed, destination: Option<&str>) -> Written {
        let Committed { epoch, revision } = committed;
        let timeout = self.shared.config.api.ack_timeout;
        let call = PeerCall::new(Method::POST, &["fleet", "wait"])
            .query("epoch", &*epoch)
            .query("revision", revision)
            .query_opt("destination", destination)
            .waits(timeout);
        let here = self.shared.fleet.wait_applied(&epoch, revision, timeout);
        let (here, replies) = tokio::join!(here, self.cluster.call(scope, &call));
        let (answers, peers) = gather::<Acks>(replies);
        let conflicts = conflicts(destination, &answers);
        let nodes = merge_results(here.into_iter().chain(answers.into_iter().flat_map(|(_, a)| a.nodes)));
        Written { revision, fleet: Fleetwide { nodes, peers }, conflicts }
    }
}

/// The peers whose wait answer says they do not declare `destination`, with their nodes.
fn conflicts(destination: Option<&str>, answers: &[(String, Acks)]) -> Vec<Conflict> {
    let Some(destination) = destination else { return Vec::new() };
    answers
        .iter()
        .filter(|(_, acks)| !acks.declared)
        .map(|(peer, acks)| Conflict {
            peer: peer.clone(),
            destination: destination.to_string(),
            nodes: acks.nodes.iter().map(|n| n.node_id.clone()).collect(),
        })
        .collect()
}

#[derive(Deserialize)]
struct WaitQuery {
    epoch: String,
    revision: u64,
    /// The destination the write names, when it names one.
    destination: Option<String>,
}

/// A replica's acks for a peer's write (`declared`: whether its config declares the
/// destination written; absent from an older replica's answer).
#[derive(Serialize, Deserialize)]
struct Acks {
    nodes: Vec<NodeResult>,
    #[serde(default = "declared_unless_said")]
    declared: bool,
}

/// An older replica does not say: it is not known to lack the destination.
fn declared_unless_said() -> bool {
    true
}

/// Waits until this replica's nodes acked `revision` (a peer's write): pushes what the
/// store holds first, since the feed may not have noticed the write yet (nor a new epoch
/// the peer started, which this replica then adopts before comparing).
async fn wait(State(state): State<ApiState>, Query(q): Query<WaitQuery>) -> Result<Response> {
    let shared = &state.shared;
    shared.publisher.catch_up().await?;
    if *q.epoch != *shared.epoch() {
        let error = format!(
            "this replica's mapping store has epoch {}, not {}: replicas must share one store",
            shared.epoch(),
            q.epoch
        );
        return Ok((StatusCode::CONFLICT, Json(serde_json::json!({ "error": error }))).into_response());
    }
    let mut nodes = shared.fleet.wait_applied(&q.epoch, q.revision, shared.config.api.ack_timeout).await;
    let declared = q.destination.as_deref().is_none_or(|d| shared.is_declared(d));
    if !declared {
        // They hold this replica's settings: the new route is applied but not routable.
        for node in nodes.iter_mut().filter(|n| n.result == NodeOutcome::Applied) {
            node.result = NodeOutcome::Undeclared;
        }
    }
    Ok(Json(Acks { nodes, declared }).into_response())
}
