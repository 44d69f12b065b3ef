//! Fleet semantics end to end: account moves, static stability while the control plane is
//! down, resync, node restarts, commands replayed to returning nodes, probes, and a
//! hundred simulated nodes acking one change.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use switchyard_tests::fleet::{Api, ControlPlane, Fleet, Node, NODE_TOKEN};
use switchyard_tests::simnodes::SimFleet;
use switchyard_tests::{eventually, require_or_skip, status, Dovecot, ImapClient};

const USERS: &[(&str, &str)] =
    &[("alice@example.test", "pw"), ("bob@example.test", "pw"), ("carol@example.test", "pw")];
const WAIT: Duration = Duration::from_secs(15);

async fn two_dovecots() -> Result<(Dovecot, Dovecot)> {
    Ok((Dovecot::start_marked(USERS, "legacy")?, Dovecot::start_marked(USERS, "new")?))
}

async fn subjects(node: &Node, user: &str) -> Result<Result<Vec<String>, String>> {
    switchyard_tests::inbox_subjects(node.imap, user, "pw").await
}

fn on(server: &str) -> Result<Vec<String>, String> {
    Ok(vec![format!("on {server}")])
}

async fn connected(api: &Api, count: usize) -> Result<Value> {
    Ok(api.until_nodes("", WAIT, |ids| ids.len() == count).await?.1)
}

