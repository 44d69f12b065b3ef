//! The mapping store (SPEC §3.2): route key → destination id, plus the revision history
//! that nodes follow (every write bumps the revision; `changes_since` replays it).
//!
//! Keys are stored as given: callers normalize them (the file store normalizes what it
//! reads, since the file holds raw identifiers). Destination ids are not checked here;
//! the API refuses undeclared ones and resolution treats them as unmapped.

mod file;
mod sqlite;

use std::path::PathBuf;

pub use file::FileStore;
pub use sqlite::SqliteStore;

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
    pub key: String,
    /// `None`: the mapping was removed.
    pub destination: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// IO or database failure; the store may work again later.
    #[error("mapping store unavailable: {0}")]
    Unavailable(String),
    #[error("the mapping store is read-only (mapping.source = \"file\")")]
    ReadOnly,
    /// The mapping file has malformed lines, one entry per line at fault.
    #[error("{}: malformed mapping file:\n  {}", path.display(), problems.join("\n  "))]
    Malformed { path: PathBuf, problems: Vec<String> },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The configured store; cheap to clone (shared state lives behind `Arc`s).
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    File(FileStore),
}

impl Store {
    /// Opens the source named by the config. SQLite creates its file, parent directory
    /// and schema on first start; the file source reads and checks the whole file.
    pub async fn open(config: &MappingConfig) -> Result<Store, StoreError> {
        match config.source {
            MappingSource::Sqlite => Ok(Store::Sqlite(SqliteStore::open(&config.sqlite.path).await?)),
            MappingSource::File => {
                let file = config
                    .file
                    .as_ref()
                    .ok_or_else(|| StoreError::Unavailable("mapping.file.path is not set".into()))?;
                Ok(Store::File(FileStore::open(&file.path, config.normalize).await?))
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(key).await,
            Store::File(f) => Ok(f.get(key)),
        }
    }

    /// Sets `key`'s destination; returns the new revision.
    pub async fn put(&self, key: &str, destination: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.put(key, destination).await,
            Store::File(_) => Err(StoreError::ReadOnly),
        }
    }

    /// Removes `key`; returns the new revision, or `None` when it was not mapped.
    pub async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete(key).await,
            Store::File(_) => Err(StoreError::ReadOnly),
        }
    }

    /// Up to `limit` mappings ordered by key, starting after `after` (keyset paging:
    /// pass the last key of the previous page).
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Mapping>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(after, limit).await,
            Store::File(f) => Ok(f.list(after, limit)),
        }
    }

    /// The revision of the latest write (0 before any).
    pub async fn revision(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.revision().await,
            Store::File(_) => Ok(0),
        }
    }

    /// Up to `limit` changes after `revision`, oldest first. `None` when the history no
    /// longer reaches back that far (or `revision` is ahead of this store): the caller
    /// must then flush instead of replaying.
    pub async fn changes_since(&self, revision: u64, limit: usize) -> Result<Option<Vec<Change>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.changes_since(revision, limit).await,
            Store::File(f) => Ok(f.changes_since(revision)),
        }
    }

    /// Names this store's revision history. Revisions from a different epoch are
    /// meaningless, so a node seeing a new epoch flushes its cache.
    pub fn epoch(&self) -> &str {
        match self {
            Store::Sqlite(s) => s.epoch(),
            Store::File(f) => f.epoch(),
        }
    }

    /// Whether `put` and `delete` are possible.
    pub fn is_writable(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }
}

/// `usize`/`u64` arguments as SQLite integers, saturating rather than wrapping.
fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}
