//! End to end through a real node: LMTP to two real Dovecot servers (`legacy`, the default,
//! and `new`), and submission and port-25 SMTP to a real Postfix in front of each (SASL
//! through its Dovecot), driven by Python's smtplib and swaks. Where a message landed is
//! read from each Dovecot's INBOX directly. Plus the temporary failure of every protocol
//! when its destination is down.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use base64::Engine;
use switchyard_tests::config::Destination;
use switchyard_tests::fleet::{ControlPlane, Fleet, Node};
use switchyard_tests::{
    free_port, inbox_of, python_lmtp_send, python_smtp_submit, require_or_skip, swaks, until_in_inbox, ClientTls,
    Dovecot, Postfix,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const USERS: &[(&str, &str)] =
    &[("alice@example.test", "alicepw"), ("bob@example.test", "bobpw"), ("carol@example.test", "carolpw")];
/// Postfix queues a submitted message and delivers it a moment later.
const DELIVERY: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const DEFERRED: &str = "451 4.4.1 Recipient belongs to another server; try again in a separate transaction";

/// One backend: a Dovecot and, when the test needs it, a Postfix delivering to it.
struct Server {
    dovecot: Dovecot,
    postfix: Option<Postfix>,
}

struct Fixture {
    legacy: Server,
    new: Server,
    _cp: ControlPlane,
    node: Node,
}

/// Both servers, a control plane declaring their LMTP, SMTP and submission endpoints (on
/// ports nobody listens on without Postfix), one node with a listener of each protocol,
/// and bob mapped to `new`.
async fn fixture(with_postfix: bool) -> Result<Fixture> {
    let server = || -> Result<Server> {
        let dovecot = Dovecot::start(USERS)?;
        let postfix = if with_postfix { Some(Postfix::start(&dovecot)?) } else { None };
        Ok(Server { dovecot, postfix })
    };
    let (legacy, new) = (server()?, server()?);
    let endpoints = |s: &Server| {
        let (smtp, submission) =
            s.postfix.as_ref().map_or((free_port(), free_port()), |p| (p.smtp_port(), p.submission_port()));
        [("lmtp", s.dovecot.lmtp_port()), ("smtp", smtp), ("submission", submission)]
    };
    let fleet = Fleet::builder()
        .destination(Destination::new("legacy").endpoints(&endpoints(&legacy)))
        .destination(Destination::new("new").endpoints(&endpoints(&new)))
        .listener("lmtp", "lmtp")
        .listener("smtp", "smtp")
        .listener("submission", "submission")
        .map("bob@example.test", "new")
        .start()
        .await?;
    let Fleet { cp, mut nodes, .. } = fleet;
    Ok(Fixture { legacy, new, _cp: cp, node: nodes.remove(0) })
}

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p).unwrap_or_default()
}

async fn inbox(server: &Server, user: &str) -> Result<Vec<String>> {
    inbox_of(server.dovecot.imap_addr(), user, password(user)).await
}

