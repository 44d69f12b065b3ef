//! End to end: one control plane, two data-plane nodes and two real Dovecot servers
//! (`legacy`, the default, and `new`). Every account exists on both servers with a
//! different message, so the subject a client sees proves which backend it reached.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use switchyard_tests::fleet::{ControlPlane, Fleet, Node, NODE_TOKEN};
use switchyard_tests::{eventually, python_imap_login, require_or_skip, Dovecot};

const USERS: &[(&str, &str)] =
    &[("alice@example.test", "alicepw"), ("bob@example.test", "bobpw"), ("carol@example.test", "carolpw")];
const PROPAGATION: Duration = Duration::from_secs(10);

struct Fixture {
    legacy: Dovecot,
    new: Dovecot,
    cp: ControlPlane,
    nodes: Vec<Node>,
}

async fn fixture() -> Result<Fixture> {
    let (legacy, new) = (Dovecot::start_marked(USERS, "legacy")?, Dovecot::start_marked(USERS, "new")?);
    let fleet = Fleet::builder()
        .dovecot("legacy", &legacy, &["imap"])
        .dovecot("new", &new, &["imap"])
        .node("dp-1")
        .node("dp-2")
        .start()
        .await?;
    Ok(Fixture { legacy, new, cp: fleet.cp, nodes: fleet.nodes })
}

/// Logs in through `node` and returns the inbox subjects (or the tagged refusal).
async fn login(node: &Node, user: &str, pass: &str) -> Result<Result<Vec<String>, String>> {
    switchyard_tests::inbox_subjects(node.imap, user, pass).await
}

