//! What the gRPC service and the management API share: the store, the fleet, the fleet
//! settings pushed to nodes, and the one path by which a mapping changes.

use std::sync::Arc;

use switchyard_common::routekey::{redact, RouteKeyRule};
use switchyard_proto::v1 as pb;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fleet::{Fleet, NodeResult};
use crate::history::HistoryGuard;
use crate::store::{Change, Store, StoreError};
use crate::undeclared::Undeclared;

pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub settings: pb::FleetSettings,
    pub rule: RouteKeyRule,
    /// The last revision pushed to the nodes. Held across write → push and Welcome →
    /// register, so every node sees revisions in order and none slips between a node's
    /// replay and its first live update.
    pub writes: Mutex<u64>,
    /// Cancelled when the control plane stops: ends every node Session so the gRPC
    /// server's graceful shutdown does not wait on streams that never end by themselves.
    pub shutdown: CancellationToken,
    /// Bounds how fast node Sessions are admitted.
    pub admission: Admission,
    /// The accounts this replica's nodes cannot route: their mapping names a destination
    /// this config does not declare.
    pub undeclared: Undeclared,
    /// Set while the store's history is lost and the new epoch is not set up yet.
    pub history: HistoryGuard,
}

/// How one identifier resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub key: String,
    pub destination: String,
    pub mapped: bool,
    /// Whether this control plane's config declares `destination` (the default always is).
    pub declared: bool,
}

/// A mapping change and how far it reached.
#[derive(Debug, Clone)]
pub struct Written {
    pub revision: u64,
    pub nodes: Vec<NodeResult>,
}

/// A committed write: the epoch it was pushed under and its revision. Acks count only
/// for this epoch, so a node that still follows an older history never satisfies them.
#[derive(Debug, Clone)]
pub struct Committed {
    pub epoch: Arc<str>,
    pub revision: u64,
}

impl Shared {
    pub fn new(config: Config, store: Store) -> Arc<Self> {
        let settings = fleet_settings(&config);
        let rule = config.route_key_rule();
        let fleet = Fleet::with_retention(config.server.heartbeat_interval, config.server.node_retention);
        let admission = Admission::new(config.grpc.session_rate, config.grpc.session_burst);
        let undeclared = Undeclared::new(config.destination.keys().cloned());
        Arc::new(Self {
            undeclared,
            config,
            store,
            fleet,
            settings,
            rule,
            writes: Mutex::new(0),
            shutdown: CancellationToken::new(),
            admission,
            history: HistoryGuard::default(),
        })
    }

    /// The epoch followed now; it changes when the store's history is lost or goes back.
    pub fn epoch(&self) -> Arc<str> {
        self.store.epoch()
    }

    pub fn is_declared(&self, destination: &str) -> bool {
        self.config.destination.contains_key(destination)
    }

    /// What the store says for a route key, and whether this config declares it (the API's
    /// view). A store error is an error, never the default destination.
    pub async fn lookup(&self, key: &str) -> Result<Resolution> {
        let key = key.to_string();
        Ok(match self.store.get(&key).await? {
            Some(destination) => {
                Resolution { declared: self.is_declared(&destination), key, destination, mapped: true }
            }
            None => {
                let destination = self.config.routing.default_destination.clone();
                Resolution { key, destination, mapped: false, declared: true }
            }
        })
    }

    /// Answers a node's `Resolve`. A mapping naming a destination this config does not
    /// declare is an error (the node answers its client with a temporary failure), never the
    /// default destination: that would misroute an account in the middle of a migration.
    pub async fn resolve(&self, key: &str) -> Result<Resolution> {
        // A store that lost its history answers "unmapped" for every account it lost: that
        // would send them to the default destination.
        if let Some(problem) = self.history.problem() {
            return Err(Error::HistoryLost(format!("mapping store history lost or went back: {problem}")));
        }
        let answer = self.lookup(key).await?;
        self.undeclared.resolved(key, answer.mapped.then_some(answer.destination.as_str()));
        if !answer.declared {
            tracing::warn!(account = %redact(key), destination = %answer.destination, "mapping names a destination this control plane does not declare; answering a temporary failure");
            let message = format!("destination {:?} is not declared by this control plane", answer.destination);
            return Err(Error::Undeclared { message, conflicts: Vec::new() });
        }
        Ok(answer)
    }

