//! STARTTLS on SMTP (port 25) and LMTP listeners: confidentiality only (no credentials
//! there), the session reset after the handshake, and nothing pipelined in plaintext
//! behind STARTTLS surviving the upgrade.

use super::*;
use crate::config::TlsMode;
use crate::tls::testing::TestTls;

/// A STARTTLS listener for `protocol` with legacy/new backends at `ports`; the greeting is read.
async fn starttls_session(
    tls: Option<&TestTls>,
    protocol: &str,
    ports: (u16, u16),
) -> (Arc<Node>, BufReader<TcpStream>) {
    let node = node(protocol, ports, bob_on_new());
    let mut config = listener(protocol, "");
    config.tls = TlsMode::Starttls;
    let addr = serve(&node, config, tls.map(|t| t.acceptor.clone())).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(read(&mut client).await.starts_with("220 t "));
    (node, client)
}

#[tokio::test]
async fn lmtp_starttls_resets_the_session_and_delivers_over_tls() {
    let ((legacy_port, legacy), (new_port, _)) = (backend(true).await, backend(true).await);
    let tls = TestTls::new();
    let (_n, mut c) = starttls_session(Some(&tls), "lmtp", (legacy_port, new_port)).await;
    let lhlo = ask(&mut c, "LHLO mx\r\n").await;
    assert!(lhlo.ends_with("250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"), "{lhlo}");
    // A transaction begun in clear does not survive the upgrade.
    ask(&mut c, "MAIL FROM:<s@example.org>\r\n").await;
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "STARTTLS\r\n").await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = tls.upgrade(c).await;
    assert_eq!(ask(&mut c, "DATA\r\n").await, "503 5.5.1 Need MAIL command\r\n");
    assert_eq!(ask(&mut c, "MAIL FROM:<s@example.org>\r\n").await, "503 5.5.1 Send LHLO first\r\n");
    assert_eq!(
        ask(&mut c, "LHLO mx\r\n").await,
        "250-t\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
    );
    assert_eq!(ask(&mut c, "STARTTLS\r\n").await, "503 5.5.1 TLS already active\r\n");
    ask(&mut c, "MAIL FROM:<s@example.org>\r\n").await;
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "DATA\r\n").await, "354 go ahead\r\n");
    assert_eq!(ask(&mut c, "Subject: sealed\r\n\r\nbody\r\n.\r\n").await, "250 2.0.0 <alice@example.test> Saved\r\n");
    assert_eq!(ask(&mut c, "QUIT\r\n").await, "221 2.0.0 Bye\r\n");
    assert!(closed(&mut c).await);
    let body = "Subject: sealed\r\n\r\nbody\r\n".to_string();
    assert_eq!(legacy.messages(), [(vec!["<alice@example.test>".into()], body)]);
}

#[tokio::test]
async fn smtp_plaintext_pipelined_behind_starttls_is_discarded() {
    let ((legacy_port, legacy), (new_port, new)) = (backend(false).await, backend(false).await);
    let tls = TestTls::new();
    let (_n, mut c) = starttls_session(Some(&tls), "smtp", (legacy_port, new_port)).await;
    assert!(ask(&mut c, "EHLO mx\r\n").await.contains("250 STARTTLS\r\n"));
    let injected = "STARTTLS\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\nNOOP\r\n";
    assert_eq!(ask(&mut c, injected).await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = tls.upgrade(c).await;
    assert_eq!(ask(&mut c, "QUIT\r\n").await, "221 2.0.0 Bye\r\n");
    assert!(closed(&mut c).await, "nothing but the reply to QUIT");
    let connections = legacy.connections.load(Ordering::SeqCst) + new.connections.load(Ordering::SeqCst);
    assert_eq!(connections, 0, "the injected RCPT never reached a backend");
}

#[tokio::test]
async fn starttls_is_refused_where_not_offered() {
    let ((legacy_port, _), (new_port, _)) = (backend(true).await, backend(true).await);
    // A STARTTLS listener on a node without certificates offers nothing.
    let (_n, mut c) = starttls_session(None, "lmtp", (legacy_port, new_port)).await;
    assert!(!ask(&mut c, "LHLO mx\r\n").await.contains("STARTTLS"));
    assert_eq!(ask(&mut c, "STARTTLS\r\n").await, "502 5.5.1 STARTTLS not offered\r\n");
}