fn on(server: &str) -> Result<Vec<String>, String> {
    Ok(vec![format!("on {server}")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_route_per_mapping_and_remaps_move_the_next_login() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture().await?;
    let api = f.cp.api();
    let (code, put) = api.put("/mappings/Alice@Example.test", json!({"destination": "new"})).await?;
    assert_eq!(code, 200, "{put}");
    assert_eq!(put["normalized"], "alice@example.test");
    assert!(put["revision"].as_u64() >= Some(1));
    let acks: Vec<&Value> = put["nodes"].as_array().unwrap().iter().collect();
    assert_eq!(acks.len(), 2, "{put}");
    assert!(acks.iter().all(|n| n["result"] == "applied"), "{put}");

    // Mapped → new on both nodes (Rust client and Python's imaplib); unmapped → legacy.
    assert_eq!(login(&f.nodes[0], "alice@example.test", "alicepw").await?, on("new"));
    let (ok, text) = python_imap_login(f.nodes[1].imap.port(), "ALICE@example.test", "alicepw").await?;
    assert!(ok, "{text}");
    assert_eq!(text, "on new");
    assert_eq!(login(&f.nodes[0], "bob@example.test", "bobpw").await?, on("legacy"));

    let (code, shown) = api.get("/mappings/alice@EXAMPLE.test").await?;
    assert_eq!(code, 200);
    assert_eq!((shown["destination"].as_str(), shown["routed_to_default"].as_bool()), (Some("new"), Some(false)));
    let (_, bob) = api.get("/mappings/bob@example.test").await?;
    assert_eq!((bob["destination"].as_str(), bob["routed_to_default"].as_bool()), (Some("legacy"), Some(true)));

    // dp-1 has alice cached on `new`; the acked PUT must move its very next login.
    let (code, _) = api.put("/mappings/alice@example.test", json!({"destination": "legacy"})).await?;
    assert_eq!(code, 200);
    assert_eq!(login(&f.nodes[0], "alice@example.test", "alicepw").await?, on("legacy"));
    api.put("/mappings/alice@example.test", json!({"destination": "new"})).await?;
    let (code, _) = api.delete("/mappings/alice@example.test").await?;
    assert_eq!(code, 200);
    assert_eq!(login(&f.nodes[1], "alice@example.test", "alicepw").await?, on("legacy"));
    assert_eq!(api.delete("/mappings/alice@example.test").await?.0, 404);

    let (code, body) = api.put("/mappings/bob@example.test", json!({"destination": "nowhere"})).await?;
    assert_eq!(code, 400, "{body}");
    assert_eq!(login(&f.nodes[0], "bob@example.test", "bobpw").await?, on("legacy"));

    // /stats totals are the sums of the nodes' own figures.
    eventually(PROPAGATION, || async {
        let (_, stats) = api.get("/stats").await?;
        let nodes = stats["nodes"].as_array().cloned().unwrap_or_default();
        ensure!(nodes.len() == 2, "{stats}");
        for field in ["cache_hits", "cache_misses", "cache_entries", "active_connections"] {
            let sum: u64 = nodes.iter().map(|n| n[field].as_u64().unwrap_or(0)).sum();
            ensure!(stats[field].as_u64() == Some(sum), "{field}: {stats}");
        }
        // Six logins: pushed upserts made four of them hits; bob's first login and alice's
        // after the DELETE (a pushed removal) were misses.
        ensure!(stats["cache_hits"] == 4 && stats["cache_misses"] == 2, "{stats}");
        ensure!(stats["hit_rate_pct"] == 66.7, "{stats}");
        Ok(())
    })
    .await?;
    drop(f.legacy);
    drop(f.new);
    Ok(())
}

async fn destination(api: &switchyard_tests::fleet::Api, id: &str) -> Result<Value> {
    let (_, all) = api.get("/destinations").await?;
    all.as_array()
        .and_then(|a| a.iter().find(|d| d["destination"] == id).cloned())
        .ok_or_else(|| anyhow::anyhow!("{id} missing from {all}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_opens_the_breaker_fleet_wide_and_a_reset_clears_it() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let mut f = fixture().await?;
    let api = f.cp.api();
    api.put("/mappings/carol@example.test", json!({"destination": "new"})).await?;
    assert_eq!(login(&f.nodes[0], "carol@example.test", "carolpw").await?, on("new"));

    // A wrong password is the backend's verdict, relayed, and no breaker failure.
    let refused = login(&f.nodes[0], "bob@example.test", "wrong").await?.unwrap_err();
    assert!(refused.contains("NO [AUTHENTICATIONFAILED]"), "{refused}");

    f.new.stop()?;
    for node in &f.nodes {
        for _ in 0..2 {
            let refused = login(node, "carol@example.test", "carolpw").await?.unwrap_err();
            assert!(refused.contains("NO [UNAVAILABLE]"), "{refused}");
        }
    }
    eventually(PROPAGATION, || async {
        let new = destination(&api, "new").await?;
        ensure!(new["down"] == true && new["nodes_down"] == 2, "{new}");
        ensure!(new["consecutive_failures"].as_u64() >= Some(2), "{new}");
        let legacy = destination(&api, "legacy").await?;
        ensure!(legacy["down"] == false && legacy["consecutive_failures"] == 0, "{legacy}");
        Ok(())
    })
    .await?;

    // Back up, but the breaker holds it down for the cooldown until an operator resets it.
    f.new.restart()?;
    let refused = login(&f.nodes[1], "carol@example.test", "carolpw").await?.unwrap_err();
    assert!(refused.contains("NO [UNAVAILABLE]"), "{refused}");
    assert_eq!(api.post("/destinations/reset?destination=nowhere").await?.0, 404);
    let (code, reset) = api.post("/destinations/reset?destination=new").await?;
    assert_eq!(code, 200, "{reset}");
    let results = reset["nodes"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{reset}");
    assert!(results.iter().all(|n| n["result"] == "applied" && n["count"] == 1), "{reset}");
    eventually(PROPAGATION, || async {
        let new = destination(&api, "new").await?;
        ensure!(new["down"] == false && new["nodes_down"] == 0, "{new}");
        Ok(())
    })
    .await?;
    for node in &f.nodes {
        assert_eq!(login(node, "carol@example.test", "carolpw").await?, on("new"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_operators_without_credentials_are_refused() -> Result<()> {
    let cp = ControlPlane::start(&[("legacy", 1)], "legacy").await?;
    let api = cp.api();
    assert_eq!(api.get("/healthz").await?.0, 200);
    let anonymous = cp.api().without_token();
    assert_eq!(anonymous.get("/healthz").await?.0, 200);
    assert_eq!(anonymous.get("/stats").await?.0, 401);
    assert_eq!(anonymous.put("/mappings/x", json!({"destination": "legacy"})).await?.0, 401);
    let mut wrong = cp.api();
    wrong.token = Some("x".repeat(40));
    assert_eq!(wrong.get("/nodes").await?.0, 401);

    let mut client = switchyard_proto::v1::control_client::ControlClient::connect(cp.endpoint()).await?;
    let refused = client.resolve(switchyard_proto::v1::ResolveRequest { key: "a".into() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let intruder = Node::start("intruder", &[cp.endpoint()], Some("not-the-node-token-but-32-characters-long")).await?;
    let anonymous_node = Node::start("anonymous", &[cp.endpoint()], None).await?;
    let good = Node::start("good", &[cp.endpoint()], Some(NODE_TOKEN)).await?;
    good.until_ready().await?;
    let (_, nodes) = api.get("/nodes").await?;
    let ids: Vec<&str> = nodes.as_array().unwrap().iter().filter_map(|n| n["node_id"].as_str()).collect();
    assert_eq!(ids, ["good"]);
    for refused in [&intruder, &anonymous_node] {
        let (code, body) = refused.readyz().await?;
        assert_eq!((code, body["status"].as_str()), (503, Some("not_ready")), "{body}");
    }
    Ok(())
}
