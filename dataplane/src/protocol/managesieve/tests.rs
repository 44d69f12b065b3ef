//! ManageSieve session tests against a scripted backend on port 0 (the real-Dovecot
//! interop lives in the workspace `tests/`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::backend::literal_size;
use crate::codec::sasl::decode_plain;
use crate::config::ListenerConfig;
use crate::node::Node;
use crate::protocol::testing::{self, b64, read, rest, say, serve, Table};

mod forwarding;
mod tls;

/// A scripted ManageSieve backend: accepts `alice`/`secret` over `AUTHENTICATE "PLAIN"`
/// with an initial response, refuses password `literal` with a literal string, answers
/// XOAUTH2 with an error challenge, then echoes each line as `OK "ECHO <line>"`.
async fn backend() -> (u16, Arc<AtomicU32>) {
    testing::scripted_backend(scripted).await
}

async fn scripted(s: TcpStream, logins: Arc<AtomicU32>) {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let greeting = "\"IMPLEMENTATION\" \"scripted\"\r\n\"SASL\" \"PLAIN XOAUTH2\"\r\n\"SIEVE\" {8}\r\nfileinto\r\n\
                    \"VERSION\" \"1.0\"\r\nOK \"scripted ready\"\r\n";
    w.write_all(greeting.as_bytes()).await.unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    if line.starts_with("AUTHENTICATE \"XOAUTH2\" ") {
        w.write_all(b"{8}\r\nZXJyb3I=\r\n").await.unwrap();
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert_eq!(line, "\"AQ==\"\r\n");
        w.write_all(b"NO \"Token expired\"\r\n").await.unwrap();
        return;
    }
    let payload = line.strip_prefix("AUTHENTICATE \"PLAIN\" \"").and_then(|l| l.strip_suffix("\"\r\n")).unwrap();
    let creds = decode_plain(payload.as_bytes()).unwrap();
    if creds.password == "literal" {
        w.write_all(b"NO {9}\r\nnope\r\nno!\r\n").await.unwrap();
        return;
    }
    if creds.authcid.to_lowercase() != "alice" || creds.password != "secret" {
        w.write_all(b"NO \"Authentication failed.\"\r\n").await.unwrap();
        return;
    }
    logins.fetch_add(1, Ordering::SeqCst);
    w.write_all(b"OK \"Logged in.\"\r\n").await.unwrap();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        w.write_all(format!("OK \"ECHO {}\"\r\n", line.trim_end()).as_bytes()).await.unwrap();
    }
}

fn listener(allow_plaintext_auth: bool, extra: &str) -> ListenerConfig {
    testing::listener("sieve", "managesieve", allow_plaintext_auth, extra)
}

/// A node with destinations `legacy` (default) and `new`, both at `port`, and a client
/// connected to a ManageSieve session served by it; returns the greeting too.
async fn session(
    port: u16,
    table: Option<HashMap<String, String>>,
    config: ListenerConfig,
) -> (Arc<Node>, BufReader<TcpStream>, String) {
    let node = node(port, table);
    let addr = serve(&node, config, None).await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let greeting = until_status(&mut client).await;
    (node, client, greeting)
}

/// A node with destinations `legacy` (default) and `new`, both at `port`.
fn node(port: u16, table: Option<HashMap<String, String>>) -> Arc<Node> {
    testing::node("managesieve", port, Arc::new(Table(table)))
}

/// Lines through the next `OK`/`NO`/`BYE` status line.
async fn until_status<S: AsyncRead + Unpin>(c: &mut BufReader<S>) -> String {
    let mut text = String::new();
    loop {
        let line = read(c).await;
        text.push_str(&line);
        if ["OK", "NO", "BYE"].iter().any(|s| line.starts_with(s)) || line.is_empty() {
            return text;
        }
    }
}

