//! IMAP session tests against a scripted backend on port 0 (the real-Dovecot interop
//! lives in the workspace `tests/`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::{ListenerConfig, TlsMode};
use crate::node::Node;
use crate::protocol::testing::{self, b64, read, say, serve, Table};
use crate::tls::testing::TestTls;

mod bounds;
mod forwarding;

/// A scripted IMAP backend offering SASL-IR: see [`backend_offering`].
async fn backend() -> (u16, Arc<std::sync::atomic::AtomicU32>) {
    backend_offering(true).await
}

/// A scripted IMAP backend: accepts `alice`/`secret` over AUTHENTICATE PLAIN, then echoes
/// each line back as `* ECHO <line>`. With `sasl_ir` its greeting offers SASL-IR and it
/// insists on the initial response inline; without, on the continuation.
async fn backend_offering(sasl_ir: bool) -> (u16, Arc<std::sync::atomic::AtomicU32>) {
    testing::scripted_backend(move |s, seen| scripted(s, seen, sasl_ir)).await
}

async fn scripted(s: TcpStream, seen: Arc<std::sync::atomic::AtomicU32>, sasl_ir: bool) {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let greeting: &[u8] = match sasl_ir {
        true => b"* OK [CAPABILITY IMAP4rev1 SASL-IR] scripted\r\n",
        false => b"* OK [CAPABILITY IMAP4rev1] scripted\r\n",
    };
    w.write_all(greeting).await.unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let payload = match line.strip_prefix("S1 AUTHENTICATE PLAIN ") {
        Some(payload) if sasl_ir => payload.to_owned(),
        _ => {
            assert_eq!(line, "S1 AUTHENTICATE PLAIN\r\n", "no initial response without SASL-IR");
            w.write_all(b"+ \r\n").await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            line.clone()
        }
    };
    let creds = crate::codec::sasl::decode_plain(payload.trim_end().as_bytes()).unwrap();
    if creds.authcid.to_lowercase().starts_with("alice") && creds.password == "secret" {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        w.write_all(b"* CAPABILITY IMAP4rev1 IDLE\r\nS1 OK Logged in\r\n").await.unwrap();
    } else {
        w.write_all(b"S1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n").await.unwrap();
        return;
    }
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        w.write_all(format!("* ECHO {line}").as_bytes()).await.unwrap();
    }
}

fn listener_config(allow_plaintext_auth: bool) -> ListenerConfig {
    testing::listener("imap", "imap", allow_plaintext_auth, "")
}

/// A node with destinations `legacy` (default) and `new`, both at `port`, and a client
/// connected to an IMAP session served by it.
async fn session(
    port: u16,
    table: Option<HashMap<String, String>>,
    allow_plaintext: bool,
) -> (Arc<Node>, BufReader<TcpStream>) {
    let node = node(port, table);
    let addr = serve(&node, listener_config(allow_plaintext), None).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let greeting = read(&mut client).await;
    assert!(greeting.starts_with("* OK [CAPABILITY IMAP4rev1"), "{greeting}");
    (node, client)
}

fn node(port: u16, table: Option<HashMap<String, String>>) -> Arc<Node> {
    testing::node("imap", port, Arc::new(Table(table)))
}

