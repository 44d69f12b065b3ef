//! The one path by which mapping changes reach the nodes, and the lock that orders it.
//!
//! [`Publisher`] is the only place that takes the write lock. Under it, a write goes to
//! the store, then into every connected node's outbox (via [`Fleet::push`]); and a node
//! that connects is welcomed, caught up and registered. The history checks and the
//! recovery of a lost history ([`history`]) run under the same lock.

mod history;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

use history::HistoryGuard;

use crate::error::{Error, Result};
use crate::fleet::{CommandSender, Fleet, Registration};
use crate::node_info::NodeHello;
use crate::route::RouteUpdate;
use crate::store::{Change, Store, StoreError};
use crate::undeclared::Undeclared;

/// Changes read from the store per update pushed.
const BATCH: usize = 10_000;
/// The longest replay a connecting node gets; past it, it flushes its cache instead.
const MAX_REPLAY: usize = 10_000;

/// Orders every route change the nodes see.
///
/// The invariant: every node is pushed the store's changes in revision order, none
/// twice and none skipped, and no change slips between a connecting node's catch-up and
/// its registration (it would be in neither its replay nor its outbox). Both hold because
/// one lock, around `pushed` (the last revision pushed), is held across "store write →
/// outbox of every connected node → its stream wakes" and across "welcome → catch-up →
/// register". Changes made elsewhere (another replica, a bulk import) reach the nodes
/// through [`catch_up`](Self::catch_up), under the same lock.
///
/// Revisions count only within an epoch: a store that lost its history or went back is
/// caught here, a new epoch started and every node told to flush before any revision of
/// the new history is pushed (see [`history`]); acks name their epoch, so a write's
/// answer ([`Committed`] names the epoch) never counts a node that applied a revision of
/// an older history.
#[derive(Debug)]
pub struct Publisher {
    store: Store,
    fleet: Arc<Fleet>,
    undeclared: Undeclared,
    history: HistoryGuard,
    /// The last revision pushed to the nodes; its lock is the write lock.
    pushed: Mutex<u64>,
}

/// A committed write: the epoch it was pushed under and its revision. Acks count only
/// for this epoch, so a node that still follows an older history never satisfies them.
#[derive(Debug, Clone)]
pub struct Committed {
    pub epoch: Arc<str>,
    pub revision: u64,
}

/// What a connecting node is told first: the epoch and revision it now follows, and
/// whether it must drop its cache (it cannot catch up by replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub epoch: String,
    pub revision: u64,
    pub flush_cache: bool,
}

/// A node the fleet accepted: its stream's registration, its Welcome and the replay to
/// send right after it.
#[derive(Debug)]
pub struct Registered {
    pub registration: Registration,
    pub welcome: Welcome,
    pub replay: Option<RouteUpdate>,
}

impl Publisher {
    /// `undeclared` tracks what is pushed that names a destination the config lacks.
    pub fn new(store: Store, fleet: Arc<Fleet>, undeclared: Undeclared) -> Self {
        Publisher { store, fleet, undeclared, history: HistoryGuard::default(), pushed: Mutex::new(0) }
    }

    /// Starts from `revision`, the store's when the control plane starts: no node is
    /// connected yet, so nothing before it is pushed.
    pub async fn resume_at(&self, revision: u64) {
        *self.pushed.lock().await = revision;
    }

    /// The epoch followed now; it changes when the store's history is lost or goes back.
    pub fn epoch(&self) -> Arc<str> {
        self.store.epoch()
    }

    /// The accounts this replica's nodes cannot route, as far as pushed or resolved.
    pub fn undeclared(&self) -> &Undeclared {
        &self.undeclared
    }

    /// What was detected about the store's history, while its recovery has not succeeded.
    pub fn history_problem(&self) -> Option<String> {
        self.history.problem()
    }

    /// Maps `key` to `destination` and pushes it to this replica's nodes without waiting
    /// for their acks. Refused (400) for a destination the config does not declare, and
    /// (503) while the store's history is lost and no new epoch is set up.
    pub async fn put(&self, key: &str, destination: &str) -> Result<Committed> {
        if !self.undeclared.is_declared(destination) {
            return Err(Error::BadRequest(format!("destination {destination:?} is not declared")));
        }
        let mut pushed = self.write_lock().await?;
        let written = self.store.put(key, destination).await;
        let revision = self.refused(&mut pushed, written).await?;
        self.publish(&mut pushed, revision).await
    }

    /// Removes `key`'s mapping and pushes that, like [`put`](Self::put). `None`: it was
    /// not mapped, nothing changed.
    pub async fn remove(&self, key: &str) -> Result<Option<Committed>> {
        let mut pushed = self.write_lock().await?;
        let written = self.store.delete(key).await;
        let Some(revision) = self.refused(&mut pushed, written).await? else { return Ok(None) };
        self.publish(&mut pushed, revision).await.map(Some)
    }

