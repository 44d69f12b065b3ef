//! Two control-plane replicas (A and B) on one real PostgreSQL database, two nodes (dp-1
//! lists [A, B] and is connected to A, dp-2 lists [B, A] and is connected to B) and two real
//! Dovecot servers (`legacy`, the default, and `new`; the subject a client sees proves which
//! one it reached).
//!
//! A write through either replica is acked by every node, whichever replica holds its
//! stream; the fleet views and commands of either replica cover both nodes (node state is
//! gathered from the peers); a stopped replica's node fails over to the other and keeps
//! routing; a restarted replica serves the current revision.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use switchyard_tests::config::MappingStore;
use switchyard_tests::fleet::{
    controlplane_toml_store, destination_toml, sqlite_mapping, Api, ControlPlane, Fleet, Node, ADMIN_TOKEN, NODE_TOKEN,
};
use switchyard_tests::postgres::Postgres;
use switchyard_tests::{eventually, require_or_skip, status, Dovecot, ImapClient, TestPki};

const USERS: &[(&str, &str)] =
    &[("alice@example.test", "pw"), ("bob@example.test", "pw"), ("carol@example.test", "pw")];
/// Generous: two replicas, two nodes, PostgreSQL and two Dovecots share 2 cores in CI.
const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    // Dropped last: the replicas and nodes stop before their servers do.
    a: ControlPlane,
    b: ControlPlane,
    nodes: [Node; 2],
    _legacy: Dovecot,
    _new: Dovecot,
    pg: Postgres,
}

fn servers_installed() -> bool {
    require_or_skip("dovecot") && switchyard_tests::postgres::require_or_skip()
}

async fn fixture() -> Result<Fixture> {
    let legacy = Dovecot::start(USERS)?;
    let new = Dovecot::start(USERS)?;
    for (user, _) in USERS {
        legacy.deliver(user, "on legacy")?;
        new.deliver(user, "on new")?;
    }
    let pg = Postgres::start()?;
    let url = pg.fresh_database("replicas")?;
    // dp-1 lists [A, B] and is on A; dp-2 lists [B, A] and is on B.
    let Fleet { cp: a, replicas, nodes } = Fleet::builder()
        .dovecot("legacy", &legacy, &["imap"])
        .dovecot("new", &new, &["imap"])
        .store(MappingStore::Postgres(url))
        .replica()
        .node_on("dp-1", &[0, 1])
        .node_on("dp-2", &[1, 0])
        .start()
        .await?;
    let ([b], nodes): ([ControlPlane; 1], [Node; 2]) = (
        replicas.try_into().map_err(|_| anyhow::anyhow!("two replicas"))?,
        nodes.try_into().map_err(|_| anyhow::anyhow!("two nodes"))?,
    );
    Ok(Fixture { a, b, nodes, _legacy: legacy, _new: new, pg })
}

/// Waits until exactly `ids` are connected to this replica itself (`scope=local`).
async fn connected_here(api: &Api, ids: &[&str]) -> Result<()> {
    api.until_nodes("?scope=local", WAIT, |connected| connected == ids).await.map(drop)
}

fn connected_ids(nodes: &Value) -> Vec<String> {
    let all = nodes.as_array().cloned().unwrap_or_default();
    all.iter().filter(|n| n["connected"] == true).filter_map(|n| n["node_id"].as_str().map(String::from)).collect()
}

/// Each node's result, by node id.
fn results(nodes: &Value) -> Vec<(String, String)> {
    let all = nodes.as_array().cloned().unwrap_or_default();
    all.iter()
        .map(|n| (n["node_id"].as_str().unwrap_or("?").to_string(), n["result"].as_str().unwrap_or("?").to_string()))
        .collect()
}

fn all_applied(ids: &[&str]) -> Vec<(String, String)> {
    ids.iter().map(|id| (id.to_string(), "applied".to_string())).collect()
}

/// Each peer's `(url, ok)` in an answer's `peers`.
fn peers(answer: &Value) -> Vec<(String, bool)> {
    let all = answer["peers"].as_array().cloned().unwrap_or_default();
    all.iter().map(|p| (p["peer"].as_str().unwrap_or("?").to_string(), p["ok"] == true)).collect()
}

async fn subjects(node: &Node, user: &str) -> Result<Result<Vec<String>, String>> {
    switchyard_tests::inbox_subjects(node.imap, user, "pw").await
}

