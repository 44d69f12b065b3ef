//! `GET /destinations` (fleet view of every breaker, over every replica's nodes) and
//! `POST /destinations/reset`.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::fleetwide::PeerNodes;
use super::{peers_header, seconds, unknown_node, ApiState};
use crate::cluster::{merge_nodes, merge_results, NodeEntry, PeerCall, PeerStatus, Scope, ScopeQuery};
use crate::error::{Error, Result};
use crate::fleet::NodeResult;
use crate::node_info::CommandKind;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/destinations", get(list)).route("/destinations/reset", post(reset))
}

#[derive(Serialize, Deserialize, Default)]
struct NodeHealth {
    node_id: String,
    consecutive_failures: u32,
    down: bool,
    /// Which of two replicas' entries for one node is fresher.
    #[serde(default)]
    last_report_age_s: Option<f64>,
}

impl NodeEntry for NodeHealth {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Only connected nodes are listed.
    fn connected(&self) -> bool {
        true
    }

    fn report_age_s(&self) -> Option<f64> {
        self.last_report_age_s
    }
}

#[derive(Serialize, Deserialize, Default)]
struct DestinationView {
    destination: String,
    consecutive_failures: u32,
    down: bool,
    nodes_down: usize,
    nodes: Vec<NodeHealth>,
}

/// One view per destination from every node's health, each node once.
fn summarize(destination: String, nodes: Vec<NodeHealth>) -> DestinationView {
    let nodes = merge_nodes(nodes);
    DestinationView {
        consecutive_failures: nodes.iter().map(|n| n.consecutive_failures).max().unwrap_or(0),
        down: nodes.iter().any(|n| n.down),
        nodes_down: nodes.iter().filter(|n| n.down).count(),
        destination,
        nodes,
    }
}

/// The answer is a JSON array; the peers' statuses come in the `Switchyard-Peers` header.
async fn list(State(state): State<ApiState>, Query(q): Query<ScopeQuery>) -> Response {
    let replies = state.cluster.call(q.scope, &PeerCall::new(Method::GET, &["destinations"])).await;
    let mut all: BTreeMap<String, Vec<NodeHealth>> =
        state.shared.config.destination.keys().map(|id| (id.clone(), Vec::new())).collect();
    for node in state.shared.fleet.views().into_iter().filter(|n| n.connected) {
        let age = node.last_report_age.map(seconds);
        for h in node.report.map(|r| r.destinations).unwrap_or_default() {
            let Some(healths) = all.get_mut(&h.destination) else {
                continue;
            };
            healths.push(NodeHealth {
                node_id: node.node_id.clone(),
                consecutive_failures: h.consecutive_failures,
                down: h.down,
                last_report_age_s: age,
            });
        }
    }
    let (answers, peers) = crate::cluster::gather::<Vec<DestinationView>>(replies);
    for view in answers.into_iter().flat_map(|(_, views)| views) {
        all.entry(view.destination).or_default().extend(view.nodes);
    }
    let views: Vec<DestinationView> = all.into_iter().map(|(id, nodes)| summarize(id, nodes)).collect();
    (AppendHeaders(peers_header(&peers)), Json(views)).into_response()
}

#[derive(Deserialize)]
struct ResetQuery {
    destination: Option<String>,
    node: Option<String>,
}

#[derive(Serialize)]
struct ResetResult {
    destination: Option<String>,
    nodes: Vec<NodeResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peers: Vec<PeerStatus>,
}

/// Every replica resets its own nodes' breakers. With `node=ID`, a replica that does not
/// know the node answers 404; the reset is 404 only when no replica knows it.
async fn reset(
    State(state): State<ApiState>,
    Query(q): Query<ResetQuery>,
    Query(scope): Query<ScopeQuery>,
) -> Result<Response> {
    let shared = &state.shared;
    if let Some(d) = q.destination.as_deref().filter(|d| !shared.is_declared(d)) {
        return Err(Error::NotFound(format!("unknown destination {d:?}")));
    }
    let known_here = q.node.as_deref().is_none_or(|n| shared.fleet.knows(n));
    if !known_here && scope.scope == Scope::Local {
        return Err(Error::NotFound(format!("unknown node {:?}", q.node.unwrap_or_default())));
    }
    let timeout = shared.config.api.ack_timeout;
    let call = PeerCall::new(Method::POST, &["destinations", "reset"])
        .query_opt("destination", q.destination.as_deref())
        .query_opt("node", q.node.as_deref())
        .waits(timeout);
    let kind = CommandKind::BreakerReset { destination: q.destination.clone().unwrap_or_default() };
    let here = async {
        match known_here {
            true => shared.fleet.command(kind, q.node.as_deref(), timeout).await,
            false => Vec::new(),
        }
    };
    let (mut results, replies) = tokio::join!(here, state.cluster.call(scope.scope, &call));
    let (mut peers, mut known) = (Vec::new(), known_here);
    for reply in replies {
        if q.node.is_some() && reply.is(StatusCode::NOT_FOUND) {
            peers.push(reply.answered());
            continue;
        }
        let (status, answer) = reply.decode::<PeerNodes>();
        known |= answer.is_some();
        results.extend(answer.into_iter().flat_map(|a| a.nodes));
        peers.push(status);
    }
    if !known {
        return Ok(unknown_node(q.node.as_deref().unwrap_or_default(), peers));
    }
    tracing::info!(destination = ?q.destination, node = ?q.node, "admin: breaker reset");
    let nodes = merge_results(results);
    Ok(Json(ResetResult { destination: q.destination, nodes, peers }).into_response())
}
