//! LMTP and port-25 SMTP delivery through the real `dataplane` binary to endpoints whose
//! `tls` is `starttls` or `implicit`: the transaction goes over TLS verified like a login's
//! (Dovecot's Received header says `with LMTPS`, Postfix with `smtpd_tls_security_level =
//! encrypt` takes it and logs the TLS session), or not at all: a backend without STARTTLS
//! or whose certificate does not verify gets the recipient a 4xx, and a capture of the leg
//! shows that no envelope crossed it in clear. With `forwarding = "xclient"` the backend
//! learns the real client (behind a trusted PROXY header) through XCLIENT.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use switchyard_tests::binfleet::BinFleet;
use switchyard_tests::{eventually, free_port, leaf_sha256_hex, require_or_skip, Dovecot, DovecotOptions, TestPki};
use switchyard_tests::{Postfix, PostfixOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const USERS: &[(&str, &str)] = &[
    ("alice@example.test", "alicepw"),
    ("bob@example.test", "bobpw"),
    ("carol@example.test", "carolpw"),
    ("dave@example.test", "davepw"),
];
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Postfix queues the message and hands it to Dovecot a moment later.
const DELIVERY: Duration = Duration::from_secs(20);
/// Node listeners behind the test's load balancer, so the client has an address of its own.
const BEHIND_LB: &str = "proxy_protocol = \"required\"\nproxy_trusted = [\"127.0.0.0/8\"]";
const UNROUTABLE: &str = "451 4.4.1 ";

/// A TCP relay in front of a backend that keeps every byte the node sent through it.
struct Tap {
    addr: SocketAddr,
    from_node: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    async fn start(target: SocketAddr) -> Result<Tap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let from_node = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&from_node);
        let task = tokio::spawn(async move {
            while let Ok((node, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = relay(node, server, seen).await;
                    }
                });
            }
        });
        Ok(Tap { addr, from_node, task })
    }

    /// What the node sent, printable (TLS records show as replacement characters).
    fn captured(&self) -> String {
        String::from_utf8_lossy(&self.from_node.lock().unwrap()).into_owned()
    }

    /// The cleartext start of the capture and how many bytes followed it, for the log.
    fn shown(&self) -> String {
        let bytes = self.from_node.lock().unwrap().clone();
        let text = bytes.iter().position(|b| !(b.is_ascii_graphic() || b" \r\n".contains(b))).unwrap_or(bytes.len());
        format!("{}[then {} bytes that are not text]", String::from_utf8_lossy(&bytes[..text]), bytes.len() - text)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(node: TcpStream, server: TcpStream, seen: Arc<Mutex<Vec<u8>>>) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let (mut from_node, mut to_node) = node.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let upstream = async {
        let mut buf = [0u8; 8192];
        loop {
            let n = from_node.read(&mut buf).await?;
            if n == 0 {
                return to_server.shutdown().await;
            }
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
            to_server.write_all(&buf[..n]).await?;
        }
    };
    let downstream = async {
        tokio::io::copy(&mut from_server, &mut to_node).await?;
        to_node.shutdown().await
    };
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
}

/// One SMTP/LMTP client behind the load balancer: the PROXY v2 header naming `client` first.
struct Client(BufReader<TcpStream>);

impl Client {
    async fn connect(node: SocketAddr, client: &str) -> Result<Client> {
        let mut stream = TcpStream::connect(node).await?;
        stream.write_all(&dataplane::codec::proxy::encode_v2(client.parse()?, node)).await?;
        let mut c = Client(BufReader::new(stream));
        let greeting = c.reply().await?;
        ensure!(greeting.starts_with("220 "), "{greeting}");
        Ok(c)
    }

    /// Sends `text` and reads one whole reply (every line of a multi-line one).
    async fn ask(&mut self, text: &str) -> Result<String> {
        self.0.get_mut().write_all(text.as_bytes()).await?;
        self.reply().await
    }

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

    /// One transaction for `rcpt` (LHLO or EHLO per `hello`): every reply, one per line, in
    /// the form `COMMAND -> reply`; it stops at the first refused step.
    async fn send(node: SocketAddr, client: &str, hello: &str, rcpt: &str, subject: &str) -> Result<String> {
        let mut c = Client::connect(node, client).await?;
        let mut out = String::new();
        let steps = [
            format!("{hello} sender.example\r\n"),
            "MAIL FROM:<sender@example.org>\r\n".into(),
            format!("RCPT TO:<{rcpt}>\r\n"),
            "DATA\r\n".into(),
            format!("Subject: {subject}\r\n\r\nSent through the node.\r\n.\r\n"),
        ];
        for step in &steps {
            let reply = c.ask(step).await?;
            let last = reply.lines().last().unwrap_or_default().to_owned();
            out.push_str(&format!("{} -> {last}\n", step.lines().next().unwrap_or_default()));
            if !(last.starts_with('2') || last.starts_with('3')) {
                break;
            }
        }
        c.ask("QUIT\r\n").await?;
        Ok(out)
    }
}

