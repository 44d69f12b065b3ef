//! The PostgreSQL mapping store, shared by several control-plane replicas: the schema is
//! migrated on open, revisions come from the database's change log, and every write
//! sends a notification on [`CHANNEL`] so the other replicas push it to their nodes.
//!
//! Revision order is commit order. Each write takes one transaction-level advisory lock
//! ([`WRITE_LOCK`]) before it picks `MAX(revision) + 1`, so revision r + 1 is never
//! visible before revision r: a reader replaying `changes_since` cannot skip a change
//! that commits later under a smaller number.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{to_i64, Change, EpochCell, Mapping, Progress, StoreError, BULK_KEY};
use crate::config::{load_store_url, PostgresConfig};

/// The NOTIFY channel; the payload is the new revision (listeners only need the wake-up).
pub(super) const CHANNEL: &str = "switchyard_changes";
/// Key of the advisory lock every write holds until it commits ("Switchyd" in ASCII).
const WRITE_LOCK: i64 = 0x5377_6974_6368_7964;
/// Rows per COPY message during an import, and how often progress is reported.
const COPY_CHUNK: usize = 10_000;
/// Reconnect delays of the change listener.
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Kept to open the listener's own connection (it carries the password: not `Debug`).
    /// Boxed behind an `Arc`: it is large, and `Store` holds this store inline.
    options: Arc<PgConnectOptions>,
    connect_timeout: Duration,
    /// `PostgreSQL host:port/database`, for error messages and logs.
    target: Arc<str>,
    epoch: EpochCell,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("target", &self.target).field("epoch", &self.epoch).finish()
    }
}

impl PostgresStore {
    /// Connects, applies pending migrations (replicas starting together wait for each
    /// other on sqlx's migration lock) and reads the epoch, creating it on first open.
    pub async fn open(config: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let url = load_store_url(config.url.as_deref(), config.url_file.as_deref(), &config.url_env)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // The parse error never echoes the URL, which may hold a password.
        let options = PgConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Unavailable(format!("mapping.postgres: invalid URL: {e}")))?
            .application_name("switchyard-controlplane");
        let target = format!(
            "PostgreSQL {}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        );
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(options.clone());
        let mut store = PostgresStore {
            pool,
            options: Arc::new(options),
            connect_timeout: config.connect_timeout,
            target: target.into(),
            epoch: EpochCell::new(""),
        };
        store.migrate().await?;
        store.epoch = EpochCell::new(store.load_epoch().await.map_err(|e| store.unavailable(e))?);
        Ok(store)
    }

    /// On a connection of its own, closed afterwards: sqlx's migration lock belongs to the
    /// session, and a failed run must not leave it behind on a connection of the pool.
    async fn migrate(&self) -> Result<(), StoreError> {
        // A pool of one rather than a `PgConnection`: with `&mut PgConnection`, sqlx's
        // `Acquire` bound keeps every caller's future from proving it is `Send`.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(PgConnectOptions::clone(&self.options));
        let result = match Migrator::new(EmbeddedMigrations).await {
            Ok(migrator) => migrator.run(&pool).await,
            Err(e) => Err(e),
        };
        pool.close().await;
        match result {
            Ok(()) => Ok(()),
            Err(MigrateError::Execute(e)) => Err(self.unavailable(e)),
            Err(e) => Err(self.unavailable(format!("schema migration: {e}"))),
        }
    }

