//! The client leg's bounds in IMAP: an over-long SASL response is answered and the session
//! goes on, a response of exactly the line limit is decoded and replayed, and a client that
//! pipelines past the pre-auth deadline is served no further.

use super::*;

fn short_lines() -> ListenerConfig {
    let mut config = listener_config(true);
    config.max_line_length = 1024;
    // Refused responses count as failed attempts; this test makes several.
    config.max_auth_attempts = 5;
    config
}

async fn client(config: ListenerConfig) -> (Arc<Node>, BufReader<TcpStream>, Arc<std::sync::atomic::AtomicU32>) {
    let (port, logins) = backend().await;
    let node = node(port, Some(HashMap::new()));
    let addr = serve(&node, config, None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(read(&mut c).await.starts_with("* OK"));
    (node, c, logins)
}

#[tokio::test]
async fn an_over_long_sasl_response_is_answered_and_the_session_goes_on() {
    let (_node, mut c, logins) = client(short_lines()).await;
    say(&mut c, "a1 AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(read(&mut c).await, "+ \r\n");
    say(&mut c, &format!("{}\r\n", "A".repeat(5000))).await;
    assert_eq!(read(&mut c).await, "a1 BAD Invalid SASL response: line exceeds 1024 bytes\r\n");
    say(&mut c, "a2 NOOP\r\n").await;
    assert_eq!(read(&mut c).await, "a2 OK NOOP completed\r\n");
    // Exactly the line limit: 768 decoded bytes, replayed (the backend refuses the password).
    let at_limit = b64("alice", &"x".repeat(768 - 7));
    assert_eq!(at_limit.len(), 1024);
    say(&mut c, "a3 AUTHENTICATE PLAIN\r\n").await;
    read(&mut c).await;
    say(&mut c, &format!("{at_limit}\r\n")).await;
    assert_eq!(read(&mut c).await, "a3 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
    say(&mut c, "a4 AUTHENTICATE PLAIN\r\n").await;
    read(&mut c).await;
    say(&mut c, &format!("{at_limit}=\r\n")).await;
    assert_eq!(read(&mut c).await, "a4 BAD Invalid SASL response: line exceeds 1024 bytes\r\n");
    say(&mut c, "a5 LOGIN alice secret\r\n").await;
    read(&mut c).await;
    assert_eq!(read(&mut c).await, "a5 OK Logged in\r\n");
    assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_command_pipelined_behind_a_login_that_outlasts_the_budget_is_not_served() {
    let mut config = listener_config(true);
    config.preauth_timeout = Duration::from_millis(300);
    let (node, mut c, _) = client(config).await;
    // The delay holds the login past the budget; its verdict still reaches the client.
    node.delay("alice", 1);
    say(&mut c, "a1 LOGIN alice wrong\r\na2 NOOP\r\n").await;
    assert_eq!(read(&mut c).await, "a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
    assert_eq!(read(&mut c).await, "* BYE Pre-authentication timeout\r\n");
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut rest)).await.unwrap().unwrap();
    assert_eq!(rest, "", "a2 was not answered, and the connection closed");
}
