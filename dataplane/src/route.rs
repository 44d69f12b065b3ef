//! The route cache: route key → destination, answered from memory or the control plane.
//!
//! Entries live in moka for their TTL plus `max_stale`: past the TTL an entry is only used
//! when the control plane cannot be reached, so a node keeps serving through an outage
//! without ever sending an unknown account to the default destination. Concurrent misses
//! for one key share one `Resolve`, and a pushed change bumps a generation fence so a
//! lookup already in flight never writes an older answer back over it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use moka::future::Cache;
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

type Flight = Shared<BoxFuture<'static, Result<Resolved, RouteError>>>;

pub struct RouteCache {
    entries: Cache<String, Entry>,
    settings: CacheSettings,
    resolver: Arc<dyn Resolver>,
    inflight: Mutex<HashMap<String, Flight>>,
    generation: AtomicU64,
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
            inflight: Mutex::default(),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> CacheSettings {
        self.settings
    }

    /// The destination for `key`: a fresh cached answer, else the control plane, else a
    /// stale answer within `max_stale`, else `RouteError::Unavailable`.
    pub async fn lookup(self: &Arc<Self>, key: &str) -> Result<Resolved, RouteError> {
        let cached = self.entries.get(key).await;
        if let Some(entry) = &cached {
            if entry.fetched.elapsed() < self.ttl(&entry.resolved) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(entry.resolved.clone());
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        match self.flight(key).await {
            Ok(resolved) => Ok(resolved),
            Err(err) => match cached {
                Some(entry) if entry.fetched.elapsed() < self.ttl(&entry.resolved) + self.settings.max_stale => {
                    tracing::debug!(error = %err, "control plane unreachable; serving a stale route");
                    Ok(entry.resolved)
                }
                _ => Err(err),
            },
        }
    }

    fn ttl(&self, resolved: &Resolved) -> Duration {
        if resolved.mapped {
            self.settings.positive_ttl
        } else {
            self.settings.negative_ttl
        }
    }

    /// Joins the in-flight `Resolve` for `key` or starts one. The fetch runs in its own
    /// task so a client that hangs up does not cancel it for the others waiting.
    fn flight(self: &Arc<Self>, key: &str) -> Flight {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = inflight.get(key) {
            return flight.clone();
        }
        let this = Arc::clone(self);
        let owned = key.to_string();
        let task = tokio::spawn(async move { this.fetch(owned).await });
        let flight = async move {
            task.await.unwrap_or_else(|e| Err(RouteError::Unavailable(format!("resolve task failed: {e}"))))
        }
        .boxed()
        .shared();
        inflight.insert(key.to_string(), flight.clone());
        flight
    }

    async fn fetch(self: Arc<Self>, key: String) -> Result<Resolved, RouteError> {
        // A change for this key may land while Resolve is on the wire; then the answer
        // may predate it. Ask again (bounded) rather than write an old answer back.
        let mut result = Err(RouteError::Unavailable("not resolved".into()));
        for _ in 0..3 {
            let fence = self.generation.load(Ordering::Acquire);
            result = self.resolver.resolve(key.clone()).await;
            if self.generation.load(Ordering::Acquire) == fence {
                if let Ok(resolved) = &result {
                    let entry = Entry { resolved: resolved.clone(), fetched: Instant::now() };
                    self.entries.insert(key.clone(), entry).await;
                }
                break;
            }
        }
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        result
    }

    fn fence(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A pushed route change: the new answer is cached at once.
    pub async fn upsert(&self, key: &str, destination: &str) {
        self.fence();
        let resolved = Resolved { destination: destination.to_string(), mapped: true };
        self.entries.insert(key.to_string(), Entry { resolved, fetched: Instant::now() }).await;
    }

    /// A pushed removal or invalidation: the next lookup asks the control plane.
    pub async fn remove(&self, key: &str) {
        self.fence();
        self.entries.invalidate(key).await;
    }

    pub fn clear(&self) {
        self.fence();
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
    pub async fn sync(&self) {
        self.entries.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod interleavings;
