//! Mappings that name a destination this control plane does not declare: what its nodes
//! answer with a temporary failure (they hold this replica's fleet settings), as far as this
//! replica has pushed or resolved them since it started. `GET /nodes` reports them per node,
//! and a write refused because a replica lacks its destination lists them as conflicts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use switchyard_common::routekey::redact;

use crate::store::Change;

/// Accounts tracked at most: past it, new ones are warned about but not counted, so a bulk
/// import to a destination this replica lacks cannot grow the map without bound.
pub const MAX_TRACKED: usize = 100_000;

/// The accounts this replica's nodes cannot route, by key.
#[derive(Debug)]
pub struct Undeclared {
    declared: BTreeSet<String>,
    keys: Mutex<HashMap<String, String>>,
}

/// One destination's accounts as `/nodes` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndeclaredCount {
    pub destination: String,
    /// Accounts mapped to it that this replica has seen (up to [`MAX_TRACKED`] in all).
    pub accounts: u64,
}

/// A replica that does not declare the destination of a write, and the nodes connected to
/// it (they hold its settings, so they could not route the account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub peer: String,
    pub destination: String,
    pub nodes: Vec<String>,
}

impl Undeclared {
    /// `declared`: the destinations in this control plane's config.
    pub fn new(declared: impl IntoIterator<Item = String>) -> Self {
        Undeclared { declared: declared.into_iter().collect(), keys: Mutex::default() }
    }

    pub fn is_declared(&self, destination: &str) -> bool {
        self.declared.contains(destination)
    }

    /// Changes about to be pushed to this replica's nodes, oldest first. A bulk change
    /// flushes the nodes' caches, so what was known before it no longer holds.
    pub fn pushed(&self, changes: &[Change]) {
        // One warning per destination and batch: (accounts, the first one).
        let mut seen: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
        let mut keys = self.lock();
        for change in changes {
            if change.is_bulk() {
                keys.clear();
                continue;
            }
            if let Some(d) = change.destination.as_deref().filter(|d| !self.is_declared(d)) {
                seen.entry(d).or_insert((0, &change.key)).0 += 1;
            }
            note(&mut keys, &self.declared, &change.key, change.destination.as_deref());
        }
        drop(keys);
        for (destination, (accounts, first)) in seen {
            tracing::warn!(
                %destination,
                accounts,
                account = %redact(first),
                "mappings name a destination this control plane does not declare; its nodes answer those accounts with a temporary failure"
            );
        }
    }

    /// A Resolve answered for `key` (`None`: unmapped).
    pub fn resolved(&self, key: &str, destination: Option<&str>) {
        note(&mut self.lock(), &self.declared, key, destination);
    }

    /// The nodes' caches were flushed (the history no longer reaches back far enough).
    pub fn flushed(&self) {
        self.lock().clear();
    }

    /// Accounts per undeclared destination, by destination.
    pub fn summary(&self) -> Vec<UndeclaredCount> {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        let keys = self.lock();
        for destination in keys.values() {
            *counts.entry(destination).or_default() += 1;
        }
        counts.into_iter().map(|(d, accounts)| UndeclaredCount { destination: d.to_string(), accounts }).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records where `key` now points: tracked while it names an undeclared destination.
fn note(keys: &mut HashMap<String, String>, declared: &BTreeSet<String>, key: &str, destination: Option<&str>) {
    match destination.filter(|d| !declared.contains(*d)) {
        Some(d) if keys.len() < MAX_TRACKED || keys.contains_key(key) => {
            keys.insert(key.to_string(), d.to_string());
        }
        Some(_) => {}
        None => {
            keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64, key: &str, destination: Option<&str>) -> Change {
        Change { revision, key: key.into(), destination: destination.map(Into::into) }
    }

    fn tracker() -> Undeclared {
        Undeclared::new(["legacy".to_string()])
    }

    fn count(destination: &str, accounts: u64) -> UndeclaredCount {
        UndeclaredCount { destination: destination.into(), accounts }
    }

    #[test]
    fn a_key_is_counted_while_it_names_an_undeclared_destination() {
        let t = tracker();
        t.pushed(&[change(1, "alice", Some("new")), change(2, "bob", Some("new")), change(3, "carol", Some("x"))]);
        assert_eq!(t.summary(), [count("new", 2), count("x", 1)]);
        t.pushed(&[change(4, "alice", Some("legacy")), change(5, "carol", None)]);
        assert_eq!(t.summary(), [count("new", 1)], "remapped to a declared one, or removed: no longer counted");
        t.resolved("bob", None);
        t.resolved("dave", Some("x"));
        t.resolved("erin", Some("legacy"));
        assert_eq!(t.summary(), [count("x", 1)]);
    }

    #[test]
    fn a_bulk_change_or_a_flush_forgets_what_came_before_it() {
        let t = tracker();
        t.pushed(&[
            change(1, "alice", Some("new")),
            change(2, crate::store::BULK_KEY, None),
            change(3, "bob", Some("new")),
        ]);
        assert_eq!(t.summary(), [count("new", 1)]);
        t.flushed();
        assert_eq!(t.summary(), []);
    }

    #[test]
    fn the_accounts_tracked_are_bounded() {
        let t = tracker();
        let changes: Vec<Change> =
            (0..MAX_TRACKED as u64 + 10).map(|i| change(i + 1, &format!("k{i}"), Some("new"))).collect();
        t.pushed(&changes);
        assert_eq!(t.summary(), [count("new", MAX_TRACKED as u64)]);
        t.pushed(&[change(u64::MAX, "k0", Some("other"))]);
        assert_eq!(t.summary(), [count("new", MAX_TRACKED as u64 - 1), count("other", 1)], "a tracked key still moves");
    }
}
