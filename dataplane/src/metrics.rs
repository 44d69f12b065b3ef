//! The once-a-minute metrics line every node logs (interval configurable).

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;

/// Hit rate in percent with one decimal; 0 when nothing was looked up yet.
pub fn hit_rate_pct(hits: u64, misses: u64) -> f64 {
    let total = hits.saturating_add(misses);
    if total == 0 {
        return 0.0;
    }
    (hits as f64 * 1000.0 / total as f64).round() / 10.0
}

pub async fn run(node: Arc<Node>, interval: Duration) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn hit_rate_is_rounded_and_safe_on_zero() {
        assert_eq!(super::hit_rate_pct(0, 0), 0.0);
        assert_eq!(super::hit_rate_pct(2, 1), 66.7);
        assert_eq!(super::hit_rate_pct(5, 0), 100.0);
    }
}
