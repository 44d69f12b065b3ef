//! The route cache: route key → destination, answered from memory or the control plane.
//!
//! Mapped routes live in moka for their TTL plus `max_stale`: past the TTL a route is only
//! used when the control plane cannot be reached, so a node keeps serving through an
//! outage without ever sending an unknown account to the default destination. Unmapped
//! answers live only their own TTL (`entries` keeps them apart, bounded by bytes).
//! Concurrent misses for one key share one `Resolve`; a session can be given a budget of
//! lookups that miss ([`ResolveBudget`]).
//!
//! The fence: a lookup's answer is written back only if no change to its key was pushed
//! while it was on the wire. The flights table is the one lock: a pushed change takes its
//! key's flight out of it (and updates the cache) while holding it, and a flight checks it
//! is still there and writes its answer back while holding it, so no change can slip
//! between the check and the write. A change to one key never touches another key's flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::time::Instant;

use entries::{Entries, Entry};

use crate::settings::CacheSettings;

/// What the control plane said about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub destination: String,
    /// false: an unmapped account sent to the default destination (negative TTL).
    pub mapped: bool,
}

/// Why a key has no route right now. Never answered with the default destination.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("control plane unreachable and no cached route: {0}")]
    Unavailable(String),
    /// Not cached, and the session's [`ResolveBudget`] is spent: not asked.
    #[error("no route lookups left in this session")]
    OverBudget,
}

/// The source of answers for misses: the control plane's `Resolve` (a fake in tests).
pub trait Resolver: Send + Sync + 'static {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Resolved, RouteError>>;
}

/// How many lookups that miss the cache (each a `Resolve`) one session may still make. A
/// session nobody authenticated (port 25, LMTP) could otherwise have the node ask about,
/// and cache, any number of invented addresses.
#[derive(Debug)]
pub struct ResolveBudget {
    left: AtomicU32,
    refused: AtomicU32,
}

impl ResolveBudget {
    pub fn new(lookups: u32) -> Self {
        Self { left: AtomicU32::new(lookups), refused: AtomicU32::new(0) }
    }

