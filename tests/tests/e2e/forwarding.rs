//! Client identity end to end, for each forwarding mode: a trusted load balancer's PROXY
//! header names the real client to the node, and the node passes it on to real Dovecot and
//! Postfix, whose logs show it. `proxy`: a PROXY v2 header (Dovecot `haproxy = yes`);
//! `xclient`: IMAP `ID` and `XCLIENT` (Dovecot `login_trusted_networks`, Postfix
//! `smtpd_authorized_xclient_hosts`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use base64::Engine;
use switchyard_tests::config::{Destination, Listener};
use switchyard_tests::fleet::{ControlPlane, Fleet, Node};
use switchyard_tests::{eventually, free_port, require_or_skip, status, Dovecot, ImapClient, Postfix};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const USERS: &[(&str, &str)] = &[("alice@example.test", "pw")];
const REAL_CLIENT: &str = "203.0.113.50:40000";
/// Node listeners behind the test's load balancer.
const BEHIND_LB: &str = "proxy_protocol = \"required\"\nproxy_trusted = [\"127.0.0.0/8\"]";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A Dovecot with an extra IMAP listener that expects a PROXY header from loopback.
fn dovecot_with_haproxy_listener() -> Result<(Dovecot, u16)> {
    let port = free_port();
    let extra = format!(
        "haproxy_trusted_networks = 127.0.0.0/8\nservice imap-login {{\n  inet_listener imap_haproxy {{\n    port = {port}\n    haproxy = yes\n  }}\n}}\n"
    );
    Ok((Dovecot::start_with(USERS, &extra)?, port))
}

/// A control plane declaring `legacy`, a node with `listeners` `(id, protocol)` behind the
/// load balancer, ready, and alice mapped to `legacy`.
async fn fleet(legacy: Destination, listeners: &[(&str, &str)]) -> Result<(ControlPlane, Node)> {
    let builder = Fleet::builder().destination(legacy).map("alice@example.test", "legacy");
    let builder =
        listeners.iter().fold(builder, |b, (id, protocol)| b.listener_with(Listener::new(id, protocol).key(BEHIND_LB)));
    let Fleet { cp, mut nodes, .. } = builder.start().await?;
    Ok((cp, nodes.remove(0)))
}

/// Waits until Dovecot logged alice's `service` login and returns that line.
async fn login_line(dovecot: &Dovecot, service: &str) -> Result<String> {
    let needle = format!("{service}-login: Info: Login: user=<alice@example.test>");
    eventually(Duration::from_secs(5), || async {
        let log = dovecot.log();
        let line = log.lines().find(|l| l.contains(&needle)).map(str::to_owned);
        line.ok_or_else(|| anyhow::anyhow!("no {service} login in:\n{log}"))
    })
    .await
}

