//! `GET/PUT/DELETE /mappings/{identifier}` and `GET /mappings` (keyset paging).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use dataplane::routekey::redact;
use serde::{Deserialize, Serialize};

use super::ApiState;
use crate::error::{Error, Result};
use crate::fleet::NodeResult;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/mappings", get(list)).route("/mappings/{identifier}", get(show).put(put).delete(remove))
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
}

async fn put(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
    Json(body): Json<PutBody>,
) -> Result<Json<WriteResult>> {
    let key = key_of(&state, &identifier)?;
    let written = state.shared.write(&key, Some(&body.destination)).await?;
    let written = written.ok_or_else(|| Error::Config("store did not return a revision".into()))?;
    tracing::info!(account = %redact(&key), destination = %body.destination, revision = written.revision, "admin: mapping set");
    Ok(Json(WriteResult {
        normalized: key,
        destination: Some(body.destination),
        revision: written.revision,
        nodes: written.nodes,
    }))
}

async fn remove(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
) -> Result<(StatusCode, Json<WriteResult>)> {
    let key = key_of(&state, &identifier)?;
    let Some(written) = state.shared.write(&key, None).await? else {
        return Err(Error::NotFound(format!("no mapping for {identifier:?}")));
    };
    tracing::info!(account = %redact(&key), revision = written.revision, "admin: mapping removed");
    let result = WriteResult { normalized: key, destination: None, revision: written.revision, nodes: written.nodes };
    Ok((StatusCode::OK, Json(result)))
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
