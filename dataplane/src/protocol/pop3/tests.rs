//! POP3 session tests against a scripted backend on port 0 (the real-Dovecot interop lives
//! in the workspace `tests/`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::split_command;
use crate::codec::sasl::decode_plain;
use crate::config::ListenerConfig;
use crate::node::Node;
use crate::protocol::testing::{self, b64, read, rest, say, serve, Table};

mod forwarding;
mod tls;

/// A scripted POP3 backend: accepts `alice` with a password starting `secret` over
/// `AUTH PLAIN` (initial response or continuation), then echoes each line as `+OK ECHO`.
async fn backend() -> (u16, Arc<AtomicU32>) {
    testing::scripted_backend(scripted).await
}

async fn scripted(s: TcpStream, logins: Arc<AtomicU32>) {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"+OK scripted ready <1.2@backend>\r\n").await.unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let payload = match line.trim_end().strip_prefix("AUTH PLAIN ") {
        Some(inline) => inline.to_owned(),
        None => {
            assert_eq!(line, "AUTH PLAIN\r\n");
            w.write_all(b"+ \r\n").await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            line.trim_end().to_owned()
        }
    };
    let creds = decode_plain(payload.as_bytes()).unwrap();
    if creds.authcid.to_lowercase() != "alice" || !creds.password.starts_with("secret") {
        w.write_all(b"-ERR [AUTH] Authentication failed.\r\n").await.unwrap();
        return;
    }
    logins.fetch_add(1, Ordering::SeqCst);
    w.write_all(b"+OK Logged in.\r\n").await.unwrap();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        w.write_all(format!("+OK ECHO {line}").as_bytes()).await.unwrap();
    }
}

fn listener(allow_plaintext_auth: bool, extra: &str) -> ListenerConfig {
    testing::listener("pop3", "pop3", allow_plaintext_auth, extra)
}

/// A node with destinations `legacy` (default) and `new`, both at `port`, and a client
/// connected to a POP3 session served by it (greeting already read).
async fn session(
    port: u16,
    table: Option<HashMap<String, String>>,
    config: ListenerConfig,
) -> (Arc<Node>, BufReader<TcpStream>) {
    let node = node(port, table);
    let addr = serve(&node, config, None).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(read(&mut client).await, "+OK Switchyard ready\r\n");
    (node, client)
}

/// A node with destinations `legacy` (default) and `new`, both at `port`.
fn node(port: u16, table: Option<HashMap<String, String>>) -> Arc<Node> {
    testing::node("pop3", port, Arc::new(Table(table)))
}

/// A multi-line response through its terminating `.` line.
async fn multiline<S: AsyncRead + Unpin>(c: &mut BufReader<S>) -> String {
    let mut text = String::new();
    while !text.ends_with("\r\n.\r\n") {
        text.push_str(&read(c).await);
    }
    text
}

