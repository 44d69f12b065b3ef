//! Client identity towards an IMAP backend: the exact `ID` on an `xclient` endpoint and none
//! elsewhere, a trusted upstream's `ID` (its client, session id and hop TTL) passed on in
//! `ID` and in the PROXY header alike, the loop guard, and untrusted claims ignored.

use super::*;
use crate::identity::testing::{node, recording_backend, seen, Lines};

/// What a trusted upstream proxy says about its client.
const UPSTREAM_ID: &str = "a0 ID (\"x-originating-ip\" \"203.0.113.9\" \"x-originating-port\" \"4711\" \
                           \"x-connected-ip\" \"192.0.2.1\" \"x-connected-port\" \"143\" \
                           \"x-session-id\" \"up-1\" \"x-proxy-ttl\" \"3\")\r\n";

/// An IMAP backend that records what it is sent and answers the proxy's ID with `id_status`.
/// It offers no SASL-IR, so the credential comes on a line of its own after `AUTHENTICATE`.
async fn imap_backend(id_status: &'static str) -> (u16, Lines) {
    recording_backend("* OK [CAPABILITY IMAP4rev1 ID] scripted\r\n", move |line| {
        if line.starts_with("S2 ID ") {
            format!("* ID (\"name\" \"scripted\")\r\nS2 {id_status}\r\n")
        } else if line == "S1 AUTHENTICATE PLAIN" {
            "+ \r\n".into()
        } else if !line.contains(' ') {
            "S1 OK Logged in\r\n".into()
        } else {
            format!("* ECHO {line}\r\n")
        }
    })
    .await
}

