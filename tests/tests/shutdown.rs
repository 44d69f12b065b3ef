//! Graceful shutdown of a node: it stops accepting at once, lets live sessions run for
//! the grace period, then closes them and exits.

use std::time::Duration;

use anyhow::Result;
use switchyard_tests::fleet::{ControlPlane, Node, NODE_TOKEN};
use switchyard_tests::{eventually, require_or_skip, status, Dovecot, ImapClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_drains_live_sessions_for_the_grace_period() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[("alice@example.test", "pw")])?;
    let cp = ControlPlane::start(&[("legacy", dovecot.imap_port())], "legacy").await?;
    let mut node = Node::start("dp-drain", &[cp.endpoint()], Some(NODE_TOKEN)).await?;
    let addr = node.imap;
    let mut live = eventually(Duration::from_secs(10), || async {
        let mut imap = ImapClient::connect(addr).await?;
        anyhow::ensure!(status(&imap.login("alice@example.test", "pw").await?) == "OK");
        Ok(imap)
    })
    .await?;

    let stopped = node.begin_stop().expect("running");
    // New connections are refused once the listener has stopped accepting.
    eventually(Duration::from_secs(5), || async {
        anyhow::ensure!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting");
        Ok(())
    })
    .await?;
    // The live session keeps working during the grace period (2 s in the test config).
    let (_, tagged) = live.command("SELECT INBOX").await?;
    assert_eq!(status(&tagged), "OK");
    assert!(!stopped.is_finished(), "the node waits for its sessions");
    // Then the grace period ends: the session is closed and the node exits.
    tokio::time::timeout(Duration::from_secs(10), stopped).await??;
    assert!(live.command("NOOP").await.is_err(), "the session was closed at the end of the grace period");
    Ok(())
}
