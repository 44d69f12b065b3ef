//! Submission session tests against a scripted SMTP backend on port 0 (the real-Postfix
//! interop lives in the workspace `tests/`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::future::{BoxFuture, FutureExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::codec::sasl::decode_plain;
use crate::config::{ListenerConfig, TlsMode};
use crate::node::Node;
use crate::protocol::testing::{self, b64 as plain, closed, read, serve, Table};
use crate::route::{Resolved, Resolver, RouteError};

mod forwarding;
mod tls;

/// A scripted submission server: EHLO, then `alice`/`secret` over AUTH PLAIN (or an
/// XOAUTH2 token `good`), then each line echoed as `250 ECHO <line>`. Counts its logins.
async fn backend() -> (u16, Arc<AtomicU32>) {
    testing::scripted_backend(converse).await
}

async fn next(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    line.trim_end().to_string()
}

async fn converse(s: TcpStream, logins: Arc<AtomicU32>) {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 scripted ESMTP\r\n").await.unwrap();
    assert_eq!(next(&mut r).await, "EHLO t");
    w.write_all(b"250-scripted\r\n250-AUTH PLAIN LOGIN XOAUTH2\r\n250 XCLIENT ADDR\r\n").await.unwrap();
    let auth = next(&mut r).await;
    assert!(auth.len() + 2 <= 512, "RFC 4954 moves a long initial response to the 334 step");
    let mut words = auth.split(' ').skip(1);
    let mechanism = words.next().unwrap().to_string();
    let payload = match words.next() {
        Some(p) => p.to_string(),
        None => {
            w.write_all(b"334 \r\n").await.unwrap();
            next(&mut r).await
        }
    };
    let ok = match mechanism.as_str() {
        "PLAIN" => {
            let creds = decode_plain(payload.as_bytes()).unwrap();
            creds.authcid.to_lowercase() == "alice@example.test" && creds.password == "secret"
        }
        "XOAUTH2" => {
            let raw = String::from_utf8(STANDARD.decode(&payload).unwrap()).unwrap();
            let good = raw.contains("auth=Bearer good");
            if !good {
                // The OAuth error challenge: the client must acknowledge it with %x01.
                w.write_all(b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n").await.unwrap();
                assert_eq!(next(&mut r).await, "AQ==");
            }
            good
        }
        other => panic!("the proxy replays PLAIN or the OAuth mechanism, not {other}"),
    };
    if !ok {
        w.write_all(b"535-5.7.8 Sorry\r\n535 5.7.8 Authentication credentials invalid\r\n").await.unwrap();
        return;
    }
    logins.fetch_add(1, Ordering::SeqCst);
    w.write_all(b"235 2.7.0 Authentication successful\r\n").await.unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        w.write_all(format!("250 ECHO {line}").as_bytes()).await.unwrap();
    }
}

/// A node whose destinations both point at `port`, serving one submission client.
async fn session(port: u16, control_plane_up: bool, allow_plaintext: bool) -> (Arc<Node>, BufReader<TcpStream>) {
    let node = node(port, control_plane_up);
    let addr = serve(&node, listener(TlsMode::Plain, allow_plaintext), None).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(read(&mut client).await, "220 t ESMTP Switchyard\r\n");
    (node, client)
}

/// Every account on `legacy` (the default), or no answer at all (control plane down).
fn node(port: u16, control_plane_up: bool) -> Arc<Node> {
    node_resolving(port, Arc::new(Table(control_plane_up.then(Default::default))))
}

fn node_resolving(port: u16, resolver: Arc<dyn Resolver>) -> Arc<Node> {
    testing::node("submission", port, resolver)
}

fn listener(tls: TlsMode, allow_plaintext: bool) -> ListenerConfig {
    // Parsed as plain: validation would want certificate files for the TLS modes.
    let mut config = testing::listener("s", "submission", allow_plaintext, "");
    config.tls = tls;
    config
}

/// Sends `s` and reads one whole reply (every line of a multi-line one).
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

