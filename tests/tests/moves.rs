//! Login delays and account moves against real node processes and real Dovecots: a
//! release reaches a node that was away when it was given, and a move that reports
//! `complete` leaves no session of the account on the old server.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use switchyard_tests::fleet::{Api, ControlPlane};
use switchyard_tests::nodeproc::NodeProc;
use switchyard_tests::{eventually, require_or_skip, Dovecot};

const USERS: &[(&str, &str)] = &[("alice@example.test", "pw"), ("bob@example.test", "pw")];
const WAIT: Duration = Duration::from_secs(20);

/// The node's entry in `GET /nodes`.
async fn node_entry(api: &Api, id: &str) -> Result<Value> {
    let (_, nodes) = api.get("/nodes").await?;
    nodes.as_array().and_then(|a| a.iter().find(|n| n["node_id"] == id).cloned()).with_context(|| format!("{nodes}"))
}

async fn until_connected(api: &Api, id: &str, connected: bool) -> Result<()> {
    eventually(WAIT, || async {
        let node = node_entry(api, id).await?;
        ensure!(node["connected"] == connected, "{node}");
        Ok(())
    })
    .await
}

fn results(body: &Value) -> Vec<(String, String)> {
    let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap_or("").into(), n["result"].as_str().unwrap_or("").into()))
        .collect()
}

/// A node that was suspended while a login delay was released gets the release when it
/// comes back, instead of holding the account's logins for the rest of the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_given_while_a_node_was_away_reaches_it_when_it_returns() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let legacy = Dovecot::start(USERS)?;
    legacy.deliver("alice@example.test", "on legacy")?;
    let cp = ControlPlane::start(&[("legacy", legacy.imap_port())], "legacy").await?;
    let api = cp.api();
    let node = NodeProc::start("dp-away", &[cp.endpoint()]).await?;
    node.wait_for(&["connected to the control plane"]).await?;
    let login = || switchyard_tests::inbox_subjects(node.imap, "alice@example.test", "pw");
    ensure!(login().await? == Ok(vec!["on legacy".to_string()]));

    let (code, body) = api.post("/connections/delay?identifier=alice@example.test&seconds=60").await?;
    ensure!(code == 200 && results(&body) == [("dp-away".into(), "applied".into())], "{body}");
    node.stop()?;
    // Silent for three heartbeats (500 ms in the test config): the control plane drops it.
    until_connected(&api, "dp-away", false).await?;
    let (code, body) = api.post("/connections/delay?identifier=alice@example.test&seconds=0").await?;
    ensure!(code == 200 && results(&body) == [("dp-away".into(), "not_connected".into())], "{body}");

    node.resume()?;
    until_connected(&api, "dp-away", true).await?;
    // Held for the rest of the 60 s without the release; a few seconds with it.
    let subjects = tokio::time::timeout(Duration::from_secs(10), login())
        .await
        .context("alice's login is still held by a released delay")??;
    ensure!(subjects == Ok(vec!["on legacy".to_string()]), "{subjects:?}");
    Ok(())
}
