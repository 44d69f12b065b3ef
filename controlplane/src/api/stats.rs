//! `GET /stats`: fleet totals summed over fresh nodes, and the same figures per node.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use dataplane::metrics::hit_rate_pct;
use serde::Serialize;

use super::{seconds, ApiState};
use crate::fleet::NodeView;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/stats", get(stats))
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Figures {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub hit_rate_pct: f64,
    pub cache_entries: u64,
    pub active_connections: u64,
}

#[derive(Serialize)]
struct NodeStats {
    node_id: String,
    stale: bool,
    last_report_age_s: Option<f64>,
    #[serde(flatten)]
    figures: Figures,
}

#[derive(Serialize)]
pub struct Stats {
    #[serde(flatten)]
    totals: Figures,
    pub nodes_reporting: usize,
    pub nodes_excluded_stale: usize,
    nodes: Vec<NodeStats>,
}

fn figures(view: &NodeView) -> Figures {
    let r = view.report.clone().unwrap_or_default();
    Figures {
        cache_hits: r.cache_hits,
        cache_misses: r.cache_misses,
        hit_rate_pct: hit_rate_pct(r.cache_hits, r.cache_misses),
        cache_entries: r.cache_entries,
        active_connections: r.active_connections,
    }
}

/// Totals over the fresh nodes; the hit rate comes from the summed counters.
pub fn fleet_stats(views: &[NodeView]) -> Stats {
    let mut totals = Figures::default();
    let mut excluded = 0;
    let nodes = views
        .iter()
        .map(|v| {
            let f = figures(v);
            if v.stale {
                excluded += 1;
            } else {
                totals.cache_hits += f.cache_hits;
                totals.cache_misses += f.cache_misses;
                totals.cache_entries += f.cache_entries;
                totals.active_connections += f.active_connections;
            }
            NodeStats {
                node_id: v.node_id.clone(),
                stale: v.stale,
                last_report_age_s: v.last_report_age.map(seconds),
                figures: f,
            }
        })
        .collect::<Vec<_>>();
    totals.hit_rate_pct = hit_rate_pct(totals.cache_hits, totals.cache_misses);
    Stats { totals, nodes_reporting: nodes.len() - excluded, nodes_excluded_stale: excluded, nodes }
}

async fn stats(State(state): State<ApiState>) -> Json<Stats> {
    Json(fleet_stats(&state.shared.fleet.views()))
}

impl Stats {
    pub fn totals(&self) -> &Figures {
        &self.totals
    }
}
