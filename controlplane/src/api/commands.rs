//! Fleet-wide commands on one account or the cache: `POST /cache/invalidate`,
//! `POST /connections/kick`, `POST /connections/delay`. Each replica runs the command on
//! the nodes connected to it; the results are merged per node.

use axum::extract::{Query, State};
use axum::http::Method;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchyard_common::routekey::redact;

use super::fleetwide::Fleetwide;
use super::ApiState;
use crate::cluster::{PeerCall, PeerStatus, ScopeQuery};
use crate::error::{Error, Result};
use crate::fleet::NodeResult;
use crate::node_info::CommandKind;

/// The longest login delay an operator may set (a move needs seconds, not days).
const MAX_DELAY_SECONDS: u64 = 3600;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/cache/invalidate", post(invalidate))
        .route("/connections/kick", post(kick))
        .route("/connections/delay", post(delay))
}

#[derive(Deserialize)]
struct Target {
    identifier: Option<String>,
    seconds: Option<u64>,
}

/// The answer to a command: the account it was about, and each node's result.
#[derive(Serialize)]
pub(super) struct CommandResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized: Option<String>,
    pub nodes: Vec<NodeResult>,
    /// Which peers answered (absent for a replica on its own or `scope=local`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerStatus>,
}

impl ApiState {
    /// The route key of a required `identifier` parameter.
    fn required_key(&self, identifier: Option<&str>) -> Result<String> {
        let identifier = identifier.ok_or_else(|| Error::BadRequest("identifier is required".into()))?;
        self.route_key(identifier)
    }
}

/// The call that makes a peer run the same command (peers normalize the identifier alike).
fn peer_call(path: &[&str], identifier: Option<&str>) -> PeerCall {
    PeerCall::new(Method::POST, path).query_opt("identifier", identifier)
}

/// Commands on one account name it by the operator's identifier; peers normalize it alike.
pub(super) fn kick_call(identifier: &str) -> PeerCall {
    peer_call(&["connections", "kick"], Some(identifier))
}

pub(super) fn delay_call(identifier: &str, seconds: u64) -> PeerCall {
    peer_call(&["connections", "delay"], Some(identifier)).query("seconds", seconds)
}

async fn invalidate(
    State(state): State<ApiState>,
    Query(q): Query<Target>,
    Query(scope): Query<ScopeQuery>,
) -> Result<Json<CommandResult>> {
    let key = match q.identifier.as_deref() {
        Some(identifier) => Some(state.route_key(identifier)?),
        None => None,
    };
    let kind = CommandKind::Invalidate { key: key.clone().unwrap_or_default() };
    let call = peer_call(&["cache", "invalidate"], q.identifier.as_deref());
    let Fleetwide { nodes, peers } = state.fleet_command(scope.scope, kind, call).await;
    tracing::info!(account = %key.as_deref().map(redact).unwrap_or_else(|| "*".into()), "admin: cache invalidated");
    Ok(Json(CommandResult { normalized: key, nodes, peers }))
}

async fn kick(
    State(state): State<ApiState>,
    Query(q): Query<Target>,
    Query(scope): Query<ScopeQuery>,
) -> Result<Json<CommandResult>> {
    let key = state.required_key(q.identifier.as_deref())?;
    let kind = CommandKind::Kick { key: key.clone() };
    let call = kick_call(q.identifier.as_deref().unwrap_or_default());
    let Fleetwide { nodes, peers } = state.fleet_command(scope.scope, kind, call).await;
    let kicked: u64 = nodes.iter().filter_map(|n| n.count).sum();
    tracing::info!(account = %redact(&key), sessions = kicked, "admin: sessions kicked");
    Ok(Json(CommandResult { normalized: Some(key), nodes, peers }))
}

async fn delay(
    State(state): State<ApiState>,
    Query(q): Query<Target>,
    Query(scope): Query<ScopeQuery>,
) -> Result<Json<CommandResult>> {
    let key = state.required_key(q.identifier.as_deref())?;
    let seconds = q.seconds.ok_or_else(|| Error::BadRequest("seconds is required (0 releases)".into()))?;
    if seconds > MAX_DELAY_SECONDS {
        return Err(Error::BadRequest(format!("seconds must be at most {MAX_DELAY_SECONDS}")));
    }
    let kind = CommandKind::Delay { key: key.clone(), seconds };
    let call = delay_call(q.identifier.as_deref().unwrap_or_default(), seconds);
    let Fleetwide { nodes, peers } = state.fleet_command(scope.scope, kind, call).await;
    tracing::info!(account = %redact(&key), seconds, "admin: login delay set");
    Ok(Json(CommandResult { normalized: Some(key), nodes, peers }))
}
