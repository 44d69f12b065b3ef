//! End to end: a mapping that names a destination the control plane (or the fleet settings a
//! node holds) does not declare is a temporary failure for every protocol — never the default
//! destination, which would be a misroute during a migration (SPEC §2.2).
//!
//! One control plane on SQLite whose store names a destination its config lacks; and two
//! replicas on one real PostgreSQL whose configs differ (A declares `legacy` and `new`, B only
//! `legacy`), dp-1 on A and dp-2 on B, with two real Dovecots whose mailboxes tell them apart.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use switchyard_tests::config::MappingStore;
use switchyard_tests::fleet::{Api, ControlPlane, Fleet, Node};
use switchyard_tests::postgres::Postgres;
use switchyard_tests::{
    eventually, inbox_subjects, python_lmtp_send, python_pop3, require_or_skip, ClientTls, Dovecot, SieveClient,
};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const USERS: &[(&str, &str)] = &[(ALICE, "pw"), (BOB, "pw")];
/// Generous: replicas, nodes, PostgreSQL and Dovecots share 2 cores.
const WAIT: Duration = Duration::from_secs(30);

/// Waits until every node in `ids` (as `/nodes` through `api` shows them) applied `revision`.
async fn applied(api: &Api, ids: &[&str], revision: u64) -> Result<Value> {
    eventually(WAIT, || async {
        let (_, nodes) = api.get("/nodes").await?;
        for id in ids {
            let node = nodes.as_array().and_then(|all| all.iter().find(|n| n["node_id"] == *id));
            let at = node.and_then(|n| n["applied_revision"].as_u64());
            ensure!(at >= Some(revision), "{id} has not applied {revision}: {nodes}");
        }
        Ok(nodes)
    })
    .await
}

/// What an IMAP client sees logging in as `user` at `node`: `on <server>` (the subjects of its
/// INBOX) or the tagged answer of a refused login.
async fn imap(node: &Node, listener: &str, user: &str) -> Result<String> {
    Ok(match inbox_subjects(node.addr(listener), user, "pw").await? {
        Ok(subjects) => subjects.join(", "),
        Err(tagged) => tagged,
    })
}

/// A refused IMAP login with the temporary failure (tags differ, the answer must not).
fn unavailable(seen: &str) -> bool {
    seen.split_once(' ').is_some_and(|(_, rest)| rest.starts_with("NO [UNAVAILABLE]"))
}

/// What a client of each protocol sees for `user` at `node`: IMAP and POP3 logins, a
/// ManageSieve AUTHENTICATE and an LMTP delivery (one line each).
async fn every_protocol(node: &Node, user: &str) -> Result<Vec<(&'static str, String)>> {
    let imap = imap(node, "imap", user).await?;
    let (_, pop3) = python_pop3(node.addr("pop3").port(), user, "pw", &ClientTls::Plain).await?;
    let mut sieve = SieveClient::connect(node.addr("sieve")).await?;
    let sieve = sieve.authenticate_plain(user, "pw").await?;
    let (_, lmtp) = python_lmtp_send(node.addr("lmtp").port(), "sender@example.org", &[user], "via lmtp").await?;
    let rcpt = lmtp.lines().find(|l| l.starts_with("RCPT ")).unwrap_or(&lmtp).to_string();
    Ok(vec![("imap", imap), ("pop3", pop3.trim().to_string()), ("managesieve", sieve), ("lmtp", rcpt)])
}