#[tokio::test]
async fn login_is_replayed_relayed_under_the_clients_tag_and_bridged() {
    let (port, logins) = backend().await;
    let (_node, mut c) = session(port, Some(HashMap::new()), true).await;
    say(&mut c, "a1 CAPABILITY\r\n").await;
    assert!(read(&mut c).await.contains("AUTH=PLAIN"));
    assert_eq!(read(&mut c).await, "a1 OK CAPABILITY completed\r\n");
    say(&mut c, "a2 LOGIN \"Alice\" {6+}\r\nsecret\r\na3 NOOP\r\n").await;
    assert_eq!(read(&mut c).await, "* CAPABILITY IMAP4rev1 IDLE\r\n");
    assert_eq!(read(&mut c).await, "a2 OK Logged in\r\n");
    // a3 was pipelined behind the login: it must reach the backend, not get lost.
    assert_eq!(read(&mut c).await, "* ECHO a3 NOOP\r\n");
    say(&mut c, "a4 SELECT INBOX\r\n").await;
    assert_eq!(read(&mut c).await, "* ECHO a4 SELECT INBOX\r\n");
    assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn authenticate_plain_with_initial_response_and_with_continuation() {
    let (port, _) = backend().await;
    let (_n, mut c) = session(port, Some(HashMap::new()), true).await;
    say(&mut c, &format!("x AUTHENTICATE PLAIN {}\r\n", b64("alice", "secret"))).await;
    read(&mut c).await;
    assert_eq!(read(&mut c).await, "x OK Logged in\r\n");

    let (_n, mut c) = session(port, Some(HashMap::new()), true).await;
    say(&mut c, "y authenticate plain\r\n").await;
    assert_eq!(read(&mut c).await, "+ \r\n");
    say(&mut c, &format!("{}\r\n", b64("alice%master", "secret"))).await;
    read(&mut c).await;
    assert_eq!(read(&mut c).await, "y OK Logged in\r\n");

    let (_n, mut c) = session(port, Some(HashMap::new()), true).await;
    say(&mut c, "z AUTHENTICATE PLAIN\r\n").await;
    read(&mut c).await;
    say(&mut c, "*\r\n").await;
    assert_eq!(read(&mut c).await, "z BAD Authentication cancelled\r\n");
    say(&mut c, "z2 AUTHENTICATE PLAIN !!!notbase64\r\n").await;
    assert!(read(&mut c).await.starts_with("z2 BAD Invalid SASL response"));
}

#[tokio::test]
async fn the_credential_rides_on_the_command_line_only_when_the_backend_offers_sasl_ir() {
    for sasl_ir in [true, false] {
        let (port, logins) = backend_offering(sasl_ir).await;
        let (_n, mut c) = session(port, Some(HashMap::new()), true).await;
        say(&mut c, "a1 LOGIN alice secret\r\n").await;
        assert_eq!(read(&mut c).await, "* CAPABILITY IMAP4rev1 IDLE\r\n", "SASL-IR offered: {sasl_ir}");
        assert_eq!(read(&mut c).await, "a1 OK Logged in\r\n");
        say(&mut c, "a2 NOOP\r\n").await;
        assert_eq!(read(&mut c).await, "* ECHO a2 NOOP\r\n");
        assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_wrong_password_is_the_backends_verdict_and_does_not_trip_the_breaker() {
    let (port, _) = backend().await;
    let (node, mut c) = session(port, Some(HashMap::new()), true).await;
    say(&mut c, "a LOGIN alice wrong\r\n").await;
    assert_eq!(read(&mut c).await, "a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
    say(&mut c, "b LOGIN alice wrong\r\n").await;
    assert!(read(&mut c).await.starts_with("b NO [AUTHENTICATIONFAILED]"));
    assert_eq!(read(&mut c).await, "* BYE Too many authentication failures\r\n");
    assert!(node.breakers.health().iter().all(|(_, h)| h.consecutive_failures == 0 && !h.down));
}

#[tokio::test]
async fn an_unreachable_backend_is_unavailable_and_opens_the_breaker() {
    let port = testing::closed_port().await;
    let (node, mut c) = session(port, Some(HashMap::new()), true).await;
    say(&mut c, "a LOGIN alice secret\r\n").await;
    assert!(read(&mut c).await.starts_with("a NO [UNAVAILABLE]"));
    let health = node.breakers.health();
    assert_eq!(health[0].0, "legacy");
    assert!(health[0].1.down, "threshold 2 with one retry: one login opens it");
}

#[tokio::test]
async fn an_uncached_account_gets_unavailable_when_the_control_plane_is_down() {
    let (port, logins) = backend().await;
    let (_n, mut c) = session(port, None, true).await;
    say(&mut c, "a LOGIN alice secret\r\n").await;
    assert!(read(&mut c).await.starts_with("a NO [UNAVAILABLE]"));
    assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 0, "never the default backend");
}

#[tokio::test]
async fn a_mapping_to_an_undeclared_destination_is_unavailable_never_the_default() {
    let (port, logins) = backend().await;
    let table = HashMap::from([("alice".to_string(), "ghost".to_string())]);
    let (_n, mut c) = session(port, Some(table), true).await;
    say(&mut c, "a LOGIN alice secret\r\n").await;
    assert_eq!(read(&mut c).await, "a NO [UNAVAILABLE] Backend temporarily unavailable, try again later\r\n");
    assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 0, "the default backend was never asked");
}

#[tokio::test]
async fn cleartext_login_is_refused_unless_the_listener_allows_it() {
    let (port, _) = backend().await;
    let (_n, mut c) = session(port, Some(HashMap::new()), false).await;
    say(&mut c, "a CAPABILITY\r\n").await;
    let caps = read(&mut c).await;
    assert!(caps.contains("LOGINDISABLED") && !caps.contains("AUTH=PLAIN"), "{caps}");
    read(&mut c).await;
    say(&mut c, "b LOGIN alice secret\r\n").await;
    assert!(read(&mut c).await.starts_with("b NO [PRIVACYREQUIRED]"));
}

#[tokio::test]
async fn pre_auth_commands_and_malformed_input() {
    let (port, _) = backend().await;
    let (_n, mut c) = session(port, Some(HashMap::new()), true).await;
    say(&mut c, "a NOOP\r\nb ID (\"name\" \"test\")\r\nc SELECT INBOX\r\n\"bad\r\nd LOGIN onlyuser\r\n").await;
    assert_eq!(read(&mut c).await, "a OK NOOP completed\r\n");
    assert!(read(&mut c).await.starts_with("* ID ("));
    assert_eq!(read(&mut c).await, "b OK ID completed\r\n");
    assert!(read(&mut c).await.starts_with("c BAD"));
    assert!(read(&mut c).await.starts_with("* BAD"));
    assert!(read(&mut c).await.starts_with("d BAD"));
    say(&mut c, "e LOGOUT\r\n").await;
    assert!(read(&mut c).await.starts_with("* BYE"));
    assert_eq!(read(&mut c).await, "e OK LOGOUT completed\r\n");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// A STARTTLS listener with the node's certificate; the greeting is read.
async fn starttls_session(tls: &TestTls, port: u16, allow_plaintext: bool) -> BufReader<TcpStream> {
    let mut config = listener_config(allow_plaintext);
    config.tls = TlsMode::Starttls;
    let addr = serve(&node(port, Some(HashMap::new())), config, Some(tls.acceptor.clone())).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let greeting = read(&mut client).await;
    assert!(greeting.contains(" STARTTLS "), "{greeting}");
    client
}

#[tokio::test]
async fn starttls_upgrades_and_login_works_only_over_tls() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    let mut c = starttls_session(&tls, port, false).await;
    say(&mut c, "a LOGIN alice secret\r\n").await;
    assert!(read(&mut c).await.starts_with("a NO [PRIVACYREQUIRED]"));
    say(&mut c, "b STARTTLS\r\n").await;
    assert_eq!(read(&mut c).await, "b OK Begin TLS negotiation now\r\n");
    let mut c = tls.upgrade(c).await;
    say(&mut c, "c CAPABILITY\r\n").await;
    let caps = read(&mut c).await;
    assert!(caps.contains("AUTH=PLAIN") && !caps.contains("STARTTLS") && !caps.contains("LOGINDISABLED"), "{caps}");
    assert_eq!(read(&mut c).await, "c OK CAPABILITY completed\r\n");
    say(&mut c, "d STARTTLS\r\n").await;
    assert!(read(&mut c).await.starts_with("d BAD"), "TLS is already up");
    say(&mut c, "e LOGIN alice secret\r\nf SELECT INBOX\r\n").await;
    assert_eq!(read(&mut c).await, "* CAPABILITY IMAP4rev1 IDLE\r\n");
    assert_eq!(read(&mut c).await, "e OK Logged in\r\n");
    assert_eq!(read(&mut c).await, "* ECHO f SELECT INBOX\r\n");
    assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn plaintext_pipelined_behind_starttls_is_discarded() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    // Cleartext login allowed: an injected LOGIN would log in if it survived.
    let mut c = starttls_session(&tls, port, true).await;
    say(&mut c, "a STARTTLS\r\nb LOGIN alice secret\r\nc NOOP\r\n").await;
    assert_eq!(read(&mut c).await, "a OK Begin TLS negotiation now\r\n");
    let mut c = tls.upgrade(c).await;
    say(&mut c, "z LOGOUT\r\n").await;
    // Had b or c run, their answers would come first.
    assert_eq!(read(&mut c).await, "* BYE Logging out\r\n");
    assert_eq!(read(&mut c).await, "z OK LOGOUT completed\r\n");
    assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn implicit_tls_greets_over_tls_and_allows_login() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    let mut config = listener_config(false);
    config.tls = TlsMode::Implicit;
    let addr = serve(&node(port, Some(HashMap::new())), config, Some(tls.acceptor.clone())).await;
    let mut c = BufReader::new(tls.connect(TcpStream::connect(addr).await.unwrap()).await);
    let greeting = read(&mut c).await;
    assert!(greeting.starts_with("* OK [CAPABILITY IMAP4rev1"), "{greeting}");
    assert!(greeting.contains("AUTH=PLAIN") && !greeting.contains("STARTTLS"), "{greeting}");
    say(&mut c, "a LOGIN alice secret\r\n").await;
    read(&mut c).await;
    assert_eq!(read(&mut c).await, "a OK Logged in\r\n");
    assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 1);
}
