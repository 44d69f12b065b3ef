//! Login delays and account moves against real node processes and real Dovecots: a
//! release reaches a node that was away when it was given, and a move that reports
//! `complete` leaves no session of the account on the old server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use switchyard_tests::config::Destination;
use switchyard_tests::fleet::{Api, ControlPlane, Fleet};
use switchyard_tests::nodeproc::NodeProc;
use switchyard_tests::relay::SlowGreeting;
use switchyard_tests::{eventually, require_or_skip, status, Dovecot, ImapClient};
use tokio::sync::watch;

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

/// What the looping clients saw: how many logins and mailbox reads, and every read of an
/// open session that, after a move reported `complete`, still showed the old server.
#[derive(Default)]
struct Seen {
    logins: AtomicU64,
    reads: AtomicU64,
    closed: AtomicU64,
    wrong: Mutex<Vec<String>>,
}

/// The last move that reported `complete`: its number and where alice is since.
type Moved = watch::Receiver<(u64, &'static str)>;

/// One client: logs in as alice again and again; every open session reads its mailbox
/// right after the login, and again whenever a move completes, until it leaves or is
/// closed. Each client's session count tells the test when it has checked a move.
async fn looping_client(addr: SocketAddr, mut moved: Moved, seen: Arc<Seen>, checked: Arc<AtomicU64>) {
    loop {
        let Ok(mut imap) = ImapClient::connect(addr).await else { continue };
        match imap.login("alice@example.test", "pw").await {
            Ok(tagged) if status(&tagged) == "OK" => {}
            // Held, then a temporary failure or a closed connection mid-move: try again.
            _ => continue,
        }
        seen.logins.fetch_add(1, Ordering::Relaxed);
        let leave = tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400)));
        tokio::pin!(leave);
        loop {
            let (number, server) = *moved.borrow_and_update();
            match imap.subjects_in_inbox().await {
                Ok(subjects) => {
                    seen.reads.fetch_add(1, Ordering::Relaxed);
                    if number > 0 && subjects != [format!("on {server}")] {
                        let wrong = format!("after move {number} to {server} an open session read {subjects:?}");
                        seen.wrong.lock().unwrap().push(wrong);
                    }
                }
                Err(_) => {
                    seen.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            checked.store(number, Ordering::Release);
            tokio::select! {
                changed = moved.changed() => if changed.is_err() { return },
                _ = &mut leave => {
                    let _ = imap.logout().await;
                    break;
                }
            }
        }
        if moved.has_changed().is_err() {
            return;
        }
    }
}

/// Moves alice back and forth between two real Dovecots while 20 clients log in as her
/// through two nodes; the old server greets 300 ms late (a relay in front of it), so
/// logins are often still connecting or authenticating there when a move runs. After every
/// move that reports `complete`, no open session of alice reads the old server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_move_leaves_no_session_of_the_account_on_the_old_server() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (legacy, new) = (Dovecot::start(USERS)?, Dovecot::start(USERS)?);
    legacy.deliver("alice@example.test", "on legacy")?;
    new.deliver("alice@example.test", "on new")?;
    let slow = SlowGreeting::start(([127, 0, 0, 1], legacy.imap_port()).into(), Duration::from_millis(300)).await?;
    let fleet = Fleet::builder()
        .destination(Destination::new("legacy").endpoint("imap", slow.addr.port()))
        .dovecot("new", &new, &["imap"])
        .node("dp-1")
        .node("dp-2")
        .start()
        .await?;
    let (api, nodes) = (fleet.api(), &fleet.nodes);

    let (moves, moved) = watch::channel((0u64, "legacy"));
    let seen = Arc::new(Seen::default());
    let clients: Vec<_> = (0..20)
        .map(|c| {
            let checked = Arc::new(AtomicU64::new(0));
            let task =
                tokio::spawn(looping_client(nodes[c % 2].imap, moved.clone(), Arc::clone(&seen), Arc::clone(&checked)));
            (task, checked)
        })
        .collect();
    drop(moved);
    for number in 1..=8u64 {
        let to = if number % 2 == 1 { "new" } else { "legacy" };
        // Let logins pile up on the slow server between moves.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (code, report) =
            api.post_json("/mappings/alice@example.test/move", serde_json::json!({"destination": to})).await?;
        ensure!(code == 200 && report["complete"] == true, "move {number}: {code} {report}");
        moves.send((number, to))?;
        // Every client has read its mailbox since (in a session open now, or one opened after).
        eventually(WAIT, || async {
            let behind = clients.iter().filter(|(_, checked)| checked.load(Ordering::Acquire) < number).count();
            let (_, d) = api.get("/destinations").await?;
            ensure!(
                behind == 0,
                "{behind} clients have not read their mailbox since move {number}: {d} logins {}",
                seen.logins.load(Ordering::Relaxed)
            );
            Ok(())
        })
        .await?;
    }
    drop(moves);
    for (task, _) in clients {
        task.abort();
    }
    let wrong = seen.wrong.lock().unwrap().clone();
    let (logins, reads, closed) =
        (seen.logins.load(Ordering::Relaxed), seen.reads.load(Ordering::Relaxed), seen.closed.load(Ordering::Relaxed));
    eprintln!("{logins} logins, {reads} mailbox reads, {closed} sessions closed by the moves");
    ensure!(
        wrong.is_empty(),
        "{} of {reads} reads ({logins} logins) on the old server:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    ensure!(logins > 40 && closed > 0, "the clients did not exercise the moves: {logins} logins, {closed} closed");
    Ok(())
}
