//! The identity lines byte for byte, XCLIENT attribute filtering and xtext, what an upstream
//! proxy may claim and when it is believed, and the hop TTL.

use std::sync::Arc;

use super::wire::{pop3_offers_xclient, sieve_offers_xclient, xclient_attributes, xtext};
use super::*;
use crate::codec::imap::{Event, ImapParser};
use crate::codec::smtp::Reply;
use crate::config::Config;

fn identity() -> Identity {
    Identity {
        client: "203.0.113.7:40000".parse().unwrap(),
        local: "192.0.2.1:143".parse().unwrap(),
        session: "AbCd-_0123456789".into(),
        ttl: 5,
    }
}

fn offered(attributes: &str) -> Vec<String> {
    attributes.split(' ').map(str::to_owned).collect()
}

#[test]
fn session_ids_are_16_base64url_characters_and_differ() {
    let (a, b) = (session_id(), session_id());
    assert_eq!(a.len(), 16);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{a}");
    assert_ne!(a, b);
    let fresh = Identity::new("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
    assert_eq!(fresh.ttl, DEFAULT_TTL);
    assert_eq!(fresh.session.len(), 16);
}

#[test]
fn imap_id_carries_dovecots_fields() {
    assert_eq!(
        identity().imap_id("S2"),
        "S2 ID (\"x-originating-ip\" \"203.0.113.7\" \"x-originating-port\" \"40000\" \
         \"x-connected-ip\" \"192.0.2.1\" \"x-connected-port\" \"143\" \
         \"x-session-id\" \"AbCd-_0123456789\" \"x-proxy-ttl\" \"5\")\r\n"
    );
    let v6 = Identity { client: "[2001:db8::7]:993".parse().unwrap(), ..identity() };
    assert!(v6.imap_id("S2").starts_with("S2 ID (\"x-originating-ip\" \"2001:db8::7\" \"x-originating-port\" \"993\""));
}

#[test]
fn dovecot_xclient_names_address_port_session_and_ttl() {
    assert_eq!(identity().dovecot_xclient(), "XCLIENT ADDR=203.0.113.7 PORT=40000 SESSION=AbCd-_0123456789 TTL=5\r\n");
}

#[test]
fn smtp_xclient_sends_only_what_the_backend_offers() {
    let postfix = offered("NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT");
    assert_eq!(
        identity().smtp_xclient(&postfix).unwrap(),
        "XCLIENT NAME=[UNAVAILABLE] REVERSE_NAME=[UNAVAILABLE] ADDR=203.0.113.7 PORT=40000 \
         DESTADDR=192.0.2.1 DESTPORT=143\r\n"
    );
    assert_eq!(identity().smtp_xclient(&offered("ADDR")).unwrap(), "XCLIENT ADDR=203.0.113.7\r\n");
    let dovecot = offered("ADDR PORT SESSION TTL");
    assert_eq!(
        identity().smtp_xclient(&dovecot).unwrap(),
        "XCLIENT ADDR=203.0.113.7 PORT=40000 SESSION=AbCd-_0123456789 TTL=5\r\n"
    );
    // Without ADDR the rest would describe the client wrongly.
    assert_eq!(identity().smtp_xclient(&offered("NAME PORT")), None);
    assert_eq!(identity().smtp_xclient(&[]), None);
}

#[test]
fn smtp_xclient_writes_ipv6_postfix_style_and_unknown_ports_as_unavailable() {
    let v6 = Identity {
        client: "[2001:db8::7]:0".parse().unwrap(),
        local: "[::ffff:192.0.2.1]:587".parse().unwrap(),
        ..identity()
    };
    assert_eq!(
        v6.smtp_xclient(&offered("ADDR PORT DESTADDR DESTPORT")).unwrap(),
        "XCLIENT ADDR=IPV6:2001:db8::7 PORT=[UNAVAILABLE] DESTADDR=192.0.2.1 DESTPORT=587\r\n"
    );
}

#[test]
fn xtext_escapes_plus_equals_space_and_non_ascii() {
    assert_eq!(xtext("[UNAVAILABLE]"), "[UNAVAILABLE]");
    assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    assert_eq!(xtext("é"), "+C3+A9");
}

#[test]
fn the_xclient_attributes_come_from_the_ehlo_reply() {
    let line = |s: &str| s.as_bytes().to_vec();
    let ehlo = Reply {
        code: 250,
        lines: vec![line("250-mx"), line("250-AUTH PLAIN"), line("250-xclient name addr"), line("250 8BITMIME")],
    };
    assert_eq!(xclient_attributes(&ehlo), offered("NAME ADDR"));
    let none = Reply { code: 250, lines: vec![line("250-mx"), line("250 AUTH PLAIN")] };
    assert!(xclient_attributes(&none).is_empty());
    // The first line is the server's name, never a keyword.
    let named = Reply { code: 250, lines: vec![line("250-XCLIENT ADDR"), line("250 8BITMIME")] };
    assert!(xclient_attributes(&named).is_empty());
}

#[test]
fn dovecot_offers_xclient_in_the_pop3_greeting_and_sieve_capabilities() {
    assert!(pop3_offers_xclient(b"+OK [XCLIENT] Dovecot (Debian) ready."));
    assert!(!pop3_offers_xclient(b"+OK Dovecot (Debian) ready."));
    assert!(sieve_offers_xclient(b"\"XCLIENT\""));
    assert!(!sieve_offers_xclient(b"\"SASL\" \"PLAIN XCLIENT\""));
}

fn imap_args(command: &str) -> Vec<crate::codec::imap::Arg> {
    let mut parser = ImapParser::new(8192, 65536);
    parser.push(command.as_bytes());
    match parser.next_event().unwrap() {
        Some(Event::Command(c)) => c.args,
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_imap_id_states_the_upstreams_client() {
    let args = imap_args(
        "a ID (\"name\" \"webmail\" \"X-Originating-IP\" \"[2001:db8::9]\" \"x-originating-port\" \"4711\" \
         \"x-connected-ip\" \"192.0.2.1\" \"x-connected-port\" \"143\" \"x-session-id\" \"up-1\" \"x-proxy-ttl\" \"3\")\r\n",
    );
    let upstream = UpstreamClaim::from_imap_id(&args);
    assert_eq!(
        upstream,
        UpstreamClaim {
            addr: Some("2001:db8::9".parse().unwrap()),
            port: Some(4711),
            dest_addr: Some("192.0.2.1".parse().unwrap()),
            dest_port: Some(143),
            session: Some("up-1".into()),
            ttl: Some(3),
        }
    );
    // NIL, junk and a session id that could not travel unquoted are left out.
    let odd = imap_args("a ID (\"x-originating-ip\" \"nonsense\" \"x-session-id\" \"a b\" \"x-proxy-ttl\" NIL)\r\n");
    assert_eq!(UpstreamClaim::from_imap_id(&odd), UpstreamClaim::default());
    assert_eq!(UpstreamClaim::from_imap_id(&imap_args("a ID NIL\r\n")), UpstreamClaim::default());
}

#[test]
fn a_dovecot_xclient_states_the_upstreams_client() {
    let upstream = UpstreamClaim::from_xclient(b"ADDR=203.0.113.8 PORT=4712 SESSION=s1 TTL=4 FORWARD=abc").unwrap();
    assert_eq!(upstream.addr, Some("203.0.113.8".parse().unwrap()));
    assert_eq!((upstream.port, upstream.ttl, upstream.session.as_deref()), (Some(4712), Some(4), Some("s1")));
    assert_eq!(
        UpstreamClaim::from_xclient(b"ADDR=IPV6:2001:db8::1").unwrap().addr,
        Some("2001:db8::1".parse().unwrap())
    );
    assert_eq!(UpstreamClaim::from_xclient(b"ADDR=[UNAVAILABLE]").unwrap(), UpstreamClaim::default());
    for bad in [&b"ADDR=nowhere"[..], b"PORT=99999", b"TTL=-1", b"ADDR", b"SESSION=\"x\"", b"\xff"] {
        assert!(UpstreamClaim::from_xclient(bad).is_err(), "{bad:?}");
    }
}

/// A session context whose client is `client`, on a listener trusting `trusted`.
fn ctx(client: &str, trusted: &str) -> SessionCtx {
    let toml = format!(
        "[listener.imap]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\nproxy_trusted = [{trusted}]\n\
         [control]\nendpoints = [\"http://127.0.0.1:1\"]\n"
    );
    let listener = Arc::new(Config::from_toml_str(&toml).unwrap().listener["imap"].clone());
    let node = testing::node("imap", 1, "none");
    let client = client.parse().unwrap();
    SessionCtx { node, listener, client, local: client, tls: None, accepted: tokio::time::Instant::now() }
}

fn upstream(ttl: u32) -> UpstreamClaim {
    UpstreamClaim {
        addr: Some("203.0.113.9".parse().unwrap()),
        port: Some(4711),
        session: Some("up-1".into()),
        ttl: Some(ttl),
        ..UpstreamClaim::default()
    }
}

#[test]
fn a_trusted_upstream_is_believed_and_its_ttl_counts_down() {
    let ctx = ctx("10.0.0.5:5000", "\"10.0.0.0/8\"");
    let mut identity = Identity::of(&ctx);
    assert!(identity.adopt(&ctx, upstream(3)));
    assert_eq!(identity.client, "203.0.113.9:4711".parse().unwrap());
    assert_eq!(identity.local, ctx.local, "no x-connected-ip: the node's own address stays");
    assert_eq!((identity.session.as_str(), identity.ttl, identity.looped()), ("up-1", 2, false));

    let mut last_hop = Identity::of(&ctx);
    last_hop.adopt(&ctx, upstream(1));
    assert!(last_hop.looped());
    let mut zero = Identity::of(&ctx);
    zero.adopt(&ctx, upstream(0));
    assert_eq!(zero.ttl, 0);
}

#[test]
fn an_untrusted_client_or_a_listener_without_trusted_networks_is_not_believed() {
    for (client, trusted) in [("192.0.2.5:5000", "\"10.0.0.0/8\""), ("10.0.0.5:5000", "")] {
        let ctx = ctx(client, trusted);
        let mut identity = Identity::of(&ctx);
        let before = identity.clone();
        assert!(!identity.adopt(&ctx, upstream(1)));
        assert_eq!(identity, before);
        assert_eq!(identity.ttl, DEFAULT_TTL);
    }
}
