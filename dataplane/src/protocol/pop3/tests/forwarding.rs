//! Client identity towards a POP3 backend: Dovecot's `XCLIENT` when the greeting offers it
//! (and not otherwise), a refusal that does not cost the login, and the node's own XCLIENT
//! for trusted upstream proxies with the hop TTL.

use super::*;
use crate::identity::testing::{node, recording_backend, seen, Lines};

/// A POP3 backend recording what it is sent, greeting with `greeting` and answering
/// XCLIENT with `xclient_reply`.
async fn pop3_backend(greeting: &'static str, xclient_reply: &'static str) -> (u16, Lines) {
    recording_backend(greeting, move |line| match line {
        l if l.starts_with("XCLIENT ") => format!("{xclient_reply}\r\n"),
        l if l.starts_with("AUTH PLAIN ") => "+OK Logged in.\r\n".into(),
        l => format!("+OK ECHO {l}\r\n"),
    })
    .await
}

const OFFERS: &str = "+OK [XCLIENT] Dovecot ready.\r\n";

/// A client of a POP3 listener of `node` (trusting 127.0.0.0/8 if `trusted`) and the
/// greeting it got.
async fn client(node: &Arc<Node>, trusted: bool) -> (BufReader<TcpStream>, String) {
    let extra = if trusted { "proxy_trusted = [\"127.0.0.0/8\"]" } else { "" };
    let addr = serve(node, listener(true, extra), None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let greeting = read(&mut c).await;
    (c, greeting)
}

async fn login(c: &mut BufReader<TcpStream>) -> String {
    say(c, "USER alice\r\n").await;
    assert_eq!(read(c).await, "+OK Send the password\r\n");
    say(c, "PASS secret\r\n").await;
    read(c).await
}

/// The session id in a recorded XCLIENT line.
fn session_of(xclient: &str) -> &str {
    xclient.split(' ').find_map(|a| a.strip_prefix("SESSION=")).expect(xclient)
}

#[tokio::test]
async fn xclient_goes_before_the_credentials_when_the_greeting_offers_it() {
    let (port, lines) = pop3_backend(OFFERS, "+OK Updated").await;
    let (mut c, _) = client(&node("pop3", port, "xclient"), false).await;
    let me = c.get_ref().local_addr().unwrap().port();
    assert_eq!(login(&mut c).await, "+OK Logged in.\r\n");
    let seen = seen(&lines);
    let session = session_of(&seen[1]);
    assert_eq!(session.len(), 16);
    assert_eq!(seen[1], format!("XCLIENT ADDR=127.0.0.1 PORT={me} SESSION={session} TTL=5"));
    assert!(seen[2].starts_with("AUTH PLAIN "), "{seen:?}");
}

#[tokio::test]
async fn no_xclient_unless_offered_and_a_refusal_does_not_cost_the_login() {
    let (port, lines) = pop3_backend("+OK Dovecot ready.\r\n", "+OK Updated").await;
    let (mut c, _) = client(&node("pop3", port, "xclient"), false).await;
    assert_eq!(login(&mut c).await, "+OK Logged in.\r\n");
    assert!(seen(&lines)[1].starts_with("AUTH PLAIN "), "{:?}", seen(&lines));

    let (port, lines) = pop3_backend(OFFERS, "-ERR You are not from trusted IP").await;
    let (mut c, _) = client(&node("pop3", port, "xclient"), false).await;
    assert_eq!(login(&mut c).await, "+OK Logged in.\r\n");
    say(&mut c, "STAT\r\n").await;
    assert_eq!(read(&mut c).await, "+OK ECHO STAT\r\n");
    let seen = seen(&lines);
    assert!(seen[1].starts_with("XCLIENT ") && seen[2].starts_with("AUTH PLAIN "), "{seen:?}");
}

#[tokio::test]
async fn a_trusted_upstream_states_its_client_with_xclient() {
    let (port, lines) = pop3_backend(OFFERS, "+OK Updated").await;
    let (mut c, greeting) = client(&node("pop3", port, "xclient"), true).await;
    assert_eq!(greeting, "+OK [XCLIENT] Switchyard ready\r\n");
    say(&mut c, "XCLIENT ADDR=203.0.113.8 PORT=4712 SESSION=up-2 TTL=4\r\n").await;
    assert_eq!(read(&mut c).await, "+OK Updated\r\n");
    assert_eq!(login(&mut c).await, "+OK Logged in.\r\n");
    assert_eq!(seen(&lines)[1], "XCLIENT ADDR=203.0.113.8 PORT=4712 SESSION=up-2 TTL=3");

    // The last hop: a temporary failure, and the backend never hears of it.
    let (port, lines) = pop3_backend(OFFERS, "+OK Updated").await;
    let (mut c, _) = client(&node("pop3", port, "xclient"), true).await;
    say(&mut c, "XCLIENT ADDR=203.0.113.8 TTL=1\r\n").await;
    assert_eq!(read(&mut c).await, "+OK Updated\r\n");
    assert_eq!(login(&mut c).await, "-ERR [SYS/TEMP] Backend temporarily unavailable, try again later\r\n");
    assert!(seen(&lines).is_empty(), "{:?}", seen(&lines));
}

#[tokio::test]
async fn an_untrusted_client_may_not_use_xclient() {
    let (port, lines) = pop3_backend(OFFERS, "+OK Updated").await;
    let (mut c, greeting) = client(&node("pop3", port, "xclient"), false).await;
    assert_eq!(greeting, "+OK Switchyard ready\r\n");
    say(&mut c, "XCLIENT ADDR=203.0.113.8 TTL=1\r\n").await;
    assert_eq!(read(&mut c).await, "-ERR You are not from a trusted address\r\n");
    assert_eq!(login(&mut c).await, "+OK Logged in.\r\n");
    let seen = seen(&lines);
    assert!(seen[1].starts_with("XCLIENT ADDR=127.0.0.1 ") && seen[1].ends_with(" TTL=5"), "{seen:?}");
}

#[tokio::test]
async fn malformed_xclient_from_a_trusted_upstream_changes_nothing() {
    let (port, lines) = pop3_backend(OFFERS, "+OK Updated").await;
    let (mut c, _) = client(&node("pop3", port, "xclient"), true).await;
    say(&mut c, "XCLIENT ADDR=somewhere TTL=1\r\n").await;
    assert_eq!(read(&mut c).await, "-ERR Invalid XCLIENT parameters\r\n");
    assert_eq!(login(&mut c).await, "+OK Logged in.\r\n");
    assert!(seen(&lines)[1].ends_with(" TTL=5"), "{:?}", seen(&lines));
}
