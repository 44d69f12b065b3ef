//! SMTP/LMTP session tests against scripted backends on port 0: routing by recipient, the
//! deferral of recipients on another destination, the message relay and the replies
//! after it, and temporary failures (the real-Dovecot interop lives in `tests/`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{ListenerConfig, Protocol};
use crate::node::Node;
use crate::protocol::testing::Table;
use crate::session::SessionCtx;
use crate::settings::FleetSettings;
use crate::tls::TlsAcceptor;
use switchyard_proto::v1 as pb;

mod backend_tls;
mod limits;
mod recipients;
mod tls;

const OTHER_SERVER: &str = "451 4.4.1 Recipient belongs to another server; try again in a separate transaction\r\n";
const UNROUTABLE: &str = "451 4.4.1 Recipient's server temporarily unavailable, try again later\r\n";

/// bob → `new`, everyone else → `legacy` (the default), through the shared test resolver.
fn bob_on_new() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("bob@example.test".to_string(), "new".to_string())]))
}

/// What a scripted backend received: connections, and (recipients, body) per message.
#[derive(Default)]
struct Seen {
    connections: AtomicU32,
    messages: Mutex<Vec<(Vec<String>, String)>>,
}

impl Seen {
    fn messages(&self) -> Vec<(Vec<String>, String)> {
        self.messages.lock().unwrap().clone()
    }
}

/// A scripted LMTP (or SMTP) server. `unknown@…` does not exist, sender `refused@…` is
/// refused, `crash@…` makes it drop the connection at DATA and `partial@…` right before
/// that recipient's reply after the message.
async fn backend(lmtp: bool) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(converse(s, lmtp, Arc::clone(&shared)));
        }
    });
    (port, seen)
}

async fn next(r: &mut BufReader<OwnedReadHalf>) -> Option<String> {
    let mut line = String::new();
    (r.read_line(&mut line).await.unwrap_or(0) > 0).then_some(line)
}

