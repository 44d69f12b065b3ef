//! The revision history the nodes follow, guarded. A store that lost it (its epoch is
//! missing: FLUSHALL, a restart without persistence, a failover to an empty replica), that
//! holds another one (a peer replica started a new epoch) or whose revision went back (a
//! database restored from an older copy, a truncated change log) is caught under the write
//! lock; a new epoch is then started in the store and every node is told to flush, before
//! any revision of the new history is pushed, acked or written through this replica.
//!
//! Nodes compare epochs and revisions, and an ack counts only for the epoch it names, so
//! once the epoch changes no node can be counted `applied` for a history it never saw.

use std::sync::Mutex;

use super::Publisher;
use crate::error::{Error, Result};
use crate::route::RouteUpdate;
use crate::store::{Head, StoreError};

/// Set while a loss was detected and the new epoch is not set up yet: writes are refused
/// and `/readyz` is not ready meanwhile.
#[derive(Debug, Default)]
pub(super) struct HistoryGuard {
    lost: Mutex<Option<String>>,
}

impl HistoryGuard {
    /// What was detected, while the recovery has not succeeded yet.
    pub(super) fn problem(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Records `problem`; true when nothing was recorded before (log it once).
    fn set(&self, problem: &str) -> bool {
        self.lock().replace(problem.to_string()).is_none()
    }

    fn clear(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What is wrong with the store's history, judged from its head, for a control plane that
/// follows `ours` and has pushed revision `pushed` of it to its nodes. `None`: nothing.
pub(super) fn diagnose(ours: &str, pushed: u64, head: &Head) -> Option<String> {
    match head.epoch.as_deref() {
        None => Some(format!("the store's epoch is missing where this control plane follows {ours}: the store lost its data")),
        Some(found) if found != ours => Some(format!(
            "the store's epoch is {found}, not {ours}: a peer replica started a new epoch, or the store was replaced"
        )),
        Some(_) if head.revision < pushed => Some(format!(
            "the store's revision went back from {pushed} to {}: it was restored from an older copy or its change log was cut",
            head.revision
        )),
        Some(_) => None,
    }
}

/// The checks and the recovery, each called with the write lock held (`pushed`).
impl Publisher {
    /// The store's revision, after making sure it is still the history this control plane
    /// pushed up to `*pushed` (the held write lock); recovers when it is not.
    pub(super) async fn checked_revision(&self, pushed: &mut u64) -> Result<u64> {
        let head = self.store.head().await?;
        // A recovery that failed halfway (the epoch renewed, the flush not pushed) is
        // finished here even though the store now looks right.
        match diagnose(&self.epoch(), *pushed, &head).or_else(|| self.history.problem()) {
            None => Ok(head.revision),
            Some(problem) => self.recover(pushed, &problem).await,
        }
    }

    /// A node says it applied `last` of the epoch we follow, past the store's `current`:
    /// the store went back without anyone writing through us since. Recovers; returns the
    /// revision the nodes are now told to flush to.
    pub(super) async fn node_ahead(&self, pushed: &mut u64, last: u64, current: u64) -> Result<u64> {
        let problem = format!(
            "a connecting node applied revision {last} of this epoch but the store is at {current}: \
             it was restored from an older copy or its change log was cut"
        );
        self.recover(pushed, &problem).await
    }

    /// A write through this replica got `revision`, which was already pushed: the history
    /// went back under it. The write is in the store; the flush of the recovery covers it.
    pub(super) async fn reused(&self, pushed: &mut u64, revision: u64) -> Result<u64> {
        let problem = format!(
            "a write got revision {revision}, but revision {} was already pushed: \
             the store was restored from an older copy or its change log was cut",
            *pushed
        );
        self.recover(pushed, &problem).await
    }

    /// Turns a write's refusal by the store into the recovery and a 503 for the write
    /// (the store made nothing of it); any other outcome passes through.
    pub(super) async fn refused<T>(&self, pushed: &mut u64, written: Result<T, StoreError>) -> Result<T> {
        match written {
            Err(e @ StoreError::EpochChanged { .. }) => {
                let problem = e.to_string();
                let recovered = self.recover(pushed, &problem).await;
                Err(history_lost(&problem, recovered.err(), "the write was not made"))
            }
            other => Ok(other?),
        }
    }

    /// Before a write: while a loss is unresolved, tries the recovery again and refuses
    /// the write if it still fails.
    pub(super) async fn before_write(&self, pushed: &mut u64) -> Result<()> {
        let Some(problem) = self.history.problem() else { return Ok(()) };
        match self.checked_revision(pushed).await {
            Ok(_) => Ok(()),
            Err(e) => Err(history_lost(&problem, Some(e), "the write was not made")),
        }
    }

    /// `/readyz`: not ready while a loss is unresolved, or while the store holds another
    /// epoch than the one followed here (the feed is about to notice).
    pub async fn readiness(&self) -> Result<()> {
        if let Some(problem) = self.history.problem() {
            return Err(history_lost(&problem, None, "not ready"));
        }
        let head = self.store.head().await?;
        match diagnose(&self.epoch(), 0, &head) {
            Some(problem) => Err(history_lost(&problem, None, "not ready")),
            None => Ok(()),
        }
    }

    /// Starts a new epoch in the store (or adopts the one a peer started) and tells every
    /// node to flush under it. On failure the loss stays recorded: writes stay refused and
    /// `/readyz` stays not ready until a later attempt (the feed's next poll) succeeds.
    async fn recover(&self, pushed: &mut u64, problem: &str) -> Result<u64> {
        let old = self.epoch();
        if self.history.set(problem) {
            tracing::error!(epoch = %old, pushed = *pushed, problem, "mapping store history lost or went back; refusing writes until a new epoch is set up and every node flushes");
        }
        let epoch = self.store.renew_epoch(&old).await?;
        let revision = self.store.revision().await?;
        self.fleet.push(RouteUpdate::flush(&epoch, revision));
        *pushed = revision;
        self.history.clear();
        tracing::warn!(old_epoch = %old, epoch = %epoch, revision, "new mapping store epoch; every node told to flush its route cache");
        Ok(revision)
    }
}

/// The error of a write (or `/readyz`) while the history is lost or was just recovered.
fn history_lost(problem: &str, cause: Option<Error>, outcome: &str) -> Error {
    let state = match cause {
        Some(e) => format!("setting up a new epoch fails for now ({e})"),
        None => "a new epoch is set up and every node told to flush its cache".to_string(),
    };
    Error::HistoryLost(format!("mapping store history lost or went back: {problem}; {state}; {outcome}: retry"))
}
