//! The publisher on a real SQLite store, with one node simulated on the fleet (its
//! Session stream is read here; its acks are sent by hand): pushes in order, and the
//! detection and recovery rules of a lost history.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::SqlitePool;
use switchyard_proto::v1 as pb;
use tokio::sync::mpsc;

use super::history::diagnose;
use super::*;
use crate::config::Config;
use crate::fleet::NodeOutcome;
use crate::node_info::NodeEvent;
use crate::state::Shared;
use crate::store::{Head, Store};

struct Fixture {
    shared: Arc<Shared>,
    /// A second connection to the database, to rewind it behind the store's back.
    db: SqlitePool,
    node: crate::fleet::Messages,
    /// Keeps the node's command channel (and so its stream) open.
    _commands: crate::fleet::CommandSender,
    stream: u64,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let toml = format!(
        "[routing]\ndefault_destination = \"legacy\"\n[mapping.sqlite]\npath = \"{}\"\n\
         [destination.legacy]\nhost = \"127.0.0.1\"\n[destination.legacy.protocol.imap]\nport = 143\n",
        path.display()
    );
    let config = Config::from_toml_str(&toml).unwrap();
    let store = Store::open(&config.mapping, &config.route_key_rule()).await.unwrap();
    let shared = Shared::new(config, store);
    let (tx, rx) = mpsc::channel(16);
    let hello = NodeHello { node_id: "dp-1".into(), ..Default::default() };
    let registration = shared.fleet.connect(hello, None, (shared.epoch().to_string(), 0), 0, tx.clone()).unwrap();
    let node = shared.fleet.messages("dp-1", &registration, Vec::new(), rx);
    let db = SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    Fixture { shared, db, node, _commands: tx, stream: registration.stream_id, _dir: dir }
}

impl Fixture {
    /// The next route update sent to the node, acked as applied.
    async fn applied(&mut self) -> pb::RouteUpdate {
        let update = self.sent().await;
        self.ack(&update.epoch, update.revision);
        update
    }

    async fn sent(&mut self) -> pb::RouteUpdate {
        let message = tokio::time::timeout(Duration::from_secs(5), self.node.next()).await.unwrap().unwrap().unwrap();
        match message.kind {
            Some(pb::control_message::Kind::RouteUpdate(update)) => update,
            other => panic!("not a route update: {other:?}"),
        }
    }

    fn ack(&self, epoch: &str, revision: u64) {
        let ack = NodeEvent::RevisionAck { epoch: epoch.into(), revision };
        self.shared.fleet.on_message("dp-1", self.stream, ack);
    }

    fn publisher(&self) -> &Publisher {
        &self.shared.publisher
    }

    async fn write(&self, key: &str) -> Result<Committed> {
        self.publisher().put(key, "legacy").await
    }

    /// Puts the database back to revision `revision`, as restoring an older copy would.
    async fn rewind_to(&self, revision: i64) {
        sqlx::query("DELETE FROM changes WHERE revision > ?").bind(revision).execute(&self.db).await.unwrap();
        sqlx::query("UPDATE sqlite_sequence SET seq = ? WHERE name = 'changes'")
            .bind(revision)
            .execute(&self.db)
            .await
            .unwrap();
        sqlx::query("DELETE FROM mappings WHERE updated_revision > ?").bind(revision).execute(&self.db).await.unwrap();
    }

    async fn stored_epoch(&self) -> String {
        sqlx::query_scalar("SELECT value FROM meta WHERE name = 'epoch'").fetch_one(&self.db).await.unwrap()
    }
}

fn head(epoch: Option<&str>, revision: u64) -> Head {
    Head { epoch: epoch.map(str::to_string), revision }
}

#[test]
fn a_missing_or_other_epoch_or_a_revision_that_went_back_is_a_problem() {
    assert_eq!(diagnose("e", 5, &head(Some("e"), 5)), None);
    assert_eq!(diagnose("e", 5, &head(Some("e"), 9)), None, "ahead: writes through a peer");
    assert!(diagnose("e", 0, &head(None, 0)).unwrap().contains("missing"));
    assert!(diagnose("e", 3, &head(Some("f"), 7)).unwrap().contains("epoch is f, not e"));
    assert!(diagnose("e", 5, &head(Some("e"), 4)).unwrap().contains("went back from 5 to 4"));
}