    /// Writes (or with `None` removes) one mapping, pushes it to every node and waits for
    /// their acks, so their caches no longer hold the old answer when this returns.
    pub async fn write(&self, key: &str, destination: Option<&str>) -> Result<Option<Written>> {
        let Some(Committed { epoch, revision }) = self.commit(key, destination).await? else {
            return Ok(None);
        };
        let nodes = self.fleet.wait_applied(&epoch, revision, self.config.api.ack_timeout).await;
        Ok(Some(Written { revision, nodes }))
    }

    /// Writes (or removes) one mapping and pushes it to this replica's nodes without
    /// waiting for their acks; returns the new revision (`None`: nothing to remove).
    /// Refused (503) while the store's history is lost and no new epoch is set up.
    pub async fn commit(&self, key: &str, destination: Option<&str>) -> Result<Option<Committed>> {
        if let Some(d) = destination.filter(|d| !self.is_declared(d)) {
            return Err(Error::BadRequest(format!("destination {d:?} is not declared")));
        }
        let mut pushed = self.writes.lock().await;
        self.before_write(&mut pushed).await?;
        let written: Result<Option<u64>, StoreError> = match destination {
            Some(d) => self.store.put(key, d).await.map(Some),
            None => self.store.delete(key).await,
        };
        let Some(revision) = self.refused(&mut pushed, written).await? else { return Ok(None) };
        if revision <= *pushed {
            self.reused(&mut pushed, revision).await?;
        }
        self.push_since(&mut pushed).await?;
        Ok(Some(Committed { epoch: self.epoch(), revision }))
    }

    /// Pushes every change the nodes have not been sent yet: called after a local write,
    /// when the store reports a change made elsewhere (another replica, a bulk import)
    /// and by the periodic poll. Returns the revision the nodes now follow.
    pub async fn catch_up(&self) -> Result<u64> {
        let mut pushed = self.writes.lock().await;
        self.push_since(&mut pushed).await
    }

    /// Pushes the store's changes after `*pushed` in batches, oldest first.
    async fn push_since(&self, pushed: &mut u64) -> Result<u64> {
        const BATCH: usize = 10_000;
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
                    route_update(&epoch, changes)
                }
                // The history no longer reaches back that far: every node starts afresh.
                None => {
                    self.undeclared.flushed();
                    pb::RouteUpdate { epoch: epoch.to_string(), revision: current, changes: vec![], flush: true }
                }
            };
            *pushed = update.revision;
            self.fleet.push(update);
        }
    }

    /// The Welcome for a node that last applied `(epoch, revision)`, and the changes to
    /// replay after it. A node that cannot catch up by replay is told to flush its cache.
    /// `pushed` is the held write lock: the node is welcomed at the revision every other
    /// node has been sent.
    pub async fn welcome(
        &self,
        pushed: &mut u64,
        epoch: &str,
        last: u64,
    ) -> Result<(pb::Welcome, Option<pb::RouteUpdate>)> {
        const MAX_REPLAY: usize = 10_000;
        let mut current = self.push_since(pushed).await?;
        if epoch == &*self.epoch() && last > current {
            current = self.node_ahead(pushed, last, current).await?;
        }
        let replay = if epoch == &*self.epoch() && last <= current {
            // A bulk change in the history cannot be replayed key by key.
            self.store
                .changes_since(last, MAX_REPLAY)
                .await?
                .filter(|c| c.len() < MAX_REPLAY && !c.iter().any(|c| c.is_bulk()))
                .map(|c| c.into_iter().filter(|c| c.revision <= current).collect::<Vec<_>>())
        } else {
            None
        };
        let welcome = pb::Welcome {
            epoch: self.epoch().to_string(),
            revision: current,
            settings: Some(self.settings.clone()),
            flush_cache: replay.is_none(),
        };
        let update = replay
            .filter(|c| !c.is_empty())
            .map(|changes| pb::RouteUpdate { revision: current, ..route_update(&self.epoch(), changes) });
        Ok((welcome, update))
    }
}

