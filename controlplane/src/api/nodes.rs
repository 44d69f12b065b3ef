//! `GET /nodes`: every node the fleet's replicas have seen, connected or not, each once;
//! `GET /nodes/{id}/healthz`: a live probe through whichever replica holds its stream.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{peers_header, seconds, unknown_node, ApiState};
use crate::cluster::{gather, merge_nodes, NodeEntry, PeerCall, PeerStatus, Scope, ScopeQuery};
use crate::fleet::{NodeOutcome, NodeView, Refused};
use crate::node_info::CommandKind;
use crate::undeclared::UndeclaredCount;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/nodes", get(list)).route("/nodes/{id}/healthz", get(probe))
}

/// How long a probe waits for the node's answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct ProbeResult {
    node_id: String,
    result: NodeOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_ms: Option<f64>,
    /// The peer that holds the node's stream (absent: the replica asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<PeerStatus>,
}

/// A live round trip through the node's stream: 200 with the time, 503 without an answer.
/// Asked here first; the peers only when the node is not connected here.
async fn probe(State(state): State<ApiState>, Path(id): Path<String>, Query(q): Query<ScopeQuery>) -> Response {
    let here = state.shared.fleet.views().into_iter().find(|v| v.node_id == id);
    let local = match &here {
        Some(_) => Some(probe_here(&state, &id).await),
        None => None,
    };
    let settled = here.is_some_and(|v| v.connected) || q.scope == Scope::Local;
    let replies = match settled {
        true => Vec::new(),
        false => state.cluster.call(q.scope, &PeerCall::new(Method::GET, &["nodes", &id, "healthz"])).await,
    };
    let mut peers = Vec::new();
    let mut candidates: Vec<ProbeResult> = local.into_iter().collect();
    for reply in replies {
        // 404: that replica does not know the node.
        if reply.is(StatusCode::NOT_FOUND) {
            peers.push(reply.answered());
            continue;
        }
        let (status, result) =
            reply.decode_when::<ProbeResult>(|c| c == StatusCode::OK || c == StatusCode::SERVICE_UNAVAILABLE);
        candidates.extend(result.map(|r| ProbeResult { peer: Some(status.peer.clone()), peers: Vec::new(), ..r }));
        peers.push(status);
    }
    // An answer first, then a replica that holds the stream but got none.
    let rank = |r: &ProbeResult| match r.result {
        NodeOutcome::Applied => 2,
        NodeOutcome::Timeout | NodeOutcome::Rejected | NodeOutcome::Undeclared => 1,
        NodeOutcome::NotConnected => 0,
    };
    let Some(best) = candidates.into_iter().reduce(|a, b| if rank(&b) > rank(&a) { b } else { a }) else {
        return unknown_node(&id, peers);
    };
    let code = if best.result == NodeOutcome::Applied { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(ProbeResult { peers, ..best })).into_response()
}

async fn probe_here(state: &ApiState, id: &str) -> ProbeResult {
    let started = tokio::time::Instant::now();
    let results = state.shared.fleet.command(CommandKind::Probe, Some(id), PROBE_TIMEOUT).await;
    let rtt = started.elapsed();
    let result = results.first().map(|r| r.result).unwrap_or(NodeOutcome::NotConnected);
    let rtt_ms = (result == NodeOutcome::Applied).then(|| rtt.as_micros() as f64 / 1000.0);
    ProbeResult { node_id: id.to_string(), result, rtt_ms, peer: None, peers: Vec::new() }
}

#[derive(Serialize, Deserialize)]
struct ListenerView {
    id: String,
    protocol: String,
    bind: Vec<String>,
    tls: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SyncState {
    InSync,
    Lagging,
    Disconnected,
}

/// How another process with the same node id shows up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum IdConflictState {
    /// It asked to connect and was refused: this id was held.
    Refused,
    /// It holds a stream of another replica.
    Connected,
}