async fn converse(s: TcpStream, lmtp: bool, seen: Arc<Seen>) {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut rcpts: Vec<String> = Vec::new();
    w.write_all(b"220 scripted\r\n").await.unwrap();
    while let Some(line) = next(&mut r).await {
        let verb = line.get(..4).unwrap_or_default().to_string();
        let reply = match verb.as_str() {
            "LHLO" | "EHLO" => {
                assert_eq!(verb == "LHLO", lmtp, "{line}");
                "250-scripted\r\n250 PIPELINING\r\n".to_string()
            }
            "MAIL" if line.contains("<refused@") => "550 5.7.1 Sender refused\r\n".into(),
            "MAIL" => {
                rcpts.clear();
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" if line.contains("<unknown@") => "550 5.1.1 User unknown\r\n".into(),
            "RCPT" => {
                rcpts.push(line.trim_end().trim_start_matches("RCPT TO:").to_string());
                "250 2.1.5 Ok\r\n".into()
            }
            "DATA" if rcpts.iter().any(|r| r.contains("crash@")) => return,
            "DATA" => {
                w.write_all(b"354 go ahead\r\n").await.unwrap();
                let mut body = String::new();
                while let Some(line) = next(&mut r).await {
                    if line == ".\r\n" {
                        break;
                    }
                    body.push_str(&line);
                }
                seen.messages.lock().unwrap().push((rcpts.clone(), body));
                if !lmtp {
                    w.write_all(b"250 2.0.0 Queued\r\n").await.unwrap();
                    continue;
                }
                for rcpt in &rcpts {
                    if rcpt.contains("partial@") {
                        return;
                    }
                    w.write_all(format!("250 2.0.0 {rcpt} Saved\r\n").as_bytes()).await.unwrap();
                }
                continue;
            }
            "RSET" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            _ => "502 5.5.2 What?\r\n".into(),
        };
        w.write_all(reply.as_bytes()).await.unwrap();
    }
}

/// A node with `legacy` at `ports.0` and `new` at `ports.1`, serving one client of a
/// `protocol` listener with the extra listener keys in `extra`.
async fn session(
    protocol: &str,
    ports: (u16, u16),
    table: Option<HashMap<String, String>>,
    extra: &str,
) -> (Arc<Node>, BufReader<TcpStream>) {
    let node = node(protocol, ports, table);
    let addr = serve(&node, listener(protocol, extra), None).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let kind = if protocol == "lmtp" { "LMTP" } else { "ESMTP" };
    assert_eq!(read(&mut client).await, format!("220 t {kind} Switchyard\r\n"));
    (node, client)
}

/// A node with `legacy` at `ports.0` and `new` at `ports.1` for `protocol`.
fn node(protocol: &str, ports: (u16, u16), table: Option<HashMap<String, String>>) -> Arc<Node> {
    let node = Node::new("t".into(), Arc::new(Table(table)), CancellationToken::new());
    let mut settings = crate::settings::tests::sample();
    settings.breaker.as_mut().unwrap().failure_threshold = 2;
    for d in &mut settings.destinations {
        let port = if d.id == "legacy" { ports.0 } else { ports.1 };
        // Delivery carries no credentials: a plain leg is fine without allow_plaintext_auth.
        d.allow_plaintext_auth = false;
        d.endpoints = vec![pb::Endpoint {
            protocol: protocol.into(),
            port: u32::from(port),
            tls: "plain".into(),
            ..Default::default()
        }];
    }
    node.apply_settings(FleetSettings::try_from(settings).unwrap());
    node
}

fn listener(protocol: &str, extra: &str) -> ListenerConfig {
    let toml = format!(
        "[listener.m]\nprotocol = \"{protocol}\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\n{extra}\n\
         [control]\nendpoints = [\"http://127.0.0.1:1\"]\n"
    );
    crate::config::Config::from_toml_str(&toml).unwrap().listener["m"].clone()
}

/// Serves `config`'s protocol for `node` on a fresh port with the node's certificates in `tls`.
async fn serve(node: &Arc<Node>, config: ListenerConfig, tls: Option<TlsAcceptor>) -> std::net::SocketAddr {
    let flavor = if config.protocol == Protocol::Lmtp { super::Flavor::Lmtp } else { super::Flavor::Smtp };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::clone(node);
    let config = Arc::new(config);
    tokio::spawn(async move {
        while let Ok((stream, client)) = listener.accept().await {
            let (listener, tls) = (Arc::clone(&config), tls.clone());
            let accepted = tokio::time::Instant::now();
            let ctx = SessionCtx { local: client, tls, node: Arc::clone(&served), listener, client, accepted };
            tokio::spawn(super::serve(ctx, stream.into(), flavor));
        }
    });
    addr
}

async fn read<S: AsyncRead + Unpin>(c: &mut BufReader<S>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_line(&mut line)).await.unwrap().unwrap();
    line
}

