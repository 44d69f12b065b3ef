//! `GET /nodes`: every node the control plane has seen, connected or not.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{seconds, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new().route("/nodes", get(list))
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
