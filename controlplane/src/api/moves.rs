//! `POST /mappings/{identifier}/move`: the safe way to move a live account.
//!
//! Delay its new logins fleet-wide → write the new mapping → wait until every connected
//! node acked the revision → kick its old sessions → release the delay. A login that
//! arrives during the move waits on its node and then lands on the new destination; no
//! login reaches the old destination once the move reports complete. Every step covers
//! the nodes of every replica; a peer that does not answer leaves the move incomplete.

use axum::extract::{Path, Query, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchyard_common::routekey::redact;

use super::commands::{delay_call, kick_call};
use super::fleetwide::Fleetwide;
use super::ApiState;
use crate::cluster::{PeerStatus, ScopeQuery};
use crate::error::Result;
use crate::fleet::{NodeOutcome, NodeResult};
use crate::node_info::CommandKind;

/// How long logins are held at most if a move stalls; it is released as soon as it is done.
const MOVE_DELAY_SECONDS: u64 = 30;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/mappings/{identifier}/move", post(move_account))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    destination: String,
}

#[derive(Serialize)]
struct Step {
    step: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    nodes: Vec<NodeResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peers: Vec<PeerStatus>,
}

#[derive(Serialize)]
struct MoveReport {
    normalized: String,
    destination: String,
    /// Every connected node applied the new route and the old sessions were kicked.
    complete: bool,
    steps: Vec<Step>,
}

/// A step is ok when every node applied it and every peer answered for its nodes.
fn step(step: &'static str, revision: Option<u64>, done: Fleetwide) -> Step {
    let ok = done.nodes.iter().all(|n| n.result == NodeOutcome::Applied) && done.peers.iter().all(|p| p.ok);
    Step { step, ok, revision, nodes: done.nodes, peers: done.peers }
}

async fn move_account(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
    Query(scope): Query<ScopeQuery>,
    Json(body): Json<MoveBody>,
) -> Result<Json<MoveReport>> {
    let scope = scope.scope;
    let key = state.route_key(&identifier)?;
    // Before anything is delayed: a destination some replica lacks is refused outright.
    state.check_declared(&body.destination).await?;
    let account = redact(&key);
    tracing::info!(account = %account, destination = %body.destination, "admin: move started");
    let delay = |seconds| {
        let kind = CommandKind::Delay { key: key.clone(), seconds };
        state.fleet_command(scope, kind, delay_call(&identifier, seconds))
    };
    let mut steps = vec![step("delay", None, delay(MOVE_DELAY_SECONDS).await)];

    let written = match state.fleet_put(scope, &key, &body.destination).await {
        Ok(written) => written,
        Err(e) => {
            // Nothing changed: let the held logins go to where they were going.
            delay(0).await;
            return Err(e);
        }
    };
    let write = step("write", Some(written.revision), written.fleet);
    if !written.conflicts.is_empty() {
        tracing::warn!(account = %account, destination = %body.destination, "move written but a replica does not declare the destination");
    }
    let all_applied = write.ok;
    steps.push(write);
    let kick = CommandKind::Kick { key: key.clone() };
    steps.push(step("kick", None, state.fleet_command(scope, kick, kick_call(&identifier)).await));
    if all_applied {
        steps.push(step("release", None, delay(0).await));
    } else {
        // A node that did not ack may still route to the old destination: its delay is
        // left to expire on its own rather than released early.
        tracing::warn!(account = %account, "move incomplete: not every node acked the new route");
    }
    let complete = all_applied && steps.iter().all(|s| s.ok);
    tracing::info!(account = %account, destination = %body.destination, complete, "admin: move finished");
    Ok(Json(MoveReport { normalized: key, destination: body.destination, complete, steps }))
}
