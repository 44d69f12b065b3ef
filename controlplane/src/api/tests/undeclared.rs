//! Destinations a replica does not declare: `GET /mappings` shows them as such, a PUT or move
//! naming one that a peer lacks is refused with that peer named, a peer's `/fleet/wait` marks
//! its nodes `undeclared`, and `/nodes` lists the accounts a node cannot route.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};
use switchyard_proto::v1 as pb;
use tokio::sync::mpsc;

use super::{call, gone, serve, TOKEN};
use crate::cluster::Cluster;
use crate::config::{ClusterConfig, Config};
use crate::node_info::NodeHello;
use crate::state::Shared;
use crate::store::Store;

/// A control plane declaring `destinations` (the first is the default) on the SQLite `db`.
async fn shared_with(db: &std::path::Path, destinations: &[&str]) -> Arc<Shared> {
    let mut toml = format!(
        "[routing]\ndefault_destination = \"{}\"\n[mapping.sqlite]\npath = \"{}\"\n[api]\nack_timeout = \"200ms\"\n",
        destinations[0],
        db.display()
    );
    for d in destinations {
        toml.push_str(&format!(
            "[destination.{d}]\nhost = \"127.0.0.1\"\n[destination.{d}.protocol.imap]\nport = 143\n"
        ));
    }
    let config = Config::from_toml_str(&toml).unwrap();
    let store = Store::open(&config.mapping, &config.route_key_rule()).await.unwrap();
    Shared::new(config, store)
}

fn router(shared: &Arc<Shared>, peers: &[&str]) -> axum::Router {
    let config = ClusterConfig {
        peers: peers.iter().map(|p| p.to_string()).collect(),
        peer_ca: None,
        peer_timeout: std::time::Duration::from_secs(5),
        allow_insecure_control: false,
    };
    let cluster = Arc::new(Cluster::new(&config, TOKEN).unwrap());
    super::super::router_in_cluster(Arc::clone(shared), cluster, TOKEN.into())
}

/// Registers a connected node `id` that has applied everything up to revision 1000; keep
/// the receiver alive for as long as it should stay connected.
fn connect_node(shared: &Shared, id: &str) -> mpsc::Receiver<pb::ControlMessage> {
    let (tx, rx) = mpsc::channel(16);
    let hello = NodeHello { node_id: id.into(), instance_id: format!("{id}-1"), ..Default::default() };
    shared.fleet.connect(hello, None, (shared.epoch().to_string(), 1000), 0, tx).unwrap();
    rx
}

fn node(answer: &Value, id: &str) -> Value {
    let all = answer.as_array().cloned().unwrap_or_default();
    all.into_iter().find(|n| n["node_id"] == id).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_stored_mapping_to_an_undeclared_destination_is_shown_as_such_not_as_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_with(&dir.path().join("m.db"), &["legacy"]).await;
    shared.store.put("alice", "ghost").await.unwrap();
    let app = router(&shared, &[]);
    let (code, shown) = call(&app, "GET", "/mappings/Alice", Some(TOKEN), None).await;
    assert_eq!(code, StatusCode::OK, "{shown}");
    assert_eq!(
        (&shown["destination"], &shown["routed_to_default"], &shown["declared"]),
        (&json!("ghost"), &json!(false), &json!(false))
    );
    assert!(
        shown["warning"].as_str().is_some_and(|w| w.contains("\"ghost\"") && w.contains("temporary failure")),
        "{shown}"
    );
    let (_, unmapped) = call(&app, "GET", "/mappings/bob", Some(TOKEN), None).await;
    assert_eq!((&unmapped["destination"], &unmapped["declared"]), (&json!("legacy"), &json!(true)));
    assert!(unmapped.get("warning").is_none(), "{unmapped}");
}

#[tokio::test]
async fn a_write_naming_a_destination_a_peer_does_not_declare_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let b_shared = shared_with(&db, &["legacy"]).await;
    let _dp2 = connect_node(&b_shared, "dp-2");
    let b = serve(router(&b_shared, &[])).await;
    let dead = gone();
    let a = router(&shared_with(&db, &["legacy", "new"]).await, &[&b, &dead]);
    let t = Some(TOKEN);

    let (code, refused) = call(&a, "PUT", "/mappings/alice", t, Some(json!({"destination": "new"}))).await;
    assert_eq!(code, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["conflicts"], json!([{"peer": b, "destination": "new", "nodes": ["dp-2"]}]), "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains(&b) && error.contains("\"new\"") && !error.contains(&dead), "{error}");
    let (code, _) = call(&a, "POST", "/mappings/alice/move", t, Some(json!({"destination": "new"}))).await;
    assert_eq!(code, StatusCode::CONFLICT, "a move is refused alike");
    let (code, _) = call(&a, "PUT", "/mappings/alice?scope=local", t, Some(json!({"destination": "new"}))).await;
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "scope=local does not skip the check: the write reaches every replica's nodes"
    );
    assert_eq!(b_shared.store.get("alice").await.unwrap(), None, "nothing was written");

    // Declared by every replica that answers (the dead one cannot say): written.
    let (code, put) = call(&a, "PUT", "/mappings/alice", t, Some(json!({"destination": "legacy"}))).await;
    assert_eq!(code, StatusCode::OK, "{put}");
    assert_eq!(put["nodes"], json!([{"node_id": "dp-2", "instance_id": "dp-2-1", "result": "applied"}]), "{put}");
    assert!(put.get("conflicts").is_none(), "{put}");
    let a_alone = router(&shared_with(&db, &["legacy", "new"]).await, &[&dead]);
    let (code, put) = call(&a_alone, "PUT", "/mappings/alice", t, Some(json!({"destination": "new"}))).await;
    assert_eq!(code, StatusCode::OK, "a peer that does not answer does not block writes: {put}");
    assert_eq!(put["peers"][0]["ok"], false, "{put}");
}

