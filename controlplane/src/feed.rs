//! Changes this control plane did not write itself reach its nodes: another replica's
//! writes, a bulk import, a write whose notification was missed. The store's
//! notifications (PostgreSQL LISTEN/NOTIFY, the Redis change stream) wake the feed at
//! once; a poll every `mapping.poll_interval` catches whatever a notification missed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Runs until `shutdown`.
pub async fn follow(shared: Arc<Shared>, interval: Duration, shutdown: CancellationToken) {
    let wake = Arc::new(Notify::new());
    shared.store.watch(Arc::clone(&wake), shutdown.clone());
    let mut failing = false;
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        match shared.publisher.catch_up().await {
            Ok(revision) if failing => {
                failing = false;
                tracing::info!(revision, "mapping store reachable again; nodes caught up");
            }
            Ok(_) => {}
            // Once per outage, not once per poll.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the mapping store's changes; retrying");
            }
            Err(_) => {}
        }
    }
}