    /// Takes one lookup; false (and counted) when none is left.
    fn take(&self) -> bool {
        let taken = self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if !taken {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Lookups refused so far for want of budget.
    pub fn refused(&self) -> u32 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// How one `Resolve` in flight ended for the lookups waiting on it.
#[derive(Debug, Clone)]
enum Answer {
    Resolved(Resolved),
    Failed(RouteError),
    /// A change to the key was pushed meanwhile: the answer may predate it and was dropped.
    Superseded,
}

type Flight = Shared<BoxFuture<'static, Answer>>;

/// A `Resolve` in flight, under an id of its own so a flight started after a change is
/// not taken for the one the change superseded.
struct InFlight {
    id: u64,
    flight: Flight,
}

/// How often a lookup starts over when changes keep superseding its `Resolve`.
const ROUNDS: usize = 3;

/// The node's route cache (see the module doc): lookups by route key, pushed changes from
/// the control link, and its hit/miss counters for the metrics line and reports.
pub struct RouteCache {
    entries: Entries,
    settings: CacheSettings,
    resolver: Arc<dyn Resolver>,
    flights: Mutex<HashMap<String, InFlight>>,
    next_flight: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Cumulative counters of this node instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

impl RouteCache {
    pub fn new(settings: CacheSettings, resolver: Arc<dyn Resolver>) -> Arc<Self> {
        Arc::new(Self {
            entries: Entries::new(&settings),
            settings,
            resolver,
            flights: Mutex::default(),
            next_flight: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> CacheSettings {
        self.settings
    }

    /// The destination for `key`: a fresh cached answer, else the control plane, else a
    /// stale answer within `max_stale`, else `RouteError::Unavailable`. A change pushed while
    /// the control plane was being asked wins: the lookup then answers from it, or asks again
    /// if it was a removal.
    pub async fn lookup(self: &Arc<Self>, key: &str) -> Result<Resolved, RouteError> {
        self.lookup_within(key, None).await
    }

    /// [`Self::lookup`] taking a miss out of `budget`: `RouteError::OverBudget`, without
    /// asking, when the key is not cached fresh and the budget is spent.
    pub async fn lookup_within(
        self: &Arc<Self>,
        key: &str,
        budget: Option<&ResolveBudget>,
    ) -> Result<Resolved, RouteError> {
        for round in 0..ROUNDS {
            let cached = self.entries.get(key);
            if let Some(entry) = &cached {
                if entry.fetched.elapsed() < self.ttl(&entry.resolved) {
                    if round == 0 {
                        self.hits.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(entry.resolved.clone());
                }
            }
            if round == 0 {
                if budget.is_some_and(|b| !b.take()) {
                    return Err(RouteError::OverBudget);
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
            match self.flight(key).await {
                Answer::Resolved(resolved) => return Ok(resolved),
                Answer::Superseded => continue,
                Answer::Failed(err) => {
                    return match cached {
                        Some(entry)
                            if entry.fetched.elapsed()
                                < self.ttl(&entry.resolved) + self.stale_window(&entry.resolved) =>
                        {
                            tracing::debug!(error = %err, "control plane unreachable; serving a stale route");
                            Ok(entry.resolved)
                        }
                        _ => Err(err),
                    }
                }
            }
        }
        Err(RouteError::Unavailable("the route kept changing while it was looked up".into()))
    }

    fn ttl(&self, resolved: &Resolved) -> Duration {
        if resolved.mapped {
            self.settings.positive_ttl
        } else {
            self.settings.negative_ttl
        }
    }

    /// How long past its TTL an answer may serve while the control plane cannot be reached.
    /// Never for an unmapped one: serving it would send the account to the default
    /// destination on an answer we can no longer check, the misroute a node must never make
    /// while the control plane is down (the account may have been mapped meanwhile;
    /// moving accounts off the default is what a migration does). The sender's MTA or the
    /// user's client retries a temporary failure; mail written to the wrong server is lost
    /// to the migration.
    fn stale_window(&self, resolved: &Resolved) -> Duration {
        if resolved.mapped {
            self.settings.max_stale
        } else {
            Duration::ZERO
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, InFlight>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the in-flight `Resolve` for `key` or starts one. The fetch runs in its own
    /// task so a client that hangs up does not cancel it for the others waiting.
    fn flight(self: &Arc<Self>, key: &str) -> Flight {
        let mut flights = self.lock();
        if let Some(in_flight) = flights.get(key) {
            return in_flight.flight.clone();
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(self);
        let owned = key.to_string();
        let task = tokio::spawn(async move { this.fetch(owned, id).await });
        let this = Arc::clone(self);
        let owned = key.to_string();
        let flight = async move {
            let failed = |e| Err(RouteError::Unavailable(format!("resolve task failed: {e}")));
            match task.await {
                Ok(answer) => answer,
                Err(e) => this.settle(&owned, id, failed(e)),
            }
        }
        .boxed()
        .shared();
        flights.insert(key.to_string(), InFlight { id, flight: flight.clone() });
        flight
    }

    async fn fetch(self: Arc<Self>, key: String, id: u64) -> Answer {
        let result = self.resolver.resolve(key.clone()).await;
        self.settle(&key, id, result)
    }

    /// Ends flight `id` of `key`: if no change superseded it, writes its answer back (under
    /// the same lock a change takes, so none can slip in between).
    fn settle(&self, key: &str, id: u64, result: Result<Resolved, RouteError>) -> Answer {
        let mut flights = self.lock();
        if flights.get(key).is_none_or(|f| f.id != id) {
            return Answer::Superseded;
        }
        flights.remove(key);
        match result {
            Ok(resolved) => {
                self.entries.insert(key, Entry { resolved: resolved.clone(), fetched: Instant::now() });
                Answer::Resolved(resolved)
            }
            Err(err) => Answer::Failed(err),
        }
    }

    /// A pushed route change: the new answer is cached at once, and a lookup of `key` in
    /// flight answers with it.
    pub fn upsert(&self, key: &str, destination: &str) {
        let resolved = Resolved { destination: destination.to_string(), mapped: true };
        let mut flights = self.lock();
        flights.remove(key);
        self.entries.insert(key, Entry { resolved, fetched: Instant::now() });
    }

    /// A pushed removal or invalidation: the next lookup (and one in flight) asks again.
    pub fn remove(&self, key: &str) {
        let mut flights = self.lock();
        flights.remove(key);
        self.entries.invalidate(key);
    }

    pub fn clear(&self) {
        let mut flights = self.lock();
        flights.clear();
        self.entries.clear();
    }

    /// Keeps the instance's cumulative counters across a rebuild with new settings.
    pub fn carry_counters(&self, old: &RouteCache) {
        self.hits.store(old.hits.load(Ordering::Relaxed), Ordering::Relaxed);
        self.misses.store(old.misses.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
        }
    }

    /// (mapped, unmapped) bytes cached, as the byte bounds count them.
    pub fn weighted_sizes(&self) -> (u64, u64) {
        self.entries.weighted_sizes()
    }

    /// Runs moka's pending housekeeping so `entries` is exact (reports, tests).
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
    }
}

mod entries;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod interleavings;
