//! `GET/PUT/DELETE /mappings/{identifier}` and `GET /mappings` (keyset paging).
//!
//! A write happens once, in the store, through the replica asked, and answers once every
//! node of the fleet acked it or the ack timeout passed ([`super::fleetwide`]). Every
//! replica's feed pushes it to that replica's nodes.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchyard_common::routekey::redact;

use super::fleetwide::{Fleetwide, Written};
use super::ApiState;
use crate::cluster::{PeerStatus, ScopeQuery};
use crate::error::{Error, Result};
use crate::fleet::NodeResult;
use crate::undeclared::Conflict;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/mappings", get(list)).route("/mappings/{identifier}", get(show).put(put).delete(remove))
}

/// `GET /mappings/{identifier}`: where an account is routed and why.
#[derive(Serialize)]
struct MappingAnswer {
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

async fn show(State(state): State<ApiState>, Path(identifier): Path<String>) -> Result<Json<MappingAnswer>> {
    let key = state.route_key(&identifier)?;
    let r = state.shared.lookup(&key).await?;
    let warning = (!r.declared).then(|| {
        format!(
            "destination {:?} is not declared in this control plane's config: its nodes answer this account with a temporary failure",
            r.destination
        )
    });
    Ok(Json(MappingAnswer {
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

/// The answer to a write: what was written and how far it reached.
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

impl WriteResult {
    fn new(normalized: String, destination: Option<String>, written: Written) -> Self {
        let Written { revision, fleet: Fleetwide { nodes, peers }, conflicts } = written;
        WriteResult { normalized, destination, revision, nodes, peers, conflicts }
    }
}

async fn put(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
    Query(scope): Query<ScopeQuery>,
    Json(body): Json<PutBody>,
) -> Result<Json<WriteResult>> {
    let key = state.route_key(&identifier)?;
    state.check_declared(&body.destination).await?;
    let written = state.fleet_put(scope.scope, &key, &body.destination).await?;
    tracing::info!(account = %redact(&key), destination = %body.destination, revision = written.revision, "admin: mapping set");
    Ok(Json(WriteResult::new(key, Some(body.destination), written)))
}

async fn remove(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
    Query(scope): Query<ScopeQuery>,
) -> Result<Json<WriteResult>> {
    let key = state.route_key(&identifier)?;
    let Some(written) = state.fleet_remove(scope.scope, &key).await? else {
        return Err(Error::NotFound(format!("no mapping for {identifier:?}")));
    };
    tracing::info!(account = %redact(&key), revision = written.revision, "admin: mapping removed");
    Ok(Json(WriteResult::new(key, None, written)))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct Listing {
    mappings: Vec<ListedMapping>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

#[derive(Serialize)]
struct ListedMapping {
    identifier: String,
    destination: String,
}

async fn list(State(state): State<ApiState>, Query(page): Query<Page>) -> Result<Json<Listing>> {
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let rows = state.shared.store.list(page.after.as_deref(), limit).await?;
    let next = (rows.len() == limit).then(|| rows.last().map(|m| m.key.clone())).flatten();
    let mappings = rows.into_iter().map(|m| ListedMapping { identifier: m.key, destination: m.destination }).collect();
    Ok(Json(Listing { mappings, next }))
}
