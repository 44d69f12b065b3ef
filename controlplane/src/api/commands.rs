//! Fleet-wide commands on one account or the cache: `POST /cache/invalidate`,
//! `POST /connections/kick`, `POST /connections/delay`.

use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use dataplane::routekey::redact;
use serde::{Deserialize, Serialize};
use switchyard_proto::v1 as pb;

use super::ApiState;
use crate::error::{Error, Result};
use crate::fleet::NodeResult;

/// The longest login delay an operator may set (a move needs seconds, not days).
const MAX_DELAY_SECONDS: u64 = 3600;

pub fn routes() -> Router<ApiState> {
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

#[derive(Serialize)]
pub struct CommandResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized: Option<String>,
    pub nodes: Vec<NodeResult>,
}

impl ApiState {
    /// The route key of a required `identifier` parameter.
    fn required_key(&self, identifier: Option<&str>) -> Result<String> {
        let identifier = identifier.ok_or_else(|| Error::BadRequest("identifier is required".into()))?;
        super::mappings::key_of(self, identifier)
    }

    pub async fn send(&self, kind: pb::command::Kind) -> Vec<NodeResult> {
        self.shared.fleet.command(kind, None, self.shared.config.api.ack_timeout).await
    }
}

async fn invalidate(State(state): State<ApiState>, Query(q): Query<Target>) -> Result<Json<CommandResult>> {
    let key = match q.identifier.as_deref() {
        Some(identifier) => Some(super::mappings::key_of(&state, identifier)?),
        None => None,
    };
    let nodes =
        state.send(pb::command::Kind::Invalidate(pb::Invalidate { key: key.clone().unwrap_or_default() })).await;
    tracing::info!(account = %key.as_deref().map(redact).unwrap_or_else(|| "*".into()), "admin: cache invalidated");
    Ok(Json(CommandResult { normalized: key, nodes }))
}

async fn kick(State(state): State<ApiState>, Query(q): Query<Target>) -> Result<Json<CommandResult>> {
    let key = state.required_key(q.identifier.as_deref())?;
    let nodes = state.send(pb::command::Kind::Kick(pb::Kick { key: key.clone() })).await;
    let kicked: u64 = nodes.iter().filter_map(|n| n.count).sum();
    tracing::info!(account = %redact(&key), sessions = kicked, "admin: sessions kicked");
    Ok(Json(CommandResult { normalized: Some(key), nodes }))
}

async fn delay(State(state): State<ApiState>, Query(q): Query<Target>) -> Result<Json<CommandResult>> {
    let key = state.required_key(q.identifier.as_deref())?;
    let seconds = q.seconds.ok_or_else(|| Error::BadRequest("seconds is required (0 releases)".into()))?;
    if seconds > MAX_DELAY_SECONDS {
        return Err(Error::BadRequest(format!("seconds must be at most {MAX_DELAY_SECONDS}")));
    }
    let nodes = state.send(pb::command::Kind::Delay(pb::Delay { key: key.clone(), seconds })).await;
    tracing::info!(account = %redact(&key), seconds, "admin: login delay set");
    Ok(Json(CommandResult { normalized: Some(key), nodes }))
}
