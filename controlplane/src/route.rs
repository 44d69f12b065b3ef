//! Route updates as the control plane handles them, from the store's history to each
//! node's outbox: what changed (a key's new destination or its removal), under which
//! epoch, up to which revision, and whether the nodes must drop their whole cache. The
//! protobuf form is built only when a node's stream sends one ([`crate::wire`]).

use crate::store::Change;

/// One key's new route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    pub key: String,
    /// `None`: the mapping was removed (the node routes the key by the default again).
    pub destination: Option<String>,
}

/// Changes of one epoch up to `revision`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpdate {
    pub epoch: String,
    pub revision: u64,
    pub changes: Vec<RouteChange>,
    /// The node drops every cached route before applying `changes`.
    pub flush: bool,
}

impl RouteUpdate {
    /// Tells every node to drop its cache at `revision` of `epoch`: the history no longer
    /// reaches back far enough, or a new epoch starts.
    pub fn flush(epoch: &str, revision: u64) -> Self {
        RouteUpdate { epoch: epoch.to_string(), revision, changes: Vec::new(), flush: true }
    }

    /// One update carrying `changes` of the store's history (oldest first, not empty).
    /// Everything before the last bulk change is covered by the flush it causes.
    pub fn from_history(epoch: &str, changes: Vec<Change>) -> Self {
        let revision = changes.last().map_or(0, |c| c.revision);
        let bulk = changes.iter().rposition(Change::is_bulk);
        let changes = changes
            .into_iter()
            .skip(bulk.map_or(0, |i| i + 1))
            .map(|c| RouteChange { key: c.key, destination: c.destination })
            .collect();
        RouteUpdate { epoch: epoch.to_string(), revision, changes, flush: bulk.is_some() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64, key: &str, destination: Option<&str>) -> Change {
        Change { revision, key: key.into(), destination: destination.map(Into::into) }
    }

    fn route(key: &str, destination: Option<&str>) -> RouteChange {
        RouteChange { key: key.into(), destination: destination.map(Into::into) }
    }

    #[test]
    fn an_update_carries_key_changes_in_order_and_its_last_revision() {
        let update = RouteUpdate::from_history("e", vec![change(4, "alice", Some("new")), change(5, "bob", None)]);
        assert_eq!((update.revision, update.flush), (5, false));
        assert_eq!(update.changes, [route("alice", Some("new")), route("bob", None)]);
    }

    #[test]
    fn a_bulk_change_becomes_a_flush_that_covers_everything_before_it() {
        let update = RouteUpdate::from_history(
            "e",
            vec![
                change(4, "alice", Some("new")),
                change(5, crate::store::BULK_KEY, None),
                change(6, "bob", Some("legacy")),
                change(7, crate::store::BULK_KEY, None),
                change(8, "carol", None),
            ],
        );
        assert!(update.flush);
        assert_eq!(update.revision, 8);
        assert_eq!(update.changes, [route("carol", None)], "only what came after the last bulk change");
    }
}
