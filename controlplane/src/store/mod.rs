//! The mapping store: route key → destination id, plus the revision history
//! that nodes follow (every write bumps the revision; `changes_since` replays it).
//!
//! Keys are stored as given: callers key them with the route-key rule (the file store keys
//! what it reads with the same rule, since the file holds raw identifiers). Destination ids
//! are not checked here; the API refuses undeclared ones, and resolution answers a temporary
//! failure for one (never the default destination: see `Shared::resolve`).

mod file;
mod postgres;
mod redis;
mod sqlite;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

pub use file::FileStore;
pub use postgres::PostgresStore;
pub use redis::RedisStore;
pub use sqlite::SqliteStore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use switchyard_common::routekey::RouteKeyRule;

use crate::config::{MappingConfig, MappingSource};

/// One mapping, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub key: String,
    pub destination: String,
}

/// One entry of the revision history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    /// [`BULK_KEY`] (empty): many mappings changed at once (a bulk import); nodes drop
    /// every cached route instead of replaying keys one by one.
    pub key: String,
    /// `None`: the mapping was removed.
    pub destination: Option<String>,
}

/// The change-log key of a bulk change. No route key is empty, so it cannot collide.
pub const BULK_KEY: &str = "";

impl Change {
    pub fn is_bulk(&self) -> bool {
        self.key == BULK_KEY
    }
}

/// Reports how many rows a bulk import has written so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// IO or database failure; the store may work again later.
    #[error("mapping store unavailable: {0}")]
    Unavailable(String),
    #[error("the mapping store is read-only (mapping.source = \"file\")")]
    ReadOnly,
    /// The store no longer holds the history this control plane follows: its epoch is
    /// missing (the data was lost) or another one (a peer already started a new epoch).
    /// Writes are refused in the store itself, so none lands on a history nobody follows.
    #[error(
        "the mapping store's revision history changed under this control plane: its epoch is {}, not {expected}",
        found.as_deref().unwrap_or("missing")
    )]
    EpochChanged { expected: String, found: Option<String> },
    /// The mapping file has malformed lines, one entry per line at fault.
    #[error("{}: malformed mapping file:\n  {}", path.display(), problems.join("\n  "))]
    Malformed { path: PathBuf, problems: Vec<String> },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Where a store's history stands: its epoch as stored (`None`: missing, the data was
/// lost) and its revision, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub epoch: Option<String>,
    pub revision: u64,
}

/// The epoch a store follows, shared by its clones. It changes only through
/// [`Store::renew_epoch`]; every write checks it in the store, in the write's transaction.
#[derive(Debug, Clone)]
struct EpochCell(Arc<RwLock<Arc<str>>>);

impl EpochCell {
    fn new(epoch: impl Into<Arc<str>>) -> Self {
        EpochCell(Arc::new(RwLock::new(epoch.into())))
    }

    fn get(&self) -> Arc<str> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set(&self, epoch: impl Into<Arc<str>>) -> Arc<str> {
        let epoch = epoch.into();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&epoch);
        epoch
    }

    /// The refusal of a write that found `found` in the store.
    fn changed(&self, found: Option<String>) -> StoreError {
        StoreError::EpochChanged { expected: self.get().to_string(), found }
    }
}

/// The configured store; cheap to clone (shared state lives behind `Arc`s).
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    File(FileStore),
    Postgres(PostgresStore),
    Redis(RedisStore),
}

impl Store {
    /// Opens the source named by the config. SQLite creates its file, parent directory
    /// and schema on first start; the file source reads and checks the whole file.
    /// `rule` is [`crate::config::Config::route_key_rule`]: the file store keys its lines
    /// with it.
    pub async fn open(config: &MappingConfig, rule: &RouteKeyRule) -> Result<Store, StoreError> {
        match config.source {
            MappingSource::Sqlite => Ok(Store::Sqlite(SqliteStore::open(&config.sqlite.path).await?)),
            MappingSource::File => {
                let file = config
                    .file
                    .as_ref()
                    .ok_or_else(|| StoreError::Unavailable("mapping.file.path is not set".into()))?;
                Ok(Store::File(FileStore::open(&file.path, rule).await?))
            }
            MappingSource::Postgres => {
                let pg = config.postgres.clone().unwrap_or_default();
                Ok(Store::Postgres(PostgresStore::open(&pg).await?))
            }
            MappingSource::Redis => {
                let redis = config.redis.clone().unwrap_or_default();
                Ok(Store::Redis(RedisStore::open(&redis).await?))
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(key).await,
            Store::File(f) => Ok(f.get(key)),
            Store::Postgres(s) => s.get(key).await,
            Store::Redis(s) => s.get(key).await,
        }
    }

    /// Sets `key`'s destination; returns the new revision.
    pub async fn put(&self, key: &str, destination: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.put(key, destination).await,
            Store::File(_) => Err(StoreError::ReadOnly),
            Store::Postgres(s) => s.put(key, destination).await,
            Store::Redis(s) => s.put(key, destination).await,
        }
    }