    /// The write lock, once a loss of history found earlier is recovered from.
    async fn write_lock(&self) -> Result<MutexGuard<'_, u64>> {
        let mut pushed = self.pushed.lock().await;
        self.before_write(&mut pushed).await?;
        Ok(pushed)
    }

    /// Pushes a write of `revision` just made in the store. A revision already pushed
    /// means the history went back under this replica: the recovery's flush covers it.
    async fn publish(&self, pushed: &mut u64, revision: u64) -> Result<Committed> {
        if revision <= *pushed {
            self.reused(pushed, revision).await?;
        }
        self.push_since(pushed).await?;
        Ok(Committed { epoch: self.epoch(), revision })
    }

    /// Pushes every change the nodes have not been sent yet: called when the store
    /// reports a change made elsewhere (another replica, a bulk import), by the periodic
    /// poll, and before waiting on a peer's write. Returns the revision the nodes now follow.
    pub async fn catch_up(&self) -> Result<u64> {
        let mut pushed = self.pushed.lock().await;
        self.push_since(&mut pushed).await
    }

    /// Welcomes a node that last applied `(hello.epoch, hello.last_revision)`, catches
    /// it up and registers its stream with the fleet, all under the write lock: every
    /// change after its Welcome's revision reaches it through its outbox.
    pub async fn register(
        &self,
        hello: NodeHello,
        address: Option<SocketAddr>,
        commands: CommandSender,
    ) -> Result<Registered> {
        let mut pushed = self.pushed.lock().await;
        let (welcome, replay) = self.welcome(&mut pushed, &hello.epoch, hello.last_revision).await?;
        let applied = if welcome.flush_cache {
            (welcome.epoch.clone(), welcome.revision)
        } else {
            (hello.epoch.clone(), hello.last_revision)
        };
        let in_flight = replay.as_ref().map_or(0, |u| u.revision);
        let registration = self.fleet.connect(hello, address, applied, in_flight, commands)?;
        Ok(Registered { registration, welcome, replay })
    }

    /// Pushes the store's changes after `*pushed` in batches, oldest first.
    async fn push_since(&self, pushed: &mut u64) -> Result<u64> {
        loop {
            let current = self.checked_revision(pushed).await?;
            if current <= *pushed {
                return Ok(*pushed);
            }
            let changes = match self.store.changes_since(*pushed, BATCH).await {
                // Changed since the check: the next one recovers.
                Err(StoreError::EpochChanged { .. }) => continue,
                other => other?.filter(|c| !c.is_empty()),
            };
            let epoch = self.epoch();
            let update = match changes {
                Some(changes) => {
                    self.undeclared.pushed(&changes);
                    RouteUpdate::from_history(&epoch, changes)
                }
                // The history no longer reaches back that far: every node starts afresh.
                None => {
                    self.undeclared.flushed();
                    RouteUpdate::flush(&epoch, current)
                }
            };
            *pushed = update.revision;
            self.fleet.push(update);
        }
    }

    /// The Welcome for a node that last applied `(epoch, last)`, and the changes to replay
    /// after it, once everything is pushed: the node is welcomed at the revision every
    /// other node has been sent. A node that cannot catch up by replay flushes its cache.
    async fn welcome(&self, pushed: &mut u64, epoch: &str, last: u64) -> Result<(Welcome, Option<RouteUpdate>)> {
        let mut current = self.push_since(pushed).await?;
        if epoch == &*self.epoch() && last > current {
            current = self.node_ahead(pushed, last, current).await?;
        }
        let replay = if epoch == &*self.epoch() && last <= current { self.replay(last, current).await? } else { None };
        let welcome = Welcome { epoch: self.epoch().to_string(), revision: current, flush_cache: replay.is_none() };
        let update = replay
            .filter(|c| !c.is_empty())
            .map(|changes| RouteUpdate { revision: current, ..RouteUpdate::from_history(&self.epoch(), changes) });
        Ok((welcome, update))
    }

    /// The changes after `last` up to `current`, if they can be replayed key by key: not
    /// too many, and no bulk change among them.
    async fn replay(&self, last: u64, current: u64) -> Result<Option<Vec<Change>>> {
        Ok(self
            .store
            .changes_since(last, MAX_REPLAY)
            .await?
            .filter(|c| c.len() < MAX_REPLAY && !c.iter().any(|c| c.is_bulk()))
            .map(|c| c.into_iter().filter(|c| c.revision <= current).collect()))
    }
}

#[cfg(test)]
mod tests;