    async fn load_epoch(&self) -> sqlx::Result<String> {
        sqlx::query("INSERT INTO meta (name, value) VALUES ('epoch', $1) ON CONFLICT (name) DO NOTHING")
            .bind(uuid::Uuid::new_v4().to_string())
            .execute(&self.pool)
            .await?;
        sqlx::query_scalar("SELECT value FROM meta WHERE name = 'epoch'").fetch_one(&self.pool).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT destination FROM mappings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))
    }

    pub async fn put(&self, key: &str, destination: &str) -> Result<u64, StoreError> {
        let tx = self.begin_write().await?;
        self.put_tx(tx, key, destination).await.map_err(|e| self.unavailable(e))
    }

    async fn put_tx(&self, mut tx: Transaction<'static, Postgres>, key: &str, destination: &str) -> sqlx::Result<u64> {
        let revision = record_change(&mut tx, key, Some(destination)).await?;
        sqlx::query(
            "INSERT INTO mappings (key, destination, updated_revision) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET
                 destination = excluded.destination,
                 updated_revision = excluded.updated_revision",
        )
        .bind(key)
        .bind(destination)
        .bind(revision)
        .execute(&mut *tx)
        .await?;
        commit_write(tx, revision).await
    }

    pub async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.begin_write().await?;
        self.delete_tx(tx, key).await.map_err(|e| self.unavailable(e))
    }

    async fn delete_tx(&self, mut tx: Transaction<'static, Postgres>, key: &str) -> sqlx::Result<Option<u64>> {
        let removed =
            sqlx::query("DELETE FROM mappings WHERE key = $1").bind(key).execute(&mut *tx).await?.rows_affected();
        if removed == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let revision = record_change(&mut tx, key, None).await?;
        commit_write(tx, revision).await.map(Some)
    }

    /// Keys compare as bytes (the column collates as "C"), like the other stores.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Mapping>, StoreError> {
        // Two statements rather than `$1 IS NULL OR key > $1`, which a cached generic
        // plan could not answer from the primary-key index.
        let query = match after {
            Some(after) => sqlx::query(
                "SELECT key, destination FROM mappings WHERE key > $1 COLLATE \"C\"
                 ORDER BY key COLLATE \"C\" LIMIT $2",
            )
            .bind(after),
            None => sqlx::query("SELECT key, destination FROM mappings ORDER BY key COLLATE \"C\" LIMIT $1"),
        };
        let rows = query.bind(to_i64(limit)).fetch_all(&self.pool).await.map_err(|e| self.unavailable(e))?;
        rows.iter()
            .map(|r| Ok(Mapping { key: r.try_get(0)?, destination: r.try_get(1)? }))
            .collect::<sqlx::Result<_>>()
            .map_err(|e| self.unavailable(e))
    }

    /// The change log is never trimmed past its newest row, so its maximum is the head.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        let revision: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(revision as u64)
    }

    pub async fn changes_since(&self, revision: u64, limit: usize) -> Result<Option<Vec<Change>>, StoreError> {
        self.changes_since_query(revision, limit).await.map_err(|e| self.unavailable(e))
    }

    async fn changes_since_query(&self, revision: u64, limit: usize) -> sqlx::Result<Option<Vec<Change>>> {
        let (head, oldest): (i64, Option<i64>) =
            sqlx::query_as("SELECT COALESCE(MAX(revision), 0), MIN(revision) FROM changes")
                .fetch_one(&self.pool)
                .await?;
        let head = head as u64;
        if revision > head {
            return Ok(None);
        }
        if revision == head {
            return Ok(Some(Vec::new()));
        }
        if oldest.is_none_or(|o| o as u64 > revision + 1) {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT revision, key, destination FROM changes
             WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(to_i64(revision))
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        let changes = rows
            .iter()
            .map(|r| {
                Ok(Change { revision: r.try_get::<i64, _>(0)? as u64, key: r.try_get(1)?, destination: r.try_get(2)? })
            })
            .collect::<sqlx::Result<_>>()?;
        Ok(Some(changes))
    }

    pub fn epoch(&self) -> Arc<str> {
        self.epoch.get()
    }

    /// COPY into a temporary table, then one upsert and one bulk change row, all in one
    /// transaction. If a key repeats, its last row wins. An empty import writes nothing
    /// and returns the current revision.
    pub async fn import(&self, mappings: &[Mapping], progress: Progress<'_>) -> Result<u64, StoreError> {
        if mappings.is_empty() {
            return self.revision().await;
        }
        self.import_tx(mappings, progress).await.map_err(|e| self.unavailable(e))?
    }

    /// `Ok(Err(_))`: the store holds another epoch; nothing was written.
    async fn import_tx(&self, mappings: &[Mapping], progress: Progress<'_>) -> sqlx::Result<Result<u64, StoreError>> {
        let order = sorted_last_wins(mappings);
        let mut tx = self.pool.begin().await?;
        sqlx::query("CREATE TEMPORARY TABLE import_rows (key TEXT COLLATE \"C\", destination TEXT) ON COMMIT DROP")
            .execute(&mut *tx)
            .await?;
        let mut copy = tx.copy_in_raw("COPY import_rows (key, destination) FROM STDIN").await?;
        let mut buf = String::new();
        let mut written = 0;
        for chunk in order.chunks(COPY_CHUNK) {
            buf.clear();
            for m in chunk.iter().map(|&i| &mappings[i]) {
                push_copy_text(&mut buf, &m.key);
                buf.push('\t');
                push_copy_text(&mut buf, &m.destination);
                buf.push('\n');
            }
            copy.send(buf.as_bytes()).await?;
            written += chunk.len();
            // Counted in input rows, repeated keys included, so that the count ends at
            // the number of rows given.
            progress(if written == order.len() { mappings.len() } else { written } as u64);
        }
        copy.finish().await?;
        // The copy touched nothing shared: API writes only wait behind the upsert below.
        lock_writes(&mut tx).await?;
        if let Some(found) = self.other_epoch(&mut tx).await? {
            return Ok(Err(self.epoch.changed(found)));
        }
        let revision = record_change(&mut tx, BULK_KEY, None).await?;
        // Rows arrive in key order (twice as fast as random order into the primary-key
        // index). Unchanged rows are left alone and keep their revision: re-importing the
        // same file rewrites nothing.
        sqlx::query(
            "INSERT INTO mappings (key, destination, updated_revision)
             SELECT key, destination, $1 FROM import_rows
             ON CONFLICT (key) DO UPDATE SET
                 destination = excluded.destination,
                 updated_revision = excluded.updated_revision
             WHERE mappings.destination <> excluded.destination",
        )
        .bind(revision)
        .execute(&mut *tx)
        .await?;
        commit_write(tx, revision).await.map(Ok)
    }

    /// Wakes `wake` on every change notification, and after each (re)connection of the
    /// listener, since notifications sent while it was away are lost: the woken feed then
    /// catches up from the change log.
    pub fn watch(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        // Its own connection, so that listening never takes one from the query pool.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(PgConnectOptions::clone(&self.options));
        tokio::spawn(listen::listen(pool, Arc::clone(&self.target), wake, shutdown));
    }

    /// Closes the pool, waiting for its connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction holding the write lock, refused when the store no longer holds
    /// the epoch this control plane follows (read under the lock: a renewal commits
    /// either before it or after this write).
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let begin = async {
            let mut tx = self.pool.begin().await?;
            lock_writes(&mut tx).await?;
            let other = self.other_epoch(&mut tx).await?;
            sqlx::Result::Ok((tx, other))
        };
        match begin.await.map_err(|e: sqlx::Error| self.unavailable(e))? {
            (tx, None) => Ok(tx),
            (_, Some(found)) => Err(self.epoch.changed(found)),
        }
    }

    fn unavailable(&self, e: impl Into<BoxDynError>) -> StoreError {
        let e: BoxDynError = e.into();
        let message = match e.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::PoolTimedOut) => format!(
                "no connection within {:?} (the server is down or every connection is busy)",
                self.connect_timeout
            ),
            _ => e.to_string(),
        };
        StoreError::Unavailable(format!("{}: {message}", self.target))
    }
}

