//! Over-long SASL responses, against the real `dataplane` binary in front of a real Dovecot:
//! in IMAP `AUTHENTICATE`, POP3 `AUTH`, ManageSieve `AUTHENTICATE` and submission `AUTH`
//! the line is answered with the protocol's error and the session goes on (a login then
//! succeeds); a response of exactly `max_line_length` is decoded and replayed, and a
//! literal carrying more than a line can is refused as too large.

use std::net::SocketAddr;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use switchyard_tests::fleet::{destination_toml, listener_toml, ControlPlane};
use switchyard_tests::lineclient::{DataplaneProc, LineConn};
use switchyard_tests::{require_or_skip, Dovecot};

/// The smallest line limit the config accepts.
const MAX_LINE: usize = 1024;
const USER: &str = "alice@example.test";
const PASSWORD: &str = "alicepw";

/// The node in front of Dovecot, with every login protocol's listener.
async fn node(dovecot: &Dovecot) -> Result<(DataplaneProc, ControlPlane)> {
    let ports = [("imap", dovecot.imap_port()), ("pop3", dovecot.pop3_port()), ("managesieve", dovecot.sieve_port())];
    let cp = ControlPlane::start_destinations(&destination_toml("legacy", &ports, ""), "legacy").await?;
    let limit = format!("max_line_length = {MAX_LINE}");
    let tables = ["imap", "pop3", "managesieve", "submission"].map(|p| listener_toml(p, p, &limit)).concat();
    let node = DataplaneProc::start("dp-sasl", &cp.endpoint(), "", &tables).await?;
    node.proc.wait_for(&["connected to the control plane"]).await?;
    Ok((node, cp))
}

fn plain(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// More than the line limit, in base64's alphabet.
fn over_long() -> String {
    "A".repeat(MAX_LINE + 100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_sasl_line_is_answered_and_the_session_goes_on() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[(USER, PASSWORD)])?;
    let (node, _cp) = node(&dovecot).await?;
    let results = [
        ("imap", imap(node.listener("imap").await?).await),
        ("pop3", pop3(node.listener("pop3").await?).await),
        ("managesieve", managesieve(node.listener("managesieve").await?).await),
        ("submission", submission(node.listener("submission").await?).await),
    ];
    let failed: Vec<String> =
        results.iter().filter_map(|(p, r)| r.as_ref().err().map(|e| format!("{p}: {e:#}"))).collect();
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

async fn imap(addr: SocketAddr) -> Result<()> {
    let (mut c, _) = LineConn::open(addr).await?;
    c.send("a1 AUTHENTICATE PLAIN\r\n").await?;
    c.expect("+").await?;
    c.send(&format!("{}\r\n", over_long())).await?;
    let answer = c.expect("a1 BAD").await?;
    println!("imap: {answer}");
    c.send(&format!("a2 LOGIN {USER} {PASSWORD}\r\n")).await?;
    tagged(&mut c, "a2 ").await?.starts_with("a2 OK").then_some(()).context("the login after the error failed")
}

async fn pop3(addr: SocketAddr) -> Result<()> {
    let (mut c, _) = LineConn::open(addr).await?;
    c.send("AUTH PLAIN\r\n").await?;
    c.expect("+").await?;
    c.send(&format!("{}\r\n", over_long())).await?;
    println!("pop3: {}", c.expect("-ERR").await?);
    c.send(&format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await?;
    c.expect("+OK").await?;
    c.expect("+OK").await.context("the login after the error")?;
    Ok(())
}

async fn managesieve(addr: SocketAddr) -> Result<()> {
    let mut c = LineConn::connect(addr).await?;
    status_line(&mut c).await?;
    c.send("AUTHENTICATE \"PLAIN\"\r\n").await?;
    c.expect("\"\"").await?;
    c.send(&format!("\"{}\"\r\n", over_long())).await?;
    println!("managesieve: {}", c.expect("NO").await?);
    c.send(&format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", plain(USER, PASSWORD))).await?;
    let verdict = status_line(&mut c).await?;
    ensure!(verdict.starts_with("OK"), "the login after the error: {verdict:?}");
    Ok(())
}

async fn submission(addr: SocketAddr) -> Result<()> {
    let (mut c, _) = LineConn::open(addr).await?;
    c.send("EHLO client.example\r\n").await?;
    c.expect_reply("250").await?;
    c.send("AUTH PLAIN\r\n").await?;
    c.expect("334").await?;
    c.send(&format!("{}\r\n", over_long())).await?;
    println!("submission: {}", c.expect("501 5.5.2").await?);
    c.send("NOOP\r\n").await?;
    c.expect("250").await.context("NOOP after the error")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoded_limit_is_what_one_line_can_carry() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[(USER, PASSWORD)])?;
    let (node, _cp) = node(&dovecot).await?;
    // A literal carries more than a line, and more than a line may carry is refused.
    let mut sieve = LineConn::connect(node.listener("managesieve").await?).await?;
    status_line(&mut sieve).await?;
    let big = plain(USER, &"y".repeat(MAX_LINE));
    sieve.send(&format!("AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{big}\r\n", big.len())).await?;
    let refused = sieve.expect("NO").await?;
    ensure!(refused.contains(&format!("exceeds {} bytes", MAX_LINE / 4 * 3)), "{refused:?}");
    sieve.send(&format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", plain(USER, PASSWORD))).await?;
    ensure!(status_line(&mut sieve).await?.starts_with("OK"), "the login after the refusal");

    // Exactly the line limit: 768 bytes of PLAIN with a wrong password, decoded and replayed.
    let filler = "x".repeat(MAX_LINE / 4 * 3 - USER.len() - 2);
    let at_limit = plain(USER, &filler);
    ensure!(at_limit.len() == MAX_LINE, "{} base64 characters", at_limit.len());
    let (mut c, _) = LineConn::open(node.listener("imap").await?).await?;
    c.send("b1 AUTHENTICATE PLAIN\r\n").await?;
    c.expect("+").await?;
    c.send(&format!("{at_limit}\r\n")).await?;
    let verdict = tagged(&mut c, "b1 ").await?;
    ensure!(verdict.starts_with("b1 NO [AUTHENTICATIONFAILED]"), "a response of {MAX_LINE} bytes: {verdict:?}");
    // One byte more does not fit the line.
    c.send("b2 AUTHENTICATE PLAIN\r\n").await?;
    c.expect("+").await?;
    c.send(&format!("{at_limit}=\r\n")).await?;
    let answer = c.expect("b2 BAD").await?;
    ensure!(answer.contains(&format!("line exceeds {MAX_LINE} bytes")), "{answer:?}");
    println!("{MAX_LINE} bytes: {verdict}; {} bytes: {answer}; literal: {refused}", MAX_LINE + 1);
    Ok(())
}

/// The first line starting with `tag`.
async fn tagged(c: &mut LineConn, tag: &str) -> Result<String> {
    loop {
        let line = c.line().await?.context("closed before the tagged reply")?;
        if line.starts_with(tag) {
            return Ok(line);
        }
    }
}

/// The next ManageSieve status line (`OK`, `NO`, `BYE`), past capability lines.
async fn status_line(c: &mut LineConn) -> Result<String> {
    loop {
        let line = c.line().await?.context("closed before the status line")?;
        if ["OK", "NO", "BYE"].iter().any(|s| line.starts_with(s)) {
            return Ok(line);
        }
    }
}