/// Sends `s` and reads one whole reply.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(c: &mut BufReader<S>, s: &str) -> String {
    c.get_mut().write_all(s.as_bytes()).await.unwrap();
    let mut reply = String::new();
    loop {
        let line = read(c).await;
        reply.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

async fn closed<S: AsyncRead + Unpin>(c: &mut BufReader<S>) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await.unwrap().unwrap();
    rest.is_empty()
}

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_recipient_on_another_destination_is_deferred_to_its_own_transaction() {
    let ((legacy_port, legacy), (new_port, new)) = (backend(true).await, backend(true).await);
    let (_n, mut c) = session("lmtp", (legacy_port, new_port), bob_on_new(), "").await;
    assert_eq!(
        ask(&mut c, "LHLO mx.example\r\n").await,
        "250-t\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
    );
    assert_eq!(ask(&mut c, "MAIL FROM:<sender@example.org>\r\n").await, "250 2.1.0 Ok\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<bob@example.test>\r\n").await, OTHER_SERVER);
    assert_eq!(ask(&mut c, "RCPT TO:<unknown@example.test>\r\n").await, "550 5.1.1 User unknown\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<Carol@Example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "DATA\r\n").await, "354 go ahead\r\n");
    c.get_mut().write_all(b"Subject: hi\r\n\r\n..dot-stuffed\r\n.\r\n").await.unwrap();
    // LMTP: one reply per accepted recipient, in order.
    assert_eq!(read(&mut c).await, "250 2.0.0 <alice@example.test> Saved\r\n");
    assert_eq!(read(&mut c).await, "250 2.0.0 <Carol@Example.test> Saved\r\n");
    let body = "Subject: hi\r\n\r\n..dot-stuffed\r\n".to_string();
    assert_eq!(legacy.messages(), [(vec!["<alice@example.test>".into(), "<Carol@Example.test>".into()], body.clone())]);

    // The sender retries bob alone, and now he goes to his own server.
    assert_eq!(ask(&mut c, "MAIL FROM:<sender@example.org>\r\n").await, "250 2.1.0 Ok\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<bob@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "DATA\r\n").await, "354 go ahead\r\n");
    c.get_mut().write_all(b"Subject: hi\r\n\r\n..dot-stuffed\r\n.\r\nQUIT\r\n").await.unwrap();
    assert_eq!(read(&mut c).await, "250 2.0.0 <bob@example.test> Saved\r\n");
    assert_eq!(read(&mut c).await, "221 2.0.0 Bye\r\n");
    assert!(closed(&mut c).await);
    assert_eq!(new.messages(), [(vec!["<bob@example.test>".into()], body)]);
}

#[tokio::test]
async fn the_transaction_moves_while_no_recipient_was_accepted() {
    let ((legacy_port, legacy), (new_port, new)) = (backend(true).await, backend(true).await);
    let (_n, mut c) = session("lmtp", (legacy_port, new_port), bob_on_new(), "").await;
    ask(&mut c, "LHLO mx\r\nMAIL FROM:<>\r\n").await;
    assert_eq!(read(&mut c).await, "250 2.1.0 Ok\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<unknown@example.test>\r\n").await, "550 5.1.1 User unknown\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<bob@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, OTHER_SERVER);
    ask(&mut c, "DATA\r\n").await;
    assert_eq!(ask(&mut c, "x\r\n.\r\n").await, "250 2.0.0 <bob@example.test> Saved\r\n");
    assert_eq!(new.messages().len(), 1);
    assert!(legacy.messages().is_empty());
}

#[tokio::test]
async fn unavailable_destinations_and_control_plane_defer_recipients() {
    let (new_port, new) = backend(true).await;
    let (node, mut c) = session("lmtp", (unused_port(), new_port), bob_on_new(), "").await;
    ask(&mut c, "LHLO mx\r\nMAIL FROM:<s@example.org>\r\n").await;
    read(&mut c).await;
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, UNROUTABLE);
    let legacy = node.breakers.health().into_iter().find(|(d, _)| d == "legacy").unwrap().1;
    assert!(legacy.down, "threshold 2 with one retry: one recipient opens it");
    // The session goes on: a recipient on a healthy destination still gets through.
    assert_eq!(ask(&mut c, "RCPT TO:<bob@example.test>\r\n").await, "250 2.1.5 Ok\r\n");

    let ((legacy_port, legacy), (new_port, new2)) = (backend(true).await, backend(true).await);
    let (_n, mut c) = session("lmtp", (legacy_port, new_port), None, "").await;
    ask(&mut c, "LHLO mx\r\nMAIL FROM:<s@example.org>\r\n").await;
    read(&mut c).await;
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, UNROUTABLE);
    assert_eq!(ask(&mut c, "DATA\r\n").await, "554 5.5.1 No valid recipients\r\n");
    let connections = legacy.connections.load(Ordering::SeqCst) + new2.connections.load(Ordering::SeqCst);
    assert_eq!(connections, 0, "never the default destination when routing fails");
    assert_eq!(new.messages().len(), 0);
}

#[tokio::test]
async fn smtp_with_a_fixed_pass_through_needs_no_lookup() {
    let ((legacy_port, legacy), (new_port, new)) = (backend(false).await, backend(false).await);
    let (_n, mut c) = session("smtp", (legacy_port, new_port), None, "pass_through = \"new\"").await;
    assert_eq!(ask(&mut c, "LHLO mx\r\n").await, "500 5.5.1 Use EHLO\r\n");
    assert_eq!(ask(&mut c, "HELO mx\r\n").await, "250 t\r\n");
    ask(&mut c, "MAIL FROM:<s@example.org> BODY=8BITMIME\r\n").await;
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<bob@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    ask(&mut c, "DATA\r\n").await;
    // SMTP: one reply for the message, whatever the number of recipients.
    assert_eq!(ask(&mut c, "body\r\n.\r\n").await, "250 2.0.0 Queued\r\n");
    assert_eq!(ask(&mut c, "NOOP\r\n").await, "250 2.0.0 Ok\r\n");
    assert_eq!(new.messages(), [(vec!["<alice@example.test>".into(), "<bob@example.test>".into()], "body\r\n".into())]);
    assert!(legacy.messages().is_empty());
}