fn b64_text(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

const CAPABILITIES: &str = "\"IMPLEMENTATION\" \"Switchyard\"\r\n\"SASL\" \"PLAIN LOGIN OAUTHBEARER XOAUTH2\"\r\n\
                            \"VERSION\" \"1.0\"\r\n";

#[tokio::test]
async fn authenticate_is_replayed_the_verdict_relayed_and_pipelined_bytes_bridged() {
    let (port, logins) = backend().await;
    let (_node, mut c, greeting) = session(port, Some(HashMap::new()), listener(true, "")).await;
    assert_eq!(greeting, format!("{CAPABILITIES}OK \"Switchyard ready\"\r\n"));
    say(&mut c, "capability\r\n").await;
    assert_eq!(until_status(&mut c).await, format!("{CAPABILITIES}OK \"Capability completed\"\r\n"));
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\nLISTSCRIPTS\r\n", b64("Alice", "secret"))).await;
    assert_eq!(read(&mut c).await, "OK \"Logged in.\"\r\n");
    assert_eq!(read(&mut c).await, "OK \"ECHO LISTSCRIPTS\"\r\n");
    say(&mut c, "HAVESPACE s 10\r\n").await;
    assert_eq!(read(&mut c).await, "OK \"ECHO HAVESPACE s 10\"\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn every_string_form_of_authenticate_works() {
    let (port, logins) = backend().await;
    let plain = b64("alice", "secret");
    let n = plain.len();
    let (user, pass) = (b64_text("alice"), b64_text("secret"));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (format!("AUTHENTICATE \"PLAIN\" {{{n}+}}\r\n{plain}\r\n"), vec![]),
        (format!("AUTHENTICATE {{5}}\r\nPLAIN {{{n}}}\r\n{plain}\r\n"), vec![]),
        (format!("AUTHENTICATE PLAIN\r\n\"{plain}\"\r\n"), vec!["\"\"\r\n"]),
        (format!("AUTHENTICATE \"PLAIN\"\r\n{{{n}+}}\r\n{plain}\r\n"), vec!["\"\"\r\n"]),
        (format!("AUTHENTICATE \"LOGIN\" \"{user}\"\r\n\"{pass}\"\r\n"), vec!["\"UGFzc3dvcmQ6\"\r\n"]),
        (
            format!("AUTHENTICATE \"login\"\r\n\"{user}\"\r\n\"{pass}\"\r\n"),
            vec!["\"VXNlcm5hbWU6\"\r\n", "\"UGFzc3dvcmQ6\"\r\n"],
        ),
    ];
    for (script, challenges) in &cases {
        let (_n, mut c, _) = session(port, Some(HashMap::new()), listener(true, "")).await;
        say(&mut c, script).await;
        for challenge in challenges {
            assert_eq!(&read(&mut c).await, challenge, "{script}");
        }
        assert_eq!(read(&mut c).await, "OK \"Logged in.\"\r\n", "{script}");
    }
    assert_eq!(logins.load(Ordering::SeqCst), cases.len() as u32);
}

#[tokio::test]
async fn cancel_and_malformed_responses_are_refused() {
    let (port, _) = backend().await;
    let (_n, mut c, _) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, "AUTHENTICATE \"PLAIN\"\r\n\"*\"\r\n").await;
    assert_eq!(read(&mut c).await, "\"\"\r\n");
    assert_eq!(read(&mut c).await, "NO \"Authentication cancelled\"\r\n");
    say(&mut c, "AUTHENTICATE \"PLAIN\" \"!!!\"\r\nAUTHENTICATE \"CRAM-MD5\"\r\nAUTHENTICATE \"PLAIN\" x\r\n").await;
    assert_eq!(read(&mut c).await, "NO \"Invalid SASL response: invalid base64\"\r\n");
    assert_eq!(read(&mut c).await, "NO \"Unsupported authentication mechanism\"\r\n");
    assert_eq!(read(&mut c).await, "NO \"The initial response must be a string\"\r\n");
    say(&mut c, "AUTHENTICATE \"PLAIN\"\r\nnotastring\r\n").await;
    read(&mut c).await;
    let expected = "NO \"Invalid SASL response: expected one quoted string or literal\"\r\n";
    assert_eq!(read(&mut c).await, expected);
    assert_eq!(read(&mut c).await, "BYE \"Too many failed authentication attempts\"\r\n");
}

#[tokio::test]
async fn refusals_are_relayed_as_sent_and_count_without_tripping_the_breaker() {
    let (port, _) = backend().await;
    let (node, mut c, _) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", b64("alice", "literal"))).await;
    // The backend's literal string travels intact.
    assert_eq!(read(&mut c).await, "NO {9}\r\n");
    assert_eq!(read(&mut c).await, "nope\r\n");
    assert_eq!(read(&mut c).await, "no!\r\n");
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", b64("alice", "wrong"))).await;
    assert_eq!(read(&mut c).await, "NO \"Authentication failed.\"\r\n");
    assert_eq!(rest(&mut c).await, "BYE \"Too many failed authentication attempts\"\r\n");
    assert!(node.breakers.health().iter().all(|(_, h)| h.consecutive_failures == 0 && !h.down));
}

#[tokio::test]
async fn an_oauth_error_challenge_is_acknowledged_and_the_refusal_relayed() {
    let (port, _) = backend().await;
    let (_n, mut c, _) = session(port, Some(HashMap::new()), listener(true, "")).await;
    let token = b64_text("user=alice\u{1}auth=Bearer tok\u{1}\u{1}");
    say(&mut c, &format!("AUTHENTICATE \"XOAUTH2\" \"{token}\"\r\n")).await;
    assert_eq!(read(&mut c).await, "NO \"Token expired\"\r\n");
}

#[tokio::test]
async fn an_unreachable_backend_is_trylater_and_opens_the_breaker() {
    let port = testing::closed_port().await;
    let (node, mut c, _) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", b64("alice", "secret"))).await;
    assert_eq!(read(&mut c).await, "NO (TRYLATER) \"Backend temporarily unavailable, try again later\"\r\n");
    let health = node.breakers.health();
    assert_eq!(health[0].0, "legacy");
    assert!(health[0].1.down, "threshold 2 with one retry: one login opens it");
}