    /// Removes `key`; returns the new revision, or `None` when it was not mapped.
    pub async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete(key).await,
            Store::File(_) => Err(StoreError::ReadOnly),
            Store::Postgres(s) => s.delete(key).await,
            Store::Redis(s) => s.delete(key).await,
        }
    }

    /// Up to `limit` mappings ordered by key, starting after `after` (keyset paging:
    /// pass the last key of the previous page).
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Mapping>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(after, limit).await,
            Store::File(f) => Ok(f.list(after, limit)),
            Store::Postgres(s) => s.list(after, limit).await,
            Store::Redis(s) => s.list(after, limit).await,
        }
    }

    /// The revision of the latest write (0 before any).
    pub async fn revision(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.revision().await,
            Store::File(_) => Ok(0),
            Store::Postgres(s) => s.revision().await,
            Store::Redis(s) => s.revision().await,
        }
    }

    /// Up to `limit` changes after `revision`, oldest first. `None` when the history no
    /// longer reaches back that far (or `revision` is ahead of this store): the caller
    /// must then flush instead of replaying.
    pub async fn changes_since(&self, revision: u64, limit: usize) -> Result<Option<Vec<Change>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.changes_since(revision, limit).await,
            Store::File(f) => Ok(f.changes_since(revision)),
            Store::Postgres(s) => s.changes_since(revision, limit).await,
            Store::Redis(s) => s.changes_since(revision, limit).await,
        }
    }

    /// Names the revision history this control plane follows. Revisions from a different
    /// epoch are meaningless, so a node seeing a new epoch flushes its cache.
    pub fn epoch(&self) -> Arc<str> {
        match self {
            Store::Sqlite(s) => s.epoch(),
            Store::File(f) => f.epoch(),
            Store::Postgres(s) => s.epoch(),
            Store::Redis(s) => s.epoch(),
        }
    }

    /// The epoch and revision as the store holds them now, read together.
    pub async fn head(&self) -> Result<Head, StoreError> {
        match self {
            Store::Sqlite(s) => s.head().await,
            Store::File(f) => Ok(Head { epoch: Some(f.epoch().to_string()), revision: 0 }),
            Store::Postgres(s) => s.head().await,
            Store::Redis(s) => s.head().await,
        }
    }

    /// Starts a new epoch in the store because the history of `old` was lost or went
    /// backwards, and follows it from now on. A compare-and-set: the store gets a fresh
    /// epoch only while it still holds `old` (or none); if another replica got there
    /// first, its epoch is adopted, so replicas detecting the same loss end on one epoch.
    pub async fn renew_epoch(&self, old: &str) -> Result<Arc<str>, StoreError> {
        let fresh = uuid::Uuid::new_v4().to_string();
        match self {
            Store::Sqlite(s) => s.renew_epoch(old, &fresh).await,
            // Nothing changes a file store under a running control plane.
            Store::File(f) => Ok(f.epoch()),
            Store::Postgres(s) => s.renew_epoch(old, &fresh).await,
            Store::Redis(s) => s.renew_epoch(old, &fresh).await,
        }
    }

    /// Whether `put`, `delete` and `import` are possible.
    pub fn is_writable(&self) -> bool {
        !matches!(self, Store::File(_))
    }

    /// Whether the store answers (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.revision().await.map(|_| ())
    }

    /// Upserts every mapping (already normalized and validated by the caller) and records
    /// one bulk change, so nodes flush their caches once instead of replaying every key.
    /// Returns the new revision. `progress` is called as rows are written.
    pub async fn import(&self, mappings: &[Mapping], progress: Progress<'_>) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.import(mappings, progress).await,
            Store::File(_) => Err(StoreError::ReadOnly),
            Store::Postgres(s) => s.import(mappings, progress).await,
            Store::Redis(s) => s.import(mappings, progress).await,
        }
    }

    /// Wakes `wake` whenever the store reports a change made elsewhere (PostgreSQL
    /// LISTEN/NOTIFY, the Redis change stream) until `shutdown`. SQLite and the file have
    /// no notifications; the control plane's periodic poll covers them.
    pub fn watch(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        match self {
            Store::Sqlite(_) | Store::File(_) => {}
            Store::Postgres(s) => s.watch(wake, shutdown),
            Store::Redis(s) => s.watch(wake, shutdown),
        }
    }
}

/// `usize`/`u64` arguments as SQLite integers, saturating rather than wrapping.
fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}