fn plain(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

/// A client behind the test's load balancer: the PROXY v2 header naming `client` goes first.
struct Behind(BufReader<TcpStream>);

impl Behind {
    async fn connect(node: SocketAddr, client: &str) -> Result<Self> {
        let mut stream = TcpStream::connect(node).await?;
        stream.write_all(&dataplane::codec::proxy::encode_v2(client.parse()?, node)).await?;
        Ok(Behind(BufReader::new(stream)))
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        Ok(self.0.get_mut().write_all(text.as_bytes()).await?)
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(IO_TIMEOUT, self.0.read_line(&mut line)).await??;
        ensure!(n > 0, "connection closed");
        Ok(line)
    }

    /// Lines through the first one `last` accepts; returns that one.
    async fn until(&mut self, last: impl Fn(&str) -> bool) -> Result<String> {
        loop {
            let line = self.line().await?;
            if last(&line) {
                return Ok(line);
            }
        }
    }

    /// Sends `command` and checks the start of the (last line of the) answer.
    async fn expect(&mut self, command: &str, answer: &str) -> Result<()> {
        self.send(command).await?;
        let smtp = |l: &str| l.as_bytes().get(3) != Some(&b'-');
        let line = if answer.starts_with(char::is_numeric) { self.until(smtp).await? } else { self.line().await? };
        ensure!(line.starts_with(answer), "{command:?} answered {line:?}");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_logs_the_real_client_behind_a_load_balancer_and_the_node() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (dovecot, haproxy_port) = dovecot_with_haproxy_listener()?;
    let legacy = Destination::new("legacy").endpoint("imap", haproxy_port).key("forwarding = \"proxy\"");
    let (_cp, node) = fleet(legacy, &[("imap", "imap")]).await?;

    // The test plays the load balancer: PROXY v2 header naming the real client first.
    let mut lb = tokio::net::TcpStream::connect(node.imap).await?;
    let header = dataplane::codec::proxy::encode_v2(REAL_CLIENT.parse()?, node.imap);
    lb.write_all(&header).await?;
    let mut imap = ImapClient::from_stream(lb).await?;
    let tagged = imap.login("alice@example.test", "pw").await?;
    assert_eq!(status(&tagged), "OK", "{tagged}");
    imap.logout().await?;
    let line = login_line(&dovecot, "imap").await?;
    assert!(line.contains("rip=203.0.113.50,"), "not the real client: {line}");

    // Without a header the listener (proxy_protocol = required) closes the connection.
    let mut bare = tokio::net::TcpStream::connect(node.imap).await?;
    bare.write_all(b"a1 CAPABILITY\r\n").await?;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut bare, &mut buf)).await?;
    // Closed without a greeting: an orderly EOF, or a reset because our bytes went unread.
    match read {
        Ok(n) => assert_eq!(n, 0, "no greeting expected: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_and_xclient_name_the_real_client_to_dovecot_for_imap_pop3_and_sieve() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dovecot = Dovecot::start_with(USERS, "login_trusted_networks = 127.0.0.0/8\n")?;
    let endpoints =
        [("imap", dovecot.imap_port()), ("pop3", dovecot.pop3_port()), ("managesieve", dovecot.sieve_port())];
    let legacy = Destination::new("legacy").endpoints(&endpoints).key("forwarding = \"xclient\"");
    let (_cp, node) = fleet(legacy, &[("imap", "imap"), ("pop3", "pop3"), ("sieve", "managesieve")]).await?;

    let mut lb = TcpStream::connect(node.imap).await?;
    lb.write_all(&dataplane::codec::proxy::encode_v2("203.0.113.51:40001".parse()?, node.imap)).await?;
    let mut imap = ImapClient::from_stream(lb).await?;
    let tagged = imap.login("alice@example.test", "pw").await?;
    assert_eq!(status(&tagged), "OK", "{tagged}");
    imap.logout().await?;

    let mut pop3 = Behind::connect(node.addr("pop3"), "203.0.113.52:40002").await?;
    ensure!(pop3.line().await?.starts_with("+OK"));
    pop3.expect("USER alice@example.test\r\n", "+OK").await?;
    pop3.expect("PASS pw\r\n", "+OK").await?;
    pop3.expect("QUIT\r\n", "+OK").await?;

    let mut sieve = Behind::connect(node.addr("sieve"), "203.0.113.53:40003").await?;
    sieve.until(|l| l.starts_with("OK")).await?;
    let auth = format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", plain("alice@example.test", "pw"));
    sieve.expect(&auth, "OK").await?;
    sieve.expect("LOGOUT\r\n", "OK").await?;

    for (service, client) in [("imap", "203.0.113.51"), ("pop3", "203.0.113.52"), ("managesieve", "203.0.113.53")] {
        let line = login_line(&dovecot, service).await?;
        assert!(line.contains(&format!("rip={client},")), "{service}: not the real client: {line}");
        // The node's session id (16 base64url characters) names the backend session too.
        let session = line.split("session=<").nth(1).and_then(|s| s.split('>').next()).unwrap_or_default();
        assert!(session.len() == 16 && !session.contains(['+', '/']), "{service}: {line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_trust_the_node_still_serves_the_login() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    // No login_trusted_networks: Dovecot ignores ID's x- fields and offers no XCLIENT.
    let dovecot = Dovecot::start(USERS)?;
    let endpoints = [("imap", dovecot.imap_port()), ("pop3", dovecot.pop3_port())];
    let legacy = Destination::new("legacy").endpoints(&endpoints).key("forwarding = \"xclient\"");
    let (_cp, node) = fleet(legacy, &[("imap", "imap"), ("pop3", "pop3")]).await?;

    let mut pop3 = Behind::connect(node.addr("pop3"), "203.0.113.52:40002").await?;
    ensure!(pop3.line().await?.starts_with("+OK"));
    pop3.expect("USER alice@example.test\r\n", "+OK").await?;
    pop3.expect("PASS pw\r\n", "+OK Logged in").await?;
    pop3.expect("QUIT\r\n", "+OK").await?;
    let line = login_line(&dovecot, "pop3").await?;
    assert!(line.contains("rip=127.0.0.1,"), "the node's address, as the warning says: {line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xclient_names_the_real_client_to_postfix_submission() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") {
        return Ok(());
    }
    let dovecot = Dovecot::start(USERS)?;
    // main.cf: smtpd_authorized_xclient_hosts = 127.0.0.0/8, for both smtpd services.
    let postfix = Postfix::start(&dovecot)?;
    let legacy =
        Destination::new("legacy").endpoint("submission", postfix.submission_port()).key("forwarding = \"xclient\"");
    let (_cp, node) = fleet(legacy, &[("submission", "submission")]).await?;

    let mut smtp = Behind::connect(node.addr("submission"), "203.0.113.54:40004").await?;
    ensure!(smtp.line().await?.starts_with("220 "));
    smtp.expect("EHLO client.example\r\n", "250 ").await?;
    smtp.expect(&format!("AUTH PLAIN {}\r\n", plain("alice@example.test", "pw")), "235 ").await?;
    smtp.expect("MAIL FROM:<alice@example.test>\r\n", "250 ").await?;
    smtp.expect("RCPT TO:<alice@example.test>\r\n", "250 ").await?;
    smtp.expect("DATA\r\n", "354 ").await?;
    smtp.expect("Subject: forwarded\r\n\r\nhi\r\n.\r\n", "250 ").await?;
    smtp.expect("QUIT\r\n", "221 ").await?;

    let line = eventually(Duration::from_secs(5), || async {
        let log = postfix.log();
        let line = log.lines().find(|l| l.contains("client=") && l.contains("sasl_username=alice@example.test"));
        line.map(str::to_owned).ok_or_else(|| anyhow::anyhow!("no submission in:\n{log}"))
    })
    .await?;
    assert!(line.contains("client=unknown[203.0.113.54]"), "not the real client: {line}");
    Ok(())
}
