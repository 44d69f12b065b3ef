//! `GET/PUT/DELETE /mappings/{identifier}` and `GET /mappings` (keyset paging), and
//! `POST /fleet/wait`, by which a replica waits for its peers' nodes to ack a write.
//!
//! A write happens once, in the store, through the replica asked. Every replica's feed
//! pushes it to that replica's nodes; the replica asked waits for its own nodes' acks and,
//! through `/fleet/wait`, for every peer's.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dataplane::routekey::redact;
use serde::{Deserialize, Serialize};

use super::commands::PeerNodes;
use super::ApiState;
use crate::cluster::{gather, merge_results, PeerCall, PeerStatus, Scope, ScopeQuery};
use crate::error::{Error, Result};
use crate::fleet::NodeResult;
use crate::state::Committed;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/mappings", get(list))
        .route("/mappings/{identifier}", get(show).put(put).delete(remove))
        .route("/fleet/wait", post(wait))
}

/// A mapping change and how far it reached over the fleet.
pub struct FleetWritten {
    pub revision: u64,
    pub nodes: Vec<NodeResult>,
    pub peers: Vec<PeerStatus>,
}

impl ApiState {
    /// Writes (or with `None` removes) one mapping, then waits until every node of the
    /// fleet acked it: this replica's and, all at once, each peer's. `None`: nothing to remove.
    pub async fn fleet_write(
        &self,
        scope: Scope,
        key: &str,
        destination: Option<&str>,
    ) -> Result<Option<FleetWritten>> {
        let Some(Committed { epoch, revision }) = self.shared.commit(key, destination).await? else {
            return Ok(None);
        };
        let timeout = self.shared.config.api.ack_timeout;
        let call = PeerCall::new(Method::POST, &["fleet", "wait"])
            .query("epoch", &*epoch)
            .query("revision", revision)
            .waits(timeout);
        let here = self.shared.fleet.wait_applied(&epoch, revision, timeout);
        let (here, replies) = tokio::join!(here, self.cluster.call(scope, &call));
        let (answers, peers) = gather::<PeerNodes>(replies);
        let nodes = merge_results(here.into_iter().chain(answers.into_iter().flat_map(|(_, a)| a.nodes)));
        Ok(Some(FleetWritten { revision, nodes, peers }))
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    epoch: String,
    revision: u64,
}

#[derive(Serialize)]
struct Acks {
    nodes: Vec<NodeResult>,
}

/// Waits until this replica's nodes acked `revision` (a peer's write): pushes what the
/// store holds first, since the feed may not have noticed the write yet (nor a new epoch
/// the peer started, which this replica then adopts before comparing).
async fn wait(State(state): State<ApiState>, Query(q): Query<WaitQuery>) -> Result<Response> {
    let shared = &state.shared;
    shared.catch_up().await?;
    if *q.epoch != *shared.epoch() {
        let error = format!(
            "this replica's mapping store has epoch {}, not {}: replicas must share one store",
            shared.epoch(),
            q.epoch
        );
        return Ok((StatusCode::CONFLICT, Json(serde_json::json!({ "error": error }))).into_response());
    }
    let nodes = shared.fleet.wait_applied(&q.epoch, q.revision, shared.config.api.ack_timeout).await;
    Ok(Json(Acks { nodes }).into_response())
}

#[derive(Serialize)]
struct Resolution {
    identifier: String,
    normalized: String,
    destination: String,
    routed_to_default: bool,
    /// How this account appears in logs.
    log_tag: String,
}

pub(super) fn key_of(state: &ApiState, identifier: &str) -> Result<String> {
    let key = state.shared.rule.key(identifier);
    if key.is_empty() || key.len() > 1024 {
        return Err(Error::BadRequest("identifier must give a route key of 1..=1024 bytes".into()));
    }
    Ok(key)
}

async fn show(State(state): State<ApiState>, Path(identifier): Path<String>) -> Result<Json<Resolution>> {
    let key = key_of(&state, &identifier)?;
    let r = state.shared.resolve(&key).await?;
    Ok(Json(Resolution {
        identifier,
        log_tag: redact(&key),
        normalized: key,
        destination: r.destination,
        routed_to_default: !r.mapped,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    destination: String,
}

#[derive(Serialize)]
struct WriteResult {
    normalized: String,
    destination: Option<String>,
    revision: u64,
    nodes: Vec<NodeResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peers: Vec<PeerStatus>,
}

async fn put(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
    Query(scope): Query<ScopeQuery>,
    Json(body): Json<PutBody>,
) -> Result<Json<WriteResult>> {
    let key = key_of(&state, &identifier)?;
    let written = state.fleet_write(scope.scope, &key, Some(&body.destination)).await?;
    let written = written.ok_or_else(|| Error::Config("store did not return a revision".into()))?;
    tracing::info!(account = %redact(&key), destination = %body.destination, revision = written.revision, "admin: mapping set");
    Ok(Json(WriteResult {
        normalized: key,
        destination: Some(body.destination),
        revision: written.revision,
        nodes: written.nodes,
        peers: written.peers,
    }))
}

async fn remove(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
    Query(scope): Query<ScopeQuery>,
) -> Result<Json<WriteResult>> {
    let key = key_of(&state, &identifier)?;
    let Some(written) = state.fleet_write(scope.scope, &key, None).await? else {
        return Err(Error::NotFound(format!("no mapping for {identifier:?}")));
    };
    tracing::info!(account = %redact(&key), revision = written.revision, "admin: mapping removed");
    let FleetWritten { revision, nodes, peers } = written;
    Ok(Json(WriteResult { normalized: key, destination: None, revision, nodes, peers }))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct Listing {
    mappings: Vec<Entry>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

#[derive(Serialize)]
struct Entry {
    identifier: String,
    destination: String,
}

async fn list(State(state): State<ApiState>, Query(page): Query<Page>) -> Result<Json<Listing>> {
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let rows = state.shared.store.list(page.after.as_deref(), limit).await?;
    let next = (rows.len() == limit).then(|| rows.last().map(|m| m.key.clone())).flatten();
    let mappings = rows.into_iter().map(|m| Entry { identifier: m.key, destination: m.destination }).collect();
    Ok(Json(Listing { mappings, next }))
}
