//! Values that used to break a running process: a duration past what the node's cache and
//! timers take (`--check` refuses it now, on both binaries), node counters whose fleet sum
//! overflows (`/stats` saturates), and node ids that connected once and left (forgotten
//! after `server.node_retention`, so a holder of the node token cannot grow the table).

use std::time::Duration;

use anyhow::{ensure, Result};
use switchyard_proto::v1 as pb;
use switchyard_tests::eventually;
use switchyard_tests::fleet::{controlplane_toml, listener_toml, ControlPlane, NODE_TOKEN};
use switchyard_tests::procs::check_config;
use switchyard_tests::simnodes::SimFleet;

#[test]
fn check_refuses_durations_past_their_bound_on_both_binaries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = controlplane_toml(&dir.path().join("m.db"), &[("legacy", 143)], "legacy")
        .replace("[breaker]\n", "[breaker]\nlogin_timeout = \"1001y\"\n")
        .replace("[api]\n", "[api]\nlockout_duration = \"200y\"\n")
        + "[cache]\nmax_stale = \"1001y\"\npositive_ttl = \"5000y\"\n";
    let (ok, stderr) = check_config(dir.path(), "controlplane", &cp)?;
    ensure!(!ok, "a control plane with 1001-year durations must fail --check");
    for key in ["cache.max_stale", "cache.positive_ttl", "breaker.login_timeout", "api.lockout_duration"] {
        ensure!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    let node = format!(
        "[node]\nid = \"dp\"\nshutdown_grace = \"1001y\"\n[control]\nendpoints = [\"http://127.0.0.1:7400\"]\n\
         resolve_timeout = \"300y\"\n[health]\nbind = \"127.0.0.1:0\"\n{}",
        listener_toml("imap", "imap", "preauth_timeout = \"1001y\"\nidle_timeout = \"1001y\"")
    );
    let (ok, stderr) = check_config(dir.path(), "dataplane", &node)?;
    ensure!(!ok, "a node with 1001-year durations must fail --check");
    for key in [
        "node.shutdown_grace",
        "control.resolve_timeout",
        "listener.imap.preauth_timeout",
        "listener.imap.idle_timeout",
    ] {
        ensure!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_totals_saturate_instead_of_overflowing() -> Result<()> {
    let cp = ControlPlane::start(&[("legacy", 143)], "legacy").await?;
    let report = pb::Report {
        cache_hits: u64::MAX,
        cache_misses: u64::MAX - 1,
        active_connections: u64::MAX,
        ..Default::default()
    };
    let sims = SimFleet::start_reporting(&cp.endpoint(), NODE_TOKEN, "big", 2, Some(report)).await?;
    let api = cp.api();
    let totals = eventually(Duration::from_secs(15), || async {
        let (code, body) = api.get("/stats").await?;
        ensure!(code == 200, "/stats: {code} {body}");
        let reported = body["nodes"].as_array().is_some_and(|n| n.iter().all(|n| n["cache_hits"] == u64::MAX));
        ensure!(body["nodes_reporting"] == 2 && reported, "both nodes reporting: {body}");
        Ok(body)
    })
    .await?;
    ensure!(totals["cache_hits"] == u64::MAX, "{totals}");
    ensure!(totals["cache_misses"] == u64::MAX, "{totals}");
    ensure!(totals["active_connections"] == u64::MAX, "{totals}");
    sims.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ids_that_left_are_forgotten_after_the_retention() -> Result<()> {
    let cp = ControlPlane::start_keyed(&[("legacy", 143)], "legacy", &[("server", "node_retention = \"2s\"")]).await?;
    let api = cp.api();
    let sims = SimFleet::start(&cp.endpoint(), NODE_TOKEN, "gone", 30).await?;
    let listed = |body: &serde_json::Value| body.as_array().map_or(0, |nodes| nodes.len());
    eventually(Duration::from_secs(15), || async {
        let (code, body) = api.get("/nodes").await?;
        ensure!(code == 200 && listed(&body) == 30, "all 30 listed: {code} {body}");
        Ok(())
    })
    .await?;
    sims.stop().await;
    // Still listed (disconnected) for a while: an operator sees who left.
    let (_, body) = api.get("/nodes").await?;
    ensure!(listed(&body) == 30, "just after they left: {body}");
    eventually(Duration::from_secs(20), || async {
        let (code, body) = api.get("/nodes").await?;
        ensure!(code == 200 && listed(&body) == 0, "forgotten after the retention: {code} {body}");
        Ok(())
    })
    .await
}
