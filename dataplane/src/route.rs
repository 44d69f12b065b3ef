//! The route cache: route key → destination, answered from memory or the control plane.
//!
//! Entries live in moka for their TTL plus `max_stale`: past the TTL an entry is only used
//! when the control plane cannot be reached, so a node keeps serving through an outage
//! without ever sending an unknown account to the default destination. Concurrent misses
//! for one key share one `Resolve`.
//!
//! The fence: a lookup's answer is written back only if no change to its key was pushed
//! while it was on the wire. The flights table is the one lock: a pushed change takes its
//! key's flight out of it (and updates the cache) while holding it, and a flight checks it
//! is still there and writes its answer back while holding it, so no change can slip
//! between the check and the write. A change to one key never touches another key's flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use moka::sync::Cache;
use tokio::time::Instant;

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
}

/// The source of answers for misses: the control plane's `Resolve` (a fake in tests).
pub trait Resolver: Send + Sync + 'static {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Resolved, RouteError>>;
}

#[derive(Debug, Clone)]
struct Entry {
    resolved: Resolved,
    fetched: Instant,
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

pub struct RouteCache {
    entries: Cache<String, Entry>,
    settings: CacheSettings,
    resolver: Arc<dyn Resolver>,
    flights: Mutex<HashMap<String, InFlight>>,
    next_flight: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
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
        let lifetime = settings.positive_ttl.max(settings.negative_ttl) + settings.max_stale;
        let entries = Cache::builder()
            .max_capacity(settings.max_entries.max(1))
            .time_to_live(lifetime.max(Duration::from_millis(1)))
            .build();
        Arc::new(Self {
            entries,
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
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
            match self.flight(key).await {
                Answer::Resolved(resolved) => return Ok(resolved),
                Answer::Superseded => continue,
                Answer::Failed(err) => {
                    return match cached {
                        Some(entry)
                            if entry.fetched.elapsed() < self.ttl(&entry.resolved) + self.settings.max_stale =>
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
                self.entries.insert(key.to_string(), Entry { resolved: resolved.clone(), fetched: Instant::now() });
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
        self.entries.insert(key.to_string(), Entry { resolved, fetched: Instant::now() });
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
        self.entries.invalidate_all();
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

    /// Runs moka's pending housekeeping so `entries` is exact (reports, tests).
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod interleavings;
