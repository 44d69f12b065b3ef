//! API tests through `oneshot`, without sockets: auth, mappings, stats and destinations
//! with a real SQLite store and no nodes connected.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::router;
use crate::config::Config;
use crate::state::Shared;
use crate::store::Store;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";

async fn app() -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
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
        dir.path().join("m.db").display()
    );
    let config = Config::from_toml_str(&toml).unwrap();
    let store = Store::open(&config.mapping).await.unwrap();
    (router(Shared::new(config, store), TOKEN.into()), dir)
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
    assert_eq!(shown["log_tag"], dataplane::routekey::redact("bob"));
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
