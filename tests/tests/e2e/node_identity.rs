//! A node id is unique in the fleet: two real `dataplane` processes started with the same
//! `node.id`. The second is refused while the first is live (and says so, naming the first
//! one's address), `/nodes` shows the conflict, no write is reported `applied` for a
//! process that did not apply it, and a node killed with SIGKILL and started again
//! reconnects at once. Two real Dovecots (`legacy`, the default, and `new`) tell the
//! routes apart by what the mailbox holds.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use switchyard_tests::config::{ControlPlaneConfig, Destination};
use switchyard_tests::fleet::{Api, ControlPlane};
use switchyard_tests::nodeproc::NodeProc;
use switchyard_tests::{eventually, require_or_skip, Dovecot};

const ID: &str = "dp-twin";
const ALICE: &str = "alice@example.test";
const WAIT: Duration = Duration::from_secs(20);
/// Long enough that "reconnected at once" cannot be mistaken for "after the silence
/// timeout" (three intervals, 15 s).
const HEARTBEAT: &str = "heartbeat_interval = \"5s\"";

async fn two_dovecots() -> Result<(Dovecot, Dovecot)> {
    let legacy = Dovecot::start(&[(ALICE, "pw")])?;
    let new = Dovecot::start(&[(ALICE, "pw")])?;
    legacy.deliver(ALICE, "on legacy")?;
    new.deliver(ALICE, "on new")?;
    Ok((legacy, new))
}

/// The control plane on SQLite in `db`, `legacy` the default (heartbeats every 500 ms).
fn config(db: &std::path::Path, legacy: &Dovecot, new: &Dovecot) -> ControlPlaneConfig {
    ControlPlaneConfig::sqlite(db, "legacy")
        .destination(Destination::new("legacy").endpoint("imap", legacy.imap_port()))
        .destination(Destination::new("new").endpoint("imap", new.imap_port()))
}

/// What a login through `node` shows: `Ok(["on legacy"])`, `Ok(["on new"])` or the refusal.
async fn via(node: &NodeProc) -> Result<Result<Vec<String>, String>> {
    switchyard_tests::inbox_subjects(node.imap, ALICE, "pw").await
}

fn on(server: &str) -> Result<Vec<String>, String> {
    Ok(vec![format!("on {server}")])
}

/// The per-node results of a write for `ID`.
fn twin_results(answer: &Value) -> Vec<Value> {
    let nodes = answer["nodes"].as_array().cloned().unwrap_or_default();
    nodes.into_iter().filter(|n| n["node_id"] == ID).collect()
}

async fn put(api: &Api, destination: &str) -> Result<Value> {
    let (code, put) = api.put(&format!("/mappings/{ALICE}"), json!({ "destination": destination })).await?;
    ensure!(code == 200, "PUT: {code} {put}");
    Ok(put)
}

