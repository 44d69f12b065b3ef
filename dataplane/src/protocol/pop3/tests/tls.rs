//! POP3 STLS (RFC 2595) on the client leg: CAPA before and after, credentials only once
//! TLS is up, and nothing pipelined in plaintext behind STLS surviving the upgrade.

use super::*;
use crate::config::TlsMode;
use crate::tls::testing::TestTls;

/// A STLS listener refusing cleartext credentials, with the node's certificate.
async fn stls_session(tls: &TestTls, port: u16, allow_plaintext: bool) -> BufReader<TcpStream> {
    let mut config = listener(allow_plaintext, "");
    config.tls = TlsMode::Starttls;
    let addr = serve(&node(port, Some(HashMap::new())), config, Some(tls.acceptor.clone())).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(read(&mut client).await, "+OK Switchyard ready\r\n");
    client
}

#[tokio::test]
async fn stls_upgrades_and_credentials_are_accepted_only_over_tls() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    let mut c = stls_session(&tls, port, false).await;
    say(&mut c, "CAPA\r\n").await;
    let capa = multiline(&mut c).await;
    assert!(capa.contains("\r\nSTLS\r\n") && !capa.contains("USER") && !capa.contains("SASL"), "{capa}");
    say(&mut c, "USER alice\r\n").await;
    assert_eq!(read(&mut c).await, "-ERR Plaintext authentication disallowed on non-secure connection\r\n");

    say(&mut c, "STLS\r\n").await;
    assert_eq!(read(&mut c).await, "+OK Begin TLS negotiation\r\n");
    let mut c = tls.upgrade(c).await;
    say(&mut c, "CAPA\r\n").await;
    let capa = multiline(&mut c).await;
    assert!(capa.contains("\r\nUSER\r\nSASL PLAIN LOGIN OAUTHBEARER XOAUTH2\r\n"), "{capa}");
    assert!(!capa.contains("STLS"), "{capa}");
    say(&mut c, "STLS\r\n").await;
    assert_eq!(read(&mut c).await, "-ERR Command not permitted when TLS active\r\n");
    say(&mut c, "USER alice\r\nPASS secret\r\nSTAT\r\n").await;
    assert_eq!(read(&mut c).await, "+OK Send the password\r\n");
    assert_eq!(read(&mut c).await, "+OK Logged in.\r\n");
    // Bridged: the TLS client leg now carries the backend session.
    assert_eq!(read(&mut c).await, "+OK ECHO STAT\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn plaintext_pipelined_behind_stls_is_discarded() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    // Cleartext logins allowed: an injected USER/PASS would log in if it survived.
    let mut c = stls_session(&tls, port, true).await;
    say(&mut c, "STLS\r\nUSER alice\r\nPASS secret\r\nNOOP\r\n").await;
    assert_eq!(read(&mut c).await, "+OK Begin TLS negotiation\r\n");
    let mut c = tls.upgrade(c).await;
    say(&mut c, "QUIT\r\n").await;
    assert_eq!(rest(&mut c).await, "+OK Switchyard signing off\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn stls_is_refused_where_not_offered_and_a_failed_handshake_ends_the_session() {
    let (port, _) = backend().await;
    // A STLS listener on a node without certificates offers nothing.
    let mut config = listener(true, "");
    config.tls = TlsMode::Starttls;
    let addr = serve(&node(port, Some(HashMap::new())), config, None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    read(&mut c).await;
    say(&mut c, "CAPA\r\n").await;
    assert!(!multiline(&mut c).await.contains("STLS"));
    say(&mut c, "STLS\r\n").await;
    assert_eq!(read(&mut c).await, "-ERR STLS not offered on this connection\r\n");

    let (_n, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, "STLS\r\n").await;
    assert_eq!(read(&mut c).await, "-ERR STLS not offered on this connection\r\n");

    let tls = TestTls::new();
    let mut c = stls_session(&tls, port, true).await;
    say(&mut c, "STLS\r\n").await;
    read(&mut c).await;
    say(&mut c, "USER alice\r\n").await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await.unwrap().unwrap();
    // Not a ClientHello: a TLS alert record (content type 21), then the node hangs up.
    assert_eq!(answer.first(), Some(&21), "{answer:?}");
}
