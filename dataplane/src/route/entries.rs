//! Where the route cache keeps its answers: two moka caches bounded by bytes, one for
//! mapped routes and one for unmapped answers, each entry living only as long as it can
//! still be used.
//!
//! Apart, because anyone can make a node cache unmapped answers (port 25 takes invented
//! recipients without a login): in one cache they would push out the mapped routes, the
//! ones a node needs to keep serving through a control-plane outage. A mapped route lives
//! its TTL plus `max_stale`; an unmapped answer only its own TTL, as it is never served
//! stale (see `RouteCache::stale_window`). Every write goes through [`Entries::insert`],
//! [`Entries::invalidate`] or [`Entries::clear`] under the route cache's flights lock.

use std::time::Duration;

use moka::sync::Cache;
use tokio::time::Instant;

use super::Resolved;
use crate::settings::CacheSettings;

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub resolved: Resolved,
    pub fetched: Instant,
}

/// What one entry costs beyond its key and destination id: moka's entry, its key `Arc`,
/// deque and hash-table nodes, the `Entry` itself and allocator rounding (430–460 bytes
/// measured by `entry_overhead_is_measured` for 20- and 900-byte keys).
pub(super) const ENTRY_OVERHEAD: u32 = 448;

/// The bytes an entry is counted as, so the caches' bounds are bounds on memory.
pub(super) fn weight(key: &str, entry: &Entry) -> u32 {
    let bytes = key.len().saturating_add(entry.resolved.destination.len());
    u32::try_from(bytes).unwrap_or(u32::MAX).saturating_add(ENTRY_OVERHEAD)
}

pub(super) struct Entries {
    mapped: Cache<String, Entry>,
    unmapped: Cache<String, Entry>,
}

impl Entries {
    pub(super) fn new(settings: &CacheSettings) -> Self {
        let cache = |max_bytes: u64, lifetime: Duration| {
            Cache::builder()
                .max_capacity(max_bytes.max(1))
                .weigher(|key: &String, entry: &Entry| weight(key, entry))
                .time_to_live(lifetime.max(Duration::from_millis(1)))
                .build()
        };
        Entries {
            mapped: cache(settings.max_bytes, settings.positive_ttl + settings.max_stale),
            unmapped: cache(settings.negative_max_bytes, settings.negative_ttl),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Entry> {
        self.mapped.get(key).or_else(|| self.unmapped.get(key))
    }

    /// Caches `entry` in the cache of its kind and drops an answer of the other kind, which
    /// it replaces.
    pub(super) fn insert(&self, key: &str, entry: Entry) {
        let (to, other) = match entry.resolved.mapped {
            true => (&self.mapped, &self.unmapped),
            false => (&self.unmapped, &self.mapped),
        };
        other.invalidate(key);
        to.insert(key.to_string(), entry);
    }

    pub(super) fn invalidate(&self, key: &str) {
        self.mapped.invalidate(key);
        self.unmapped.invalidate(key);
    }

    pub(super) fn clear(&self) {
        self.mapped.invalidate_all();
        self.unmapped.invalidate_all();
    }

    pub(super) fn entry_count(&self) -> u64 {
        self.mapped.entry_count() + self.unmapped.entry_count()
    }

    /// (mapped, unmapped) bytes as the weigher counts them.
    pub(super) fn weighted_sizes(&self) -> (u64, u64) {
        (self.mapped.weighted_size(), self.unmapped.weighted_size())
    }

    pub(super) fn run_pending_tasks(&self) {
        self.mapped.run_pending_tasks();
        self.unmapped.run_pending_tasks();
    }
}
