//! The Redis mapping store: a hash of mappings, a sorted set for keyset paging, a revision
//! counter and a change stream whose entry ids are the revisions, all under `key_prefix`.
//!
//! Every write is one Lua script, so the mapping, the counter and the change entry move
//! together and the revision order is the order Redis ran the scripts, whichever
//! control-plane replica sent them. Every command is bounded by `connect_timeout`: an
//! unreachable Redis is an error ([`StoreError::Unavailable`]), never a hang.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamRangeReply};
use redis::{Client, Cmd, FromRedisValue, RedisResult, Script};

use super::{Change, EpochCell, Head, Mapping, Progress, StoreError, BULK_KEY};
use crate::config::{load_store_url, RedisConfig};
use scripts::{BULK, DELETE, EPOCH_REFUSED, PUT, RENEW};

/// Mappings per pipelined round trip of an import.
const IMPORT_CHUNK: usize = 10_000;
/// Import chunks sent before the first one's reply is awaited.
const IMPORT_IN_FLIGHT: usize = 4;
/// Keys per HMGET when a listed page is resolved to destinations.
const LIST_CHUNK: usize = 10_000;
/// Reconnect attempts the connection manager makes per failure before it reports it;
/// the next command starts a new round, so a long outage never wedges the store.
const RECONNECT_RETRIES: usize = 2;

/// The Redis keys of one store, all starting with `key_prefix`.
#[derive(Debug)]
struct Keys {
    /// Hash: route key → destination.
    map: String,
    /// Sorted set of route keys, all with score 0, so they sort by bytes (ZRANGEBYLEX).
    keys: String,
    /// Counter: the revision of the latest write.
    rev: String,
    /// Stream: one entry per write, id `<revision>-1`, fields `key` and `destination`.
    changes: String,
    /// Set once (SET NX) by the first control plane to open the store.
    epoch: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            map: format!("{prefix}map"),
            keys: format!("{prefix}keys"),
            rev: format!("{prefix}rev"),
            changes: format!("{prefix}changes"),
            epoch: format!("{prefix}epoch"),
        }
    }
}

#[derive(Debug)]
struct Inner {
    client: Client,
    conn: ConnectionManager,
    keys: Keys,
    history: u64,
    timeout: Duration,
    /// `host:port`, for error messages (the URL may hold a password).
    server: String,
    epoch: EpochCell,
}

