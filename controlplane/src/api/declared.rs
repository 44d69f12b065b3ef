//! Whether every replica declares the destination a write names, before it is written:
//! `GET /fleet/declared?destination=ID` answers for the replica asked (what peers ask each
//! other), and [`ApiState::check_declared`] refuses a PUT or move that any replica lacks.
//!
//! Replicas may run different configs (a destination added to one first). A mapping to a
//! destination a replica does not declare is still safe at run time — that replica's nodes
//! answer the account with a temporary failure — but it is not routable there, so the API
//! refuses to write one. A peer that does not answer (down, unreachable, an older version
//! without this endpoint) does not block the write: one replica down must not stop every
//! write, its nodes fail over to replicas that did answer, and the node-side rule keeps any
//! node still holding its settings safe. The write's answer lists that peer as not answering.

use axum::extract::{Query, State};
use axum::http::Method;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiState;
use crate::cluster::{gather, PeerCall, Scope};
use crate::error::{Error, Result};
use crate::undeclared::Conflict;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/fleet/declared", get(declared))
}

#[derive(Deserialize)]
struct DeclaredQuery {
    destination: String,
}

/// One replica's answer: whether its config declares the destination, and the nodes
/// connected to it now (they hold its fleet settings).
#[derive(Serialize, Deserialize)]
struct Declared {
    destination: String,
    declared: bool,
    nodes: Vec<String>,
}

/// Always this replica alone: the check is the asking replica's to fan out.
async fn declared(State(state): State<ApiState>, Query(q): Query<DeclaredQuery>) -> Json<Declared> {
    let nodes = state.shared.fleet.views().into_iter().filter(|v| v.connected).map(|v| v.node_id).collect();
    Json(Declared { declared: state.shared.is_declared(&q.destination), destination: q.destination, nodes })
}

impl ApiState {
    /// Refuses a write naming `destination` unless this replica and every peer that answers
    /// declare it: 400 when this one does not, 409 naming each peer that does not (and its
    /// nodes). Every peer is asked whatever the request's scope: the write reaches all of
    /// their nodes through the shared store anyway.
    pub async fn check_declared(&self, destination: &str) -> Result<()> {
        if !self.shared.is_declared(destination) {
            return Err(Error::BadRequest(format!("destination {destination:?} is not declared")));
        }
        let call = PeerCall::new(Method::GET, &["fleet", "declared"]).query("destination", destination);
        let (answers, _) = gather::<Declared>(self.cluster.call(Scope::Fleet, &call).await);
        let conflicts: Vec<Conflict> = answers
            .into_iter()
            .filter(|(_, answer)| !answer.declared)
            .map(|(peer, answer)| Conflict { peer, destination: destination.to_string(), nodes: answer.nodes })
            .collect();
        if conflicts.is_empty() {
            return Ok(());
        }
        Err(Error::Undeclared { message: refusal(destination, &conflicts), conflicts })
    }
}

/// "destination "new" is not declared by replica(s) http://…: …".
fn refusal(destination: &str, conflicts: &[Conflict]) -> String {
    let peers: Vec<&str> = conflicts.iter().map(|c| c.peer.as_str()).collect();
    format!(
        "destination {destination:?} is not declared by replica {}: its nodes could not route the account; \
         declare it in every replica's config first",
        peers.join(", ")
    )
}