#[tokio::test]
async fn a_peer_that_does_not_declare_the_destination_reports_its_nodes_undeclared() {
    let dir = tempfile::tempdir().unwrap();
    let b_shared = shared_with(&dir.path().join("m.db"), &["legacy"]).await;
    let _dp2 = connect_node(&b_shared, "dp-2");
    let b = router(&b_shared, &[]);
    let epoch = b_shared.epoch().to_string();
    let wait = |destination: &str| format!("/fleet/wait?epoch={epoch}&revision=1{destination}&scope=local");
    for (query, result, declared) in
        [("&destination=new", "undeclared", false), ("&destination=legacy", "applied", true), ("", "applied", true)]
    {
        let (code, acks) = call(&b, "POST", &wait(query), Some(TOKEN), None).await;
        assert_eq!(code, StatusCode::OK, "{acks}");
        let nodes = json!([{"node_id": "dp-2", "instance_id": "dp-2-1", "result": result}]);
        assert_eq!(acks, json!({"nodes": nodes, "declared": declared}), "{query}");
    }
}

/// A peer that declared `new` when asked and no longer does when it acks (restarted with
/// another config in between): the one answer that can still show a conflict after the check.
async fn changed_its_mind() -> String {
    use axum::routing::{get, post};
    let declared = json!({"destination": "new", "declared": true, "nodes": ["dp-9"]});
    let acks = json!({"nodes": [{"node_id": "dp-9", "result": "undeclared"}], "declared": false});
    let app = axum::Router::new()
        .route("/fleet/declared", get(move || async move { axum::Json(declared) }))
        .route("/fleet/wait", post(move || async move { axum::Json(acks) }));
    serve(app).await
}

#[tokio::test]
async fn a_conflict_found_after_the_check_is_listed_in_the_writes_answer_not_as_applied() {
    let dir = tempfile::tempdir().unwrap();
    let peer = changed_its_mind().await;
    let a = router(&shared_with(&dir.path().join("m.db"), &["legacy", "new"]).await, &[&peer]);
    let (code, put) = call(&a, "PUT", "/mappings/alice", Some(TOKEN), Some(json!({"destination": "new"}))).await;
    assert_eq!(code, StatusCode::OK, "written: the check passed: {put}");
    assert_eq!(put["nodes"], json!([{"node_id": "dp-9", "result": "undeclared"}]), "{put}");
    assert_eq!(put["conflicts"], json!([{"peer": peer, "destination": "new", "nodes": ["dp-9"]}]), "{put}");
    let (code, moved) = call(&a, "POST", "/mappings/bob/move", Some(TOKEN), Some(json!({"destination": "new"}))).await;
    assert_eq!(code, StatusCode::OK, "{moved}");
    let write = &moved["steps"][1];
    assert_eq!((&write["step"], &write["ok"]), (&json!("write"), &json!(false)), "{moved}");
    assert_eq!(write["nodes"], json!([{"node_id": "dp-9", "result": "undeclared"}]), "{moved}");
    assert_eq!(moved["complete"], false, "{moved}");
}

#[tokio::test]
async fn nodes_lists_the_undeclared_destinations_a_connected_node_cannot_route() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_with(&dir.path().join("m.db"), &["legacy"]).await;
    let _dp1 = connect_node(&shared, "dp-1");
    let app = router(&shared, &[]);
    let (_, nodes) = call(&app, "GET", "/nodes", Some(TOKEN), None).await;
    assert!(node(&nodes, "dp-1").get("undeclared").is_none(), "{nodes}");

    for key in ["alice", "bob"] {
        shared.store.put(key, "ghost").await.unwrap();
    }
    shared.publisher.catch_up().await.unwrap();
    let (_, nodes) = call(&app, "GET", "/nodes", Some(TOKEN), None).await;
    assert_eq!(node(&nodes, "dp-1")["undeclared"], json!([{"destination": "ghost", "accounts": 2}]), "{nodes}");

    shared.publisher.put("alice", "legacy").await.unwrap();
    shared.publisher.remove("bob").await.unwrap();
    let (_, nodes) = call(&app, "GET", "/nodes", Some(TOKEN), None).await;
    assert!(node(&nodes, "dp-1").get("undeclared").is_none(), "remapped and removed: {nodes}");
}
