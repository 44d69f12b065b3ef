//! Inbound PROXY header tests over real loopback connections.

use super::*;
use crate::codec::proxy::encode_v2;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

fn config(mode: &str, trusted: &str) -> ListenerConfig {
    let toml = format!(
        "[listener.imap]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\npreauth_timeout = \"2s\"\nproxy_protocol = \"{mode}\"\nproxy_trusted = [{trusted}]\n[control]\nendpoints = [\"http://127.0.0.1:1\"]\n"
    );
    crate::config::Config::from_toml_str(&toml).unwrap().listener["imap"].clone()
}

/// The end of a pre-auth budget that starts now (2 s, as `config` says).
fn budget() -> Instant {
    Instant::now() + Duration::from_secs(2)
}

/// A connected pair: (the server side, its peer address, the client side).
async fn pair() -> (TcpStream, SocketAddr, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, peer) = listener.accept().await.unwrap();
    (server, peer, client)
}

async fn rest(server: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    server.read_exact(&mut buf).await.unwrap();
    buf
}

#[tokio::test]
async fn a_trusted_peers_header_names_the_client_and_only_it_is_consumed() {
    let (mut server, peer, mut client) = pair().await;
    let real: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let mut sent = encode_v2(real, "192.0.2.1:143".parse().unwrap());
    sent.extend_from_slice(b"a1 NOOP\r\n");
    // In two pieces: the header may arrive split across packets.
    client.write_all(&sent[..5]).await.unwrap();
    let reading = tokio::spawn(async move {
        let got = client_address(&mut server, &config("required", "\"127.0.0.0/8\""), peer, budget()).await.unwrap();
        (got, rest(&mut server, 9).await)
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    client.write_all(&sent[5..]).await.unwrap();
    let (got, after) = reading.await.unwrap();
    assert_eq!(got, real);
    assert_eq!(after, b"a1 NOOP\r\n");
}

#[tokio::test]
async fn a_header_from_an_untrusted_peer_is_not_believed() {
    let (mut server, peer, mut client) = pair().await;
    let spoofed = encode_v2("203.0.113.9:1".parse().unwrap(), "192.0.2.1:143".parse().unwrap());
    client.write_all(&spoofed).await.unwrap();
    let got = client_address(&mut server, &config("required", "\"10.0.0.0/8\""), peer, budget()).await.unwrap();
    assert_eq!(got, peer, "the spoofed address is ignored");
    assert_eq!(rest(&mut server, spoofed.len()).await, spoofed, "and its bytes are left as protocol input");
}

#[tokio::test]
async fn required_refuses_a_connection_without_a_header_optional_carries_on() {
    let (mut server, peer, mut client) = pair().await;
    client.write_all(b"a1 LOGIN x y\r\n").await.unwrap();
    assert!(client_address(&mut server, &config("required", "\"127.0.0.1/32\""), peer, budget()).await.is_err());

    let (mut server, peer, mut client) = pair().await;
    client.write_all(b"a1 LOGIN x y\r\n").await.unwrap();
    assert_eq!(
        client_address(&mut server, &config("optional", "\"127.0.0.1/32\""), peer, budget()).await.unwrap(),
        peer
    );
    assert_eq!(rest(&mut server, 14).await, b"a1 LOGIN x y\r\n");

    // A silent trusted client (waiting for the greeting) is served without a header.
    let (mut server, peer, _client) = pair().await;
    assert_eq!(
        client_address(&mut server, &config("optional", "\"127.0.0.1/32\""), peer, budget()).await.unwrap(),
        peer
    );
}

#[tokio::test]
async fn a_malformed_header_closes_the_connection() {
    let (mut server, peer, mut client) = pair().await;
    client.write_all(b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n").await.unwrap();
    assert!(client_address(&mut server, &config("optional", "\"127.0.0.1/32\""), peer, budget()).await.is_err());
}

#[test]
fn proxy_protocol_without_trusted_networks_is_a_config_error() {
    let toml = "[listener.imap]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\nproxy_protocol = \"required\"\n[control]\nendpoints = [\"http://127.0.0.1:1\"]\n";
    let err = crate::config::Config::from_toml_str(toml).unwrap_err().to_string();
    assert!(err.contains("listener.imap.proxy_trusted"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_a_required_header_ends_with_the_preauth_budget() {
    let (mut server, peer, mut client) = pair().await;
    client.write_all(b"PROXY TCP4 192.0.2").await.unwrap();
    let started = Instant::now();
    let budget = started + Duration::from_millis(700);
    let err = client_address(&mut server, &config("required", "\"127.0.0.1/32\""), peer, budget).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(700) && waited < Duration::from_millis(800), "{waited:?}");
}
