//! The once-a-minute metrics line every node logs (interval configurable).

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;

pub(crate) use switchyard_common::metrics::hit_rate_pct;

pub(crate) async fn run(node: Arc<Node>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        if let Some(routes) = node.routes() {
            routes.sync();
        }
        let cache = node.cache_stats();
        // What `cache.max_bytes` and `cache.negative_max_bytes` are sized against.
        let (cache_bytes, negative_cache_bytes) = node.routes().map(|r| r.weighted_sizes()).unwrap_or_default();
        tracing::info!(
            cache_hits = cache.hits,
            cache_misses = cache.misses,
            hit_rate_pct = hit_rate_pct(cache.hits, cache.misses),
            cache_entries = cache.entries,
            cache_bytes,
            negative_cache_bytes,
            active_connections = node.sessions.active_total(),
            "metrics"
        );
    }
}