/// Cheap to clone: clones share one auto-reconnecting connection.
#[derive(Debug, Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// Connects (bounded by `connect_timeout`) and reads the epoch, creating it if this is
    /// the first control plane to use `key_prefix` on this server.
    pub async fn open(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let url = load_store_url(config.url.as_deref(), config.url_file.as_deref(), &config.url_env)
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        let client = Client::open(url.as_str()).map_err(|e| StoreError::Unavailable(format!("redis URL: {e}")))?;
        let server = client.get_connection_info().addr().to_string();
        let timeout = config.connect_timeout;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout.min(Duration::from_secs(1)));
        let connect = ConnectionManager::new_with_config(client.clone(), manager);
        let mut conn = bounded(&server, timeout, "connecting", connect).await?;
        let keys = Keys::new(&config.key_prefix);
        let fresh = uuid::Uuid::new_v4().to_string();
        let mut read_epoch = redis::pipe();
        read_epoch.atomic().cmd("SET").arg(&keys.epoch).arg(&fresh).arg("NX").ignore().cmd("GET").arg(&keys.epoch);
        let (epoch,): (String,) =
            bounded(&server, timeout, "reading the epoch", read_epoch.query_async(&mut conn)).await?;
        let inner =
            Inner { client, conn, keys, history: config.history, timeout, server, epoch: EpochCell::new(epoch) };
        Ok(RedisStore { inner: Arc::new(inner) })
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.query("reading a mapping", redis::cmd("HGET").arg(&self.inner.keys.map).arg(key)).await
    }

    pub async fn put(&self, key: &str, destination: &str) -> Result<u64, StoreError> {
        let mut put = self.write_script(&PUT);
        put.arg(key).arg(destination).arg(self.inner.history);
        let mut conn = self.inner.conn.clone();
        self.checked("writing a mapping", put.invoke_async(&mut conn)).await
    }

    pub async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let mut delete = self.write_script(&DELETE);
        delete.arg(key).arg(self.inner.history);
        let mut conn = self.inner.conn.clone();
        self.checked("deleting a mapping", delete.invoke_async(&mut conn)).await
    }

    /// An invocation of a write script with its KEYS and the epoch it must find.
    fn write_script<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let k = &self.inner.keys;
        let mut invocation = script.key(&k.map);
        invocation.key(&k.keys).key(&k.rev).key(&k.changes).key(&k.epoch).arg(&*self.inner.epoch.get());
        invocation
    }

    /// Like [`Self::bounded`], with a refusal of [`CHECK_EPOCH`] as [`StoreError::EpochChanged`].
    async fn checked<T>(&self, what: &str, call: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Err(e)) if e.code() == Some(EPOCH_REFUSED) => {
                let found = e.detail().and_then(scripts::found_epoch);
                Err(self.inner.epoch.changed(found))
            }
            Ok(result) => bounded(&self.inner.server, self.inner.timeout, what, std::future::ready(result)).await,
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis at {}: {what}: no answer within {:?}",
                self.inner.server, self.inner.timeout
            ))),
        }
    }

    /// Keys from the sorted set, then their destinations. Not one snapshot: a key deleted
    /// in between is left out, one rewritten in between shows its new destination. A page
    /// is empty only at the end, even if every key of a range was deleted meanwhile.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Mapping>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cursor = after.map(str::to_string);
        loop {
            let keys = self.key_range(cursor.as_deref(), limit).await?;
            let Some(last) = keys.last().cloned() else { return Ok(Vec::new()) };
            let mappings = self.resolve(keys).await?;
            if !mappings.is_empty() {
                return Ok(mappings);
            }
            cursor = Some(last);
        }
    }

    /// Up to `limit` keys after `after`, in byte order.
    async fn key_range(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let min = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let count = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut range = redis::cmd("ZRANGEBYLEX");
        range.arg(&self.inner.keys.keys).arg(min).arg("+").arg("LIMIT").arg(0).arg(count);
        self.query("listing mappings", &range).await
    }

    /// The mappings of `keys`, leaving out keys deleted since they were listed.
    async fn resolve(&self, keys: Vec<String>) -> Result<Vec<Mapping>, StoreError> {
        let mut pipe = redis::pipe();
        for chunk in keys.chunks(LIST_CHUNK) {
            pipe.cmd("HMGET").arg(&self.inner.keys.map).arg(chunk);
        }
        let mut conn = self.inner.conn.clone();
        let destinations: Vec<Vec<Option<String>>> =
            self.bounded("listing mappings", pipe.query_async(&mut conn)).await?;
        let mappings = keys
            .into_iter()
            .zip(destinations.into_iter().flatten())
            .filter_map(|(key, destination)| Some(Mapping { key, destination: destination? }))
            .collect();
        Ok(mappings)
    }

    pub async fn revision(&self) -> Result<u64, StoreError> {
        let revision: Option<u64> =
            self.query("reading the revision", redis::cmd("GET").arg(&self.inner.keys.rev)).await?;
        Ok(revision.unwrap_or(0))
    }

    /// The counter, the oldest kept change and the changes after `revision`, read in one
    /// MULTI so that they agree with each other.
    pub async fn changes_since(&self, revision: u64, limit: usize) -> Result<Option<Vec<Change>>, StoreError> {
        let k = &self.inner.keys;
        let mut conn = self.inner.conn.clone();
        let mut read = redis::pipe();
        read.atomic()
            .cmd("GET")
            .arg(&k.epoch)
            .cmd("GET")
            .arg(&k.rev)
            .cmd("XRANGE")
            .arg(&k.changes)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&k.changes)
            .arg(format!("({revision}-1"))
            .arg("+")
            .arg("COUNT")
            .arg(limit.clamp(1, i64::MAX as usize));
        let (epoch, current, oldest, after): (Option<String>, Option<u64>, StreamRangeReply, StreamRangeReply) =
            self.bounded("reading changes", read.query_async(&mut conn)).await?;
        // Revisions of another history (or of none) must not be replayed under ours.
        if epoch.as_deref() != Some(&*self.inner.epoch.get()) {
            return Err(self.inner.epoch.changed(epoch));
        }
        let current = current.unwrap_or(0);
        if revision > current {
            return Ok(None);
        }
        if revision == current {
            return Ok(Some(Vec::new()));
        }
        let oldest = oldest.ids.first().map(|entry| revision_of(&entry.id)).transpose()?;
        if oldest.is_none_or(|o| o > revision + 1) {
            return Ok(None);
        }
        let mut changes = after.ids.iter().map(change_of).collect::<Result<Vec<_>, _>>()?;
        changes.truncate(limit);
        Ok(Some(changes))
    }

    pub fn epoch(&self) -> Arc<str> {
        self.inner.epoch.get()
    }

    pub async fn head(&self) -> Result<Head, StoreError> {
        let k = &self.inner.keys;
        let mut read = redis::pipe();
        read.atomic().cmd("GET").arg(&k.epoch).cmd("GET").arg(&k.rev);
        let mut conn = self.inner.conn.clone();
        let (epoch, revision): (Option<String>, Option<u64>) =
            self.bounded("reading the epoch and revision", read.query_async(&mut conn)).await?;
        Ok(Head { epoch, revision: revision.unwrap_or(0) })
    }

    pub async fn renew_epoch(&self, old: &str, fresh: &str) -> Result<Arc<str>, StoreError> {
        let mut renew = RENEW.key(&self.inner.keys.epoch);
        renew.arg(old).arg(fresh);
        let mut conn = self.inner.conn.clone();
        let epoch: String = self.bounded("starting a new epoch", renew.invoke_async(&mut conn)).await?;
        Ok(self.inner.epoch.set(epoch))
    }

    /// Upserts in pipelined chunks of 10,000 mappings (each chunk one MULTI of HSET and
    /// ZADD), then records ONE bulk change, after the last chunk. Unlike SQL stores, an
    /// import into Redis is NOT atomic: readers see chunks land one by one, and an import
    /// that fails halfway leaves the chunks written so far without a bulk change (nodes
    /// keep cached routes for them until their cache expires or the import is rerun).
    /// An empty import writes nothing and returns the current revision.
    pub async fn import(&self, mappings: &[Mapping], progress: Progress<'_>) -> Result<u64, StoreError> {
        if mappings.is_empty() {
            return self.revision().await;
        }
        // The bulk change checks the epoch too, but only after every chunk: refuse before
        // writing a chunk into a store that already lost the history.
        let head = self.head().await?;
        if head.epoch.as_deref() != Some(&*self.inner.epoch.get()) {
            return Err(self.inner.epoch.changed(head.epoch));
        }
        // A few chunks in flight, so that encoding the next one overlaps Redis applying
        // the previous ones; the replies still arrive in order.
        let mut chunks =
            futures::stream::iter(mappings.chunks(IMPORT_CHUNK)).map(|c| self.upsert(c)).buffered(IMPORT_IN_FLIGHT);
        let mut written = 0;
        while let Some(rows) = chunks.try_next().await? {
            written += rows as u64;
            progress(written);
        }
        let mut bulk = self.write_script(&BULK);
        bulk.arg(BULK_KEY).arg(self.inner.history);
        let mut conn = self.inner.conn.clone();
        self.checked("recording the import", bulk.invoke_async(&mut conn)).await
    }

    /// One chunk of an import as one MULTI: HSET of every mapping, ZADD of every key.
    /// Returns the number of mappings written.
    async fn upsert(&self, chunk: &[Mapping]) -> Result<usize, StoreError> {
        let k = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HSET").arg(&k.map);
        for m in chunk {
            pipe.arg(&m.key).arg(&m.destination);
        }
        pipe.ignore().cmd("ZADD").arg(&k.keys);
        for m in chunk {
            pipe.arg(0).arg(&m.key);
        }
        pipe.ignore();
        let mut conn = self.inner.conn.clone();
        self.bounded("importing mappings", pipe.query_async::<()>(&mut conn)).await?;
        Ok(chunk.len())
    }

    /// One command on the shared connection, bounded by the timeout.
    async fn query<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.inner.conn.clone();
        self.bounded(what, cmd.query_async(&mut conn)).await
    }

    async fn bounded<T>(&self, what: &str, call: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        bounded(&self.inner.server, self.inner.timeout, what, call).await
    }
}

/// Runs one Redis call with a deadline; every failure becomes [`StoreError::Unavailable`].
async fn bounded<T>(
    server: &str,
    timeout: Duration,
    what: &str,
    call: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(StoreError::Unavailable(format!("redis at {server}: {what}: {e}"))),
        Err(_) => Err(StoreError::Unavailable(format!("redis at {server}: {what}: no answer within {timeout:?}"))),
    }
}

/// The revision in a change-stream id (`<revision>-1`).
fn revision_of(id: &str) -> Result<u64, StoreError> {
    id.split_once('-')
        .and_then(|(revision, _)| revision.parse().ok())
        .ok_or_else(|| StoreError::Unavailable(format!("redis change stream: malformed entry id {id:?}")))
}

fn change_of(entry: &StreamId) -> Result<Change, StoreError> {
    let key = entry
        .get::<String>("key")
        .ok_or_else(|| StoreError::Unavailable(format!("redis change stream: entry {} has no key field", entry.id)))?;
    Ok(Change { revision: revision_of(&entry.id)?, key, destination: entry.get("destination") })
}

mod follow;
mod scripts;
#[cfg(test)]
mod tests;
