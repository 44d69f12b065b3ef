//! Client identity towards a ManageSieve backend: Dovecot's `XCLIENT` when the capabilities
//! offer it (and not otherwise), and a refusal that does not cost the login.

use super::*;
use crate::identity::testing::{node, recording_backend, seen, Lines};

const OFFERS: &str = "\"IMPLEMENTATION\" \"scripted\"\r\n\"SASL\" \"PLAIN\"\r\n\"XCLIENT\"\r\nOK \"ready\"\r\n";
const SILENT: &str = "\"IMPLEMENTATION\" \"scripted\"\r\n\"SASL\" \"PLAIN\"\r\nOK \"ready\"\r\n";

/// A ManageSieve backend recording what it is sent and answering XCLIENT with `xclient_reply`.
async fn sieve_backend(greeting: &'static str, xclient_reply: &'static str) -> (u16, Lines) {
    recording_backend(greeting, move |line| match line {
        l if l.starts_with("XCLIENT ") => format!("{xclient_reply}\r\n"),
        l if l.starts_with("AUTHENTICATE ") => "OK \"Logged in.\"\r\n".into(),
        _ => "OK \"ECHO\"\r\n".into(),
    })
    .await
}

/// Logs in through a node whose endpoint forwards with XCLIENT to the backend at `port`.
async fn login(port: u16) -> BufReader<TcpStream> {
    let addr = serve(&node("managesieve", port, "xclient"), listener(true, ""), None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    until_status(&mut c).await;
    say(&mut c, &format!("AUTHENTICATE \"PLAIN\" \"{}\"\r\n", b64("alice", "secret"))).await;
    assert_eq!(read(&mut c).await, "OK \"Logged in.\"\r\n");
    c
}

#[tokio::test]
async fn xclient_goes_before_the_credentials_when_the_capabilities_offer_it() {
    let (port, lines) = sieve_backend(OFFERS, "OK \"Updated\"").await;
    let c = login(port).await;
    let me = c.get_ref().local_addr().unwrap().port();
    let seen = seen(&lines);
    let session = seen[1].split(' ').find_map(|a| a.strip_prefix("SESSION=")).expect(&seen[1]);
    assert_eq!(session.len(), 16);
    assert_eq!(seen[1], format!("XCLIENT ADDR=127.0.0.1 PORT={me} SESSION={session} TTL=5"));
    assert!(seen[2].starts_with("AUTHENTICATE \"PLAIN\" "), "{seen:?}");
}

#[tokio::test]
async fn no_xclient_unless_offered_and_a_refusal_does_not_cost_the_login() {
    let (port, lines) = sieve_backend(SILENT, "OK \"Updated\"").await;
    login(port).await;
    assert!(seen(&lines)[1].starts_with("AUTHENTICATE "), "{:?}", seen(&lines));

    let (port, lines) = sieve_backend(OFFERS, "NO \"You are not from trusted IP\"").await;
    let mut c = login(port).await;
    say(&mut c, "LISTSCRIPTS\r\n").await;
    assert_eq!(read(&mut c).await, "OK \"ECHO\"\r\n");
    let seen = seen(&lines);
    assert!(seen[1].starts_with("XCLIENT ") && seen[2].starts_with("AUTHENTICATE "), "{seen:?}");
}
