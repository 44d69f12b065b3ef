//! Proves the end-to-end harness itself against a real Dovecot, without any proxy: delivery,
//! per-user mailboxes, failed logins, stop/restart on the same ports, and imaplib; and the
//! smallest fleet `Fleet::builder()` makes.

use std::time::{Duration, Instant};

use anyhow::Result;
use switchyard_tests::fleet::Fleet;
use switchyard_tests::{
    eventually, inbox_subjects, python_imap_login, require_or_skip, status, wait_for_port, Dovecot, ImapClient,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

const ALICE: (&str, &str) = ("alice@example.test", "alice-secret");
const BOB: (&str, &str) = ("bob@example.test", "bob-secret");

#[tokio::test]
async fn dovecot_serves_delivered_mail_and_survives_restart() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let mut dovecot = Dovecot::start(&[ALICE, BOB])?;
    dovecot.deliver(ALICE.0, "hello from the harness")?;

    let mut alice = ImapClient::connect(dovecot.imap_addr()).await?;
    assert!(alice.greeting().starts_with("* OK"), "{}", alice.greeting());
    let tagged = alice.login(ALICE.0, ALICE.1).await?;
    assert_eq!(status(&tagged), "OK", "{tagged}");
    assert_eq!(alice.subjects_in_inbox().await?, ["hello from the harness"]);
    alice.logout().await?;

    // Bob exists but got nothing: mailboxes are really per user. Both AUTHENTICATE forms.
    for sasl_ir in [true, false] {
        let mut bob = ImapClient::connect(dovecot.imap_addr()).await?;
        let tagged = bob.authenticate_plain(BOB.0, BOB.1, sasl_ir).await?;
        assert_eq!(status(&tagged), "OK", "sasl_ir={sasl_ir}: {tagged}");
        assert!(bob.subjects_in_inbox().await?.is_empty());
        bob.logout().await?;
    }

    // A wrong password is a prompt NO: the anvil auth penalty must be off, or later tests
    // that fail logins on purpose would wait 2-15 s each.
    for _ in 0..3 {
        let mut eve = ImapClient::connect(dovecot.imap_addr()).await?;
        let started = Instant::now();
        let tagged = eve.login(ALICE.0, "wrong").await?;
        assert_eq!(status(&tagged), "NO", "{tagged}");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }
    let mut after_failures = ImapClient::connect(dovecot.imap_addr()).await?;
    let started = Instant::now();
    assert_eq!(status(&after_failures.login(ALICE.0, ALICE.1).await?), "OK");
    assert!(started.elapsed() < Duration::from_secs(1), "penalized: {:?}", started.elapsed());
    after_failures.logout().await?;

    let port = dovecot.imap_port();
    dovecot.stop()?;
    assert!(!dovecot.is_running());
    assert!(TcpStream::connect(dovecot.imap_addr()).await.is_err(), "port {port} still open");
    assert!(ImapClient::connect(dovecot.imap_addr()).await.is_err());

    dovecot.restart()?;
    assert_eq!(dovecot.imap_port(), port, "restart must keep the ports");
    let mut alice = ImapClient::connect(dovecot.imap_addr()).await?;
    assert_eq!(status(&alice.login(ALICE.0, ALICE.1).await?), "OK");
    assert_eq!(alice.subjects_in_inbox().await?, ["hello from the harness"], "mail survives");
    alice.logout().await?;
    assert!(dovecot.log().contains("Login: user=<alice@example.test>"));
    Ok(())
}

#[tokio::test]
async fn every_listener_answers() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[ALICE])?;
    assert_eq!(dovecot.host(), "127.0.0.1");
    let greetings = [
        (dovecot.pop3_port(), "+OK"),
        (dovecot.lmtp_port(), "220 "),
        (dovecot.sieve_port(), "\"IMPLEMENTATION\""),
        (dovecot.auth_port(), "VERSION\t1\t"),
    ];
    for (port, expected) in greetings {
        let addr = ([127, 0, 0, 1], port).into();
        wait_for_port(addr).await?;
        let mut line = String::new();
        let mut reader = BufReader::new(TcpStream::connect(addr).await?);
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await??;
        assert!(line.starts_with(expected), "port {port}: {line:?}");
    }
    Ok(())
}

#[tokio::test]
async fn python_imaplib_sees_the_same_mailbox() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("python3") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[ALICE, BOB])?;
    dovecot.deliver(ALICE.0, "first")?;
    dovecot.deliver(ALICE.0, "second . with a dot")?;

    // `eventually` only to exercise it: LMTP has already committed the mail when it says 250.
    let subjects = eventually(Duration::from_secs(5), || async {
        let (ok, out) = python_imap_login(dovecot.imap_port(), ALICE.0, ALICE.1).await?;
        anyhow::ensure!(ok, "imaplib failed: {out}");
        Ok(out)
    })
    .await?;
    assert_eq!(subjects, "first\nsecond . with a dot");

    let (ok, out) = python_imap_login(dovecot.imap_port(), BOB.0, BOB.1).await?;
    assert!(ok, "{out}");
    assert_eq!(out, "", "bob's inbox should be empty");

    let (ok, out) = python_imap_login(dovecot.imap_port(), BOB.0, "wrong").await?;
    assert!(!ok, "wrong password accepted: {out}");
    assert!(out.contains("AUTHENTICATIONFAILED"), "{out}");
    Ok(())
}

/// The smallest fleet test: two marked Dovecots, a ready node, one mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_builder_returns_a_ready_fleet_with_its_mappings() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (legacy, new) = (Dovecot::start_marked(&[ALICE, BOB], "legacy")?, Dovecot::start_marked(&[ALICE, BOB], "new")?);
    let fleet = Fleet::builder()
        .dovecot("legacy", &legacy, &["imap"])
        .dovecot("new", &new, &["imap"])
        .map(ALICE.0, "new")
        .start()
        .await?;
    assert_eq!(inbox_subjects(fleet.node().imap, ALICE.0, ALICE.1).await?, Ok(vec!["on new".to_string()]));
    assert_eq!(inbox_subjects(fleet.node().imap, BOB.0, BOB.1).await?, Ok(vec!["on legacy".to_string()]));
    Ok(())
}
