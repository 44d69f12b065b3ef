//! Submission TLS on the client leg: STARTTLS (RFC 3207) resetting the session and
//! unlocking AUTH, nothing pipelined in plaintext behind it surviving the upgrade, and
//! implicit TLS (port 465) as the node's listener accepts it.

use super::*;
use crate::tls::testing::TestTls;

const EHLO_BEFORE_TLS: &str = "250-t\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n";
const EHLO_OVER_TLS: &str = "250-t\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n\
                             250 AUTH PLAIN LOGIN OAUTHBEARER XOAUTH2\r\n";

async fn connect(addr: std::net::SocketAddr) -> BufReader<TcpStream> {
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(read(&mut client).await, "220 t ESMTP Switchyard\r\n");
    client
}

#[tokio::test]
async fn starttls_resets_the_session_and_unlocks_auth() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    let config = listener(TlsMode::Starttls, false);
    let mut c = connect(serve(&node(port, true), config, Some(tls.acceptor.clone())).await).await;
    assert_eq!(ask(&mut c, "EHLO c\r\n").await, EHLO_BEFORE_TLS);
    let auth = format!("AUTH PLAIN {}\r\n", plain("alice@example.test", "secret"));
    assert!(ask(&mut c, &auth).await.starts_with("538 5.7.11"));

    assert_eq!(ask(&mut c, "STARTTLS\r\n").await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = tls.upgrade(c).await;
    // RFC 3207 §4.2: the EHLO before TLS is forgotten.
    assert_eq!(ask(&mut c, &auth).await, "503 5.5.1 Send EHLO first\r\n");
    assert_eq!(ask(&mut c, "EHLO c\r\n").await, EHLO_OVER_TLS);
    assert_eq!(ask(&mut c, "STARTTLS\r\n").await, "503 5.5.1 TLS already active\r\n");
    assert_eq!(ask(&mut c, &auth).await, "235 2.7.0 Authentication successful\r\n");
    let mail = "MAIL FROM:<alice@example.test>\r\n";
    assert_eq!(ask(&mut c, mail).await, format!("250 ECHO {mail}"));
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn plaintext_pipelined_behind_starttls_is_discarded() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    // Cleartext AUTH allowed: an injected AUTH would log in if it survived.
    let config = listener(TlsMode::Starttls, true);
    let mut c = connect(serve(&node(port, true), config, Some(tls.acceptor.clone())).await).await;
    ask(&mut c, "EHLO c\r\n").await;
    let injected = format!("STARTTLS\r\nAUTH PLAIN {}\r\nNOOP\r\n", plain("alice@example.test", "secret"));
    assert_eq!(ask(&mut c, &injected).await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = tls.upgrade(c).await;
    assert_eq!(ask(&mut c, "QUIT\r\n").await, "221 2.0.0 Bye\r\n");
    assert!(closed(&mut c).await, "nothing but the reply to QUIT");
    assert_eq!(logins.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn implicit_tls_offers_auth_and_no_starttls() {
    let (port, logins) = backend().await;
    let tls = TestTls::new();
    // Credentials are fine on 465 whatever allow_plaintext_auth says: the leg is TLS.
    let config = listener(TlsMode::Implicit, false);
    let addr = serve(&node(port, true), config, Some(tls.acceptor.clone())).await;
    let mut c = BufReader::new(tls.connect(TcpStream::connect(addr).await.unwrap()).await);
    assert_eq!(read(&mut c).await, "220 t ESMTP Switchyard\r\n");
    assert_eq!(ask(&mut c, "EHLO c\r\n").await, EHLO_OVER_TLS);
    assert_eq!(ask(&mut c, "STARTTLS\r\n").await, "503 5.5.1 TLS already active\r\n");
    let auth = format!("AUTH PLAIN {}\r\n", plain("alice@example.test", "secret"));
    assert_eq!(ask(&mut c, &auth).await, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);

    // A client speaking plain SMTP to the TLS port never reaches the session.
    let mut plain_client = TcpStream::connect(addr).await.unwrap();
    plain_client.write_all(b"EHLO c\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain_client.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer.first(), Some(&21), "a TLS alert, not a greeting: {answer:?}");
}

#[tokio::test]
async fn starttls_is_refused_where_not_offered() {
    let (port, _) = backend().await;
    // A STARTTLS listener on a node without certificates offers nothing.
    let mut c = connect(serve(&node(port, true), listener(TlsMode::Starttls, true), None).await).await;
    assert!(!ask(&mut c, "EHLO c\r\n").await.contains("STARTTLS"));
    assert_eq!(ask(&mut c, "STARTTLS\r\n").await, "502 5.5.1 STARTTLS not offered\r\n");
}
