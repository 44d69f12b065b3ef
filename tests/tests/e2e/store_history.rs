//! A mapping store that loses or rewinds its history under a running fleet (real Redis,
//! real PostgreSQL, two real Dovecots `legacy` (the default) and `new`; the subject a
//! client sees proves which one it reached): the control plane must notice, start a new
//! epoch so that every node flushes, refuse writes and say "not ready" until it has, and
//! never report a write `applied` by a node that kept routing from the lost history.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use switchyard_tests::config::MappingStore;
use switchyard_tests::fleet::{postgres_mapping, Api, ControlPlane, FleetBuilder, Node};
use switchyard_tests::postgres::Postgres;
use switchyard_tests::redis::Redis;
use switchyard_tests::{eventually, require_or_skip, Dovecot};

const USERS: &[(&str, &str)] =
    &[("alice@example.test", "pw"), ("bob@example.test", "pw"), ("carol@example.test", "pw")];
const WAIT: Duration = Duration::from_secs(30);

/// A control plane on `mapping_tables`, one node, and the two Dovecots.
struct Fleet {
    // Dropped first: the node and the control plane stop before the servers do.
    node: Node,
    cp: ControlPlane,
    _legacy: Dovecot,
    _new: Dovecot,
}

impl Fleet {
    async fn start(mapping_tables: &str) -> Result<Fleet> {
        let legacy = Dovecot::start(USERS)?;
        let new = Dovecot::start(USERS)?;
        for (user, _) in USERS {
            legacy.deliver(user, "on legacy")?;
            new.deliver(user, "on new")?;
        }
        let started = FleetBuilder::default()
            .dovecot("legacy", &legacy, &["imap"])
            .dovecot("new", &new, &["imap"])
            .store(MappingStore::Tables(mapping_tables.to_string()))
            .start()
            .await?;
        let node = started.nodes.into_iter().next().context("one node")?;
        Ok(Fleet { node, cp: started.cp, _legacy: legacy, _new: new })
    }

    fn api(&self) -> Api {
        self.cp.api()
    }

    /// Which server `user` reaches through the node: `"on new"`, `"on legacy"`, or the refusal.
    async fn routed(&self, user: &str) -> Result<String> {
        Ok(match switchyard_tests::inbox_subjects(self.node.imap, user, "pw").await? {
            Ok(subjects) => subjects.join(","),
            Err(tagged) => tagged,
        })
    }

    /// A PUT the node acked; returns its revision.
    async fn put_applied(&self, user: &str, destination: &str) -> Result<u64> {
        let (code, body) = self.api().put(&format!("/mappings/{user}"), json!({ "destination": destination })).await?;
        ensure!(code == 200 && results(&body) == ["applied"], "PUT {user} -> {destination}: {code} {body}");
        body["revision"].as_u64().context("a revision")
    }

    /// Maps alice and bob to `new` and logs them in, so the node caches both routes.
    async fn cache_alice_and_bob_on_new(&self) -> Result<()> {
        self.put_applied("alice@example.test", "new").await?;
        self.put_applied("bob@example.test", "new").await?;
        for user in ["alice@example.test", "bob@example.test"] {
            ensure!(self.routed(user).await? == "on new", "{user} before the loss");
        }
        Ok(())
    }

    /// Waits until `/readyz` answers 200 and the node is in sync with the store again.
    async fn ready_and_in_sync(&self) -> Result<()> {
        eventually(WAIT, || async {
            let (code, body) = self.api().without_token().get("/readyz").await?;
            ensure!(code == 200, "/readyz: {code} {body}");
            let (_, nodes) = self.api().get("/nodes").await?;
            ensure!(nodes[0]["sync"] == "in_sync", "/nodes: {nodes}");
            Ok(())
        })
        .await
    }

    /// After the history was lost or rewound and the control plane recovered: the node
    /// dropped every cached route (alice and bob follow what the store says now: nothing,
    /// so the default), and a later write is truly applied (the node routes it).
    async fn check_recovered(&self) -> Result<()> {
        self.ready_and_in_sync().await?;
        for user in ["alice@example.test", "bob@example.test"] {
            let routed = self.routed(user).await?;
            ensure!(routed == "on legacy", "{user} after the recovery still follows the lost history: {routed}");
        }
        self.put_applied("alice@example.test", "new").await?;
        ensure!(self.routed("alice@example.test").await? == "on new", "the write after the recovery was not applied");
        let (_, nodes) = self.api().get("/nodes").await?;
        ensure!(nodes[0]["sync"] == "in_sync", "/nodes after the write: {nodes}");
        Ok(())
    }
}

