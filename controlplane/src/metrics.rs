//! The fleet metrics line the control plane logs every `metrics_interval`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::fleet_stats;
use crate::fleet::Fleet;

pub async fn run(fleet: Arc<Fleet>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let stats = fleet_stats(&fleet.views());
        let t = stats.totals();
        tracing::info!(
            cache_hits = t.cache_hits,
            cache_misses = t.cache_misses,
            hit_rate_pct = t.hit_rate_pct,
            cache_entries = t.cache_entries,
            active_connections = t.active_connections,
            nodes = stats.nodes_reporting,
            nodes_stale = stats.nodes_excluded_stale,
            "fleet metrics"
        );
    }
}