/// The stored message in `dovecot`'s mailboxes whose Subject is `subject`.
fn stored(dovecot: &Dovecot, subject: &str) -> Option<String> {
    fn walk(dir: &Path, subject: &str) -> Option<String> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let found = if path.is_dir() {
                walk(&path, subject)
            } else {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                text.contains(&format!("\nSubject: {subject}\n")).then_some(text)
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
    walk(&dovecot.dir().join("home"), subject)
}

/// The header block of a stored message.
fn headers(message: &str) -> &str {
    message.split("\n\n").next().unwrap_or_default()
}

/// `[destination.<id>]` with one endpoint `protocol` on 127.0.0.1:`port` and `extra` keys.
fn destination(id: &str, protocol: &str, port: u16, tls: &str, extra: &str) -> String {
    format!(
        "[destination.{id}]\nhost = \"127.0.0.1\"\n{extra}\n[destination.{id}.protocol.{protocol}]\nport = {port}\ntls = \"{tls}\"\n"
    )
}

fn pinned(cert: &Path) -> Result<String> {
    Ok(format!("tls_verify = \"pinned\"\ntls_pin_sha256 = [\"{}\"]", leaf_sha256_hex(cert)?))
}

async fn map(fleet: &BinFleet, user: &str, destination: &str) -> Result<()> {
    let (code, body) = fleet.api.put(&format!("/mappings/{user}"), json!({ "destination": destination })).await?;
    ensure!(code == 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_delivery_to_tls_endpoints_is_encrypted_or_deferred_never_in_clear() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    // ssl = required, and the node's network trusted (XCLIENT is offered to it), plus an
    // implicit-TLS LMTP listener.
    let lmtps = free_port();
    let extra = format!(
        "ssl = required\nlogin_trusted_networks = 127.0.0.0/8\n\
         service lmtp {{\n  inet_listener lmtps {{\n    address = 127.0.0.1\n    port = {lmtps}\n    ssl = yes\n  }}\n}}\n"
    );
    let secure = Dovecot::start_with_options(
        USERS,
        &DovecotOptions { tls: Some(&pki), extra_conf: &extra, ..Default::default() },
    )?;
    // No TLS at all: its LHLO offers no STARTTLS.
    let cleartext = Dovecot::start(USERS)?;
    let cert = secure.tls_cert_path().context("started with TLS")?;
    let (starttls_tap, implicit_tap) =
        (Tap::start(secure.lmtp_addr()).await?, Tap::start(([127, 0, 0, 1], lmtps).into()).await?);
    let (cleartext_tap, wrongpin_tap) =
        (Tap::start(cleartext.lmtp_addr()).await?, Tap::start(secure.lmtp_addr()).await?);
    let tables = destination(
        "secure",
        "lmtp",
        starttls_tap.addr.port(),
        "starttls",
        &(pinned(&cert)? + "\nforwarding = \"xclient\""),
    ) + &destination("implicit", "lmtp", implicit_tap.addr.port(), "implicit", &pinned(&cert)?)
        + &destination("cleartext", "lmtp", cleartext_tap.addr.port(), "starttls", &pinned(&cert)?)
        + &destination("wrongpin", "lmtp", wrongpin_tap.addr.port(), "starttls", &pinned(&pki.ca_pem_path())?);
    let listener =
        format!("[listener.lmtp]\nprotocol = \"lmtp\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\n{BEHIND_LB}\n");
    let fleet = BinFleet::start(&tables, "secure", |t| t, &listener).await?;
    for (user, destination) in
        [("bob@example.test", "implicit"), ("carol@example.test", "cleartext"), ("dave@example.test", "wrongpin")]
    {
        map(&fleet, user, destination).await?;
    }
    let node = fleet.addr("lmtp")?;

    let alice = Client::send(node, "203.0.113.61:40061", "LHLO", "alice@example.test", "to alice").await?;
    let bob = Client::send(node, "203.0.113.62:40062", "LHLO", "bob@example.test", "to bob").await?;
    let carol = Client::send(node, "203.0.113.63:40063", "LHLO", "carol@example.test", "to carol").await?;
    let dave = Client::send(node, "203.0.113.64:40064", "LHLO", "dave@example.test", "to dave").await?;
    eprintln!("alice (starttls):\n{alice}bob (implicit):\n{bob}carol (no STARTTLS):\n{carol}dave (wrong pin):\n{dave}");
    eprintln!("captured on alice's leg:\n{}", starttls_tap.shown());

    // STARTTLS: the whole transaction inside TLS, the real client named by XCLIENT.
    let leg = starttls_tap.captured();
    assert!(!leg.contains("MAIL FROM") && !leg.contains("RCPT TO"), "the envelope crossed in clear:\n{leg}");
    assert!(leg.contains("LHLO ") && leg.contains("STARTTLS\r\n"), "{leg}");
    assert!(alice.contains("RCPT TO:<alice@example.test> -> 250 ") && alice.ends_with("Saved\n"), "{alice}");
    let message = stored(&secure, "to alice").context("alice's message is not stored")?;
    let received = headers(&message);
    eprintln!("alice's message as stored:\n{received}");
    assert!(received.contains("with LMTPS") && received.contains("(using TLS"), "{received}");
    assert!(received.contains("([203.0.113.61])"), "XCLIENT did not name the real client: {received}");

    // Implicit TLS from the first byte.
    assert!(bob.ends_with("Saved\n"), "{bob}");
    let received = stored(&secure, "to bob").context("bob's message is not stored")?;
    assert!(headers(&received).contains("with LMTPS"), "{received}");
    assert!(!implicit_tap.captured().contains("LHLO"), "{}", implicit_tap.captured());

    // No STARTTLS offered, or a certificate that does not verify: a 4xx, no envelope sent.
    for (who, replies, tap) in [("carol", &carol, &cleartext_tap), ("dave", &dave, &wrongpin_tap)] {
        let rcpt = format!("RCPT TO:<{who}@example.test> -> {UNROUTABLE}");
        assert!(replies.contains(&rcpt), "{who}: {replies}");
        let leg = tap.captured();
        eprintln!("{who}'s leg: {}", tap.shown());
        assert!(leg.contains("LHLO ") && !leg.contains("MAIL FROM"), "{who}: sent in clear:\n{leg}");
    }
    assert!(stored(&cleartext, "to carol").is_none(), "carol's message went in clear");
    assert!(stored(&secure, "to dave").is_none(), "dave's message crossed an unverified leg");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_delivery_to_a_postfix_that_requires_tls_uses_starttls_and_xclient() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    let dovecot = Dovecot::start(USERS)?;
    // Later lines win: STARTTLS required before MAIL; log the client's port too.
    let extra = "smtpd_tls_security_level = encrypt\nsmtpd_client_port_logging = yes";
    let postfix = Postfix::start_with(&PostfixOptions {
        tls: Some(&pki),
        extra_main_cf: extra,
        ..PostfixOptions::for_dovecot(&dovecot)
    })?;
    let tap = Tap::start(postfix.smtp_addr()).await?;
    let cert = postfix.dir().join("tls/cert.pem");
    let tables =
        destination("legacy", "smtp", tap.addr.port(), "starttls", &(pinned(&cert)? + "\nforwarding = \"xclient\""));
    let listener =
        format!("[listener.mx]\nprotocol = \"smtp\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\n{BEHIND_LB}\n");
    let fleet = BinFleet::start(&tables, "legacy", |t| t, &listener).await?;

    let replies = Client::send(fleet.addr("mx")?, "203.0.113.71:40071", "EHLO", "alice@example.test", "via mx").await?;
    eprintln!("{replies}captured:\n{}", tap.shown());
    let leg = tap.captured();
    assert!(!leg.contains("MAIL FROM") && !leg.contains("XCLIENT"), "sent in clear:\n{leg}");
    assert!(leg.contains("STARTTLS\r\n"), "{leg}");
    assert!(replies.contains("RCPT TO:<alice@example.test> -> 250 "), "{replies}");
    assert!(replies.lines().last().is_some_and(|l| l.contains("-> 250 ")), "{replies}");

    let log = eventually(DELIVERY, || async {
        let log = postfix.log();
        ensure!(log.contains("status=sent"), "not delivered yet:\n{log}");
        Ok(log)
    })
    .await?;
    assert!(log.contains("TLS connection established from unknown[127.0.0.1]"), "{log}");
    let queued = log.lines().find(|l| l.contains(": client=")).context("no queue line")?;
    eprintln!(
        "{}",
        log.lines().filter(|l| l.contains("TLS connection") || l.contains(": client=")).collect::<Vec<_>>().join("\n")
    );
    assert!(queued.contains("client=unknown[203.0.113.71]:40071"), "not the real client: {queued}");
    let message =
        eventually(DELIVERY, || async { stored(&dovecot, "via mx").context("not in alice's INBOX yet") }).await?;
    // RFC 3848: ESMTPS is ESMTP over TLS (Postfix adds no cipher line by default).
    let received = headers(&message);
    eprintln!("stored:\n{received}");
    assert!(received.contains("(unknown [203.0.113.71])") && received.contains("with ESMTPS"), "{received}");
    Ok(())
}