/// Each node's result in a write's answer.
fn results(body: &Value) -> Vec<String> {
    let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
    nodes.iter().map(|n| n["result"].as_str().unwrap_or("?").to_string()).collect()
}

/// PUT alice -> legacy after her route to `new` was cached and the store lost it. Whatever
/// the answer, "applied" must be true: the node then routes alice to legacy. Retried while
/// the control plane answers 503 (it is setting up the new epoch); returns the last answer.
async fn put_after_loss(fleet: &Fleet) -> Result<(u16, Value)> {
    eventually(WAIT, || async {
        let (code, body) = fleet.api().put("/mappings/alice@example.test", json!({"destination": "legacy"})).await?;
        let routed = fleet.routed("alice@example.test").await?;
        if code == 200 && results(&body) == ["applied"] && routed != "on legacy" {
            // Not retried: this is the defect itself.
            return Ok(Err(anyhow::anyhow!(
                "the write after the loss was acked as applied ({body}) but the node still routes alice: {routed}"
            )));
        }
        ensure!(code == 200, "{code} {body}");
        Ok(Ok((code, body)))
    })
    .await?
}

fn redis_mapping(redis: &Redis) -> String {
    format!(
        "[mapping]\nsource = \"redis\"\npoll_interval = \"200ms\"\n[mapping.redis]\nurl = \"{}\"\nkey_prefix = \"history:\"\nconnect_timeout = \"1s\"\n",
        redis.url()
    )
}