/// Held until the transaction ends: writes (and revision numbers) are serialized.
async fn lock_writes(tx: &mut Transaction<'static, Postgres>) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK).execute(&mut **tx).await?;
    Ok(())
}

/// Appends the next revision to the change log. Only call it holding the write lock: the
/// statement starts after the lock was granted, so it sees every earlier write committed.
async fn record_change(
    tx: &mut Transaction<'static, Postgres>,
    key: &str,
    destination: Option<&str>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO changes (revision, key, destination)
         SELECT COALESCE(MAX(revision), 0) + 1, $1, $2 FROM changes
         RETURNING revision",
    )
    .bind(key)
    .bind(destination)
    .fetch_one(&mut **tx)
    .await
}

/// Queues the notification (PostgreSQL delivers it on commit, never before) and commits.
async fn commit_write(mut tx: Transaction<'static, Postgres>, revision: i64) -> sqlx::Result<u64> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(revision.to_string()).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(revision as u64)
}

/// Indices into `mappings` in byte order of their keys (PostgreSQL's "C" collation), each
/// key once: its last row. A key may occur only once in an upsert statement.
fn sorted_last_wins(mappings: &[Mapping]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..mappings.len()).collect();
    order.sort_unstable_by(|&a, &b| mappings[a].key.cmp(&mappings[b].key).then(b.cmp(&a)));
    order.dedup_by(|later, kept| mappings[*later].key == mappings[*kept].key);
    order
}

/// `value` in COPY's text format: backslash, tab, newline and carriage return escaped.
fn push_copy_text(buf: &mut String, value: &str) {
    if !value.contains(['\\', '\t', '\n', '\r']) {
        buf.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

/// The migrations under `controlplane/migrations/postgres/`, compiled into the binary.
#[derive(Debug)]
struct EmbeddedMigrations;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = vec![Migration::new(
            1,
            Cow::Borrowed("mapping store"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/postgres/0001_mapping_store.sql")),
            false,
        )];
        Box::pin(async move { Ok(migrations) })
    }
}

mod epoch;
mod listen;
#[cfg(test)]
mod tests;
