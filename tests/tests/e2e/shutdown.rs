//! Graceful shutdown of a node: it stops accepting at once, lets live sessions of every
//! kind run for the grace period, then closes them with their protocol's goodbye and exits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rustix::process::Signal;
use switchyard_tests::fleet::{destination_toml, listener_toml, ControlPlane, Node, NODE_TOKEN};
use switchyard_tests::lineclient::{DataplaneProc, LineConn, Stuffer};
use switchyard_tests::{eventually, require_or_skip, status, Dovecot, ImapClient};
use tokio::net::TcpStream;

/// `node.shutdown_grace` of the binary under SIGTERM.
const GRACE: Duration = Duration::from_secs(2);
/// How long after the grace period the process may take to say its goodbyes and exit.
const EXIT_BOUND: Duration = Duration::from_secs(3);

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

/// The real binary on SIGTERM with one session of every kind live: bridged to Dovecot,
/// before authentication, a login held by a delay, an LMTP transaction open at Dovecot and
/// a client that never reads. It stops accepting, lets them run `shutdown_grace`, then
/// closes each with its protocol's goodbye and exits within a small bound after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_kind_of_session_with_its_goodbye_and_exits() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[("alice@example.test", "pw"), ("bob@example.test", "pw")])?;
    let ports = [("imap", dovecot.imap_port()), ("lmtp", dovecot.lmtp_port())];
    let cp = ControlPlane::start_destinations(&destination_toml("legacy", &ports, ""), "legacy").await?;
    // Long pre-auth timeouts: only the shutdown may end these sessions.
    let tables = ["imap", "lmtp"].map(|p| listener_toml(p, p, "preauth_timeout = \"60s\"")).concat();
    let grace = format!("shutdown_grace = \"{}s\"", GRACE.as_secs());
    let mut node = DataplaneProc::start("dp-sigterm", &cp.endpoint(), &grace, &tables).await?;
    node.proc.wait_for(&["connected to the control plane"]).await?;
    let (imap, lmtp) = (node.listener("imap").await?, node.listener("lmtp").await?);
    let sessions = Live::open(imap, lmtp, &cp).await?;

    let term = Instant::now();
    node.proc.signal(Signal::TERM)?;
    eventually(Duration::from_secs(5), || async {
        ensure!(TcpStream::connect(imap).await.is_err(), "still accepting");
        Ok(())
    })
    .await?;
    let mut lmtp_session = sessions.lmtp;
    lmtp_session.send("NOOP\r\n").await?;
    lmtp_session.expect("250").await.context("the LMTP session during the grace period")?;
    let within = GRACE + EXIT_BOUND * 2;
    let goodbyes = tokio::join!(
        ended("bridged IMAP", sessions.bridged, "* BYE", term, within),
        ended("IMAP before authentication", sessions.preauth, "* BYE", term, within),
        ended("IMAP login held by a delay", sessions.held, "* BYE", term, within),
        ended("LMTP transaction", lmtp_session, "421 4.3.2", term, within),
    );
    let mut wrong: Vec<String> =
        [goodbyes.0, goodbyes.1, goodbyes.2, goodbyes.3].into_iter().filter_map(Result::err).collect();
    let exit_by = term + GRACE + EXIT_BOUND;
    while node.proc.is_running() && Instant::now() < exit_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match node.proc.is_running() {
        true => wrong.push(format!("still running {:?} after SIGTERM (grace {GRACE:?})", term.elapsed())),
        false => println!("exited {:?} after SIGTERM (grace {GRACE:?})", term.elapsed()),
    }
    drop(sessions.stuffer);
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// One session of each kind, opened before the SIGTERM.
struct Live {
    bridged: LineConn,
    preauth: LineConn,
    held: LineConn,
    lmtp: LineConn,
    stuffer: Stuffer,
}

impl Live {
    async fn open(imap: SocketAddr, lmtp: SocketAddr, cp: &ControlPlane) -> Result<Live> {
        let (mut bridged, _) = LineConn::open(imap).await?;
        bridged.send("a1 LOGIN alice@example.test pw\r\n").await?;
        expect_tagged(&mut bridged, "a1 OK").await.context("alice's login")?;
        let (preauth, _) = LineConn::open(imap).await?;
        let (code, body) = cp.api().post("/connections/delay?identifier=bob@example.test&seconds=60").await?;
        ensure!(code == 200, "delay: {code} {body}");
        let (mut held, _) = LineConn::open(imap).await?;
        held.send("h1 LOGIN bob@example.test pw\r\n").await?;
        ensure!(
            held.line_within(Duration::from_millis(500)).await.is_err(),
            "bob's login was answered despite the delay"
        );
        let (mut lmtp_session, _) = LineConn::open(lmtp).await?;
        for (command, code) in [
            ("LHLO client.example", "250"),
            ("MAIL FROM:<s@example.test>", "250"),
            ("RCPT TO:<alice@example.test>", "250"),
        ] {
            lmtp_session.send(&format!("{command}\r\n")).await?;
            lmtp_session.expect_reply(code).await.with_context(|| format!("LMTP {command}"))?;
        }
        let stuffer = Stuffer::start(imap, "a CAPABILITY", 200_000).await?;
        Ok(Live { bridged, preauth, held, lmtp: lmtp_session, stuffer })
    }
}

/// Reads lines until one starts with `tagged`.
async fn expect_tagged(conn: &mut LineConn, tagged: &str) -> Result<()> {
    loop {
        let line = conn.line().await?.context("closed")?;
        if line.starts_with(tagged) {
            return Ok(());
        }
        let tag = tagged.split(' ').next().unwrap_or_default();
        ensure!(!line.starts_with(&format!("{tag} ")), "expected {tagged:?}, got {line:?}");
    }
}

/// The session ended after the grace period, its last line being the goodbye `goodbye`.
async fn ended(what: &str, conn: LineConn, goodbye: &str, term: Instant, within: Duration) -> Result<(), String> {
    let rest = conn.rest(within).await.map_err(|e| format!("{what}: {e:#} ({:?} after SIGTERM)", term.elapsed()))?;
    let at = term.elapsed();
    if at + Duration::from_millis(200) < GRACE {
        return Err(format!("{what}: closed {at:?} after SIGTERM, before the grace period ended"));
    }
    match rest.last() {
        Some(last) if last.starts_with(goodbye) => {
            println!("{what}: {last:?} {at:?} after SIGTERM");
            Ok(())
        }
        _ => Err(format!("{what}: closed {at:?} after SIGTERM without {goodbye:?}; got {rest:?}")),
    }
}