fn servers(redis: bool) -> bool {
    require_or_skip("dovecot")
        && if redis { require_or_skip("redis-server") } else { switchyard_tests::postgres::require_or_skip() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_flushall_starts_a_new_epoch_and_no_write_is_acked_on_the_lost_history() -> Result<()> {
    if !servers(true) {
        return Ok(());
    }
    let redis = Redis::start()?;
    let fleet = Fleet::start(&redis_mapping(&redis)).await?;
    fleet.cache_alice_and_bob_on_new().await?;

    redis.transaction(&[&["FLUSHALL"]])?;
    put_after_loss(&fleet).await?;
    // The PUT above mapped alice to legacy; check_recovered maps her to new again.
    fleet.check_recovered().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_persistence_starts_a_new_epoch() -> Result<()> {
    if !servers(true) {
        return Ok(());
    }
    let mut redis = Redis::start()?;
    let fleet = Fleet::start(&redis_mapping(&redis)).await?;
    fleet.cache_alice_and_bob_on_new().await?;

    redis.restart()?;
    put_after_loss(&fleet).await?;
    fleet.check_recovered().await
}

/// FLUSHALL, and Redis refuses writes for a while (`min-replicas-to-write` without
/// replicas) so that the control plane cannot set up the new epoch yet: meanwhile writes
/// are 503 with a clear message and `/readyz` is 503; once Redis takes writes again the
/// control plane recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_the_new_epoch_is_set_up_writes_and_readyz_are_503() -> Result<()> {
    if !servers(true) {
        return Ok(());
    }
    let redis = Redis::start()?;
    let fleet = Fleet::start(&redis_mapping(&redis)).await?;
    fleet.cache_alice_and_bob_on_new().await?;

    redis.transaction(&[&["FLUSHALL"], &["CONFIG", "SET", "min-replicas-to-write", "1"]])?;
    eventually(WAIT, || async {
        let (code, body) = fleet.api().get("/readyz").await?;
        let text = body.as_str().unwrap_or_default();
        ensure!(code == 503 && text.contains("history"), "/readyz after FLUSHALL: {code} {body}");
        Ok(())
    })
    .await?;
    // Without the admin token the probe learns only that the plane is not ready.
    let (code, body) = fleet.api().without_token().get("/readyz").await?;
    ensure!(code == 503 && body.as_str() == Some("not ready"), "/readyz without a token: {code} {body}");
    let (code, body) = fleet.api().put("/mappings/carol@example.test", json!({"destination": "new"})).await?;
    let message = body["error"].as_str().unwrap_or_default();
    ensure!(code == 503 && message.contains("history"), "a write before the new epoch: {code} {body}");
    // Nothing was pushed meanwhile: the node still serves its cache.
    ensure!(fleet.routed("alice@example.test").await? == "on new");

    redis.transaction(&[&["CONFIG", "SET", "min-replicas-to-write", "0"]])?;
    fleet.check_recovered().await
}

/// The database is restored from a dump taken at an older revision while the control
/// plane runs, and a write follows: it must not be acked by a node that applied newer
/// revisions of the same epoch; after the fix the rewind is detected, a new epoch starts,
/// the node flushes and the write is truly applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restored_to_an_older_revision_starts_a_new_epoch() -> Result<()> {
    if !servers(false) {
        return Ok(());
    }
    let pg = Postgres::start()?;
    let url = pg.fresh_database("restored")?;
    let mapping = postgres_mapping(&url).replace("[mapping.postgres]", "poll_interval = \"200ms\"\n[mapping.postgres]");
    let fleet = Fleet::start(&mapping).await?;
    let epoch_before = fleet.cp.open_store().await?.epoch().to_string();
    let dumped_at = fleet.put_applied("carol@example.test", "legacy").await?;
    let dump = pg.dump("restored")?;
    fleet.cache_alice_and_bob_on_new().await?;
    ensure!(fleet.routed("carol@example.test").await? == "on legacy");

    pg.restore("restored", &dump)?;
    ensure!(pg.psql("restored", "SELECT MAX(revision) FROM changes")? == dumped_at.to_string());
    let (code, body) = fleet.api().put("/mappings/carol@example.test", json!({"destination": "new"})).await?;
    let routed = fleet.routed("carol@example.test").await?;
    ensure!(
        !(code == 200 && results(&body) == ["applied"] && routed != "on new"),
        "the write after the restore was acked as applied ({body}) but the node still routes carol: {routed}"
    );
    ensure!(code == 200 && results(&body) == ["applied"], "the write after the restore: {code} {body}");
    let epoch_after = fleet.cp.open_store().await?.epoch().to_string();
    ensure!(epoch_after != epoch_before, "the store still has epoch {epoch_before} after the rewind");
    fleet.check_recovered().await
}

/// Two replicas on one PostgreSQL database, each holding one node's stream: after the
/// restore both notice (the write through A, and B's feed or the new epoch A set up), they
/// end on one new epoch, both nodes flush, and the write is applied by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_restored_postgres_agree_on_one_new_epoch() -> Result<()> {
    if !servers(false) {
        return Ok(());
    }
    let pg = Postgres::start()?;
    let url = pg.fresh_database("replicated")?;
    let mapping = postgres_mapping(&url).replace("[mapping.postgres]", "poll_interval = \"200ms\"\n[mapping.postgres]");
    let legacy = Dovecot::start(USERS)?;
    let new = Dovecot::start(USERS)?;
    for (user, _) in USERS {
        legacy.deliver(user, "on legacy")?;
        new.deliver(user, "on new")?;
    }
    // dp-1 lists only A, dp-2 only B.
    let fleet = FleetBuilder::default()
        .dovecot("legacy", &legacy, &["imap"])
        .dovecot("new", &new, &["imap"])
        .store(MappingStore::Tables(mapping))
        .replica()
        .node_on("dp-1", &[0])
        .node_on("dp-2", &[1])
        .start()
        .await?;
    let (a, b, nodes) = (&fleet.cp, &fleet.replicas[0], fleet.nodes.as_slice());
    let routed = |node: &Node, user: &'static str| {
        let addr = node.imap;
        async move {
            Ok::<_, anyhow::Error>(match switchyard_tests::inbox_subjects(addr, user, "pw").await? {
                Ok(subjects) => subjects.join(","),
                Err(tagged) => tagged,
            })
        }
    };
    let put = |user: &'static str, destination: &'static str| {
        let api = a.api();
        async move {
            let (code, body) = api.put(&format!("/mappings/{user}"), json!({ "destination": destination })).await?;
            ensure!(code == 200 && results(&body) == ["applied", "applied"], "PUT {user}: {code} {body}");
            Ok(())
        }
    };
    eventually(WAIT, || put("carol@example.test", "legacy")).await?;
    let epoch_before = a.open_store().await?.epoch().to_string();
    let dump = pg.dump("replicated")?;
    put("alice@example.test", "new").await?;
    for node in nodes {
        ensure!(routed(node, "alice@example.test").await? == "on new");
        ensure!(routed(node, "carol@example.test").await? == "on legacy");
    }

    pg.restore("replicated", &dump)?;
    eventually(WAIT, || put("carol@example.test", "new")).await?;
    for node in nodes {
        let (carol, alice) = (routed(node, "carol@example.test").await?, routed(node, "alice@example.test").await?);
        ensure!(carol == "on new" && alice == "on legacy", "{}: carol {carol}, alice {alice}", node.id);
    }
    let epoch = a.open_store().await?.epoch().to_string();
    ensure!(epoch != epoch_before, "still epoch {epoch_before}");
    for replica in [a, b] {
        let (code, body) = replica.api().post(&format!("/fleet/wait?epoch={epoch}&revision=0")).await?;
        ensure!(code == 200, "replica {} does not follow the store's epoch {epoch}: {code} {body}", replica.api_url());
        ensure!(replica.api().without_token().get("/readyz").await?.0 == 200);
    }
    Ok(())
}