#[tokio::test]
async fn large_messages_stream_and_bare_line_feeds_are_repaired() {
    let ((legacy_port, legacy), (new_port, _)) = (backend(true).await, backend(true).await);
    let (_n, mut c) = session("lmtp", (legacy_port, new_port), bob_on_new(), "").await;
    ask(&mut c, "LHLO mx\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\n").await;
    read(&mut c).await;
    read(&mut c).await;
    ask(&mut c, "DATA\r\n").await;
    let line = format!("{}\n", "y".repeat(998));
    let body = line.repeat(3000);
    // The proxy writes nothing to the client during the message, so one task can send it all.
    c.get_mut().write_all(format!("{body}.\n").as_bytes()).await.unwrap();
    assert_eq!(read(&mut c).await, "250 2.0.0 <alice@example.test> Saved\r\n");
    let messages = legacy.messages();
    assert_eq!(messages[0].1, line.replace('\n', "\r\n").repeat(3000));
}

#[tokio::test]
async fn backend_failures_during_the_transaction() {
    let ((legacy_port, _), (new_port, _)) = (backend(true).await, backend(true).await);
    let (_n, mut c) = session("lmtp", (legacy_port, new_port), bob_on_new(), "").await;
    ask(&mut c, "LHLO mx\r\nMAIL FROM:<s@example.org>\r\n").await;
    read(&mut c).await;
    ask(&mut c, "RCPT TO:<alice@example.test>\r\nRCPT TO:<partial@example.test>\r\nDATA\r\n").await;
    read(&mut c).await;
    assert_eq!(read(&mut c).await, "354 go ahead\r\n");
    // The backend confirms alice and then dies: only partial is deferred.
    assert_eq!(ask(&mut c, "m\r\n.\r\n").await, "250 2.0.0 <alice@example.test> Saved\r\n");
    assert_eq!(read(&mut c).await, "451 4.4.1 Backend did not confirm delivery, try again later\r\n");

    ask(&mut c, "MAIL FROM:<refused@example.org>\r\n").await;
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, "550 5.7.1 Sender refused\r\n");
    ask(&mut c, "RSET\r\nMAIL FROM:<s@example.org>\r\n").await;
    read(&mut c).await;
    assert_eq!(ask(&mut c, "RCPT TO:<crash@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "DATA\r\n").await, "421 4.3.0 Backend temporarily unavailable, try again later\r\n");
    assert!(closed(&mut c).await);
}

#[tokio::test]
async fn sequence_errors_and_bad_syntax() {
    let ((legacy_port, _), (new_port, _)) = (backend(true).await, backend(true).await);
    let (_n, mut c) = session("lmtp", (legacy_port, new_port), bob_on_new(), "").await;
    let script =
        "MAIL FROM:<a@b>\r\nEHLO x\r\nLHLO x\r\nRCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n\
                  DATA\r\nRCPT TO:<bad\r\nRCPT TO:<>\r\nAUTH PLAIN\r\nSTARTTLS\r\nVRFY x\r\nRSET\r\nQUIT\r\n";
    c.get_mut().write_all(script.as_bytes()).await.unwrap();
    for expected in [
        "503 5.5.1 Send LHLO first",
        "500 5.5.1 Use LHLO",
        "250-t",
        "250-PIPELINING",
        "250-8BITMIME",
        "250 ENHANCEDSTATUSCODES",
        "503 5.5.1 Need MAIL command",
        "503 5.5.1 Need MAIL command",
        "250 2.1.0 Ok",
        "503 5.5.1 Nested MAIL command",
        "554 5.5.1 No valid recipients",
        "501 5.5.4 Syntax error: unterminated address",
        "501 5.5.4 Syntax error: empty recipient",
        "502 5.5.2 Command not recognized",
        "502 5.5.1 STARTTLS not offered",
        "252 2.5.2 Cannot VRFY user; try RCPT",
        "250 2.0.0 Ok",
        "221 2.0.0 Bye",
    ] {
        assert_eq!(read(&mut c).await, format!("{expected}\r\n"));
    }
    assert!(closed(&mut c).await);
}
