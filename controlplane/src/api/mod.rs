//! The management HTTP API: one module per resource, bearer-token auth as middleware.
//!
//! Every fleet view and fleet action answers for the whole fleet: this replica's nodes,
//! and those of every peer in `[cluster] peers`, gathered from them (see [`crate::cluster`]).
//! `?scope=local` limits a request to this replica's nodes.

mod commands;
mod declared;
mod destinations;
mod fleetwide;
mod health;
mod mappings;
mod moves;
mod nodes;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use subtle::ConstantTimeEq;
use switchyard_common::routekey::{Identifier, MAX_KEY_LEN};

pub use stats::fleet_stats;

use crate::cluster::{Cluster, PeerStatus};
use crate::error::{Error, Result};
use crate::lockout::Lockout;
use crate::state::Shared;

/// Shortest admin token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = switchyard_common::config::MIN_TOKEN_LEN;

/// What every handler gets: the control plane's [`Shared`] state, the peers its fleet
/// requests fan out to ([`fleetwide`]), and the admin token with its lockout. Cheap to
/// clone (axum clones it per request).
#[derive(Debug, Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    /// The other replicas, asked for their part of every fleet request.
    pub cluster: Arc<Cluster>,
    token: Arc<String>,
    lockout: Arc<Lockout>,
}

/// The API of a replica on its own (`[cluster] peers` is not read): tests.
pub fn router(shared: Arc<Shared>, token: String) -> Router {
    router_in_cluster(shared, Arc::new(Cluster::standalone()), token)
}

/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()`: the lockout keys on
/// the peer address. Peers call it with the same admin token.
pub fn router_in_cluster(shared: Arc<Shared>, cluster: Arc<Cluster>, token: String) -> Router {
    let warning = "management api: too many failed bearer-token attempts; client locked out";
    let lockout = Arc::new(Lockout::new(shared.config.api.lockout(), warning));
    let state = ApiState { shared, cluster, token: Arc::new(token), lockout };
    let protected = Router::new()
        .merge(stats::routes())
        .merge(commands::routes())
        .merge(declared::routes())
        .merge(destinations::routes())
        .merge(fleetwide::routes())
        .merge(nodes::routes())
        .merge(mappings::routes())
        .merge(moves::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new().merge(health::routes()).merge(protected).with_state(state)
}

/// What a request's bearer token turned out to be.
enum Bearer {
    Valid,
    /// None at all or a wrong one, counted against the client's address.
    Refused,
    /// The client's address is locked out, whatever it sent.
    LockedOut(Duration),
}

impl ApiState {
    /// The route key of an operator's identifier: an account name, keyed by the login rule
    /// (`alice%admin` is alice; `alice+tag` is not cut, as a login name keeps its `+`).
    fn route_key(&self, identifier: &str) -> Result<String> {
        self.shared
            .rule
            .checked_key(&Identifier::Login(identifier.to_owned()))
            .ok_or_else(|| Error::BadRequest(format!("identifier must give a route key of 1..={MAX_KEY_LEN} bytes")))
    }

    /// Checks the request's bearer token against the admin token; a wrong one counts
    /// towards the lockout of the client's address.
    fn bearer(&self, request: &Request) -> Bearer {
        // Absent only when the router is called in-process (tests); `run` always serves it
        // with the peer address.
        let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if let Some(retry_after) = client.and_then(|ip| self.lockout.locked(ip)) {
            return Bearer::LockedOut(retry_after);
        }
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(self.token.as_bytes())) {
            return Bearer::Valid;
        }
        if let Some(ip) = client {
            self.lockout.record_failure(ip);
        }
        Bearer::Refused
    }
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match state.bearer(&request) {
        Bearer::Valid => next.run(request).await,
        Bearer::LockedOut(retry_after) => locked_out(retry_after),
        Bearer::Refused => {
            let body = axum::Json(serde_json::json!({ "error": "missing or invalid bearer token" }));
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        }
    }
}

fn locked_out(retry_after: Duration) -> Response {
    // Whole seconds, rounded up: retrying at the announced time must not still be refused.
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let body = axum::Json(serde_json::json!({ "error": "too many failed token attempts; retry later" }));
    (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, seconds.to_string())], body).into_response()
}

/// For the answers that are JSON arrays (`/nodes`, `/destinations`): the peers' statuses
/// travel in a `Switchyard-Peers` header (a JSON array) instead of a `peers` field.
fn peers_header(peers: &[PeerStatus]) -> Option<(header::HeaderName, HeaderValue)> {
    if peers.is_empty() {
        return None;
    }
    let json = serde_json::to_string(peers).ok()?;
    Some((header::HeaderName::from_static("switchyard-peers"), HeaderValue::from_str(&json).ok()?))
}

/// A node no replica knows: 404 when every peer answered, 503 when one that did not
/// might know it.
fn unknown_node(id: &str, peers: Vec<PeerStatus>) -> Response {
    let silent: Vec<&str> = peers.iter().filter(|p| !p.ok).map(|p| p.peer.as_str()).collect();
    let (code, error) = if silent.is_empty() {
        (StatusCode::NOT_FOUND, format!("unknown node {id:?}"))
    } else {
        let silent = silent.join(", ");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {id:?} is unknown to the replicas that answered; no answer from {silent}"),
        )
    };
    let mut body = serde_json::json!({ "error": error });
    if !peers.is_empty() {
        body["peers"] = serde_json::json!(peers);
    }
    (code, axum::Json(body)).into_response()
}

/// Seconds with millisecond precision, for `*_age_s` fields.
fn seconds(d: std::time::Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

#[cfg(test)]
mod tests;
