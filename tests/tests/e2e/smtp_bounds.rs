//! SMTP and LMTP sessions are bounded, against the real `dataplane` binary and a real
//! Dovecot LMTP: a session ends at `session_timeout` however busy the client keeps it, and
//! more than `junk_command_limit` commands without progress (NOOP, RSET, VRFY, HELP, a
//! repeated greeting) end it too, while a delivered message is progress and starts the
//! count again. Each time with a `421` reply and the connection closed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use switchyard_tests::fleet::{destination_toml, listener_toml, ControlPlane};
use switchyard_tests::lineclient::{DataplaneProc, LineConn};
use switchyard_tests::{require_or_skip, Dovecot};

const SESSION: Duration = Duration::from_secs(2);
/// The default `junk_command_limit`.
const JUNK_LIMIT: usize = 100;
const NOOP_EVERY: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_noop_every_interval_is_closed_at_the_session_limit() -> Result<()> {
    let cp = ControlPlane::start(&[("legacy", 1)], "legacy").await?;
    let keys = format!("preauth_timeout = \"1s\"\nsession_timeout = \"{}s\"", SESSION.as_secs());
    let tables = ["smtp", "lmtp"].map(|p| listener_toml(p, p, &keys)).concat();
    let node = DataplaneProc::start("dp-session", &cp.endpoint(), "", &tables).await?;
    let (smtp, lmtp) = (node.listener("smtp").await?, node.listener("lmtp").await?);
    let (smtp, lmtp) = tokio::join!(noop_until_closed(smtp, "EHLO"), noop_until_closed(lmtp, "LHLO"));
    let mut wrong = Vec::new();
    for (flavor, ended) in [("smtp", smtp), ("lmtp", lmtp)] {
        match ended {
            Ok((at, reply)) if at + Duration::from_millis(200) >= SESSION && at <= SESSION + Duration::from_secs(1) => {
                println!("{flavor}: {reply:?} {at:?} after accept (session_timeout {SESSION:?})");
            }
            Ok((at, reply)) => wrong.push(format!("{flavor}: {reply:?} {at:?} after accept, limit {SESSION:?}")),
            Err(e) => wrong.push(format!("{flavor}: {e:#}")),
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// Greets with `hello`, then sends NOOP every 250 ms until the node answers 421; how long
/// after accept that came, and the reply. The node must close the connection after it.
async fn noop_until_closed(addr: SocketAddr, hello: &str) -> Result<(Duration, String)> {
    let accepted = Instant::now();
    let (mut c, _) = LineConn::open(addr).await?;
    c.send(&format!("{hello} client.example\r\n")).await?;
    c.expect_reply("250").await?;
    loop {
        if accepted.elapsed() > SESSION * 3 {
            bail!("NOOP still answered {:?} after accept", accepted.elapsed());
        }
        tokio::time::sleep(NOOP_EVERY).await;
        c.send("NOOP\r\n").await?;
        let reply = c.line().await?.context("closed without a reply")?;
        if reply.starts_with("421") {
            let at = accepted.elapsed();
            c.rest(Duration::from_secs(5)).await.context("421 but left open")?;
            return Ok((at, reply));
        }
        ensure!(reply.starts_with("250"), "NOOP: {reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_without_progress_are_capped_and_a_delivered_message_starts_the_count_again() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[("alice@example.test", "pw")])?;
    let ports = [("lmtp", dovecot.lmtp_port())];
    let cp = ControlPlane::start_destinations(&destination_toml("legacy", &ports, ""), "legacy").await?;
    let node = DataplaneProc::start("dp-junk", &cp.endpoint(), "", &listener_toml("lmtp", "lmtp", "")).await?;
    node.proc.wait_for(&["connected to the control plane"]).await?;
    let (mut c, _) = LineConn::open(node.listener("lmtp").await?).await?;
    c.send("LHLO client.example\r\n").await?;
    c.expect_reply("250").await?;
    junk(&mut c, JUNK_LIMIT - 40).await.context("before the message")?;
    for (line, code) in [
        ("MAIL FROM:<sender@example.test>", "250"),
        ("RCPT TO:<alice@example.test>", "250"),
        ("DATA", "354"),
        ("Subject: progress\r\n\r\nhello\r\n.", "250"),
    ] {
        c.send(&format!("{line}\r\n")).await?;
        c.expect_reply(code).await.with_context(|| format!("after {line:?}"))?;
    }
    junk(&mut c, JUNK_LIMIT).await.context("a full count again after the delivered message")?;
    c.send("NOOP\r\n").await?;
    let closing = c.line().await?.context("closed without a reply")?;
    ensure!(closing.starts_with("421 4.7.0"), "junk command {} after the message: {closing:?}", JUNK_LIMIT + 1);
    c.rest(Duration::from_secs(5)).await.context("421 but left open")?;
    println!("junk command {} after the delivered message: {closing}", JUNK_LIMIT + 1);
    Ok(())
}

/// `count` commands that make no progress, each answered normally.
async fn junk(c: &mut LineConn, count: usize) -> Result<()> {
    let kinds = [
        ("NOOP", "250"),
        ("RSET", "250"),
        ("VRFY alice@example.test", "252"),
        ("HELP", "214"),
        ("LHLO client.example", "250"),
    ];
    for (i, (command, code)) in kinds.iter().cycle().take(count).enumerate() {
        c.send(&format!("{command}\r\n")).await?;
        c.expect_reply(code).await.with_context(|| format!("junk command {} ({command})", i + 1))?;
    }
    Ok(())
}