fn b64_text(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn user_pass_is_replayed_the_verdict_relayed_and_pipelined_bytes_bridged() {
    let (port, logins) = backend().await;
    let (_node, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, "CAPA\r\n").await;
    let capa = multiline(&mut c).await;
    let expected = "+OK Capability list follows\r\nCAPA\r\nUSER\r\nSASL PLAIN LOGIN OAUTHBEARER XOAUTH2\r\n\
                    RESP-CODES\r\nAUTH-RESP-CODE\r\nIMPLEMENTATION Switchyard\r\n.\r\n";
    assert_eq!(capa, expected);
    say(&mut c, "user Alice\r\n").await;
    assert_eq!(read(&mut c).await, "+OK Send the password\r\n");
    // STAT rides in the same packet as PASS: it must reach the backend, not get lost.
    say(&mut c, "PASS secret\r\nSTAT\r\n").await;
    assert_eq!(read(&mut c).await, "+OK Logged in.\r\n");
    assert_eq!(read(&mut c).await, "+OK ECHO STAT\r\n");
    say(&mut c, "LIST\r\n").await;
    assert_eq!(read(&mut c).await, "+OK ECHO LIST\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn auth_plain_and_login_with_and_without_initial_response() {
    let (port, logins) = backend().await;
    let scripts = [
        format!("AUTH PLAIN {}\r\n", b64("alice", "secret")),
        format!("AUTH plain\r\n{}\r\n", b64("alice", "secret")),
        format!("AUTH LOGIN {}\r\n{}\r\n", b64_text("alice"), b64_text("secret")),
        format!("AUTH LOGIN\r\n{}\r\n{}\r\n", b64_text("alice"), b64_text("secret")),
    ];
    let challenges =
        [vec![], vec!["+ \r\n"], vec!["+ UGFzc3dvcmQ6\r\n"], vec!["+ VXNlcm5hbWU6\r\n", "+ UGFzc3dvcmQ6\r\n"]];
    for (script, expected) in scripts.iter().zip(challenges) {
        let (_n, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
        say(&mut c, script).await;
        for challenge in expected {
            assert_eq!(read(&mut c).await, challenge, "{script}");
        }
        assert_eq!(read(&mut c).await, "+OK Logged in.\r\n", "{script}");
    }
    assert_eq!(logins.load(Ordering::SeqCst), 4);

    // A credential too long for RFC 2449's 255-octet line goes in the continuation.
    let (_n, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, &format!("AUTH PLAIN {}\r\n", b64("alice", &format!("secret{}", "x".repeat(300))))).await;
    assert_eq!(read(&mut c).await, "+OK Logged in.\r\n");

    let (_n, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, "AUTH PLAIN\r\n").await;
    read(&mut c).await;
    say(&mut c, "*\r\nAUTH PLAIN !!!notbase64\r\nAUTH CRAM-MD5\r\nAUTH\r\n").await;
    assert_eq!(read(&mut c).await, "-ERR Authentication cancelled\r\n");
    assert_eq!(read(&mut c).await, "-ERR Invalid SASL response: invalid base64\r\n");
    assert_eq!(read(&mut c).await, "-ERR Unsupported authentication mechanism\r\n");
    assert_eq!(multiline(&mut c).await, "+OK\r\nPLAIN\r\nLOGIN\r\nOAUTHBEARER\r\nXOAUTH2\r\n.\r\n");
}

#[tokio::test]
async fn a_wrong_password_is_relayed_counted_and_does_not_trip_the_breaker() {
    let (port, _) = backend().await;
    let (node, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, "USER alice\r\nPASS wrong\r\n").await;
    assert_eq!(read(&mut c).await, "+OK Send the password\r\n");
    assert_eq!(read(&mut c).await, "-ERR [AUTH] Authentication failed.\r\n");
    // RFC 1939: the failed PASS consumed the USER.
    say(&mut c, "PASS secret\r\n").await;
    assert_eq!(read(&mut c).await, "-ERR Send USER first\r\n");
    say(&mut c, &format!("AUTH PLAIN {}\r\n", b64("alice", "wrong"))).await;
    assert_eq!(read(&mut c).await, "-ERR [AUTH] Authentication failed.\r\n");
    assert_eq!(rest(&mut c).await, "", "max_auth_attempts = 2 closes the session");
    assert!(node.breakers.health().iter().all(|(_, h)| h.consecutive_failures == 0 && !h.down));
}

#[tokio::test]
async fn an_unreachable_backend_is_a_temporary_failure_and_opens_the_breaker() {
    let port = testing::closed_port().await;
    let (node, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, "USER alice\r\nPASS secret\r\n").await;
    read(&mut c).await;
    assert_eq!(read(&mut c).await, "-ERR [SYS/TEMP] Backend temporarily unavailable, try again later\r\n");
    let health = node.breakers.health();
    assert_eq!(health[0].0, "legacy");
    assert!(health[0].1.down, "threshold 2 with one retry: one login opens it");
}

#[tokio::test]
async fn an_uncached_account_gets_a_temporary_failure_when_the_control_plane_is_down() {
    let (port, logins) = backend().await;
    let (_n, mut c) = session(port, None, listener(true, "")).await;
    say(&mut c, &format!("AUTH PLAIN {}\r\n", b64("alice", "secret"))).await;
    assert!(read(&mut c).await.starts_with("-ERR [SYS/TEMP]"));
    assert_eq!(logins.load(Ordering::SeqCst), 0, "never the default backend");
}

#[tokio::test]
async fn cleartext_credentials_are_refused_unless_the_listener_allows_them() {
    let (port, logins) = backend().await;
    let (_n, mut c) = session(port, Some(HashMap::new()), listener(false, "")).await;
    say(&mut c, "CAPA\r\n").await;
    let capa = multiline(&mut c).await;
    assert!(!capa.contains("USER") && !capa.contains("SASL") && !capa.contains("STLS"), "{capa}");
    say(&mut c, &format!("USER alice\r\nPASS secret\r\nAUTH PLAIN {}\r\nAUTH\r\n", b64("alice", "secret"))).await;
    let refused = "-ERR Plaintext authentication disallowed on non-secure connection\r\n";
    assert_eq!(read(&mut c).await, refused);
    assert_eq!(read(&mut c).await, "-ERR Send USER first\r\n");
    assert_eq!(read(&mut c).await, refused);
    assert_eq!(read(&mut c).await, "+OK\r\n");
    assert_eq!(read(&mut c).await, ".\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn pre_auth_garbage_is_answered_and_bounded() {
    let (port, _) = backend().await;
    let (_n, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
    let long = "x".repeat(9000);
    say(&mut c, &format!("NOOP\r\n\r\nSTAT\r\nUSER\r\n{long}\r\nQUIT\r\n")).await;
    for _ in 0..4 {
        assert!(read(&mut c).await.starts_with("-ERR "));
    }
    assert_eq!(read(&mut c).await, "-ERR line exceeds 8192 bytes\r\n");
    assert_eq!(read(&mut c).await, "+OK Switchyard signing off\r\n");
    assert_eq!(rest(&mut c).await, "");

    let (_n, mut c) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, &"\u{1}\u{2}garbage\r\n".repeat(20)).await;
    let all = rest(&mut c).await;
    assert_eq!(all.lines().count(), 10, "{all}");
    assert!(all.ends_with("-ERR Too many invalid commands\r\n"), "{all}");
}

#[tokio::test]
async fn an_idle_client_is_dropped_at_the_pre_auth_deadline() {
    let (port, _) = backend().await;
    let (_n, mut c) = session(port, Some(HashMap::new()), listener(true, "preauth_timeout = \"200ms\"")).await;
    say(&mut c, "USER alice\r\n").await;
    read(&mut c).await;
    assert_eq!(rest(&mut c).await, "-ERR Pre-authentication timeout\r\n");
}

#[test]
fn command_lines_split_into_keyword_and_exact_argument() {
    assert_eq!(split_command(b"pass my secret "), ("PASS".into(), Some(&b"my secret "[..])));
    assert_eq!(split_command(b"QUIT"), ("QUIT".into(), None));
    assert_eq!(split_command(b"USER "), ("USER".into(), Some(&b""[..])));
    assert_eq!(split_command(b""), (String::new(), None));
}

#[tokio::test]
async fn an_over_long_sasl_response_is_answered_and_the_session_goes_on() {
    let (port, logins) = backend().await;
    let mut config = listener(true, "");
    config.max_line_length = 1024;
    let (_node, mut c) = session(port, Some(HashMap::new()), config).await;
    say(&mut c, "AUTH PLAIN\r\n").await;
    assert_eq!(read(&mut c).await, "+ \r\n");
    say(&mut c, &format!("{}\r\n", "A".repeat(5000))).await;
    assert_eq!(read(&mut c).await, "-ERR Invalid SASL response: line exceeds 1024 bytes\r\n");
    say(&mut c, &format!("AUTH PLAIN {}\r\n", b64("alice", "secret"))).await;
    assert_eq!(read(&mut c).await, "+OK Logged in.\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}
