//! The change-stream follower behind [`RedisStore::watch`](super::RedisStore::watch):
//! a blocking `XREAD` on a connection of its own, reconnecting with a growing delay, that
//! only wakes the feed (which reads the changes from the store itself).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::AsyncConnectionConfig;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{bounded, RedisStore, StoreError};

/// How long one `XREAD` of the watcher blocks before it checks the stream again.
const WATCH_BLOCK: Duration = Duration::from_secs(5);
/// Backoff of the watcher's reconnects.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl RedisStore {
    /// Follows the change stream on a connection of its own (a blocking XREAD would hold
    /// up every command queued behind it on the shared one) and wakes `wake` on every new
    /// entry, and after every (re)connect since changes may have been missed meanwhile.
    pub fn watch(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let store = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = store.follow(&wake) => {}
                () = shutdown.cancelled() => {}
            }
        });
    }

    /// Reconnects with backoff forever; only cancellation ends it.
    async fn follow(&self, wake: &Notify) {
        let mut backoff = WATCH_BACKOFF_MIN;
        let mut failing = false;
        loop {
            let error = match self.connect_stream().await {
                Ok((conn, last)) => {
                    if failing {
                        tracing::info!(server = %self.inner.server, "redis change stream followed again");
                    }
                    failing = false;
                    backoff = WATCH_BACKOFF_MIN;
                    wake.notify_one();
                    match self.tail(conn, last, wake).await {
                        Err(e) => e,
                        Ok(never) => match never {},
                    }
                }
                Err(e) => e,
            };
            if !failing {
                tracing::warn!(error = %error, "cannot follow the redis change stream; reconnecting");
                failing = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
        }
    }

    async fn connect_stream(&self) -> Result<(MultiplexedConnection, String), StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(WATCH_BLOCK + self.inner.timeout));
        let connect = self.inner.client.get_multiplexed_async_connection_with_config(&config);
        let mut conn = self.bounded("connecting for the change stream", connect).await?;
        let last = self.stream_top(&mut conn).await?;
        Ok((conn, last))
    }

    /// Blocks on the stream after `last` until an error. When a read returns, `last` jumps
    /// to the stream's newest id: the feed reads the changes from the store itself, so the
    /// watcher only needs to know that there are some. A newest id that moved without an
    /// entry arriving (the stream was trimmed away or recreated) wakes the feed too.
    async fn tail(
        &self,
        mut conn: MultiplexedConnection,
        mut last: String,
        wake: &Notify,
    ) -> Result<Infallible, StoreError> {
        let block = WATCH_BLOCK.as_millis() as u64;
        // The connection's own response timeout is as long (see `connect_stream`).
        let deadline = WATCH_BLOCK + self.inner.timeout;
        loop {
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT").arg(1).arg("BLOCK").arg(block).arg("STREAMS").arg(&self.inner.keys.changes).arg(&last);
            let read = read.query_async::<Option<StreamReadReply>>(&mut conn);
            let reply = bounded(&self.inner.server, deadline, "following changes", read).await?;
            let arrived = reply.is_some_and(|r| r.keys.iter().any(|k| !k.ids.is_empty()));
            let top = self.stream_top(&mut conn).await?;
            if arrived || top != last {
                wake.notify_one();
            }
            last = top;
        }
    }

    /// The id of the stream's newest entry, `0-0` when there is none.
    async fn stream_top(&self, conn: &mut MultiplexedConnection) -> Result<String, StoreError> {
        let mut newest = redis::cmd("XREVRANGE");
        newest.arg(&self.inner.keys.changes).arg("+").arg("-").arg("COUNT").arg(1);
        let newest: StreamRangeReply = self.bounded("reading the newest change", newest.query_async(conn)).await?;
        Ok(newest.ids.into_iter().next().map_or_else(|| "0-0".to_string(), |entry| entry.id))
    }
}