/// `ID`'s entry in `/nodes`.
async fn twin_entry(api: &Api) -> Result<Value> {
    let (_, nodes) = api.get("/nodes").await?;
    let all = nodes.as_array().cloned().unwrap_or_default();
    all.into_iter().find(|n| n["node_id"] == ID).with_context(|| format!("{ID} not in /nodes: {nodes}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_process_with_the_same_id_is_refused_and_never_reported_applied() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (legacy, new) = two_dovecots().await?;
    let dir = tempfile::tempdir()?;
    let cp =
        ControlPlane::start_config(config(&dir.path().join("m.db"), &legacy, &new).key("server", HEARTBEAT).to_toml())
            .await?;
    let api = cp.api();
    put(&api, "legacy").await?;

    let a = NodeProc::start(ID, &[cp.endpoint()]).await?;
    a.wait_for(&["connected to the control plane"]).await?;
    let a_instance = a.instance_id().await?;
    assert_eq!(via(&a).await?, on("legacy"), "A routes (and caches) alice on legacy");

    let b = NodeProc::start(ID, &[cp.endpoint()]).await?;
    let b_instance = b.instance_id().await?;
    // B has had the control plane's answer once it logged either outcome.
    eventually(WAIT, || async {
        let answered =
            b.proc.lines().iter().any(|l| l.contains("connected to the control plane") || l.contains("refused"));
        ensure!(answered, "B got no answer yet:\n{}", b.proc.lines().join("\n"));
        Ok(())
    })
    .await?;

    let moved = put(&api, "new").await?;
    let results = twin_results(&moved);
    let via_a = via(&a).await?;
    assert_eq!(
        via_a,
        on("new"),
        "A (instance {a_instance}, the first live process of {ID}) still routes alice by its old cache \
         after the PUT reported {results:?}"
    );
    assert_eq!(results.len(), 1, "{moved}");
    assert_eq!(
        (results[0]["result"].as_str(), results[0]["instance_id"].as_str()),
        (Some("applied"), Some(&*a_instance))
    );

    // B is refused, says why and names the process holding the id; it is not ready and
    // never routes.
    let entry = twin_entry(&api).await?;
    assert_eq!(
        (entry["instance_id"].as_str(), entry["connected"].as_bool()),
        (Some(&*a_instance), Some(true)),
        "{entry}"
    );
    let holder = entry["address"].as_str().context("the holder's address")?.to_string();
    let refusal = b.wait_for(&["ERROR", "node id", &holder]).await?;
    assert!(refusal.contains(&a_instance), "{refusal}");
    eprintln!("B's log: {refusal}\n/nodes: {entry}");
    let (code, ready) = b.readyz().await?;
    assert_eq!((code, ready["status"].as_str()), (503, Some("refused")), "{ready}");
    let via_b = via(&b).await?.unwrap_err();
    assert!(via_b.contains("NO [UNAVAILABLE]"), "a refused process answers a temporary failure: {via_b}");
    let conflicts = entry["conflicts"].as_array().cloned().unwrap_or_default();
    assert_eq!(conflicts.len(), 1, "{entry}");
    assert_eq!(conflicts[0]["instance_id"].as_str(), Some(&*b_instance), "{entry}");
    assert_eq!(conflicts[0]["state"], "refused", "{entry}");
    assert!(conflicts[0]["refusals"].as_u64() >= Some(1), "{entry}");

    // A move is acked by A alone, and A follows it.
    let (code, report) = api.post_json(&format!("/mappings/{ALICE}/move"), json!({"destination": "legacy"})).await?;
    assert_eq!((code, report["complete"].as_bool()), (200, Some(true)), "{report}");
    let write = twin_results(&report["steps"][1]);
    assert_eq!(write.len(), 1, "{report}");
    assert_eq!(write[0]["instance_id"].as_str(), Some(&*a_instance), "{report}");
    assert_eq!(via(&a).await?, on("legacy"));

    // The duplicate goes away; A is killed (SIGKILL) and started again: it is back at once,
    // not after the control plane's silence timeout.
    drop(b);
    drop(a);
    let started = Instant::now();
    let a2 = NodeProc::start(ID, &[cp.endpoint()]).await?;
    a2.wait_for(&["connected to the control plane"]).await?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the restarted node took {took:?} to reconnect");
    let a2_instance = a2.instance_id().await?;
    let results = twin_results(&put(&api, "new").await?);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(
        (results[0]["result"].as_str(), results[0]["instance_id"].as_str()),
        (Some("applied"), Some(&*a2_instance))
    );
    assert_eq!(via(&a2).await?, on("new"));
    eprintln!("restarted node reconnected in {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_processes_of_one_id_on_two_replicas_are_applied_only_when_both_applied() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (legacy, new) = two_dovecots().await?;
    let dir = tempfile::tempdir()?;
    let config = config(&dir.path().join("m.db"), &legacy, &new).key("server", HEARTBEAT).to_toml();
    let [r1, r2]: [ControlPlane; 2] = ControlPlane::start_replicas(vec![config.clone(), config])
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two replicas"))?;
    let api = r1.api();
    // Neither replica knows the other's streams: each admits its own process.
    let a = NodeProc::start(ID, &[r1.endpoint()]).await?;
    let b = NodeProc::start(ID, &[r2.endpoint()]).await?;
    for node in [&a, &b] {
        node.wait_for(&["connected to the control plane"]).await?;
    }
    let b_instance = b.instance_id().await?;

    // Both apply this one: applied is the truth, and the answer says there are two.
    let both = twin_results(&put(&api, "new").await?);
    assert_eq!(both.len(), 1, "{both:?}");
    assert_eq!(both[0]["result"], "applied", "{both:?}");

    // B stops reading (SIGSTOP) but its stream stays open: a write B never applied must
    // not be reported applied because A applied it.
    b.stop()?;
    let stopped = put(&api, "legacy").await;
    b.resume()?;
    let stopped = stopped?;
    let results = twin_results(&stopped);
    assert_eq!(results.len(), 1, "{stopped}");
    assert_ne!(results[0]["result"], "applied", "process B (instance {b_instance}) did not apply it: {stopped}");
    assert_eq!(results[0]["conflict"], true, "{stopped}");

    // `/nodes` of either replica shows both processes: one as the entry, the other as
    // its conflict, and which replica holds each.
    let a_instance = a.instance_id().await?;
    for replica in [&r1, &r2] {
        let entry = twin_entry(&replica.api()).await?;
        let conflicts = entry["conflicts"].as_array().cloned().unwrap_or_default();
        assert_eq!(conflicts.len(), 1, "{entry}");
        assert_eq!(conflicts[0]["state"], "connected", "{entry}");
        let mut instances = [entry["instance_id"].as_str(), conflicts[0]["instance_id"].as_str()];
        instances.sort();
        let mut expected = [Some(&*a_instance), Some(&*b_instance)];
        expected.sort();
        assert_eq!(instances, expected, "{entry}");
        assert!(entry["peer"].is_string() != conflicts[0]["peer"].is_string(), "one is the peer's: {entry}");
    }
    // B catches up once it reads again.
    eventually(WAIT, || async {
        ensure!(via(&b).await? == on("legacy"), "B not on legacy yet");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_fell_silent_is_replaced_and_refused_when_it_comes_back() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (legacy, new) = two_dovecots().await?;
    let dir = tempfile::tempdir()?;
    // Heartbeats every 500 ms: a holder silent for 1.5 s gives the id up.
    let cp = ControlPlane::start_config(config(&dir.path().join("m.db"), &legacy, &new).to_toml()).await?;
    let api = cp.api();
    put(&api, "legacy").await?;
    let a = NodeProc::start(ID, &[cp.endpoint()]).await?;
    a.wait_for(&["connected to the control plane"]).await?;
    assert_eq!(via(&a).await?, on("legacy"), "A routes (and caches) alice on legacy");

    // A stops (SIGSTOP) with its stream open; B, started meanwhile, takes the id over
    // once A has been silent for three heartbeat intervals.
    a.stop()?;
    let b = NodeProc::start(ID, &[cp.endpoint()]).await?;
    b.wait_for(&["connected to the control plane"]).await?;
    let results = twin_results(&put(&api, "new").await?);
    a.resume()?;
    assert_eq!(results.len(), 1, "{results:?}");
    let b_instance = b.instance_id().await?;
    assert_eq!(
        (results[0]["result"].as_str(), results[0]["instance_id"].as_str()),
        (Some("applied"), Some(&*b_instance))
    );
    assert_eq!(via(&b).await?, on("new"));

    // A comes back, finds its id held by B, and drops the routes nobody updates any more:
    // a temporary failure, never alice's old destination.
    let refusal = a.wait_for(&["ERROR", "refused by the control plane"]).await?;
    eprintln!("A's log: {refusal}");
    let (code, ready) = a.readyz().await?;
    assert_eq!((code, ready["status"].as_str()), (503, Some("refused")), "{ready}");
    let via_a = via(&a).await?;
    assert!(via_a.as_ref().is_err_and(|e| e.contains("NO [UNAVAILABLE]")), "A after it was replaced: {via_a:?}");
    Ok(())
}
