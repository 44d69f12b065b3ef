//! The change listener behind [`PostgresStore::watch`](super::PostgresStore::watch):
//! LISTEN on its own connection, reconnecting with a growing delay.

use std::sync::Arc;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{CHANNEL, LISTEN_BACKOFF_MAX, LISTEN_BACKOFF_MIN};

/// The listener task behind [`PostgresStore::watch`]: one warning per outage, then
/// reconnects with a growing delay until `shutdown`.
pub(super) async fn listen(pool: PgPool, target: Arc<str>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = LISTEN_BACKOFF_MIN;
    let mut failing = false;
    loop {
        let lost = match subscribe(&pool).await {
            Ok(mut listener) => {
                if failing {
                    tracing::info!(store = %target, "listening to mapping change notifications again");
                }
                failing = false;
                backoff = LISTEN_BACKOFF_MIN;
                wake.notify_one();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        received = listener.try_recv() => match received {
                            Ok(Some(_)) => wake.notify_one(),
                            Ok(None) => break "the connection was closed".to_string(),
                            Err(e) => break e.to_string(),
                        },
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        if failing {
            tracing::debug!(store = %target, error = %lost, "change listener still disconnected");
        } else {
            failing = true;
            tracing::warn!(store = %target, error = %lost, "change listener disconnected; reconnecting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

async fn subscribe(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is reported to `listen`, which re-subscribes and wakes the feed.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
