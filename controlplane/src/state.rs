//! What the gRPC service and the management API share: the config, the store, the fleet,
//! the [`Publisher`] (the one path by which a mapping changes) and how an account resolves.

use std::sync::Arc;

use switchyard_common::routekey::{redact, RouteKeyRule};
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::publisher::Publisher;
use crate::store::Store;
use crate::undeclared::Undeclared;

/// The control plane's state, one per process, behind an `Arc` shared by the gRPC service
/// ([`crate::grpc`]), the management API ([`crate::api::ApiState`]) and the feed
/// ([`crate::feed`]). Reads go to `store` and `fleet` directly; every mapping change and
/// every node registration goes through `publisher`, which orders them.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub store: Store,
    /// The nodes connected to this replica (and those that left recently).
    pub fleet: Arc<Fleet>,
    /// Writes, catch-ups and node registrations, under the write lock.
    pub publisher: Publisher,
    pub rule: RouteKeyRule,
    /// Cancelled when the control plane stops: ends every node Session so the gRPC
    /// server's graceful shutdown does not wait on streams that never end by themselves.
    pub shutdown: CancellationToken,
    /// Bounds how fast node Sessions are admitted.
    pub admission: Admission,
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

impl Shared {
    pub fn new(config: Config, store: Store) -> Arc<Self> {
        let rule = config.route_key_rule();
        let fleet = Fleet::with_retention(config.server.heartbeat_interval, config.server.node_retention);
        let admission = Admission::new(config.grpc.session_rate, config.grpc.session_burst);
        // The accounts this replica's nodes cannot route: their mapping names a
        // destination this config does not declare.
        let undeclared = Undeclared::new(config.destination.keys().cloned());
        let publisher = Publisher::new(store.clone(), Arc::clone(&fleet), undeclared);
        Arc::new(Self { config, store, fleet, publisher, rule, shutdown: CancellationToken::new(), admission })
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
        if let Some(problem) = self.publisher.history_problem() {
            return Err(Error::HistoryLost(format!("mapping store history lost or went back: {problem}")));
        }
        let answer = self.lookup(key).await?;
        self.publisher.undeclared().resolved(key, answer.mapped.then_some(answer.destination.as_str()));
        if !answer.declared {
            tracing::warn!(account = %redact(key), destination = %answer.destination, "mapping names a destination this control plane does not declare; answering a temporary failure");
            let message = format!("destination {:?} is not declared by this control plane", answer.destination);
            return Err(Error::Undeclared { message, conflicts: Vec::new() });
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let counted = shared.publisher.undeclared().summary();
        assert_eq!(counted, [crate::undeclared::UndeclaredCount { destination: "ghost".into(), accounts: 1 }]);
    }

    #[tokio::test]
    async fn a_pushed_change_to_an_undeclared_destination_is_counted_until_remapped() {
        let dir = tempfile::tempdir().unwrap();
        let shared = legacy_only(dir.path()).await;
        shared.store.put("alice", "ghost").await.unwrap();
        shared.publisher.catch_up().await.unwrap();
        assert_eq!(shared.publisher.undeclared().summary().len(), 1);
        shared.publisher.put("alice", "legacy").await.unwrap();
        assert_eq!(shared.publisher.undeclared().summary(), []);
        assert!(matches!(shared.publisher.put("alice", "ghost").await, Err(Error::BadRequest(_))));
    }
}