#[tokio::test]
async fn auth_plain_with_initial_response_is_replayed_relayed_and_bridged() {
    let (port, logins) = backend().await;
    let (_node, mut c) = session(port, true, true).await;
    let ehlo = ask(&mut c, "EHLO client.example\r\n").await;
    assert_eq!(
        ehlo,
        "250-t\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n\
         250 AUTH PLAIN LOGIN OAUTHBEARER XOAUTH2\r\n"
    );
    assert_eq!(ask(&mut c, "MAIL FROM:<alice@example.test>\r\n").await, "530 5.7.0 Authentication required\r\n");
    // MAIL pipelined behind AUTH must reach the backend after the verdict, not get lost.
    let auth = format!("AUTH PLAIN {}\r\nMAIL FROM:<alice@example.test>\r\n", plain("Alice@example.test", "secret"));
    assert_eq!(ask(&mut c, &auth).await, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(read(&mut c).await, "250 ECHO MAIL FROM:<alice@example.test>\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<bob@example.test>\r\n").await, "250 ECHO RCPT TO:<bob@example.test>\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn auth_plain_and_login_through_334_challenges() {
    let (port, logins) = backend().await;
    let (_n, mut c) = session(port, true, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    assert_eq!(ask(&mut c, "AUTH PLAIN\r\n").await, "334 \r\n");
    assert_eq!(
        ask(&mut c, &format!("{}\r\n", plain("alice@example.test", "secret"))).await,
        "235 2.7.0 Authentication successful\r\n"
    );

    let (_n, mut c) = session(port, true, true).await;
    ask(&mut c, "HELO c\r\n").await;
    let user = STANDARD.encode("alice@example.test");
    assert_eq!(ask(&mut c, &format!("auth login {user}\r\n")).await, "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        ask(&mut c, &format!("{}\r\n", STANDARD.encode("secret"))).await,
        "235 2.7.0 Authentication successful\r\n"
    );

    let (_n, mut c) = session(port, true, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    assert_eq!(ask(&mut c, "AUTH LOGIN\r\n").await, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(ask(&mut c, &format!("{user}\r\n")).await, "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(ask(&mut c, "*\r\n").await, "501 5.7.0 Authentication cancelled\r\n");
    assert!(ask(&mut c, "AUTH PLAIN !!!\r\n").await.starts_with("501 5.5.2 Invalid SASL response"));
    assert_eq!(logins.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn long_oauth_responses_go_in_the_continuation_and_error_challenges_are_acknowledged() {
    let (port, logins) = backend().await;
    let token =
        |t: &str| STANDARD.encode(format!("user=alice@example.test\x01auth=Bearer {t}{}\x01\x01", "x".repeat(600)));
    let (_n, mut c) = session(port, true, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    let ok = ask(&mut c, &format!("AUTH XOAUTH2 {}\r\n", token("good"))).await;
    assert_eq!(ok, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);

    let (_n, mut c) = session(port, true, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    let refused = ask(&mut c, &format!("AUTH XOAUTH2 {}\r\n", token("bad"))).await;
    assert_eq!(refused, "535-5.7.8 Sorry\r\n535 5.7.8 Authentication credentials invalid\r\n");
}

#[tokio::test]
async fn rejected_credentials_count_and_do_not_trip_the_breaker() {
    let (port, _) = backend().await;
    let (node, mut c) = session(port, true, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    let wrong = format!("AUTH PLAIN {}\r\n", plain("alice@example.test", "wrong"));
    assert!(ask(&mut c, &wrong).await.ends_with("535 5.7.8 Authentication credentials invalid\r\n"));
    let mut second = ask(&mut c, &wrong).await;
    second.push_str(&read(&mut c).await);
    assert!(second.ends_with("421 4.7.0 Too many authentication failures\r\n"), "{second}");
    assert!(closed(&mut c).await);
    assert!(node.breakers.health().iter().all(|(_, h)| h.consecutive_failures == 0 && !h.down));
}

#[tokio::test]
async fn an_unavailable_backend_or_control_plane_is_454_and_the_session_stays_open() {
    let closed_port = testing::closed_port().await;
    let (node, mut c) = session(closed_port, true, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    let auth = format!("AUTH PLAIN {}\r\n", plain("alice@example.test", "secret"));
    assert_eq!(ask(&mut c, &auth).await, "454 4.7.0 Backend temporarily unavailable, try again later\r\n");
    assert_eq!(ask(&mut c, "NOOP\r\n").await, "250 2.0.0 Ok\r\n", "the session stays open");
    assert!(node.breakers.health()[0].1.down, "threshold 2 with one retry: one login opens it");

    let (port, logins) = backend().await;
    let (_n, mut c) = session(port, false, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    assert_eq!(ask(&mut c, &auth).await, "454 4.7.0 Backend temporarily unavailable, try again later\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 0, "never the default backend");
}

/// Every account mapped to `ghost`, which the node's fleet settings do not declare.
struct Ghost;

impl Resolver for Ghost {
    fn resolve(&self, _key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        async { Ok(Resolved { destination: "ghost".into(), mapped: true }) }.boxed()
    }
}

#[tokio::test]
async fn a_mapping_to_an_undeclared_destination_is_454_never_the_default() {
    let (port, logins) = backend().await;
    let node = node_resolving(port, Arc::new(Ghost));
    let addr = serve(&node, listener(TlsMode::Plain, true), None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    read(&mut c).await;
    ask(&mut c, "EHLO c\r\n").await;
    let auth = format!("AUTH PLAIN {}\r\n", plain("alice@example.test", "secret"));
    assert_eq!(ask(&mut c, &auth).await, "454 4.7.0 Backend temporarily unavailable, try again later\r\n");
    assert_eq!(ask(&mut c, "NOOP\r\n").await, "250 2.0.0 Ok\r\n", "the session stays open");
    assert_eq!(logins.load(Ordering::SeqCst), 0, "the default destination's backend was never asked");
}

#[tokio::test]
async fn pre_auth_commands_policy_and_bad_input() {
    let (port, _) = backend().await;
    let (_n, mut c) = session(port, true, false).await;
    assert_eq!(ask(&mut c, "AUTH PLAIN\r\n").await, "503 5.5.1 Send EHLO first\r\n");
    let ehlo = ask(&mut c, "EHLO c\r\n").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        ask(&mut c, "AUTH PLAIN\r\n").await,
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    let script = "NOOP\r\nRSET\r\nSTARTTLS\r\nLHLO x\r\nAUTH\r\nMAIL FROM:<a@b\r\nVRFY x\r\nDATA\r\n";
    c.get_mut().write_all(script.as_bytes()).await.unwrap();
    for expected in [
        "250 2.0.0 Ok",
        "250 2.0.0 Ok",
        "502 5.5.1 STARTTLS not offered",
        "502 5.5.2 Command not recognized",
        "501 5.5.4 Syntax error: AUTH needs a mechanism",
        "501 5.5.4 Syntax error: unterminated address",
        "252 2.5.2 Cannot VRFY user",
        "530 5.7.0 Authentication required",
    ] {
        assert_eq!(read(&mut c).await, format!("{expected}\r\n"));
    }
    assert_eq!(ask(&mut c, "QUIT\r\n").await, "221 2.0.0 Bye\r\n");
    assert!(closed(&mut c).await);

    let (_n, mut c) = session(port, true, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    assert_eq!(ask(&mut c, "AUTH CRAM-MD5\r\n").await, "504 5.5.4 Unrecognized authentication type\r\n");
    for _ in 0..9 {
        assert!(ask(&mut c, "MAIL FROM:<\r\n").await.starts_with("501 5.5.4"));
    }
    assert!(ask(&mut c, "MAIL FROM:<\r\n").await.starts_with("501 5.5.4"));
    assert_eq!(read(&mut c).await, "421 4.7.0 Too many errors, closing connection\r\n");
}

#[tokio::test]
async fn an_over_long_sasl_response_is_answered_and_the_session_goes_on() {
    let (port, logins) = backend().await;
    let node = node(port, true);
    let mut config = listener(TlsMode::Plain, true);
    config.max_line_length = 1024;
    let addr = serve(&node, config, None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(read(&mut c).await, "220 t ESMTP Switchyard\r\n");
    assert!(ask(&mut c, "EHLO client.example\r\n").await.starts_with("250-t\r\n"));
    assert_eq!(ask(&mut c, "AUTH PLAIN\r\n").await, "334 \r\n");
    let answer = ask(&mut c, &format!("{}\r\n", "A".repeat(5000))).await;
    assert_eq!(answer, "501 5.5.2 Invalid SASL response: line exceeds 1024 bytes\r\n");
    assert_eq!(ask(&mut c, "NOOP\r\n").await, "250 2.0.0 Ok\r\n");
    let credential = plain("alice@example.test", "secret");
    assert_eq!(ask(&mut c, &format!("AUTH PLAIN {credential}\r\n")).await, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}

/// A backend outage is a temporary authentication failure like in the other login
/// protocols: `454 4.7.0`, the session stays open for another try, and each try counts
/// toward `max_auth_attempts` (2 here), so the backend attempts per connection stay bounded.
#[tokio::test]
async fn a_backend_outage_leaves_the_session_open_and_counts_as_an_attempt() {
    let closed_port = testing::closed_port().await;
    let (_node, mut c) = session(closed_port, true, true).await;
    ask(&mut c, "EHLO c\r\n").await;
    let auth = format!("AUTH PLAIN {}\r\n", plain("alice@example.test", "secret"));
    assert_eq!(ask(&mut c, &auth).await, "454 4.7.0 Backend temporarily unavailable, try again later\r\n");
    assert_eq!(ask(&mut c, "NOOP\r\n").await, "250 2.0.0 Ok\r\n", "the session is still open");
    let mut second = ask(&mut c, &auth).await;
    second.push_str(&read(&mut c).await);
    assert_eq!(
        second,
        "454 4.7.0 Backend temporarily unavailable, try again later\r\n\
         421 4.7.0 Too many authentication failures\r\n"
    );
    assert!(closed(&mut c).await);
}