/// Logins to `user` recorded in a Dovecot's log (`imap-login: Login: user=<...>`).
fn logins(dovecot: &Dovecot, user: &str) -> usize {
    dovecot.log().lines().filter(|l| l.contains("Login: user=<") && l.contains(user)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_closes_old_sessions_and_no_login_reaches_the_old_backend_after_it() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (legacy, new) = two_dovecots().await?;
    let fleet = Fleet::builder()
        .dovecot("legacy", &legacy, &["imap"])
        .dovecot("new", &new, &["imap"])
        .node("dp-1")
        .node("dp-2")
        .start()
        .await?;
    let Fleet { cp, nodes, .. } = fleet;
    let api = cp.api();

    // An open session on legacy, on each node.
    let mut open = Vec::new();
    for node in &nodes {
        let mut imap = ImapClient::connect(node.imap).await?;
        ensure!(status(&imap.login("alice@example.test", "pw").await?) == "OK");
        imap.command("SELECT INBOX").await?;
        open.push(imap);
    }
    // A plain remap moves new logins only: the open sessions stay where they are.
    let (code, _) = api.put("/mappings/alice@example.test", json!({"destination": "new"})).await?;
    assert_eq!(code, 200);
    for imap in &mut open {
        let (_, tagged) = imap.command("NOOP").await?;
        assert_eq!(status(&tagged), "OK", "a remap does not close open sessions");
    }
    let (code, report) = api.post_json("/mappings/alice@example.test/move", json!({"destination": "new"})).await?;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    let steps: Vec<&str> = report["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["delay", "write", "kick", "release"]);
    let kicked: u64 =
        report["steps"][2]["nodes"].as_array().unwrap().iter().map(|n| n["count"].as_u64().unwrap()).sum();
    assert_eq!(kicked, 2, "one old session per node: {report}");
    let legacy_logins = logins(&legacy, "alice@example.test");

    for mut imap in open {
        let closed = imap.command("NOOP").await;
        assert!(closed.is_err(), "the kicked session must be closed, got {closed:?}");
    }
    for node in &nodes {
        for _ in 0..3 {
            assert_eq!(subjects(node, "alice@example.test").await?, on("new"));
        }
    }
    assert_eq!(logins(&legacy, "alice@example.test"), legacy_logins, "no login reached legacy after the move");
    assert_eq!(api.post_json("/mappings/alice@example.test/move", json!({"destination": "nowhere"})).await?.0, 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_serving_without_the_control_plane_and_resync_when_it_returns() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (legacy, new) = two_dovecots().await?;
    let fleet = Fleet::builder()
        .dovecot("legacy", &legacy, &["imap"])
        .dovecot("new", &new, &["imap"])
        .map("alice@example.test", "new")
        .start()
        .await?;
    let Fleet { mut cp, nodes, .. } = fleet;
    let node = &nodes[0];
    assert_eq!(subjects(node, "alice@example.test").await?, on("new"));

    cp.stop().await;
    eventually(WAIT, || async {
        let (code, body) = node.readyz().await?;
        ensure!(code == 200 && body["status"] == "degraded", "{body}");
        Ok(())
    })
    .await?;
    assert_eq!(reqwest::get(format!("http://{}/healthz", node.health)).await?.status(), 200, "liveness stays up");
    assert_eq!(subjects(node, "alice@example.test").await?, on("new"), "cached route still served");
    let refused = subjects(node, "bob@example.test").await?.unwrap_err();
    assert!(refused.contains("NO [UNAVAILABLE]"), "uncached account: temporary failure, never legacy: {refused}");

    // A change made while the node is away (straight into the store) reaches it on resync.
    let store = cp.open_store().await?;
    store.put("alice@example.test", "legacy").await?;
    drop(store);
    let cp = cp.restart().await?;
    let api = cp.api();
    eventually(WAIT, || async {
        let (_, nodes) = api.get("/nodes").await?;
        ensure!(nodes[0]["sync"] == "in_sync", "{nodes}");
        Ok(())
    })
    .await?;
    assert_eq!(subjects(node, "alice@example.test").await?, on("legacy"));
    assert_eq!(subjects(node, "bob@example.test").await?, on("legacy"));
    let (code, body) = node.readyz().await?;
    assert_eq!((code, body["status"].as_str()), (200, Some("ready")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_a_new_instance_with_fresh_counters() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let legacy = Dovecot::start(USERS)?;
    let Fleet { cp, mut nodes, .. } = Fleet::builder().dovecot("legacy", &legacy, &["imap"]).start().await?;
    let api = cp.api();
    let node = &mut nodes[0];
    let first = connected(&api, 1).await?[0]["instance_id"].clone();
    for _ in 0..3 {
        assert!(subjects(node, "carol@example.test").await?.is_ok(), "login through the node");
    }
    let node_stats = |want: u64| {
        let api = &api;
        async move {
            eventually(WAIT, || async {
                let (_, stats) = api.get("/stats").await?;
                let lookups = stats["nodes"][0]["cache_hits"].as_u64().unwrap_or(0)
                    + stats["nodes"][0]["cache_misses"].as_u64().unwrap_or(0);
                ensure!(lookups == want && stats["nodes"][0]["stale"] == false, "{stats}");
                Ok(())
            })
            .await
        }
    };
    node_stats(3).await?;
    node.stop().await;
    let _node = Node::start("dp-1", &[cp.endpoint()], Some(NODE_TOKEN)).await?;
    // The old stream's end and the new one's hello may be seen in either order: wait for
    // the new instance rather than for "connected".
    eventually(WAIT, || async {
        let nodes = connected(&api, 1).await?;
        ensure!(nodes[0]["instance_id"] != first, "still the old instance: {nodes}");
        Ok(())
    })
    .await?;
    node_stats(0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_returning_nodes_and_probes_measure_each_node() -> Result<()> {
    let cp = ControlPlane::start(&[("legacy", 1), ("new", 2)], "legacy").await?;
    let api = cp.api();
    let stays = SimFleet::start(&cp.endpoint(), NODE_TOKEN, "stays", 1).await?;
    let away = SimFleet::start(&cp.endpoint(), NODE_TOKEN, "away", 1).await?;
    connected(&api, 2).await?;
    let (code, probe) = api.get("/nodes/stays-0/healthz").await?;
    assert_eq!(code, 200, "{probe}");
    assert!(probe["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0 && ms < 2000.0), "{probe}");
    assert_eq!(api.get("/nodes/nobody/healthz").await?.0, 404);

    away.stop().await;
    connected(&api, 1).await?;
    assert_eq!(api.get("/nodes/away-0/healthz").await?.0, 503);
    let (code, reset) = api.post("/destinations/reset?destination=new").await?;
    assert_eq!(code, 200);
    let results: Vec<(String, String)> = reset["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap().into(), n["result"].as_str().unwrap().into()))
        .collect();
    assert_eq!(results, [("away-0".into(), "not_connected".into()), ("stays-0".into(), "applied".into())]);
    let (_, stats) = api.get("/stats").await?;
    assert_eq!(stats["nodes_excluded_stale"], 1, "{stats}");

    // The reset is replayed when the node returns (it has not expired).
    let back = SimFleet::start(&cp.endpoint(), NODE_TOKEN, "away", 1).await?;
    eventually(WAIT, || async {
        ensure!(back.nodes[0].1.commands.load(std::sync::atomic::Ordering::Acquire) == 1);
        Ok(())
    })
    .await?;
    for (path, code) in [
        ("/cache/invalidate", 200),
        ("/cache/invalidate?identifier=alice", 200),
        ("/connections/kick?identifier=alice", 200),
        ("/connections/kick", 400),
        ("/connections/delay?identifier=alice&seconds=5", 200),
        ("/connections/delay?identifier=alice", 400),
        ("/connections/delay?identifier=alice&seconds=100000", 400),
    ] {
        let (got, body) = api.post(path).await?;
        assert_eq!(got, code, "{path}: {body}");
        if code == 200 {
            assert_eq!(body["nodes"].as_array().map(Vec::len), Some(2), "{path}: {body}");
            assert!(body["nodes"].as_array().unwrap().iter().all(|n| n["result"] == "applied"), "{path}: {body}");
        }
    }
    stays.stop().await;
    back.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_nodes_all_ack_one_change() -> Result<()> {
    let cp = ControlPlane::start(&[("legacy", 1), ("new", 2)], "legacy").await?;
    let api = cp.api();
    let sims = SimFleet::start(&cp.endpoint(), NODE_TOKEN, "sim", 100).await?;
    eventually(WAIT, || async {
        ensure!(sims.welcomed() == 100, "{} welcomed", sims.welcomed());
        Ok(())
    })
    .await?;
    let (code, put) = api.put("/mappings/alice@example.test", json!({"destination": "new"})).await?;
    assert_eq!(code, 200);
    let acks = put["nodes"].as_array().unwrap();
    assert_eq!(acks.len(), 100);
    assert!(acks.iter().all(|n| n["result"] == "applied"), "{put}");
    assert_eq!(sims.min_applied(), put["revision"].as_u64().unwrap());
    let (_, nodes) = api.get("/nodes").await?;
    assert!(nodes.as_array().unwrap().iter().all(|n| n["sync"] == "in_sync"));
    sims.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_admitted_at_a_bounded_rate() -> Result<()> {
    let rate = [("grpc", "session_rate = 50"), ("grpc", "session_burst = 10")];
    let cp = ControlPlane::start_keyed(&[("legacy", 1)], "legacy", &rate).await?;
    let sims = SimFleet::start(&cp.endpoint(), NODE_TOKEN, "storm", 60).await?;
    eventually(WAIT, || async {
        ensure!(sims.welcomed() == 60, "{} welcomed", sims.welcomed());
        Ok(())
    })
    .await?;
    assert!(sims.refused() > 0, "60 nodes at once exceed a burst of 10: some had to retry");
    let (_, nodes) = cp.api().get("/nodes").await?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(60));
    sims.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fails_over_to_the_next_control_plane_endpoint() -> Result<()> {
    let cp = ControlPlane::start(&[("legacy", 1)], "legacy").await?;
    let dead = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", socket.local_addr()?)
    };
    let node = Node::start("dp-failover", &[dead, cp.endpoint()], Some(NODE_TOKEN)).await?;
    connected(&cp.api(), 1).await?;
    // Connected on the control plane's side comes a moment before the node has applied
    // its Welcome and calls itself ready.
    node.until_ready().await
}