/// A client of an IMAP listener of `node` (trusting 127.0.0.0/8 if `trusted`), greeted.
async fn client(node: &Arc<Node>, trusted: bool) -> BufReader<TcpStream> {
    let mut config = listener_config(true);
    if trusted {
        config.proxy_trusted = vec!["127.0.0.0/8".parse().unwrap()];
    }
    let addr = serve(node, config, None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    read(&mut c).await;
    c
}

/// Sends the upstream's ID and checks the proxy's answer.
async fn upstream_id(c: &mut BufReader<TcpStream>, id: &str) {
    say(c, id).await;
    assert_eq!(read(c).await, "* ID (\"name\" \"Switchyard\")\r\n");
    assert_eq!(read(c).await, "a0 OK ID completed\r\n");
}

async fn login(c: &mut BufReader<TcpStream>) -> String {
    say(c, "a1 LOGIN alice secret\r\n").await;
    read(c).await
}

/// The `ID` line the backend should see for `client`, `local` (ip, port), `session` and `ttl`.
fn id_line(client: (&str, u16), local: (&str, u16), session: &str, ttl: u32) -> String {
    format!(
        "S2 ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\" \"x-connected-ip\" \"{}\" \
         \"x-connected-port\" \"{}\" \"x-session-id\" \"{session}\" \"x-proxy-ttl\" \"{ttl}\")",
        client.0, client.1, local.0, local.1
    )
}

/// The session id inside a recorded `ID` line.
fn session_of(id: &str) -> String {
    let start = id.find("\"x-session-id\" \"").expect(id) + 16;
    id[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn an_xclient_endpoint_gets_id_before_the_credentials() {
    let (port, lines) = imap_backend("OK ID completed").await;
    let mut c = client(&node("imap", port, "xclient"), false).await;
    let me = c.get_ref().local_addr().unwrap().port();
    let proxy = c.get_ref().peer_addr().unwrap().port();
    assert_eq!(login(&mut c).await, "a1 OK Logged in\r\n");
    let seen = seen(&lines);
    let session = session_of(&seen[1]);
    assert_eq!(session.len(), 16, "a fresh session id: {session}");
    let id = id_line(("127.0.0.1", me), ("127.0.0.1", proxy), &session, 5);
    assert_eq!(seen[..3], ["connected".to_string(), id, "S1 AUTHENTICATE PLAIN".into()]);
}

#[tokio::test]
async fn other_endpoints_get_no_id() {
    let (port, lines) = imap_backend("OK ID completed").await;
    let mut c = client(&node("imap", port, "none"), false).await;
    assert_eq!(login(&mut c).await, "a1 OK Logged in\r\n");
    let seen = seen(&lines);
    assert_eq!(seen[..2], ["connected", "S1 AUTHENTICATE PLAIN"]);
    assert!(!seen.iter().any(|l| l.contains(" ID ")), "{seen:?}");
}

#[tokio::test]
async fn a_trusted_upstreams_client_goes_on_with_one_hop_less() {
    let (port, lines) = imap_backend("OK ID completed").await;
    let mut c = client(&node("imap", port, "xclient"), true).await;
    upstream_id(&mut c, UPSTREAM_ID).await;
    assert_eq!(login(&mut c).await, "a1 OK Logged in\r\n");
    let id = id_line(("203.0.113.9", 4711), ("192.0.2.1", 143), "up-1", 2);
    assert_eq!(seen(&lines)[..3], ["connected".to_string(), id, "S1 AUTHENTICATE PLAIN".into()]);
}

#[tokio::test]
async fn the_proxy_header_names_the_same_client_as_id_would() {
    let (port, lines) = imap_backend("OK ID completed").await;
    let mut c = client(&node("imap", port, "proxy"), true).await;
    upstream_id(&mut c, UPSTREAM_ID).await;
    assert_eq!(login(&mut c).await, "a1 OK Logged in\r\n");
    assert_eq!(seen(&lines)[..3], ["connected", "PROXY 203.0.113.9:4711 192.0.2.1:143", "S1 AUTHENTICATE PLAIN"]);
}

#[tokio::test]
async fn the_last_hop_refuses_the_login_as_a_proxy_loop() {
    let (port, lines) = imap_backend("OK ID completed").await;
    let mut c = client(&node("imap", port, "xclient"), true).await;
    upstream_id(&mut c, &UPSTREAM_ID.replace("\"x-proxy-ttl\" \"3\"", "\"x-proxy-ttl\" \"1\"")).await;
    let refused = login(&mut c).await;
    assert!(refused.starts_with("a1 NO [UNAVAILABLE]"), "a temporary failure, not a wrong password: {refused}");
    assert!(seen(&lines).is_empty(), "the backend is not contacted: {:?}", seen(&lines));
}

#[tokio::test]
async fn an_untrusted_clients_id_claims_are_ignored() {
    let (port, lines) = imap_backend("OK ID completed").await;
    let mut c = client(&node("imap", port, "xclient"), false).await;
    let me = c.get_ref().local_addr().unwrap().port();
    let proxy = c.get_ref().peer_addr().unwrap().port();
    // A TTL of 1 would refuse the login if it were believed.
    upstream_id(&mut c, &UPSTREAM_ID.replace("\"x-proxy-ttl\" \"3\"", "\"x-proxy-ttl\" \"1\"")).await;
    assert_eq!(login(&mut c).await, "a1 OK Logged in\r\n");
    let seen = seen(&lines);
    assert_eq!(seen[1], id_line(("127.0.0.1", me), ("127.0.0.1", proxy), &session_of(&seen[1]), 5));
    assert_ne!(session_of(&seen[1]), "up-1");
}

#[tokio::test]
async fn a_backend_refusing_id_still_serves_the_login() {
    let (port, lines) = imap_backend("BAD Unknown command").await;
    let mut c = client(&node("imap", port, "xclient"), false).await;
    assert_eq!(login(&mut c).await, "a1 OK Logged in\r\n");
    say(&mut c, "a2 NOOP\r\n").await;
    assert_eq!(read(&mut c).await, "* ECHO a2 NOOP\r\n");
    assert!(seen(&lines)[1].starts_with("S2 ID ("));
}
