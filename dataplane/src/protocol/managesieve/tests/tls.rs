//! ManageSieve STARTTLS (RFC 5804 §2.2) on the client leg: capabilities re-sent after the
//! handshake, credentials only once TLS is up, and nothing pipelined in plaintext behind
//! STARTTLS surviving the upgrade.

use super::*;
use crate::config::TlsMode;
use crate::tls::testing::TestTls;

/// A STARTTLS listener with the node's certificate; returns the client and its greeting.
async fn starttls_session(tls: Option<&TestTls>, port: u16, allow_plaintext: bool) -> (BufReader<TcpStream>, String) {
    let mut config = listener(allow_plaintext, "");
    config.tls = TlsMode::Starttls;
    let acceptor = tls.map(|t| t.acceptor.clone());
    let addr = serve(&node(port, Some(HashMap::new())), config, acceptor).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let greeting = until_status(&mut client).await;
    (client, greeting)
}

#[tokio::test]
async fn starttls_re_sends_capabilities_and_authentication_works_only_over_tls() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    let (mut c, greeting) = starttls_session(Some(&tls), port, false).await;
    assert!(greeting.contains("\"SASL\" \"\"\r\n\"STARTTLS\"\r\n"), "{greeting}");
    let authenticate = format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", b64("alice", "secret"));
    say(&mut c, &authenticate).await;
    assert!(read(&mut c).await.starts_with("NO (ENCRYPT-NEEDED)"));

    say(&mut c, "STARTTLS\r\n").await;
    assert_eq!(read(&mut c).await, "OK \"Begin TLS negotiation now\"\r\n");
    let mut c = tls.upgrade(c).await;
    // RFC 5804 §2.2: the capabilities again, unasked, now with mechanisms and no STARTTLS.
    assert_eq!(until_status(&mut c).await, format!("{CAPABILITIES}OK \"TLS negotiation successful\"\r\n"));
    say(&mut c, "STARTTLS\r\n").await;
    assert_eq!(read(&mut c).await, "NO \"TLS is already active\"\r\n");
    say(&mut c, &format!("{authenticate}LISTSCRIPTS\r\n")).await;
    assert_eq!(read(&mut c).await, "OK \"Logged in.\"\r\n");
    assert_eq!(read(&mut c).await, "OK \"ECHO LISTSCRIPTS\"\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn plaintext_pipelined_behind_starttls_is_discarded() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    // Cleartext authentication allowed: an injected AUTHENTICATE would log in if it survived.
    let (mut c, _) = starttls_session(Some(&tls), port, true).await;
    let injected = format!("STARTTLS\r\nAUTHENTICATE \"PLAIN\" \"{}\"\r\nNOOP\r\n", b64("alice", "secret"));
    say(&mut c, &injected).await;
    assert_eq!(read(&mut c).await, "OK \"Begin TLS negotiation now\"\r\n");
    let mut c = tls.upgrade(c).await;
    assert_eq!(until_status(&mut c).await, format!("{CAPABILITIES}OK \"TLS negotiation successful\"\r\n"));
    say(&mut c, "LOGOUT\r\n").await;
    assert_eq!(rest(&mut c).await, "OK \"Logout complete\"\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn starttls_is_refused_where_not_offered() {
    let (port, _) = backend().await;
    // A STARTTLS listener on a node without certificates offers nothing.
    let (mut c, greeting) = starttls_session(None, port, true).await;
    assert!(!greeting.contains("STARTTLS"), "{greeting}");
    say(&mut c, "STARTTLS\r\n").await;
    assert_eq!(read(&mut c).await, "NO \"STARTTLS not offered on this connection\"\r\n");

    let (_n, mut c, greeting) = session(port, Some(HashMap::new()), listener(true, "")).await;
    assert!(!greeting.contains("STARTTLS"), "{greeting}");
    say(&mut c, "STARTTLS\r\n").await;
    assert_eq!(read(&mut c).await, "NO \"STARTTLS not offered on this connection\"\r\n");
}
