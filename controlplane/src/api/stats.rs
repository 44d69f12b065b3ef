//! `GET /stats`: fleet totals summed over fresh nodes, and the same figures per node,
//! over the whole fleet (every replica's nodes, each node once).

use axum::extract::{Query, State};
use axum::http::Method;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchyard_common::metrics::hit_rate_pct;

use super::{seconds, ApiState};
use crate::cluster::{gather, merge_nodes, NodeEntry, PeerCall, PeerStatus, ScopeQuery};
use crate::fleet::NodeView;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/stats", get(stats))
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub hit_rate_pct: f64,
    pub cache_entries: u64,
    pub active_connections: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeStats {
    node_id: String,
    /// Read by the merge: a node that failed over counts where it is connected.
    #[serde(default)]
    connected: bool,
    stale: bool,
    last_report_age_s: Option<f64>,
    #[serde(flatten)]
    figures: Figures,
}

impl NodeEntry for NodeStats {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn connected(&self) -> bool {
        self.connected
    }

    fn report_age_s(&self) -> Option<f64> {
        self.last_report_age_s
    }
}

#[derive(Debug, Serialize)]
pub struct Stats {
    #[serde(flatten)]
    totals: Figures,
    pub nodes_reporting: usize,
    pub nodes_excluded_stale: usize,
    nodes: Vec<NodeStats>,
    /// Which peers answered (absent for a replica on its own or `scope=local`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peers: Vec<PeerStatus>,
}

/// What this handler reads from a peer's answer.
#[derive(Deserialize)]
struct PeerStats {
    nodes: Vec<NodeStats>,
}

fn node_stats(view: &NodeView) -> NodeStats {
    let r = view.report.clone().unwrap_or_default();
    NodeStats {
        node_id: view.node_id.clone(),
        connected: view.connected,
        stale: view.stale,
        last_report_age_s: view.last_report_age.map(seconds),
        figures: Figures {
            cache_hits: r.cache_hits,
            cache_misses: r.cache_misses,
            hit_rate_pct: hit_rate_pct(r.cache_hits, r.cache_misses),
            cache_entries: r.cache_entries,
            active_connections: r.active_connections,
        },
    }
}

/// Totals over this replica's fresh nodes; the hit rate comes from the summed counters.
pub fn fleet_stats(views: &[NodeView]) -> Stats {
    summed(views.iter().map(node_stats).collect())
}

fn summed(nodes: Vec<NodeStats>) -> Stats {
    let mut totals = Figures::default();
    let fresh: Vec<&NodeStats> = nodes.iter().filter(|n| !n.stale).collect();
    // Node counters are whatever a holder of the node token sent: saturate, never wrap.
    for f in fresh.iter().map(|n| &n.figures) {
        totals.cache_hits = totals.cache_hits.saturating_add(f.cache_hits);
        totals.cache_misses = totals.cache_misses.saturating_add(f.cache_misses);
        totals.cache_entries = totals.cache_entries.saturating_add(f.cache_entries);
        totals.active_connections = totals.active_connections.saturating_add(f.active_connections);
    }
    totals.hit_rate_pct = hit_rate_pct(totals.cache_hits, totals.cache_misses);
    let (reporting, excluded) = (fresh.len(), nodes.len() - fresh.len());
    Stats { totals, nodes_reporting: reporting, nodes_excluded_stale: excluded, nodes, peers: Vec::new() }
}

async fn stats(State(state): State<ApiState>, Query(q): Query<ScopeQuery>) -> Json<Stats> {
    let replies = state.cluster.call(q.scope, &PeerCall::new(Method::GET, &["stats"])).await;
    let local = state.shared.fleet.views().iter().map(node_stats).collect::<Vec<_>>();
    let (answers, peers) = gather::<PeerStats>(replies);
    let nodes = merge_nodes(local.into_iter().chain(answers.into_iter().flat_map(|(_, a)| a.nodes)));
    Json(Stats { peers, ..summed(nodes) })
}

impl Stats {
    pub fn totals(&self) -> &Figures {
        &self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, connected: bool, stale: bool, hits: u64, misses: u64) -> NodeStats {
        let figures = Figures { cache_hits: hits, cache_misses: misses, ..Default::default() };
        NodeStats { node_id: id.into(), connected, stale, last_report_age_s: Some(0.1), figures }
    }

    #[test]
    fn totals_sum_the_fresh_nodes_of_every_replica_once() {
        // dp-1 failed over: the replica it left still lists it, stale and disconnected.
        let entries = vec![
            node("dp-1", false, true, 100, 100),
            node("dp-2", true, false, 3, 1),
            node("dp-1", true, false, 5, 3),
            node("dp-3", true, true, 50, 50),
        ];
        let stats = summed(merge_nodes(entries));
        let ids: Vec<_> = stats.nodes.iter().map(|n| (n.node_id.as_str(), n.connected)).collect();
        assert_eq!(ids, [("dp-1", true), ("dp-2", true), ("dp-3", true)]);
        assert_eq!((stats.totals.cache_hits, stats.totals.cache_misses), (8, 4));
        assert_eq!(stats.totals.hit_rate_pct, hit_rate_pct(8, 4));
        assert_eq!((stats.nodes_reporting, stats.nodes_excluded_stale), (2, 1));
    }
}
