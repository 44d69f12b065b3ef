//! Route updates waiting for one node: at most one update is in flight per node; changes
//! pushed while it is unacked are merged (latest per key) and sent as one update when
//! the ack arrives, so a slow node costs the control plane one pending map, not a queue.
//! Revisions are compared within one epoch only: an update of a new epoch replaces
//! whatever was pending (and flushes), and only an ack of the in-flight epoch releases it.

use std::collections::BTreeMap;

use crate::route::{RouteChange, RouteUpdate};

#[derive(Debug, Default)]
pub struct Outbox {
    /// The epoch and revision of the update sent last and not yet acked.
    in_flight: Option<(String, u64)>,
    epoch: String,
    revision: u64,
    /// key → new destination, `None` for a removal.
    changes: BTreeMap<String, Option<String>>,
    /// A bulk change is pending: the node drops its whole cache, which supersedes every
    /// key-level change before it.
    flush: bool,
}

impl Outbox {
    /// A fresh outbox for a node that has an update (the Welcome's replay, revision
    /// `in_flight` of `epoch`; 0: none) in flight.
    pub fn new(epoch: &str, in_flight: u64) -> Self {
        Outbox { in_flight: (in_flight > 0).then(|| (epoch.to_string(), in_flight)), ..Default::default() }
    }

    /// Adds an update's changes; later ones for the same key win. Revisions of another
    /// epoch mean nothing here: a new epoch starts over with a flush.
    pub fn add(&mut self, update: &RouteUpdate) {
        if self.epoch != update.epoch {
            self.epoch.clone_from(&update.epoch);
            self.revision = update.revision;
            self.flush = true;
            self.changes.clear();
        }
        self.revision = self.revision.max(update.revision);
        if update.flush {
            self.flush = true;
            self.changes.clear();
        }
        for change in &update.changes {
            self.changes.insert(change.key.clone(), change.destination.clone());
        }
    }

    /// The merged update to send now, if the node acked (`(epoch, revision)` it applied)
    /// everything in flight.
    pub fn ready(&mut self, acked: &(String, u64)) -> Option<RouteUpdate> {
        let waiting = self.in_flight.as_ref().is_some_and(|(epoch, revision)| *epoch != acked.0 || acked.1 < *revision);
        if (self.changes.is_empty() && !self.flush) || waiting {
            return None;
        }
        self.in_flight = Some((self.epoch.clone(), self.revision));
        let changes = std::mem::take(&mut self.changes)
            .into_iter()
            .map(|(key, destination)| RouteChange { key, destination })
            .collect();
        let flush = std::mem::take(&mut self.flush);
        Some(RouteUpdate { epoch: self.epoch.clone(), revision: self.revision, changes, flush })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(revision: u64) -> (String, u64) {
        ("e".to_string(), revision)
    }

    fn update(revision: u64, key: &str, dest: Option<&str>) -> RouteUpdate {
        let change = RouteChange { key: key.into(), destination: dest.map(Into::into) };
        RouteUpdate { epoch: "e".into(), revision, changes: vec![change], flush: false }
    }

    #[test]
    fn a_bulk_change_supersedes_earlier_keys_and_keeps_later_ones() {
        let mut out = Outbox::new("e", 0);
        out.add(&update(1, "alice", Some("new")));
        let _ = out.ready(&acked(0)).unwrap();
        out.add(&update(2, "bob", Some("new")));
        out.add(&RouteUpdate::flush("e", 3));
        out.add(&update(4, "carol", Some("legacy")));
        let merged = out.ready(&acked(1)).unwrap();
        assert!(merged.flush);
        assert_eq!(merged.revision, 4);
        assert_eq!(merged.changes.len(), 1, "bob's change is covered by the flush, carol's comes after it");
        assert_eq!(merged.changes[0].key, "carol");
        out.add(&update(5, "dave", None));
        assert!(!out.ready(&acked(4)).unwrap().flush, "the flush is sent once");
    }

    #[test]
    fn one_update_in_flight_and_the_rest_merged_until_the_ack() {
        let mut out = Outbox::new("e", 0);
        out.add(&update(1, "alice", Some("new")));
        let first = out.ready(&acked(0)).unwrap();
        assert_eq!(first.revision, 1);
        out.add(&update(2, "alice", Some("legacy")));
        out.add(&update(3, "bob", Some("new")));
        out.add(&update(4, "alice", None));
        assert!(out.ready(&acked(0)).is_none(), "revision 1 is not acked yet");
        let merged = out.ready(&acked(1)).unwrap();
        assert_eq!(merged.revision, 4);
        assert_eq!(merged.changes.len(), 2, "alice once (her latest change) and bob");
        assert_eq!(merged.changes[0].key, "alice");
        assert_eq!(merged.changes[0].destination, None);
        assert!(out.ready(&acked(4)).is_none(), "nothing left");
    }

    #[test]
    fn a_replay_in_flight_holds_later_pushes() {
        let mut out = Outbox::new("e", 7);
        out.add(&update(8, "carol", Some("new")));
        assert!(out.ready(&acked(6)).is_none(), "the replay (revision 7) is not acked yet");
        let sent = out.ready(&acked(7)).unwrap();
        assert_eq!(sent.revision, 8);
        assert_eq!(sent.changes[0].destination.as_deref(), Some("new"));
    }

    #[test]
    fn a_new_epoch_starts_over_and_only_an_ack_of_the_epoch_in_flight_releases_it() {
        let mut out = Outbox::new("e", 0);
        out.add(&update(57, "alice", Some("new")));
        let _ = out.ready(&acked(56)).unwrap();
        out.add(&update(58, "bob", Some("new")));
        // The store lost its history: revisions restart low under a new epoch.
        out.add(&RouteUpdate::flush("f", 0));
        out.add(&RouteUpdate { epoch: "f".into(), revision: 1, ..update(1, "carol", Some("legacy")) });
        let merged = out.ready(&acked(57)).unwrap();
        assert_eq!((merged.epoch.as_str(), merged.revision, merged.flush), ("f", 1, true), "not revision 58 of e");
        assert_eq!(merged.changes.len(), 1, "bob's change of the old epoch is dropped, carol's kept");
        out.add(&RouteUpdate { epoch: "f".into(), revision: 2, ..update(2, "dave", None) });
        assert!(out.ready(&acked(57)).is_none(), "an ack of the old epoch does not release the new one");
        assert!(out.ready(&("f".to_string(), 1)).is_some());
        // An update of a new epoch always flushes, even if it does not say so.
        out.add(&RouteUpdate { epoch: "g".into(), ..update(1, "erin", Some("new")) });
        assert!(out.ready(&("f".to_string(), 2)).unwrap().flush);
    }
}