/// Another process with the same node id as the entry it is listed under.
#[derive(Clone, Serialize, Deserialize)]
struct IdConflict {
    instance_id: String,
    /// Where it connects from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    state: IdConflictState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refusals: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_refused_age_s: Option<f64>,
    /// The replica holding its stream (`connected`; absent: the replica asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct NodeInfo {
    node_id: String,
    instance_id: String,
    version: String,
    /// Where its stream connects from.
    #[serde(default)]
    address: Option<String>,
    connected: bool,
    stale: bool,
    applied_revision: u64,
    sync: SyncState,
    last_report_age_s: Option<f64>,
    /// Messages waiting for the node's stream to take them (a node that does not keep up).
    #[serde(default)]
    queued: usize,
    listeners: Vec<ListenerView>,
    /// Destinations named by mappings this node was sent that the fleet settings it holds
    /// (its replica's config) do not declare: it answers those accounts with a temporary
    /// failure. Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    undeclared: Vec<UndeclaredCount>,
    /// Other processes with this node id: refused while this one held it, or holding a
    /// stream of another replica at the same time. Two processes with one id would route
    /// by different caches; give each node its own `[node] id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conflicts: Vec<IdConflict>,
    /// The peer this entry came from (absent: the replica asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
}

impl NodeEntry for NodeInfo {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn connected(&self) -> bool {
        self.connected
    }

    fn report_age_s(&self) -> Option<f64> {
        self.last_report_age_s
    }

    fn instance_id(&self) -> Option<&str> {
        Some(&self.instance_id)
    }

    fn add_conflict(&mut self, other: &Self) {
        let live = IdConflict {
            instance_id: other.instance_id.clone(),
            address: other.address.clone(),
            state: IdConflictState::Connected,
            refusals: None,
            last_refused_age_s: None,
            peer: other.peer.clone(),
        };
        // What the other replica refused is a conflict of this id too.
        for conflict in std::iter::once(live).chain(other.conflicts.iter().cloned()) {
            if !self.conflicts.iter().any(|c| c.instance_id == conflict.instance_id) {
                self.conflicts.push(conflict);
            }
        }
    }
}

/// The answer is a JSON array; the peers' statuses come in the `Switchyard-Peers` header.
async fn list(State(state): State<ApiState>, Query(q): Query<ScopeQuery>) -> Response {
    let replies = state.cluster.call(q.scope, &PeerCall::new(Method::GET, &["nodes"])).await;
    let current = state.shared.store.revision().await.ok();
    let epoch = state.shared.epoch().to_string();
    let undeclared = state.shared.publisher.undeclared().summary();
    let local = state.shared.fleet.views().into_iter().map(|v| node_info(v, current, &epoch, &undeclared));
    let (answers, peers) = gather::<Vec<NodeInfo>>(replies);
    let remote = answers
        .into_iter()
        .flat_map(|(peer, nodes)| nodes.into_iter().map(move |n| NodeInfo { peer: Some(peer.clone()), ..n }));
    let nodes = merge_nodes(local.chain(remote).collect::<Vec<_>>());
    (AppendHeaders(peers_header(&peers)), Json(nodes)).into_response()
}

/// `undeclared`: this replica's, which only a node connected to it holds settings for.
fn node_info(v: NodeView, current: Option<u64>, epoch: &str, undeclared: &[UndeclaredCount]) -> NodeInfo {
    NodeInfo {
        undeclared: if v.connected { undeclared.to_vec() } else { Vec::new() },
        sync: match (v.connected, current) {
            (false, _) => SyncState::Disconnected,
            (true, Some(c)) if v.applied_epoch == epoch && v.applied_revision >= c => SyncState::InSync,
            (true, _) => SyncState::Lagging,
        },
        conflicts: v.refused.iter().map(refused_conflict).collect(),
        node_id: v.node_id,
        instance_id: v.instance_id,
        version: v.version,
        address: v.address.map(|a| a.to_string()),
        connected: v.connected,
        stale: v.stale,
        applied_revision: v.applied_revision,
        last_report_age_s: v.last_report_age.map(seconds),
        queued: v.queued,
        listeners: v
            .listeners
            .into_iter()
            .map(|l| ListenerView { id: l.id, protocol: l.protocol, bind: l.bind, tls: l.tls })
            .collect(),
        peer: None,
    }
}

fn refused_conflict(r: &Refused) -> IdConflict {
    IdConflict {
        instance_id: r.instance_id.clone(),
        address: r.address.map(|a| a.to_string()),
        state: IdConflictState::Refused,
        refusals: Some(r.refusals),
        last_refused_age_s: Some(seconds(r.last.elapsed())),
        peer: None,
    }
}