#[tokio::test]
async fn a_rewound_database_is_caught_by_the_feed_and_every_node_flushes_under_a_new_epoch() {
    let mut f = fixture().await;
    let old = f.shared.epoch();
    f.write("alice").await.unwrap();
    f.write("bob").await.unwrap();
    // Both writes wait in the node's outbox until its stream asks: merged into one update.
    assert_eq!(f.applied().await.revision, 2);

    f.rewind_to(1).await;
    assert_eq!(f.publisher().catch_up().await.unwrap(), 1);
    let new = f.shared.epoch();
    assert_ne!(new, old);
    assert_eq!(f.stored_epoch().await, *new, "the new epoch is in the store, for every replica");
    let flush = f.applied().await;
    assert_eq!((flush.epoch.as_str(), flush.revision, flush.flush), (&*new, 1, true));
    assert!(f.publisher().history_problem().is_none());
    assert!(f.publisher().readiness().await.is_ok());

    // Revision 2 again, of the new history this time: pushed and acked as such.
    let carol = f.write("carol").await.unwrap();
    assert_eq!((&*carol.epoch, carol.revision), (&*new, 2));
    let update = f.applied().await;
    assert_eq!((update.epoch.as_str(), update.revision, update.changes[0].key.as_str()), (&*new, 2, "carol"));
}

#[tokio::test]
async fn a_write_that_gets_a_revision_already_pushed_is_only_acked_after_the_flush() {
    let mut f = fixture().await;
    let old = f.shared.epoch();
    f.write("alice").await.unwrap();
    f.write("bob").await.unwrap();
    assert_eq!(f.applied().await.revision, 2, "both writes in one update");

    f.rewind_to(1).await;
    // Revision 2 again: the node applied revision 2 of the old history, which must not count.
    let carol = f.write("carol").await.unwrap();
    assert_eq!(carol.revision, 2);
    assert_ne!(carol.epoch, old);
    let fleet = Arc::clone(&f.shared.fleet);
    let early = fleet.wait_applied(&carol.epoch, carol.revision, Duration::from_millis(100)).await;
    assert_eq!(early[0].result, NodeOutcome::Timeout, "the node acked (old epoch, 2) only");
    let flush = f.applied().await;
    assert!(flush.flush && flush.revision == 2 && flush.epoch == *carol.epoch);
    let acked = fleet.wait_applied(&carol.epoch, carol.revision, Duration::from_millis(100)).await;
    assert_eq!(acked[0].result, NodeOutcome::Applied);
}

#[tokio::test]
async fn a_node_ahead_of_the_store_in_the_same_epoch_starts_a_new_epoch_and_flushes() {
    let f = fixture().await;
    let old = f.shared.epoch();
    f.write("alice").await.unwrap();
    let hello = NodeHello { node_id: "dp-2".into(), epoch: old.to_string(), last_revision: 7, ..Default::default() };
    let (tx, _rx) = mpsc::channel(16);
    let Registered { welcome, replay, .. } = f.publisher().register(hello, None, tx).await.unwrap();
    assert!(welcome.flush_cache && replay.is_none());
    assert_ne!(welcome.epoch, *old);
    assert_eq!(welcome.revision, 1);
    assert_eq!(f.stored_epoch().await, welcome.epoch);
}

#[tokio::test]
async fn a_write_finding_another_epoch_is_refused_and_the_epoch_adopted() {
    let mut f = fixture().await;
    f.write("alice").await.unwrap();
    f.applied().await;
    // A peer sharing the file started a new epoch.
    sqlx::query("UPDATE meta SET value = 'peer-epoch' WHERE name = 'epoch'").execute(&f.db).await.unwrap();
    let refused = f.write("bob").await.unwrap_err();
    assert!(matches!(refused, Error::HistoryLost(_)), "{refused}");
    assert!(refused.to_string().contains("the write was not made"), "{refused}");
    assert_eq!(&*f.shared.epoch(), "peer-epoch", "adopted, not replaced: replicas agree");
    let flush = f.applied().await;
    assert!(flush.flush && flush.epoch == "peer-epoch" && flush.revision == 1);
    let bob = f.write("bob").await.unwrap();
    assert_eq!((&*bob.epoch, bob.revision), ("peer-epoch", 2));
    let revision: i64 = sqlx::query_scalar("SELECT MAX(revision) FROM changes").fetch_one(&f.db).await.unwrap();
    assert_eq!(revision, 2, "the refused write left nothing behind");
}

#[tokio::test]
async fn while_the_new_epoch_cannot_be_set_up_writes_and_readiness_are_refused() {
    let f = fixture().await;
    f.write("alice").await.unwrap();
    f.rewind_to(0).await;
    // Nothing can be written to the database for now.
    let mut lock = f.db.begin().await.unwrap();
    sqlx::query("DELETE FROM meta WHERE name = 'nothing'").execute(&mut *lock).await.unwrap();
    let busy = tokio::time::timeout(Duration::from_secs(20), f.publisher().catch_up()).await.unwrap();
    assert!(busy.is_err(), "{busy:?}");
    let problem = f.publisher().history_problem().unwrap();
    assert!(problem.contains("went back from 1 to 0"), "{problem}");
    let not_ready = f.publisher().readiness().await.unwrap_err().to_string();
    assert!(not_ready.contains("history lost or went back") && not_ready.contains("not ready"), "{not_ready}");
    lock.rollback().await.unwrap();
    f.write("bob").await.unwrap();
    assert!(f.publisher().history_problem().is_none() && f.publisher().readiness().await.is_ok());
}
