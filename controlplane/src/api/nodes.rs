//! `GET /nodes`: every node the control plane has seen, connected or not.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{seconds, ApiState};
use crate::error::{Error, Result};
use crate::fleet::NodeOutcome;
use switchyard_proto::v1 as pb;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/nodes", get(list)).route("/nodes/{id}/healthz", get(probe))
}

/// How long a probe waits for the node's answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Serialize)]
struct ProbeResult {
    node_id: String,
    result: NodeOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_ms: Option<f64>,
}

/// A live round trip through the node's stream: 200 with the time, 503 without an answer.
async fn probe(State(state): State<ApiState>, Path(id): Path<String>) -> Result<(StatusCode, Json<ProbeResult>)> {
    if !state.shared.fleet.knows(&id) {
        return Err(Error::NotFound(format!("unknown node {id:?}")));
    }
    let started = tokio::time::Instant::now();
    let results = state.shared.fleet.command(pb::command::Kind::Probe(pb::Probe {}), Some(&id), PROBE_TIMEOUT).await;
    let rtt = started.elapsed();
    let result = results.first().map(|r| r.result).unwrap_or(NodeOutcome::NotConnected);
    let (code, rtt_ms) = match result {
        NodeOutcome::Applied => (StatusCode::OK, Some(rtt.as_micros() as f64 / 1000.0)),
        _ => (StatusCode::SERVICE_UNAVAILABLE, None),
    };
    Ok((code, Json(ProbeResult { node_id: id, result, rtt_ms })))
}

#[derive(Serialize)]
struct ListenerView {
    id: String,
    protocol: String,
    bind: Vec<String>,
    tls: String,
}

#[derive(Serialize)]
struct NodeInfo {
    node_id: String,
    instance_id: String,
    version: String,
    connected: bool,
    stale: bool,
    applied_revision: u64,
    sync: &'static str,
    last_report_age_s: Option<f64>,
    listeners: Vec<ListenerView>,
}

async fn list(State(state): State<ApiState>) -> Json<Vec<NodeInfo>> {
    let current = state.shared.store.revision().await.ok();
    let epoch = state.shared.epoch().to_string();
    let nodes = state
        .shared
        .fleet
        .views()
        .into_iter()
        .map(|v| NodeInfo {
            sync: match (v.connected, current) {
                (false, _) => "disconnected",
                (true, Some(c)) if v.applied_epoch == epoch && v.applied_revision >= c => "in_sync",
                (true, _) => "lagging",
            },
            node_id: v.node_id,
            instance_id: v.instance_id,
            version: v.version,
            connected: v.connected,
            stale: v.stale,
            applied_revision: v.applied_revision,
            last_report_age_s: v.last_report_age.map(seconds),
            listeners: v
                .listeners
                .into_iter()
                .map(|l| ListenerView { id: l.id, protocol: l.protocol, bind: l.bind, tls: l.tls })
                .collect(),
        })
        .collect();
    Json(nodes)
}