fn on(server: &str) -> Result<Vec<String>, String> {
    Ok(vec![format!("on {server}")])
}

/// A PUT through `api` that every node in `ids` acked.
async fn put_acked(api: &Api, user: &str, destination: &str, ids: &[&str]) -> Result<Value> {
    let (code, put) = api.put(&format!("/mappings/{user}"), json!({ "destination": destination })).await?;
    ensure!(code == 200, "PUT {user}: {put}");
    ensure!(results(&put["nodes"]) == all_applied(ids), "not acked by {ids:?}: {put}");
    Ok(put)
}

/// A logged-in IMAP session with its mailbox selected.
async fn open_session(node: &Node, user: &str) -> Result<ImapClient> {
    let mut imap = ImapClient::connect(node.imap).await?;
    ensure!(status(&imap.login(user, "pw").await?) == "OK");
    imap.command("SELECT INBOX").await?;
    Ok(imap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_views_and_commands_of_either_replica_cover_every_node() -> Result<()> {
    if !servers_installed() {
        return Ok(());
    }
    let f = fixture().await?;
    let (a, b) = (f.a.api(), f.b.api());

    // A write through A is acked by dp-2, whose stream B holds: B's feed pushed it.
    let put = put_acked(&a, "alice@example.test", "new", &["dp-1", "dp-2"]).await?;
    assert_eq!(peers(&put), [(f.b.api_url(), true)], "{put}");
    for node in &f.nodes {
        assert_eq!(subjects(node, "alice@example.test").await?, on("new"));
    }
    // And the other way round.
    put_acked(&b, "bob@example.test", "new", &["dp-1", "dp-2"]).await?;
    assert_eq!(subjects(&f.nodes[0], "bob@example.test").await?, on("new"));

    // Either replica shows the whole fleet, each node once, and where its stream is.
    for (api, other) in [(&a, f.b.api_url()), (&b, f.a.api_url())] {
        let (code, nodes) = api.get("/nodes").await?;
        assert_eq!(code, 200, "{nodes}");
        assert_eq!(connected_ids(&nodes), ["dp-1", "dp-2"], "{nodes}");
        let from_peer: Vec<&Value> = nodes.as_array().unwrap().iter().filter(|n| n["peer"] == other.as_str()).collect();
        assert_eq!(from_peer.len(), 1, "one node is the peer's: {nodes}");
        assert!(nodes.as_array().unwrap().iter().all(|n| n["sync"] == "in_sync"), "{nodes}");
    }
    for api in [&a, &b] {
        eventually(WAIT, || async {
            let (_, stats) = api.get("/stats").await?;
            let nodes = stats["nodes"].as_array().cloned().unwrap_or_default();
            let ids: Vec<&str> = nodes.iter().filter_map(|n| n["node_id"].as_str()).collect();
            ensure!(ids == ["dp-1", "dp-2"] && stats["nodes_reporting"] == 2, "{stats}");
            for field in ["cache_hits", "cache_misses", "cache_entries", "active_connections"] {
                let sum: u64 = nodes.iter().map(|n| n[field].as_u64().unwrap_or(0)).sum();
                ensure!(stats[field].as_u64() == Some(sum), "{field}: {stats}");
            }
            // Three logins so far, each a hit on a route pushed with its write.
            ensure!(stats["cache_hits"] == 3, "{stats}");
            Ok(())
        })
        .await?;
        let (_, destinations) = api.get("/destinations").await?;
        let new = destinations.as_array().unwrap().iter().find(|d| d["destination"] == "new").cloned();
        let reporting = new.as_ref().and_then(|d| d["nodes"].as_array()).map(Vec::len);
        assert_eq!(reporting, Some(2), "both nodes report on `new`: {destinations}");
    }

    // Commands through A reach dp-2 through B.
    let mut session = open_session(&f.nodes[1], "alice@example.test").await?;
    let (code, kick) = a.post("/connections/kick?identifier=Alice@Example.test").await?;
    assert_eq!(code, 200, "{kick}");
    assert_eq!(results(&kick["nodes"]), all_applied(&["dp-1", "dp-2"]), "{kick}");
    assert_eq!(kick["nodes"][1]["count"], 1, "dp-2's open session: {kick}");
    assert!(session.command("NOOP").await.is_err(), "the kicked session on dp-2 must be closed");
    let (code, reset) = a.post("/destinations/reset?destination=new").await?;
    assert_eq!((code, results(&reset["nodes"])), (200, all_applied(&["dp-1", "dp-2"])), "{reset}");
    let (code, reset) = a.post("/destinations/reset?node=dp-2").await?;
    assert_eq!((code, results(&reset["nodes"])), (200, all_applied(&["dp-2"])), "{reset}");
    assert_eq!(a.post("/destinations/reset?node=dp-9").await?.0, 404, "no replica knows dp-9");
    let (code, probe) = a.get("/nodes/dp-2/healthz").await?;
    assert_eq!((code, probe["peer"].as_str()), (200, Some(f.b.api_url().as_str())), "{probe}");
    assert!(probe["rtt_ms"].as_f64().is_some(), "{probe}");
    assert_eq!(a.get("/nodes/dp-9/healthz").await?.0, 404);
    let (_, local) = a.post("/cache/invalidate?scope=local").await?;
    assert_eq!(results(&local["nodes"]), all_applied(&["dp-1"]), "scope=local stays on A: {local}");

    // A move through B: both nodes' old sessions are kicked and the move is complete.
    let mut open = vec![
        open_session(&f.nodes[0], "carol@example.test").await?,
        open_session(&f.nodes[1], "carol@example.test").await?,
    ];
    let (code, report) = b.post_json("/mappings/carol@example.test/move", json!({"destination": "new"})).await?;
    assert_eq!((code, &report["complete"]), (200, &json!(true)), "{report}");
    for step in report["steps"].as_array().unwrap() {
        assert_eq!(results(&step["nodes"]), all_applied(&["dp-1", "dp-2"]), "{step}");
    }
    let kicked: Vec<u64> =
        report["steps"][2]["nodes"].as_array().unwrap().iter().filter_map(|n| n["count"].as_u64()).collect();
    assert_eq!(kicked, [1, 1], "one old session per node: {report}");
    for imap in &mut open {
        assert!(imap.command("NOOP").await.is_err(), "the moved account's old sessions are closed");
    }
    for node in &f.nodes {
        assert_eq!(subjects(node, "carol@example.test").await?, on("new"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_hands_its_node_over_and_catches_up_when_it_returns() -> Result<()> {
    if !servers_installed() {
        return Ok(());
    }
    let Fixture { a, b, nodes, pg, _legacy, _new } = fixture().await?;
    let mut a = a;
    put_acked(&a.api(), "alice@example.test", "new", &["dp-1", "dp-2"]).await?;
    let a_url = a.api_url();

    // A stops: dp-1 fails over to B, the next endpoint it lists.
    a.stop().await;
    connected_here(&b.api(), &["dp-1", "dp-2"]).await.context("dp-1 did not fail over to B")?;
    let (code, nodes_seen) = b.api().get("/nodes").await?;
    assert_eq!((code, connected_ids(&nodes_seen)), (200, vec!["dp-1".to_string(), "dp-2".to_string()]));
    let (_, stats) = b.api().get("/stats").await?;
    assert_eq!(peers(&stats), [(a_url.clone(), false)], "a replica that is down is listed, not fatal: {stats}");

    // dp-1 keeps routing, and a write through B moves an account on dp-1 too.
    assert_eq!(subjects(&nodes[0], "alice@example.test").await?, on("new"));
    let put = put_acked(&b.api(), "alice@example.test", "legacy", &["dp-1", "dp-2"]).await?;
    assert_eq!(peers(&put), [(a_url.clone(), false)], "{put}");
    assert_eq!(subjects(&nodes[0], "alice@example.test").await?, on("legacy"));
    let revision = put["revision"].as_u64().context("revision")?;

    // A returns on the same ports: it serves the store's current revision to a node that
    // connects to it, and its writes reach both nodes (now both on B) again.
    let a = a.restart().await?;
    let dp3 = Node::start("dp-3", &[a.endpoint()], Some(NODE_TOKEN)).await?;
    connected_here(&a.api(), &["dp-3"]).await?;
    dp3.until_ready().await?;
    let (_, seen) = a.api().get("/nodes?scope=local").await?;
    assert!(seen[0]["applied_revision"].as_u64() >= Some(revision), "dp-3 welcomed at the current revision: {seen}");
    assert_eq!(subjects(&dp3, "alice@example.test").await?, on("legacy"));
    let put = put_acked(&a.api(), "alice@example.test", "new", &["dp-1", "dp-2", "dp-3"]).await?;
    assert_eq!(peers(&put), [(b.api_url(), true)], "{put}");
    assert_eq!(subjects(&nodes[0], "alice@example.test").await?, on("new"));
    assert_eq!(subjects(&nodes[1], "alice@example.test").await?, on("new"));
    let (_, all) = a.api().get("/nodes").await?;
    assert_eq!(connected_ids(&all), ["dp-1", "dp-2", "dp-3"], "{all}");
    drop(dp3);
    drop(nodes);
    drop((a, b));
    drop(pg);
    Ok(())
}

/// `deploy/examples/controlplane-replica.toml` as cp-2's file: each line after a
/// `# cp-2: KEY = VALUE` comment that sets KEY takes that value.
fn second_replica(example: &str) -> String {
    let mut pending: Option<String> = None;
    let mut out = Vec::new();
    for line in example.lines() {
        if let Some(replacement) = line.strip_prefix("# cp-2: ") {
            pending = Some(replacement.to_string());
            out.push(line.to_string());
            continue;
        }
        match pending.take() {
            Some(r) if r.split('=').next() == line.split('=').next() => out.push(r),
            other => {
                pending = other;
                out.push(line.to_string());
            }
        }
    }
    out.join("\n")
}

#[test]
fn the_two_replica_example_names_each_replica_as_the_others_peer() -> Result<()> {
    use controlplane::config::{Config, MappingSource};
    let example = include_str!("../../../deploy/examples/controlplane-replica.toml");
    let one = Config::from_toml_str(example)?;
    let two = Config::from_toml_str(&second_replica(example))?;
    for (me, other) in [(&one, &two), (&two, &one)] {
        assert_eq!(me.mapping.source, MappingSource::Postgres);
        assert_eq!(me.cluster.peers, [format!("http://{}", other.api.bind)]);
        assert_ne!(me.grpc.bind, other.grpc.bind);
        assert_eq!(me.destination, other.destination, "the same destinations on every replica");
    }
    Ok(())
}

/// `GET /stats` on `base` with the admin token, trusting `ca` (or plain HTTP without one).
async fn stats_over(base: &str, ca: Option<&std::path::Path>) -> Result<Value> {
    let mut client = reqwest::Client::builder().timeout(WAIT);
    if let Some(ca) = ca {
        client = client.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
    }
    let response = client.build()?.get(format!("{base}/stats")).bearer_auth(ADMIN_TOKEN).send().await?;
    ensure!(response.status() == 200, "{base}/stats: {}", response.status());
    Ok(response.json().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_tls_are_trusted_through_peer_ca_only() -> Result<()> {
    // Two replicas on one SQLite file (WAL: two pools), APIs over TLS for 127.0.0.1.
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new()?;
    let (cert, key) = pki.issue(&["127.0.0.1"])?;
    let base = controlplane_toml_store(
        &sqlite_mapping(&dir.path().join("shared.db")),
        &destination_toml("legacy", &[("imap", 1)], ""),
        "legacy",
    );
    let tls = format!("[api]\ntls_cert = {cert:?}\ntls_key = {key:?}\n");
    let with = |ca: &std::path::Path| format!("{}[cluster]\npeer_ca = {ca:?}\n", base.replacen("[api]\n", &tls, 1));
    let replicas = ControlPlane::start_replicas(vec![with(&pki.ca_pem_path()), with(&pki.ca_pem_path())]).await?;
    let (a, b) = (&replicas[0], &replicas[1]);
    assert!(a.api_url().starts_with("https://"), "{}", a.api_url());
    let (a_url, ca) = (a.api_url(), pki.ca_pem_path());
    let stats = eventually(WAIT, || stats_over(&a_url, Some(&ca))).await?;
    assert_eq!(peers(&stats), [(b.api_url(), true)], "{stats}");

    // A replica that trusts another CA does not take the peers' certificate.
    let stranger = TestPki::new()?;
    let config = format!("{base}[cluster]\npeers = [{:?}]\npeer_ca = {:?}\n", a.api_url(), stranger.ca_pem_path());
    let c = ControlPlane::start_config(config).await?;
    let c_url = c.api_url();
    let stats = eventually(WAIT, || stats_over(&c_url, None)).await?;
    assert_eq!(peers(&stats), [(a.api_url(), false)], "{stats}");
    let error = stats["peers"][0]["error"].as_str().unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "names the certificate problem: {error}");
    Ok(())
}
