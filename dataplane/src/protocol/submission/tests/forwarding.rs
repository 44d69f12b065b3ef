//! Client identity towards a submission backend: `XCLIENT` with only the attributes its
//! EHLO offers, EHLO again after the `220` that answers it, and nothing (or a refusal that
//! does not cost the login) otherwise.

use super::*;
use crate::identity::testing::{node, recording_backend, seen, Lines};

const POSTFIX: &str = "250-scripted\r\n250-AUTH PLAIN LOGIN\r\n\
                       250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n250 8BITMIME\r\n";

/// A submission backend recording what it is sent: EHLO answered with `ehlo`, XCLIENT with
/// `xclient_reply`, any AUTH accepted.
async fn smtp_backend(ehlo: &'static str, xclient_reply: &'static str) -> (u16, Lines) {
    recording_backend("220 scripted ESMTP\r\n", move |line| match line {
        l if l.starts_with("EHLO ") => ehlo.into(),
        l if l.starts_with("XCLIENT ") => format!("{xclient_reply}\r\n"),
        l if l.starts_with("AUTH ") => "235 2.7.0 Authentication successful\r\n".into(),
        l => format!("250 ECHO {l}\r\n"),
    })
    .await
}

/// Logs in through a node forwarding with XCLIENT to the backend at `port`; the client's port.
async fn login(port: u16) -> (BufReader<TcpStream>, u16) {
    let addr = serve(&node("submission", port, "xclient"), listener(TlsMode::Plain, true), None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let me = c.get_ref().local_addr().unwrap().port();
    assert_eq!(read(&mut c).await, "220 t ESMTP Switchyard\r\n");
    c.get_mut().write_all(b"EHLO client\r\n").await.unwrap();
    while !read(&mut c).await.starts_with("250 ") {}
    let auth = format!("AUTH PLAIN {}\r\n", crate::codec::sasl::encode_plain(&plain("alice@example.test", "secret")));
    c.get_mut().write_all(auth.as_bytes()).await.unwrap();
    assert_eq!(read(&mut c).await, "235 2.7.0 Authentication successful\r\n");
    (c, me)
}

fn plain(user: &str, pass: &str) -> crate::codec::sasl::Credentials {
    crate::codec::sasl::Credentials { authzid: String::new(), authcid: user.into(), password: pass.into() }
}

#[tokio::test]
async fn xclient_names_what_postfix_offers_then_ehlo_starts_over() {
    let (port, lines) = smtp_backend(POSTFIX, "220 scripted ESMTP").await;
    let (c, me) = login(port).await;
    let proxy = c.get_ref().peer_addr().unwrap().port();
    let seen = seen(&lines);
    let xclient = format!(
        "XCLIENT NAME=[UNAVAILABLE] REVERSE_NAME=[UNAVAILABLE] ADDR=127.0.0.1 PORT={me} DESTADDR=127.0.0.1 DESTPORT={proxy}"
    );
    assert_eq!(seen[..4], ["connected".to_string(), "EHLO t".into(), xclient, "EHLO t".into()]);
    assert!(seen[4].starts_with("AUTH PLAIN "), "{seen:?}");
}

#[tokio::test]
async fn only_the_offered_attributes_are_sent() {
    let ehlo = "250-scripted\r\n250-AUTH PLAIN\r\n250 XCLIENT ADDR HELO TTL\r\n";
    let (port, lines) = smtp_backend(ehlo, "220 scripted ESMTP").await;
    login(port).await;
    assert_eq!(seen(&lines)[2], "XCLIENT ADDR=127.0.0.1 TTL=5");
}

#[tokio::test]
async fn no_xclient_unless_offered_and_a_refusal_does_not_cost_the_login() {
    let (port, lines) = smtp_backend("250-scripted\r\n250 AUTH PLAIN\r\n", "220 scripted ESMTP").await;
    login(port).await;
    let seen_plain = seen(&lines);
    assert_eq!(seen_plain[..2], ["connected", "EHLO t"]);
    assert!(seen_plain[2].starts_with("AUTH PLAIN "), "{seen_plain:?}");

    let (port, lines) = smtp_backend(POSTFIX, "550 5.7.0 Error: insufficient authorization").await;
    let (mut c, _) = login(port).await;
    c.get_mut().write_all(b"NOOP\r\n").await.unwrap();
    assert_eq!(read(&mut c).await, "250 ECHO NOOP\r\n");
    let seen = seen(&lines);
    // Refused: no new greeting, so no second EHLO either.
    assert!(seen[2].starts_with("XCLIENT ") && seen[3].starts_with("AUTH PLAIN "), "{seen:?}");
}
