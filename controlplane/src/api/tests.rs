//! API tests through `oneshot`, without sockets: auth, mappings, stats and destinations
//! with a real SQLite store and no nodes connected; and a replica whose peers are served
//! on loopback (one sharing its store, one gone).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::router;

mod undeclared;
use crate::config::Config;
use crate::state::Shared;
use crate::store::Store;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";

async fn app() -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(&dir.path().join("m.db")).await;
    (router(shared, TOKEN.into()), dir)
}

async fn shared(db: &std::path::Path) -> std::sync::Arc<Shared> {
    let toml = format!(
        r#"[routing]
default_destination = "legacy"
[mapping.sqlite]
path = "{}"
[api]
ack_timeout = "200ms"
[destination.legacy]
host = "127.0.0.1"
[destination.legacy.protocol.imap]
port = 143
[destination.new]
host = "127.0.0.2"
[destination.new.protocol.imap]
port = 143
"#,
        db.display()
    );
    let config = Config::from_toml_str(&toml).unwrap();
    let store = Store::open(&config.mapping, &config.route_key_rule()).await.unwrap();
    Shared::new(config, store)
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    let resp = app.clone().oneshot(req.unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

#[tokio::test]
async fn health_needs_no_token_everything_else_does() {
    let (app, _dir) = app().await;
    assert_eq!(call(&app, "GET", "/healthz", None, None).await, (StatusCode::OK, Value::String("ok".into())));
    assert_eq!(call(&app, "GET", "/readyz", None, None).await.0, StatusCode::OK);
    for (method, uri) in [
        ("GET", "/stats"),
        ("GET", "/nodes"),
        ("GET", "/destinations"),
        ("POST", "/destinations/reset"),
        ("GET", "/mappings/a"),
        ("DELETE", "/mappings/a"),
    ] {
        assert_eq!(call(&app, method, uri, None, None).await.0, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(call(&app, method, uri, Some("wrong"), None).await.0, StatusCode::UNAUTHORIZED, "{uri}");
        let almost = &TOKEN[..TOKEN.len() - 1];
        assert_eq!(call(&app, method, uri, Some(almost), None).await.0, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

#[tokio::test]
async fn mappings_are_normalized_written_listed_and_removed() {
    let (app, _dir) = app().await;
    let t = Some(TOKEN);
    let (code, body) = call(&app, "PUT", "/mappings/Bob%25Master", t, Some(json!({"destination": "nowhere"}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, body) = call(&app, "PUT", "/mappings/Bob%25Master", t, Some(json!({"destination": "new"}))).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["normalized"], "bob");
    assert_eq!(body["revision"], 1);
    assert_eq!(body["nodes"], json!([]), "no nodes connected, nothing to wait for");
    let (_, body) = call(&app, "PUT", "/mappings/carol", t, Some(json!({"destination": "legacy"}))).await;
    assert_eq!(body["revision"], 2);

    let (code, shown) = call(&app, "GET", "/mappings/BOB", t, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(shown["normalized"], "bob");
    assert_eq!(shown["destination"], "new");
    assert_eq!(shown["routed_to_default"], false);
    assert_eq!(shown["log_tag"], switchyard_common::routekey::redact("bob"));
    let (_, unknown) = call(&app, "GET", "/mappings/dave", t, None).await;
    assert_eq!((unknown["destination"].as_str(), unknown["routed_to_default"].as_bool()), (Some("legacy"), Some(true)));

    let (_, page) = call(&app, "GET", "/mappings?limit=1", t, None).await;
    assert_eq!(page["mappings"], json!([{"identifier": "bob", "destination": "new"}]));
    assert_eq!(page["next"], "bob");
    let (_, page) = call(&app, "GET", "/mappings?limit=1&after=bob", t, None).await;
    assert_eq!(page["mappings"], json!([{"identifier": "carol", "destination": "legacy"}]));

    let (code, body) = call(&app, "DELETE", "/mappings/bob", t, None).await;
    assert_eq!((code, body["revision"].as_u64()), (StatusCode::OK, Some(3)));
    assert_eq!(call(&app, "DELETE", "/mappings/bob", t, None).await.0, StatusCode::NOT_FOUND);
    let (code, _) = call(&app, "PUT", "/mappings/x", t, Some(json!({"destination": "new", "extra": 1}))).await;
    assert!(code.is_client_error());
}

#[tokio::test]
async fn stats_and_destinations_with_no_nodes() {
    let (app, _dir) = app().await;
    let t = Some(TOKEN);
    let (code, stats) = call(&app, "GET", "/stats", t, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(stats["cache_hits"], 0);
    assert_eq!(stats["hit_rate_pct"], 0.0);
    assert_eq!(stats["nodes"], json!([]));
    let (_, dests) = call(&app, "GET", "/destinations", t, None).await;
    let ids: Vec<_> = dests.as_array().unwrap().iter().map(|d| d["destination"].as_str().unwrap()).collect();
    assert_eq!(ids, ["legacy", "new"]);
    assert!(dests.as_array().unwrap().iter().all(|d| d["down"] == false && d["nodes"] == json!([])));
    assert_eq!(call(&app, "POST", "/destinations/reset?destination=zzz", t, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, "POST", "/destinations/reset?node=zzz", t, None).await.0, StatusCode::NOT_FOUND);
    let (code, reset) = call(&app, "POST", "/destinations/reset", t, None).await;
    assert_eq!((code, reset["nodes"].clone()), (StatusCode::OK, json!([])));
    let (_, nodes) = call(&app, "GET", "/nodes", t, None).await;
    assert_eq!(nodes, json!([]));
}

/// Serves a replica's API on 127.0.0.1:0; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A base URL where nothing listens any more.
fn gone() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// A replica whose peers are `peers`, on the SQLite file `db`.
async fn replica(db: &std::path::Path, peers: &[&str]) -> axum::Router {
    let config = crate::config::ClusterConfig {
        peers: peers.iter().map(|p| p.to_string()).collect(),
        peer_ca: None,
        peer_timeout: std::time::Duration::from_secs(5),
        allow_insecure_control: false,
    };
    let cluster = std::sync::Arc::new(crate::cluster::Cluster::new(&config, TOKEN).unwrap());
    super::router_in_cluster(shared(db).await, cluster, TOKEN.into())
}

fn peer_results(value: &Value) -> Vec<(String, bool)> {
    let peers = value["peers"].as_array().cloned().unwrap_or_default();
    peers.iter().map(|p| (p["peer"].as_str().unwrap_or_default().to_string(), p["ok"] == true)).collect()
}

#[tokio::test]
async fn fleet_requests_ask_every_peer_and_list_the_ones_that_did_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let b = serve(replica(&db, &[]).await).await;
    let dead = gone();
    let a = replica(&db, &[&b, &dead]).await;
    let t = Some(TOKEN);
    let expected = vec![(b.clone(), true), (dead.clone(), false)];

    let (code, stats) = call(&a, "GET", "/stats", t, None).await;
    assert_eq!(code, StatusCode::OK, "{stats}");
    assert_eq!(peer_results(&stats), expected, "{stats}");
    assert!(stats["peers"][1]["error"].as_str().is_some_and(|e| !e.is_empty()), "{stats}");
    let (_, local) = call(&a, "GET", "/stats?scope=local", t, None).await;
    assert!(local.get("peers").is_none(), "scope=local asks no peer: {local}");
    assert_eq!(call(&a, "GET", "/stats?scope=everywhere", t, None).await.0, StatusCode::BAD_REQUEST);

    // A write happens once; the peer on the same store waits for its (no) nodes.
    let (code, put) = call(&a, "PUT", "/mappings/bob", t, Some(json!({"destination": "new"}))).await;
    assert_eq!(code, StatusCode::OK, "{put}");
    assert_eq!((put["revision"].as_u64(), put["nodes"].clone()), (Some(1), json!([])));
    assert_eq!(peer_results(&put), expected, "{put}");
    let (code, kick) = call(&a, "POST", "/connections/kick?identifier=bob", t, None).await;
    assert_eq!((code, peer_results(&kick)), (StatusCode::OK, expected.clone()), "{kick}");

    // Array answers carry the peers in a header.
    let request = Request::get("/nodes").header("authorization", format!("Bearer {TOKEN}")).body(Body::empty());
    let response = a.clone().oneshot(request.unwrap()).await.unwrap();
    let header = response.headers().get("switchyard-peers").expect("peers header").to_str().unwrap().to_string();
    let listed: Value = serde_json::from_str(&header).unwrap();
    assert_eq!(peer_results(&json!({ "peers": listed })), expected);

    // No replica knows the node: 503 while a peer is silent (it might), 404 once all answered.
    let (code, body) = call(&a, "GET", "/nodes/dp-9/healthz", t, None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&dead), "{body}");
    let (code, _) = call(&a, "POST", "/destinations/reset?node=dp-9", t, None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    let a_alone = replica(&db, &[&b]).await;
    assert_eq!(call(&a_alone, "GET", "/nodes/dp-9/healthz", t, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&a_alone, "POST", "/destinations/reset?node=dp-9", t, None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_peer_on_another_store_refuses_to_wait_for_a_revision_it_does_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let b = serve(replica(&dir.path().join("other.db"), &[]).await).await;
    let a = replica(&dir.path().join("mine.db"), &[&b]).await;
    let (code, put) = call(&a, "PUT", "/mappings/bob", Some(TOKEN), Some(json!({"destination": "new"}))).await;
    assert_eq!(code, StatusCode::OK, "the write itself succeeded: {put}");
    assert_eq!(put["peers"][0]["ok"], false, "{put}");
    let error = put["peers"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("HTTP 409") && error.contains("share one store"), "{error}");
}

#[tokio::test]
async fn peers_are_called_with_the_admin_token_and_only_for_their_own_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let b = serve(replica(&db, &[]).await).await;
    // `fleet/wait` is behind the token like everything else.
    let http = reqwest::Client::new();
    let anonymous = http.post(format!("{b}/fleet/wait?epoch=e&revision=1")).send().await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    // A replica that lists itself as a peer would loop without `scope=local`.
    let a = replica(&db, &[&b]).await;
    let a_url = serve(a.clone()).await;
    let looped = replica(&db, &[&a_url]).await;
    let (code, stats) = call(&looped, "GET", "/stats", Some(TOKEN), None).await;
    assert_eq!((code, peer_results(&stats)), (StatusCode::OK, vec![(a_url, true)]), "{stats}");
}
