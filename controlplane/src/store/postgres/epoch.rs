//! The PostgreSQL store's epoch: read with the revision, checked by every write under the
//! write lock, and renewed by compare-and-set when the history was lost or went back.

use std::sync::Arc;

use sqlx::{Postgres, Transaction};

use super::{lock_writes, PostgresStore, CHANNEL};
use crate::store::{Head, StoreError};

impl PostgresStore {
    pub async fn head(&self) -> Result<Head, StoreError> {
        let (epoch, revision): (Option<String>, i64) = sqlx::query_as(
            "SELECT (SELECT value FROM meta WHERE name = 'epoch'), COALESCE(MAX(revision), 0) FROM changes",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.unavailable(e))?;
        Ok(Head { epoch, revision: revision as u64 })
    }

    /// Under the write lock, so that no write commits between the compare and the set;
    /// the notification wakes the other replicas, which then find the new epoch.
    pub async fn renew_epoch(&self, old: &str, fresh: &str) -> Result<Arc<str>, StoreError> {
        let epoch = self.renew_tx(old, fresh).await.map_err(|e| self.unavailable(e))?;
        Ok(self.epoch.set(epoch))
    }

    async fn renew_tx(&self, old: &str, fresh: &str) -> sqlx::Result<String> {
        let mut tx = self.pool.begin().await?;
        lock_writes(&mut tx).await?;
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('epoch', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value WHERE meta.value = $2",
        )
        .bind(fresh)
        .bind(old)
        .execute(&mut *tx)
        .await?;
        let epoch: String =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'epoch'").fetch_one(&mut *tx).await?;
        sqlx::query("SELECT pg_notify($1, 'epoch')").bind(CHANNEL).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(epoch)
    }

    /// `Some(what the store holds)` when it is not the epoch this control plane follows.
    pub(super) async fn other_epoch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> sqlx::Result<Option<Option<String>>> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'epoch'").fetch_optional(&mut **tx).await?;
        Ok((found.as_deref() != Some(&*self.epoch.get())).then_some(found))
    }
}
