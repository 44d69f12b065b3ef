//! `GET/PUT/DELETE /mappings/{identifier}` and `GET /mappings` (keyset paging), and
//! `POST /fleet/wait`, by which a replica waits for its peers' nodes to ack a write.
//!
//! A write happens once, in the store, through the replica asked. Every replica's feed
//! pushes it to that replica's nodes; the replica asked waits for its own nodes' acks and,
//! through `/fleet/wait`, for every peer's. A write naming a destination some replica does
//! not declare is refused first ([`super::declared`]); should one slip through anyway (a
//! peer silent at the check), that peer's nodes are reported `undeclared`, not `applied`.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchyard_common::routekey::{redact, Identifier, MAX_KEY_LEN};

use super::ApiState;
use crate::cluster::{gather, merge_results, PeerCall, PeerStatus, Scope, ScopeQuery};
use crate::error::{Error, Result};
use crate::fleet::{NodeOutcome, NodeResult};
use crate::state::Committed;
use crate::undeclared::Conflict;

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
    /// Peers that acked a destination they do not declare: their nodes cannot route it.
    pub conflicts: Vec<Conflict>,
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
            .query_opt("destination", destination)
            .waits(timeout);
        let here = self.shared.fleet.wait_applied(&epoch, revision, timeout);
        let (here, replies) = tokio::join!(here, self.cluster.call(scope, &call));
        let (answers, peers) = gather::<Acks>(replies);
        let conflicts = conflicts(destination, &answers);
        let nodes = merge_results(here.into_iter().chain(answers.into_iter().flat_map(|(_, a)| a.nodes)));
        Ok(Some(FleetWritten { revision, nodes, peers, conflicts }))
    }
}

/// The peers whose wait answer says they do not declare `destination`, with their nodes.
fn conflicts(destination: Option<&str>, answers: &[(String, Acks)]) -> Vec<Conflict> {
    let Some(destination) = destination else { return Vec::new() };
    answers
        .iter()
        .filter(|(_, acks)| !acks.declared)
        .map(|(peer, acks)| Conflict {
            peer: peer.clone(),
            destination: destination.to_string(),
            nodes: acks.nodes.iter().map(|n| n.node_id.clone()).collect(),
        })
        .collect()
}

#[derive(Deserialize)]
struct WaitQuery {
    epoch: String,
    revision: u64,
    /// The destination the write names, when it names one.
    destination: Option<String>,
}

/// A replica's acks for a peer's write (`declared`: whether its config declares the
/// destination written; absent from an older replica's answer).
#[derive(Serialize, Deserialize)]
struct Acks {
    nodes: Vec<NodeResult>,
    #[serde(default = "declared_unless_said")]
    declared: bool,
}

/// An older replica does not say: it is not known to lack the destination.
fn declared_unless_said() -> bool {
    true
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
    let mut nodes = shared.fleet.wait_applied(&q.epoch, q.revision, shared.config.api.ack_timeout).await;
    let declared = q.destination.as_deref().is_none_or(|d| shared.is_declared(d));
    if !declared {
        // They hold this replica's settings: the new route is applied but not routable.
        for node in nodes.iter_mut().filter(|n| n.result == NodeOutcome::Applied) {
            node.result = NodeOutcome::Undeclared;
        }
    }
    Ok(Json(Acks { nodes, declared }).into_response())
}

#[derive(Serialize)]
struct Resolution {
    identifier: String,
    normalized: String,
    /// What the store says (the default for an unmapped account).
    destination: String,
    routed_to_default: bool,
    /// Whether this control plane's config declares `destination`; when it does not, its
    /// nodes answer the account with a temporary failure (`warning` says so).
    declared: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    /// How this account appears in logs.
    log_tag: String,
}

/// The route key of an operator's identifier: an account name, keyed by the login rule
/// (`alice%admin` is alice; `alice+tag` is not cut, as a login name keeps its `+`).
pub(super) fn key_of(state: &ApiState, identifier: &str) -> Result<String> {
    state
        .shared
        .rule
        .checked_key(&Identifier::Login(identifier.to_owned()))
        .ok_or_else(|| Error::BadRequest(format!("identifier must give a route key of 1..={MAX_KEY_LEN} bytes")))
}

async fn show(State(state): State<ApiState>, Path(identifier): Path<String>) -> Result<Json<Resolution>> {
    let key = key_of(&state, &identifier)?;
    let r = state.shared.lookup(&key).await?;
    let warning = (!r.declared).then(|| {
        format!(
            "destination {:?} is not declared in this control plane's config: its nodes answer this account with a temporary failure",
            r.destination
        )
    });
    Ok(Json(Resolution {
        identifier,
        log_tag: redact(&key),
        normalized: key,
        destination: r.destination,
        routed_to_default: !r.mapped,
        declared: r.declared,
        warning,
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conflicts: Vec<Conflict>,
}

async fn put(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
    Query(scope): Query<ScopeQuery>,
    Json(body): Json<PutBody>,
) -> Result<Json<WriteResult>> {
    let key = key_of(&state, &identifier)?;
    state.check_declared(&body.destination).await?;
    let written = state.fleet_write(scope.scope, &key, Some(&body.destination)).await?;
    let written = written.ok_or_else(|| Error::Config("store did not return a revision".into()))?;
    tracing::info!(account = %redact(&key), destination = %body.destination, revision = written.revision, "admin: mapping set");
    let FleetWritten { revision, nodes, peers, conflicts } = written;
    Ok(Json(WriteResult { normalized: key, destination: Some(body.destination), revision, nodes, peers, conflicts }))
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
    let FleetWritten { revision, nodes, peers, conflicts } = written;
    Ok(Json(WriteResult { normalized: key, destination: None, revision, nodes, peers, conflicts }))
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
