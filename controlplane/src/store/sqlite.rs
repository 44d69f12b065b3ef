//! The embedded SQLite mapping store: mappings plus an append-only change log whose row
//! id is the revision, so revisions stay monotonic across restarts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{to_i64, Change, EpochCell, Head, Mapping, StoreError};

/// `AUTOINCREMENT` keeps revision numbers from being reused even if old changes are ever
/// trimmed; `meta` holds the epoch and the schema version.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mappings (
    key TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    updated_revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    destination TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

const SCHEMA_VERSION: &str = "1";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    epoch: EpochCell,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        // FULL sync: a write acknowledged to a node must survive a power cut, or the
        // revision counter could go back and reuse numbers nodes have already applied.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let version = meta(&pool, "schema_version", SCHEMA_VERSION).await?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Unavailable(format!(
                "{}: schema version {version} is not supported (expected {SCHEMA_VERSION})",
                path.display()
            )));
        }
        // Generated once with the database, so a restarted control plane keeps it and
        // nodes keep their caches.
        let epoch = meta(&pool, "epoch", &uuid::Uuid::new_v4().to_string()).await?;
        Ok(SqliteStore { pool, epoch: EpochCell::new(epoch) })
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let destination = sqlx::query_scalar("SELECT destination FROM mappings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(destination)
    }

    /// The mapping and its change row are written in one transaction, so the log never
    /// disagrees with the table.
    pub async fn put(&self, key: &str, destination: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revision: i64 =
            sqlx::query_scalar("INSERT INTO changes (key, destination) VALUES (?, ?) RETURNING revision")
                .bind(key)
                .bind(destination)
                .fetch_one(&mut *tx)
                .await?;
        self.check_epoch(&mut tx).await?;
        sqlx::query(
            "INSERT INTO mappings (key, destination, updated_revision) VALUES (?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET
                 destination = excluded.destination,
                 updated_revision = excluded.updated_revision",
        )
        .bind(key)
        .bind(destination)
        .bind(revision)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revision as u64)
    }

    /// One transaction: the bulk change row (its revision stamps every row), then the
    /// rows in multi-row upserts. Nothing of it is visible before the commit, so the
    /// order inside does not matter to readers; nodes see one change and flush once.
    /// An empty import writes nothing and returns the current revision.
    pub async fn import(&self, mappings: &[Mapping], progress: super::Progress<'_>) -> Result<u64, StoreError> {
        if mappings.is_empty() {
            return self.revision().await;
        }
        let mut tx = self.pool.begin().await?;
        let revision: i64 =
            sqlx::query_scalar("INSERT INTO changes (key, destination) VALUES (?, NULL) RETURNING revision")
                .bind(super::BULK_KEY)
                .fetch_one(&mut *tx)
                .await?;
        self.check_epoch(&mut tx).await?;
        // sqlx caches prepared statements by their text: every full batch reuses one,
        // only a last, shorter batch prepares another.
        let full_len = IMPORT_BATCH.min(mappings.len());
        let full = upsert_statement(full_len);
        let mut written = 0;
        for batch in mappings.chunks(IMPORT_BATCH) {
            let last;
            let sql = if batch.len() == full_len {
                &full
            } else {
                last = upsert_statement(batch.len());
                &last
            };
            let mut query = sqlx::query(sql).bind(revision);
            for m in batch {
                query = query.bind(&m.key).bind(&m.destination);
            }
            query.execute(&mut *tx).await?;
            written += batch.len() as u64;
            progress(written);
        }
        tx.commit().await?;
        Ok(revision as u64)
    }

    pub async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let removed =
            sqlx::query("DELETE FROM mappings WHERE key = ?").bind(key).execute(&mut *tx).await?.rows_affected();
        if removed == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        self.check_epoch(&mut tx).await?;
        let revision: i64 =
            sqlx::query_scalar("INSERT INTO changes (key, destination) VALUES (?, NULL) RETURNING revision")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Some(revision as u64))
    }

    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Mapping>, StoreError> {
        let rows = sqlx::query(
            // `key > ''` for the first page (no key is empty): a plain range the primary-key
            // index answers by seeking, where `?1 IS NULL OR key > ?1` scanned every page.
            "SELECT key, destination FROM mappings WHERE key > ?1 ORDER BY key LIMIT ?2",
        )
        .bind(after.unwrap_or(""))
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        let mappings = rows
            .iter()
            .map(|r| Ok(Mapping { key: r.try_get(0)?, destination: r.try_get(1)? }))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(mappings)
    }

    /// Read from `sqlite_sequence`, not `MAX(revision)`, so that it stays right even if
    /// the change log is ever trimmed.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        let revision: i64 =
            sqlx::query_scalar("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)")
                .fetch_one(&self.pool)
                .await?;
        Ok(revision as u64)
    }

    pub async fn changes_since(&self, revision: u64, limit: usize) -> Result<Option<Vec<Change>>, StoreError> {
        let current = self.revision().await?;
        if revision > current {
            return Ok(None);
        }
        if revision == current {
            return Ok(Some(Vec::new()));
        }
        let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(revision) FROM changes").fetch_one(&self.pool).await?;
        if oldest.is_none_or(|o| o as u64 > revision + 1) {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT revision, key, destination FROM changes
             WHERE revision > ? ORDER BY revision LIMIT ?",
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
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Some(changes))
    }

    pub fn epoch(&self) -> Arc<str> {
        self.epoch.get()
    }

    /// Refuses a write whose transaction finds another epoch in `meta` (the file was
    /// replaced, or a replica sharing it started a new epoch). Called after the write's
    /// first statement, which took the database's write lock: no epoch change can slip in.
    async fn check_epoch(&self, tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>) -> Result<(), StoreError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'epoch'").fetch_optional(&mut **tx).await?;
        if found.as_deref() == Some(&*self.epoch.get()) {
            return Ok(());
        }
        Err(self.epoch.changed(found))
    }

    pub async fn head(&self) -> Result<Head, StoreError> {
        let (epoch, revision): (Option<String>, i64) = sqlx::query_as(
            "SELECT (SELECT value FROM meta WHERE name = 'epoch'),
                    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Head { epoch, revision: revision as u64 })
    }

    /// `fresh` replaces the stored epoch only while it is still `old` (or missing).
    pub async fn renew_epoch(&self, old: &str, fresh: &str) -> Result<Arc<str>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('epoch', ?1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value WHERE meta.value = ?2",
        )
        .bind(fresh)
        .bind(old)
        .execute(&mut *tx)
        .await?;
        let epoch: String =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'epoch'").fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(self.epoch.set(epoch))
    }

    /// Closes the pool, waiting for connections to finish (tests reopen the file).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Rows per upsert statement of an import. Binding looks every parameter up by position
