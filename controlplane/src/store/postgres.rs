//! The PostgreSQL mapping store (shared by control-plane replicas). Being written (issue 7).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Change, Mapping, Progress, StoreError};
use crate::config::PostgresConfig;

#[derive(Debug, Clone)]
pub struct PostgresStore {
    epoch: Arc<str>,
}

impl PostgresStore {
    pub async fn open(_config: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        Err(StoreError::Unavailable("not built yet".into()))
    }

    pub async fn get(&self, _key: &str) -> Result<Option<String>, StoreError> {
        unimplemented!()
    }

    pub async fn put(&self, _key: &str, _destination: &str) -> Result<u64, StoreError> {
        unimplemented!()
    }

    pub async fn delete(&self, _key: &str) -> Result<Option<u64>, StoreError> {
        unimplemented!()
    }

    pub async fn list(&self, _after: Option<&str>, _limit: usize) -> Result<Vec<Mapping>, StoreError> {
        unimplemented!()
    }

    pub async fn revision(&self) -> Result<u64, StoreError> {
        unimplemented!()
    }

    pub async fn changes_since(&self, _revision: u64, _limit: usize) -> Result<Option<Vec<Change>>, StoreError> {
        unimplemented!()
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub async fn import(&self, _mappings: &[Mapping], _progress: Progress<'_>) -> Result<u64, StoreError> {
        unimplemented!()
    }

    pub fn watch(&self, _wake: Arc<Notify>, _shutdown: CancellationToken) {}
}