/// One update carrying `changes` (oldest first, not empty). Everything before the last
/// bulk change is covered by the flush it causes.
fn route_update(epoch: &str, changes: Vec<Change>) -> pb::RouteUpdate {
    let revision = changes.last().map_or(0, |c| c.revision);
    let bulk = changes.iter().rposition(Change::is_bulk);
    let changes = changes
        .into_iter()
        .skip(bulk.map_or(0, |i| i + 1))
        .map(|c| pb::RouteChange {
            key: c.key,
            change: Some(match c.destination {
                Some(d) => pb::route_change::Change::Upsert(d),
                None => pb::route_change::Change::Remove(true),
            }),
        })
        .collect();
    pb::RouteUpdate { epoch: epoch.to_string(), revision, changes, flush: bulk.is_some() }
}

/// The settings every node gets in its Welcome, from the control plane's own config.
fn fleet_settings(config: &Config) -> pb::FleetSettings {
    let mut settings = pb::FleetSettings::from(&config.fleet_settings());
    // Still sent for nodes older than the byte bounds, which bound their cache by entries.
    if let Some(cache) = settings.cache.as_mut() {
        cache.max_entries = config.cache.max_entries;
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64, key: &str, destination: Option<&str>) -> Change {
        Change { revision, key: key.into(), destination: destination.map(Into::into) }
    }

    #[test]
    fn an_update_carries_key_changes_in_order_and_its_last_revision() {
        let update = route_update("e", vec![change(4, "alice", Some("new")), change(5, "bob", None)]);
        assert_eq!((update.revision, update.flush), (5, false));
        assert_eq!(update.changes.len(), 2);
        assert_eq!(update.changes[0].change, Some(pb::route_change::Change::Upsert("new".into())));
        assert_eq!(update.changes[1].change, Some(pb::route_change::Change::Remove(true)));
    }

    #[test]
    fn a_bulk_change_becomes_a_flush_that_covers_everything_before_it() {
        let update = route_update(
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
        let keys: Vec<_> = update.changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["carol"], "only what came after the last bulk change");
    }

    /// A control plane declaring `legacy` (the default) only, on a SQLite file in `dir`.
    async fn legacy_only(dir: &std::path::Path) -> Arc<Shared> {
        let toml = format!(
            "[routing]\ndefault_destination = \"legacy\"\n[mapping.sqlite]\npath = \"{}\"\n\
             [destination.legacy]\nhost = \"127.0.0.1\"\n[destination.legacy.protocol.imap]\nport = 143\n",
            dir.join("m.db").display()
        );
        let config = Config::from_toml_str(&toml).unwrap();
        let store = Store::open(&config.mapping, &config.route_key_rule()).await.unwrap();
        Shared::new(config, store)
    }

    #[tokio::test]
    async fn a_mapping_to_an_undeclared_destination_resolves_to_unavailable_never_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let shared = legacy_only(dir.path()).await;
        shared.store.put("alice", "ghost").await.unwrap();
        shared.store.put("bob", "legacy").await.unwrap();

        let status = tonic::Status::from(shared.resolve("alice").await.unwrap_err());
        assert_eq!(status.code(), tonic::Code::Unavailable, "the node answers a temporary failure: {status:?}");
        assert!(status.message().contains("\"ghost\""), "{status:?}");
        let shown = shared.lookup("alice").await.unwrap();
        assert_eq!((shown.destination.as_str(), shown.mapped, shown.declared), ("ghost", true, false));

        let bob = shared.resolve("bob").await.unwrap();
        assert_eq!((bob.destination.as_str(), bob.mapped, bob.declared), ("legacy", true, true));
        let carol = shared.resolve("carol").await.unwrap();
        assert_eq!(
            (carol.destination.as_str(), carol.mapped),
            ("legacy", false),
            "only the unmapped go to the default"
        );
        let counted = shared.undeclared.summary();
        assert_eq!(counted, [crate::undeclared::UndeclaredCount { destination: "ghost".into(), accounts: 1 }]);
    }

    #[tokio::test]
    async fn a_pushed_change_to_an_undeclared_destination_is_counted_until_remapped() {
        let dir = tempfile::tempdir().unwrap();
        let shared = legacy_only(dir.path()).await;
        shared.store.put("alice", "ghost").await.unwrap();
        shared.catch_up().await.unwrap();
        assert_eq!(shared.undeclared.summary().len(), 1);
        shared.commit("alice", Some("legacy")).await.unwrap();
        assert_eq!(shared.undeclared.summary(), []);
        assert!(matches!(shared.commit("alice", Some("ghost")).await, Err(Error::BadRequest(_))));
    }
}
