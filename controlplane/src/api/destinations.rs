//! `GET /destinations` (fleet view of every breaker) and `POST /destinations/reset`.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchyard_proto::v1 as pb;

use super::ApiState;
use crate::error::{Error, Result};
use crate::fleet::NodeResult;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/destinations", get(list)).route("/destinations/reset", post(reset))
}

#[derive(Serialize, Default)]
struct NodeHealth {
    node_id: String,
    consecutive_failures: u32,
    down: bool,
}

#[derive(Serialize, Default)]
struct DestinationView {
    destination: String,
    consecutive_failures: u32,
    down: bool,
    nodes_down: usize,
    nodes: Vec<NodeHealth>,
}

async fn list(State(state): State<ApiState>) -> Json<Vec<DestinationView>> {
    let mut all: BTreeMap<String, DestinationView> = state
        .shared
        .config
        .destination
        .keys()
        .map(|id| (id.clone(), DestinationView { destination: id.clone(), ..Default::default() }))
        .collect();
    for node in state.shared.fleet.views().into_iter().filter(|n| n.connected) {
        for h in node.report.map(|r| r.destinations).unwrap_or_default() {
            let Some(view) = all.get_mut(&h.destination) else {
                continue;
            };
            view.consecutive_failures = view.consecutive_failures.max(h.consecutive_failures);
            view.down |= h.down;
            view.nodes_down += usize::from(h.down);
            view.nodes.push(NodeHealth {
                node_id: node.node_id.clone(),
                consecutive_failures: h.consecutive_failures,
                down: h.down,
            });
        }
    }
    Json(all.into_values().collect())
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
}

async fn reset(State(state): State<ApiState>, Query(q): Query<ResetQuery>) -> Result<Json<ResetResult>> {
    let shared = &state.shared;
    if let Some(d) = q.destination.as_deref().filter(|d| !shared.is_declared(d)) {
        return Err(Error::NotFound(format!("unknown destination {d:?}")));
    }
    if let Some(n) = q.node.as_deref().filter(|n| !shared.fleet.knows(n)) {
        return Err(Error::NotFound(format!("unknown node {n:?}")));
    }
    let kind =
        pb::command::Kind::BreakerReset(pb::BreakerReset { destination: q.destination.clone().unwrap_or_default() });
    let nodes = shared.fleet.command(kind, q.node.as_deref(), shared.config.api.ack_timeout).await;
    tracing::info!(destination = ?q.destination, node = ?q.node, "admin: breaker reset");
    Ok(Json(ResetResult { destination: q.destination, nodes }))
}
