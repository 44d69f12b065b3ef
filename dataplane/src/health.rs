//! The node's own small HTTP listener for orchestrator probes: `/healthz` and `/readyz`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::node::Node;

pub(crate) fn router(node: Arc<Node>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz)).with_state(node)
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    node_id: String,
    instance_id: String,
    control_plane_connected: bool,
    synced_once: bool,
    applied_revision: u64,
    /// Why the control plane refuses this process (another live one holds its node id).
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

/// Ready once synced with a control plane; while the control plane is away the node
/// still serves cached routes, so it stays ready but says it is degraded. A process the
/// control plane refuses (its node id is held by another live one) is not ready: it gets
/// no route updates.
async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, Json<Readiness>) {
    let connected = node.connected.load(Ordering::Acquire);
    let refused = node.refused();
    let (status, code) = match (node.ready(), connected) {
        _ if refused.is_some() => ("refused", StatusCode::SERVICE_UNAVAILABLE),
        (true, true) => ("ready", StatusCode::OK),
        (true, false) => ("degraded", StatusCode::OK),
        (false, _) => ("not_ready", StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = Readiness {
        status,
        node_id: node.id.clone(),
        instance_id: node.instance_id.clone(),
        control_plane_connected: connected,
        synced_once: node.synced_once.load(Ordering::Acquire),
        applied_revision: node.revision().1,
        refused,
    };
    (code, Json(body))
}