/// Waits until `subject` is in `user`'s INBOX on `server` (Postfix delivers asynchronously).
async fn arrives(server: &Server, user: &str, subject: &str) -> Result<()> {
    until_in_inbox(server.dovecot.imap_addr(), (user, password(user)), subject, DELIVERY).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_defers_a_recipient_of_another_server_and_each_message_lands_on_its_own() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture(false).await?;
    let port = f.node.addr("lmtp").port();
    // One message for alice (legacy) and bob (new): the first recipient fixes the
    // transaction's destination, so bob is deferred with a 4xx, as an MTA expects.
    let (ok, text) =
        python_lmtp_send(port, "sender@example.org", &["alice@example.test", "bob@example.test"], "two").await?;
    assert!(!ok, "{text}");
    assert!(text.contains("RCPT alice@example.test 250 "), "{text}");
    assert!(text.contains(&format!("RCPT bob@example.test {DEFERRED}")), "{text}");
    assert!(text.contains("DATA alice@example.test 250 "), "{text}");
    // The MTA retries the deferred recipient in a transaction of its own.
    let (ok, text) = python_lmtp_send(port, "sender@example.org", &["bob@example.test"], "two").await?;
    assert!(ok, "{text}");
    // Two recipients on one server: Dovecot's reply for each is relayed, in order.
    let (ok, text) =
        python_lmtp_send(port, "sender@example.org", &["carol@example.test", "alice@example.test"], "both").await?;
    assert!(ok, "{text}");
    assert!(text.contains("DATA carol@example.test 250 ") && text.contains("DATA alice@example.test 250 "), "{text}");

    assert_eq!(inbox(&f.legacy, "alice@example.test").await?, ["two", "both"]);
    assert_eq!(inbox(&f.legacy, "carol@example.test").await?, ["both"]);
    assert_eq!(inbox(&f.new, "bob@example.test").await?, ["two"]);
    assert!(inbox(&f.new, "alice@example.test").await?.is_empty());
    assert!(inbox(&f.legacy, "bob@example.test").await?.is_empty());

    // An unknown user is the backend's own permanent answer, relayed as is.
    let (ok, text) = python_lmtp_send(port, "sender@example.org", &["nobody@example.test"], "none").await?;
    assert!(!ok && text.contains("RCPT nobody@example.test 550 "), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_replays_auth_to_the_accounts_postfix() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") || !require_or_skip("swaks") {
        return Ok(());
    }
    let f = fixture(true).await?;
    let port = f.node.addr("submission").port();
    let alice = Some(("alice@example.test", "alicepw"));
    let me = &["alice@example.test"];
    let (ok, text) = python_smtp_submit(port, alice, me[0], me, "from smtplib", &ClientTls::Plain).await?;
    assert!(ok, "{text}");
    assert!(text.contains("AUTH 235 "), "{text}");
    arrives(&f.legacy, "alice@example.test", "from smtplib").await?;

    // bob is mapped to `new`: his login and his mail go to the other Postfix (AUTH LOGIN
    // from the client is replayed as PLAIN).
    let port_arg = port.to_string();
    let options = [
        ("--server", "127.0.0.1"),
        ("--port", &port_arg),
        ("--auth", "LOGIN"),
        ("--auth-user", "bob@example.test"),
        ("--auth-password", "bobpw"),
        ("--from", "bob@example.test"),
        ("--to", "bob@example.test"),
        ("--header", "Subject: from swaks"),
    ];
    let args: Vec<&str> = options.iter().flat_map(|(flag, value)| [*flag, *value]).collect();
    let (ok, text) = swaks(&args).await?;
    assert!(ok, "{text}");
    arrives(&f.new, "bob@example.test", "from swaks").await?;
    assert!(!inbox(&f.legacy, "bob@example.test").await?.iter().any(|s| s == "from swaks"));

    // curl as a third real client (AUTH PLAIN from curl's own SASL code).
    let message = tempfile::NamedTempFile::new()?;
    std::fs::write(
        message.path(),
        "From: bob@example.test\r\nTo: bob@example.test\r\nSubject: from curl\r\n\r\nhi\r\n",
    )?;
    let url = format!("smtp://127.0.0.1:{port}");
    let path = message.path().to_string_lossy().into_owned();
    let (ok, text) = switchyard_tests::curl(&[
        url.as_str(),
        "--user",
        "bob@example.test:bobpw",
        "--login-options",
        "AUTH=PLAIN",
        "--mail-from",
        "bob@example.test",
        "--mail-rcpt",
        "bob@example.test",
        "--upload-file",
        path.as_str(),
    ])
    .await?;
    assert!(ok, "{text}");
    arrives(&f.new, "bob@example.test", "from curl").await?;

    // A wrong password is Postfix's (via Dovecot's) verdict, relayed as is.
    let wrong = Some(("alice@example.test", "nope"));
    let (ok, text) = python_smtp_submit(port, wrong, me[0], me, "never", &ClientTls::Plain).await?;
    assert!(!ok && text.contains("535"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_25_routes_each_recipient_to_its_postfix() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") {
        return Ok(());
    }
    let f = fixture(true).await?;
    let port = f.node.addr("smtp").port();
    let rcpts = &["alice@example.test", "bob@example.test"];
    let (ok, text) = python_smtp_submit(port, None, "sender@example.org", rcpts, "mx", &ClientTls::Plain).await?;
    assert!(!ok, "{text}");
    assert!(text.contains("RCPT alice@example.test 250 "), "{text}");
    assert!(text.contains(&format!("RCPT bob@example.test {DEFERRED}")), "{text}");
    assert!(text.contains("DATA 250 "), "{text}");
    let (ok, text) = python_smtp_submit(port, None, "sender@example.org", &rcpts[1..], "mx", &ClientTls::Plain).await?;
    assert!(ok, "{text}");
    arrives(&f.legacy, "alice@example.test", "mx").await?;
    arrives(&f.new, "bob@example.test", "mx").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_fails_temporarily_when_its_destination_is_down() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let mut f = fixture(false).await?;
    f.legacy.dovecot.stop()?;
    let lmtp = f.node.addr("lmtp").port();
    let (ok, text) = python_lmtp_send(lmtp, "sender@example.org", &["alice@example.test"], "while down").await?;
    assert!(!ok && text.contains("RCPT alice@example.test 451 4.4.1 "), "{text}");
    // bob's server is up: his mail still goes through the same node.
    let (ok, text) = python_lmtp_send(lmtp, "sender@example.org", &["bob@example.test"], "still up").await?;
    assert!(ok, "{text}");
    assert_eq!(inbox(&f.new, "bob@example.test").await?, ["still up"]);

    // Nothing listens on the SMTP and submission endpoints of either destination.
    let mut smtp = Wire::connect(f.node.addr("smtp")).await?;
    assert!(smtp.reply().await?.starts_with("220 "));
    smtp.send("EHLO mx.example\r\nMAIL FROM:<sender@example.org>\r\n").await?;
    smtp.reply().await?;
    assert_eq!(smtp.reply().await?, "250 2.1.0 Ok\r\n");
    smtp.send("RCPT TO:<bob@example.test>\r\n").await?;
    assert!(smtp.reply().await?.starts_with("451 4.4.1 "));

    let mut submission = Wire::connect(f.node.addr("submission")).await?;
    assert!(submission.reply().await?.starts_with("220 "));
    submission.send("EHLO client.example\r\n").await?;
    assert!(submission.reply().await?.contains("AUTH PLAIN LOGIN"));
    let plain = base64::engine::general_purpose::STANDARD.encode("\0bob@example.test\0bobpw");
    submission.send(&format!("AUTH PLAIN {plain}\r\n")).await?;
    assert_eq!(submission.reply().await?, "454 4.7.0 Backend temporarily unavailable, try again later\r\n");
    Ok(())
}

/// A hand-written SMTP conversation.
struct Wire(BufReader<TcpStream>);

impl Wire {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Wire(BufReader::new(TcpStream::connect(addr).await?)))
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        Ok(self.0.get_mut().write_all(text.as_bytes()).await?)
    }

    /// One whole reply, every line of a multi-line one.
    async fn reply(&mut self) -> Result<String> {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(IO_TIMEOUT, self.0.read_line(&mut line)).await??;
            ensure!(n > 0, "connection closed after {reply:?}");
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(reply);
            }
        }
    }
}