/// Each protocol's temporary failure (SPEC §2.1 step 8), never an authentication error.
fn temporary_failures(user: &str) -> Vec<(&'static str, String)> {
    vec![
        ("imap", "a1 NO [UNAVAILABLE] Backend temporarily unavailable, try again later".into()),
        ("pop3", "error_proto: b'-ERR [SYS/TEMP] Backend temporarily unavailable, try again later'".into()),
        ("managesieve", "NO (TRYLATER) \"Backend temporarily unavailable, try again later\"".into()),
        ("lmtp", format!("RCPT {user} 451 4.4.1 Recipient's server temporarily unavailable, try again later")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_to_a_destination_the_control_plane_does_not_declare_is_a_temporary_failure() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let legacy = Dovecot::start(USERS)?;
    for (user, _) in USERS {
        legacy.deliver(user, "on legacy")?;
    }
    let fleet = Fleet::builder()
        .dovecot("legacy", &legacy, &["imap", "pop3", "managesieve", "lmtp"])
        .listener("imap", "imap")
        .listener("pop3", "pop3")
        .listener("sieve", "managesieve")
        .listener("lmtp", "lmtp")
        .start()
        .await?;
    let (cp, node) = (&fleet.cp, fleet.node());
    // Unmapped: the default. The answer is now in dp-1's route cache.
    assert_eq!(imap(node, "imap", ALICE).await?, "on legacy");

    // The store names `ghost`, which this control plane does not declare (a bulk import run
    // with another config, a replica with more destinations): the PUT refuses it...
    let (code, put) = cp.api().put(&format!("/mappings/{ALICE}"), json!({"destination": "ghost"})).await?;
    assert_eq!(code, 400, "{put}");
    // ...so it is written into the store directly. The feed pushes it to dp-1.
    let revision = cp.open_store().await?.put(ALICE, "ghost").await?;
    applied(&cp.api(), &["dp-1"], revision).await?;
    let pushed = every_protocol(node, ALICE).await?;

    // The API shows what the store says, and that it is not declared here.
    let (code, shown) = cp.api().get(&format!("/mappings/{ALICE}")).await?;
    let shown_fields =
        (code, shown["destination"].clone(), shown["routed_to_default"].clone(), shown["declared"].clone());

    // Uncached: dp-1 asks the control plane's Resolve, which must not answer the default either.
    let (code, dropped) = cp.api().post(&format!("/cache/invalidate?identifier={ALICE}")).await?;
    ensure!(code == 200 && dropped["nodes"][0]["result"] == "applied", "{dropped}");
    let resolved = every_protocol(node, ALICE).await?;

    assert_eq!(pushed, temporary_failures(ALICE), "pushed route to an undeclared destination");
    assert_eq!(resolved, temporary_failures(ALICE), "Resolve of a mapping to an undeclared destination");
    assert_eq!(shown_fields, (200, json!("ghost"), json!(false), json!(false)), "{shown}");
    assert!(shown["warning"].as_str().is_some_and(|w| w.contains("ghost")), "{shown}");
    // Nothing reached legacy on alice's behalf: no delivery (the data-loss case).
    let subjects = inbox_subjects(legacy.imap_addr(), ALICE, "pw").await?;
    assert_eq!(subjects, Ok(vec!["on legacy".to_string()]), "mail for alice written to the default server");
    // Only an account with no mapping at all goes to the default.
    assert_eq!(imap(node, "imap", BOB).await?, "on legacy");
    Ok(())
}

/// Two replicas on one PostgreSQL database whose configs differ: A declares `legacy` and
/// `new`, B only `legacy` (the default). dp-1 lists [A, B] and is on A; dp-2 lists [B, A] and
/// is on B, so it holds B's fleet settings, which do not declare `new`.
struct Replicas {
    a: ControlPlane,
    b: ControlPlane,
    nodes: [Node; 2],
    _legacy: Dovecot,
    _new: Dovecot,
    _pg: Postgres,
}

fn servers_installed() -> bool {
    require_or_skip("dovecot") && switchyard_tests::postgres::require_or_skip()
}

async fn replicas() -> Result<Replicas> {
    let legacy = Dovecot::start(USERS)?;
    let new = Dovecot::start(USERS)?;
    for (user, _) in USERS {
        legacy.deliver(user, "on legacy")?;
        new.deliver(user, "on new")?;
    }
    let pg = Postgres::start()?;
    let url = pg.fresh_database("undeclared")?;
    // A declares legacy and new, B only legacy; dp-1 lists [A, B], dp-2 lists [B, A].
    let Fleet { cp: a, replicas, nodes } = Fleet::builder()
        .dovecot("legacy", &legacy, &["imap"])
        .dovecot("new", &new, &["imap"])
        .store(MappingStore::Postgres(url))
        .replica_declaring(&["legacy"])
        .node_on("dp-1", &[0, 1])
        .node_on("dp-2", &[1, 0])
        .start()
        .await?;
    let ([b], nodes): ([ControlPlane; 1], [Node; 2]) = (
        replicas.try_into().map_err(|_| anyhow::anyhow!("two replicas"))?,
        nodes.try_into().map_err(|_| anyhow::anyhow!("two nodes"))?,
    );
    Ok(Replicas { a, b, nodes, _legacy: legacy, _new: new, _pg: pg })
}

/// Waits until exactly `ids` are connected to this replica itself (`scope=local`).
async fn connected_here(api: &Api, ids: &[&str]) -> Result<()> {
    api.until_nodes("?scope=local", WAIT, |connected| connected == ids).await.map(drop)
}

/// Each node's `(node_id, result)` in a write's answer.
fn results(answer: &Value) -> Vec<(String, String)> {
    let all = answer["nodes"].as_array().cloned().unwrap_or_default();
    all.iter()
        .map(|n| (n["node_id"].as_str().unwrap_or("?").to_string(), n["result"].as_str().unwrap_or("?").to_string()))
        .collect()
}

fn each(ids: &[&str], result: &str) -> Vec<(String, String)> {
    ids.iter().map(|id| (id.to_string(), result.to_string())).collect()
}

/// The `undeclared` conflicts `/nodes` shows for `id`: `(destination, accounts)`.
fn conflicts_of(nodes: &Value, id: &str) -> Vec<(String, u64)> {
    let node = nodes.as_array().and_then(|all| all.iter().find(|n| n["node_id"] == id)).cloned();
    let listed = node.and_then(|n| n["undeclared"].as_array().cloned()).unwrap_or_default();
    listed
        .iter()
        .map(|c| (c["destination"].as_str().unwrap_or("?").to_string(), c["accounts"].as_u64().unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_declare_a_mapped_destination_never_routes_it_to_the_default() -> Result<()> {
    if !servers_installed() {
        return Ok(());
    }
    let f = replicas().await?;
    let (a, b) = (f.a.api(), f.b.api());
    let [dp1, dp2] = &f.nodes;

    // alice is mapped to legacy; both nodes hold that route (pushed with the write).
    let (code, put) = a.put(&format!("/mappings/{ALICE}"), json!({"destination": "legacy"})).await?;
    assert_eq!((code, results(&put)), (200, each(&["dp-1", "dp-2"], "applied")), "{put}");
    assert_eq!(imap(dp1, "imap", ALICE).await?, "on legacy");
    assert_eq!(imap(dp2, "imap", ALICE).await?, "on legacy");

    // The store now names `new` for alice (a bulk import with A's config, a replica not
    // asked): every replica's feed pushes it to its nodes.
    let revision = f.a.open_store().await?.put(ALICE, "new").await?;
    applied(&a, &["dp-1", "dp-2"], revision).await?;
    // (a)+(c) dp-1 lands on new; dp-2's cached legacy route did not survive the change, and
    // its settings from B do not declare new: a temporary failure, never legacy.
    let pushed = (imap(dp1, "imap", ALICE).await?, imap(dp2, "imap", ALICE).await?);
    // (e) /nodes (through either replica) shows dp-2's conflict, not dp-1's.
    let (_, via_a) = a.get("/nodes").await?;
    let (_, via_b) = b.get("/nodes").await?;
    // The mapping as each replica sees it.
    let (_, shown_a) = a.get(&format!("/mappings/{ALICE}")).await?;
    let (_, shown_b) = b.get(&format!("/mappings/{ALICE}")).await?;

    // (b) Uncached, dp-2 asks B's Resolve, which must not answer the default either.
    let (code, dropped) = b.post(&format!("/cache/invalidate?identifier={ALICE}")).await?;
    assert_eq!((code, results(&dropped)), (200, each(&["dp-1", "dp-2"], "applied")), "{dropped}");
    let resolved = (imap(dp1, "imap", ALICE).await?, imap(dp2, "imap", ALICE).await?);

    assert_eq!(pushed.0, "on new", "dp-1 after the push");
    assert!(unavailable(&pushed.1), "dp-2 after the push must answer a temporary failure, got {:?}", pushed.1);
    assert_eq!(resolved.0, "on new", "dp-1 through A's Resolve");
    assert!(unavailable(&resolved.1), "dp-2 through B's Resolve must answer a temporary failure, got {:?}", resolved.1);
    for nodes in [&via_a, &via_b] {
        assert_eq!(conflicts_of(nodes, "dp-2"), [("new".to_string(), 1)], "{nodes}");
        assert_eq!(conflicts_of(nodes, "dp-1"), [], "{nodes}");
    }
    assert_eq!((&shown_a["destination"], &shown_a["declared"]), (&json!("new"), &json!(true)), "{shown_a}");
    assert_eq!((&shown_b["destination"], &shown_b["declared"]), (&json!("new"), &json!(false)), "{shown_b}");
    assert_eq!(shown_b["routed_to_default"], false, "{shown_b}");

    // Mapped back to a destination every replica declares: both nodes route it, the conflict
    // is gone.
    let (code, put) = b.put(&format!("/mappings/{ALICE}"), json!({"destination": "legacy"})).await?;
    assert_eq!((code, results(&put)), (200, each(&["dp-1", "dp-2"], "applied")), "{put}");
    assert_eq!(imap(dp2, "imap", ALICE).await?, "on legacy");
    let (_, nodes) = a.get("/nodes").await?;
    assert_eq!(conflicts_of(&nodes, "dp-2"), [], "{nodes}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_naming_a_destination_a_replica_does_not_declare_is_refused() -> Result<()> {
    if !servers_installed() {
        return Ok(());
    }
    let Replicas { a, b, nodes, _legacy, _new, _pg } = replicas().await?;
    let mut b = b;
    let (api_a, api_b) = (a.api(), b.api());
    let b_url = b.api_url();

    // (d) Through A, which declares new: refused, because B does not; B and its node named.
    let (code, refused) = api_a.put(&format!("/mappings/{ALICE}"), json!({"destination": "new"})).await?;
    assert_eq!(code, 409, "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains(&b_url) && error.contains("\"new\""), "names the replica and the destination: {error}");
    assert_eq!(refused["conflicts"], json!([{"peer": b_url, "destination": "new", "nodes": ["dp-2"]}]), "{refused}");
    let (code, refused) = api_a.post_json(&format!("/mappings/{ALICE}/move"), json!({"destination": "new"})).await?;
    assert_eq!(code, 409, "a move names a destination too: {refused}");
    // Through B, which does not declare it itself.
    let (code, refused) = api_b.put(&format!("/mappings/{ALICE}"), json!({"destination": "new"})).await?;
    assert_eq!(code, 400, "{refused}");
    let (code, refused) = api_b.post_json(&format!("/mappings/{ALICE}/move"), json!({"destination": "new"})).await?;
    assert_eq!(code, 400, "{refused}");
    // Nothing was written: alice is unmapped, on the default.
    let (_, shown) = api_a.get(&format!("/mappings/{ALICE}")).await?;
    assert_eq!(shown["routed_to_default"], true, "{shown}");
    for node in &nodes {
        assert_eq!(imap(node, "imap", ALICE).await?, "on legacy");
    }
    // A destination every replica declares is written and acked by both nodes.
    let (code, put) = api_a.put(&format!("/mappings/{ALICE}"), json!({"destination": "legacy"})).await?;
    assert_eq!((code, results(&put)), (200, each(&["dp-1", "dp-2"], "applied")), "{put}");
    assert!(put.get("conflicts").is_none(), "{put}");

    // A replica that does not answer does not block writes: B is down, so its node failed
    // over to A and holds A's settings; the answer lists B as not answering.
    b.stop().await;
    connected_here(&api_a, &["dp-1", "dp-2"]).await.context("dp-2 did not fail over to A")?;
    let (code, put) = api_a.put(&format!("/mappings/{ALICE}"), json!({"destination": "new"})).await?;
    assert_eq!((code, results(&put)), (200, each(&["dp-1", "dp-2"], "applied")), "{put}");
    let silent = put["peers"].as_array().cloned().unwrap_or_default();
    assert!(silent.iter().any(|p| p["peer"] == b_url.as_str() && p["ok"] == false), "{put}");
    for node in &nodes {
        assert_eq!(imap(node, "imap", ALICE).await?, "on new");
    }
    Ok(())
}