#[tokio::test]
async fn an_uncached_account_gets_trylater_when_the_control_plane_is_down() {
    let (port, logins) = backend().await;
    let (_n, mut c, _) = session(port, None, listener(true, "")).await;
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", b64("alice", "secret"))).await;
    assert!(read(&mut c).await.starts_with("NO (TRYLATER)"));
    assert_eq!(logins.load(Ordering::SeqCst), 0, "never the default backend");
}

#[tokio::test]
async fn cleartext_authentication_is_refused_unless_the_listener_allows_it() {
    let (port, logins) = backend().await;
    let (_n, mut c, greeting) = session(port, Some(HashMap::new()), listener(false, "")).await;
    assert!(greeting.contains("\"SASL\" \"\"\r\n"), "{greeting}");
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", b64("alice", "secret"))).await;
    let refused = "NO (ENCRYPT-NEEDED) \"Authentication is disabled on this connection before TLS\"\r\n";
    assert_eq!(read(&mut c).await, refused);
    assert_eq!(logins.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn pre_auth_commands_and_garbage() {
    let (port, _) = backend().await;
    let (_n, mut c, _) = session(port, Some(HashMap::new()), listener(true, "")).await;
    let script = "NOOP\r\nnoop \"tag 1\"\r\nNOOP {3+}\r\na\nb\r\nLISTSCRIPTS\r\n\"bad\"\r\nNOOP a b\r\nLOGOUT\r\n";
    say(&mut c, script).await;
    assert_eq!(read(&mut c).await, "OK \"NOOP completed\"\r\n");
    assert_eq!(read(&mut c).await, "OK (TAG \"tag 1\") \"NOOP completed\"\r\n");
    assert_eq!(read(&mut c).await, "OK (TAG {3}\r\n");
    assert_eq!(read(&mut c).await, "a\n");
    assert_eq!(read(&mut c).await, "b) \"NOOP completed\"\r\n");
    assert_eq!(read(&mut c).await, "NO \"Unknown command or not valid before authentication\"\r\n");
    assert_eq!(read(&mut c).await, "NO \"command name must be an atom\"\r\n");
    assert_eq!(read(&mut c).await, "NO \"Too many arguments\"\r\n");
    assert_eq!(read(&mut c).await, "OK \"Logout complete\"\r\n");
    assert_eq!(rest(&mut c).await, "");

    let (_n, mut c, _) = session(port, Some(HashMap::new()), listener(true, "")).await;
    say(&mut c, &"GARBAGE\r\n".repeat(20)).await;
    let all = rest(&mut c).await;
    assert_eq!(all.lines().count(), 10, "{all}");
    assert!(all.ends_with("BYE \"Too many invalid commands\"\r\n"), "{all}");
}

#[tokio::test]
async fn an_idle_client_is_dropped_at_the_pre_auth_deadline() {
    let (port, _) = backend().await;
    let (_n, mut c, _) = session(port, Some(HashMap::new()), listener(true, "preauth_timeout = \"200ms\"")).await;
    say(&mut c, "AUTHENTICATE \"PLAIN\"\r\n").await;
    assert_eq!(read(&mut c).await, "\"\"\r\n");
    assert_eq!(rest(&mut c).await, "BYE \"Pre-authentication timeout\"\r\n");
}

#[test]
fn literal_sizes_at_line_ends() {
    assert_eq!(literal_size(b"NO {12}"), Some(12));
    assert_eq!(literal_size(b"\"SIEVE\" {8+}"), Some(8));
    assert_eq!(literal_size(b"NO \"{12}\""), None);
    assert_eq!(literal_size(b"NO {}"), None);
    assert_eq!(literal_size(b"NO {1x}"), None);
}

#[tokio::test]
async fn an_over_long_sasl_response_is_answered_and_the_session_goes_on() {
    let (port, logins) = backend().await;
    let mut config = listener(true, "");
    config.max_line_length = 1024;
    // Refused responses count as failed attempts; this test makes two before the login.
    config.max_auth_attempts = 3;
    let (_node, mut c, _) = session(port, Some(HashMap::new()), config).await;
    say(&mut c, "AUTHENTICATE \"PLAIN\"\r\n").await;
    assert_eq!(read(&mut c).await, "\"\"\r\n");
    say(&mut c, &format!("\"{}\"\r\n", "A".repeat(5000))).await;
    assert_eq!(read(&mut c).await, "NO \"Invalid SASL response: line exceeds 1024 bytes\"\r\n");
    // A literal may be longer than a line, but carry no more than a line can (768 bytes).
    let big = b64("alice", &"y".repeat(800));
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{big}\r\n", big.len())).await;
    assert_eq!(read(&mut c).await, "NO \"Invalid SASL response: payload of 807 bytes exceeds 768 bytes\"\r\n");
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", b64("alice", "secret"))).await;
    assert_eq!(read(&mut c).await, "OK \"Logged in.\"\r\n");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
}