/// (`sqlite3_bind_parameter_name` walks the statement's parameter list), so a
/// statement's bind cost grows with the square of its rows: measured on 1M rows, 50 rows
/// per statement took ~1.1 s, 1,000 took 5–11 s and 5,000 took 23 s.
const IMPORT_BATCH: usize = 50;

/// `INSERT … VALUES (?2, ?3, ?1), (?4, ?5, ?1), … ON CONFLICT DO UPDATE` for `rows` rows;
/// `?1` is the import's revision.
fn upsert_statement(rows: usize) -> String {
    let values: Vec<String> = (0..rows).map(|i| format!("(?{}, ?{}, ?1)", 2 * i + 2, 2 * i + 3)).collect();
    format!(
        "INSERT INTO mappings (key, destination, updated_revision) VALUES {}
         ON CONFLICT (key) DO UPDATE SET
             destination = excluded.destination,
             updated_revision = excluded.updated_revision",
        values.join(", ")
    )
}

/// The `meta` value for `name`, storing `initial` first if there is none yet.
async fn meta(pool: &SqlitePool, name: &str, initial: &str) -> Result<String, StoreError> {
    sqlx::query("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)")
        .bind(name)
        .bind(initial)
        .execute(pool)
        .await?;
    let value = sqlx::query_scalar("SELECT value FROM meta WHERE name = ?").bind(name).fetch_one(pool).await?;
    Ok(value)
}

#[cfg(test)]
mod tests;
