//! The relay against in-memory pipes and real sockets: chunked input, half-close either
//! way, a large transfer checked end to end, a TLS leg, and no buffer held while idle.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;
use crate::tls::testing::TestTls;
use crate::tls::MaybeTls;

/// A relay between two in-memory pipes; the test holds the far ends (`client`, `backend`).
struct Rig {
    client: DuplexStream,
    backend: DuplexStream,
    relay: JoinHandle<(io::Result<()>, Moved)>,
}

fn rig(pool: &'static BufferPool, capacity: usize) -> Rig {
    let (client, mut near_client) = duplex(capacity);
    let (backend, mut near_backend) = duplex(capacity);
    let relay = tokio::spawn(async move {
        let mut moved = Moved::default();
        let result = relay(&mut near_client, &mut near_backend, pool, &Activity::new(), &mut moved).await;
        (result, moved)
    });
    Rig { client, backend, relay }
}

fn leaked_pool() -> &'static BufferPool {
    Box::leak(Box::new(BufferPool::new(4)))
}

async fn read_exactly(stream: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    stream.read_exact(&mut got).await.unwrap();
    got
}

/// Bytes that are not the same from one offset to the next, so a dropped or repeated
/// chunk shows up.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed).collect()
}

#[tokio::test]
async fn chunked_input_arrives_whole_and_in_order_both_ways() {
    let mut rig = rig(leaked_pool(), 64 * 1024);
    let up = pattern(10_000, 1);
    let down = pattern(7_000, 2);
    for sizes in [1usize, 2, 3, 7, 64, 1000, 4096] {
        for chunk in up.chunks(sizes) {
            rig.client.write_all(chunk).await.unwrap();
        }
        assert_eq!(read_exactly(&mut rig.backend, up.len()).await, up, "client → backend in chunks of {sizes}");
        for chunk in down.chunks(sizes) {
            rig.backend.write_all(chunk).await.unwrap();
        }
        assert_eq!(read_exactly(&mut rig.client, down.len()).await, down, "backend → client in chunks of {sizes}");
    }
    drop(rig.client);
    drop(rig.backend);
    let (result, moved) = rig.relay.await.unwrap();
    result.unwrap();
    assert_eq!((moved.from_client, moved.to_client), (7 * 10_000, 7 * 7_000));
}

#[tokio::test]
async fn client_half_close_reaches_the_backend_which_can_still_answer() {
    let mut rig = rig(leaked_pool(), 1024);
    rig.client.write_all(b"a1 LOGOUT\r\n").await.unwrap();
    rig.client.shutdown().await.unwrap();
    let mut seen = Vec::new();
    rig.backend.read_to_end(&mut seen).await.unwrap();
    assert_eq!(seen, b"a1 LOGOUT\r\n", "the backend reads the command, then EOF");
    rig.backend.write_all(b"* BYE\r\na1 OK\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut rig.client, 14).await, b"* BYE\r\na1 OK\r\n");
    assert!(!rig.relay.is_finished(), "the other direction is still open");
    rig.backend.shutdown().await.unwrap();
    let mut rest = Vec::new();
    rig.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let (result, moved) = rig.relay.await.unwrap();
    result.unwrap();
    assert_eq!((moved.from_client, moved.to_client), (11, 14));
}

#[tokio::test]
async fn backend_half_close_reaches_the_client_which_can_still_send() {
    let mut rig = rig(leaked_pool(), 1024);
    rig.backend.write_all(b"* BYE shutting down\r\n").await.unwrap();
    rig.backend.shutdown().await.unwrap();
    let mut seen = Vec::new();
    rig.client.read_to_end(&mut seen).await.unwrap();
    assert_eq!(seen, b"* BYE shutting down\r\n");
    rig.client.write_all(b"late\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut rig.backend, 6).await, b"late\r\n");
    rig.client.shutdown().await.unwrap();
    let (result, moved) = rig.relay.await.unwrap();
    result.unwrap();
    assert_eq!((moved.from_client, moved.to_client), (6, 21));
}

#[tokio::test]
async fn an_idle_session_holds_no_buffer() {
    let pool = leaked_pool();
    let mut rig = rig(pool, 1024);
    for round in 0..3u8 {
        rig.client.write_all(&[round; 100]).await.unwrap();
        read_exactly(&mut rig.backend, 100).await;
        rig.backend.write_all(&[round; 300]).await.unwrap();
        read_exactly(&mut rig.client, 300).await;
        // The relay gives its buffers back when its reads would block; it runs on the same
        // runtime, so let it get there.
        for _ in 0..100 {
            if pool.lent() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.lent(), 0, "round {round}: both directions idle, no buffer lent");
    }
    assert!(pool.free.lock().unwrap().len() <= 4, "the pool keeps at most what it was told to");
    rig.relay.abort();
}

#[tokio::test]
async fn a_cut_relay_returns_its_buffers() {
    let pool = leaked_pool();
    // A backend that never reads: the relay blocks holding data for it.
    let (mut client, mut near_client) = duplex(1024);
    let (_backend, mut near_backend) = duplex(16);
    client.write_all(&[7; 1000]).await.unwrap();
    let (activity, mut moved) = (Activity::new(), Moved::default());
    let relayed = relay(&mut near_client, &mut near_backend, pool, &activity, &mut moved);
    let cut = tokio::time::timeout(Duration::from_millis(50), relayed).await;
    assert!(cut.is_err(), "the relay waits on the backend");
    assert_eq!(moved.from_client, 16, "what the backend's pipe took is counted");
    assert_eq!(pool.lent(), 0);
}

/// A backend that takes writes and then fails to read, as a reset connection does.
struct Reset {
    took: usize,
}

impl AsyncRead for Reset {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.took {
            0 => Poll::Pending,
            _ => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
        }
    }
}

impl AsyncWrite for Reset {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.took += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_side_ends_the_relay_with_its_error_and_the_counts_so_far() {
    let pool = leaked_pool();
    let (mut client, mut near_client) = duplex(1024);
    client.write_all(b"a2 SELECT INBOX\r\n").await.unwrap();
    let (activity, mut moved) = (Activity::new(), Moved::default());
    let result = relay(&mut near_client, &mut Reset { took: 0 }, pool, &activity, &mut moved).await;
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    assert_eq!((moved.from_client, moved.to_client), (17, 0));
    assert_eq!(pool.lent(), 0);
}

/// Two connected loopback sockets.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// Sends `len` bytes of a pattern and returns their digest.
async fn send_all(mut to: impl AsyncWrite + Unpin, len: usize, seed: u8) -> [u8; 32] {
    let mut digest = Sha256::new();
    let mut sent = 0;
    while sent < len {
        let chunk = pattern((len - sent).min(100_003), seed.wrapping_add(sent as u8));
        to.write_all(&chunk).await.unwrap();
        digest.update(&chunk);
        sent += chunk.len();
    }
    to.shutdown().await.unwrap();
    digest.finalize().into()
}

/// Reads to EOF and returns the length and digest of what arrived.
async fn receive_all(mut from: impl AsyncRead + Unpin) -> (usize, [u8; 32]) {
    let mut digest = Sha256::new();
    let mut buf = vec![0u8; 37_000];
    let mut len = 0;
    loop {
        let n = from.read(&mut buf).await.unwrap();
        if n == 0 {
            return (len, digest.finalize().into());
        }
        digest.update(&buf[..n]);
        len += n;
    }
}

#[tokio::test]
async fn a_large_transfer_both_ways_at_once_arrives_intact() {
    let (client_far, mut client_near) = socket_pair().await;
    let (mut backend_near, backend_far) = socket_pair().await;
    let relay = tokio::spawn(async move {
        let mut moved = Moved::default();
        let pool = leaked_pool();
        relay(&mut client_near, &mut backend_near, pool, &Activity::new(), &mut moved).await.unwrap();
        (moved, pool.lent())
    });
    let (up, down) = (9_000_000, 13_000_000);
    let (client_read, client_write) = client_far.into_split();
    let (backend_read, backend_write) = backend_far.into_split();
    let (sent_up, sent_down, got_up, got_down) = tokio::join!(
        send_all(client_write, up, 3),
        send_all(backend_write, down, 5),
        receive_all(backend_read),
        receive_all(client_read),
    );
    assert_eq!(got_up, (up, sent_up), "client → backend");
    assert_eq!(got_down, (down, sent_down), "backend → client");
    let (moved, lent) = relay.await.unwrap();
    assert_eq!((moved.from_client, moved.to_client), (up as u64, down as u64));
    assert_eq!(lent, 0);
}

#[tokio::test]
async fn a_tls_client_leg_relays_and_ends_with_close_notify() {
    let tls = TestTls::new();
    let (client_far, client_near) = socket_pair().await;
    let (mut backend_near, backend_far) = socket_pair().await;
    let acceptor = tls.acceptor.clone();
    let relay = tokio::spawn(async move {
        let mut client = MaybeTls::Plain(client_near).accept(&acceptor).await.unwrap();
        let mut moved = Moved::default();
        relay(&mut client, &mut backend_near, leaked_pool(), &Activity::new(), &mut moved).await.unwrap();
        moved
    });
    let client = tls.connect(client_far).await;
    let (client_read, client_write) = tokio::io::split(client);
    let (backend_read, backend_write) = backend_far.into_split();
    let (up, down) = (300_000, 2_000_000);
    let (sent_up, sent_down, got_up, got_down) = tokio::join!(
        send_all(client_write, up, 11),
        send_all(backend_write, down, 13),
        receive_all(backend_read),
        receive_all(client_read),
    );
    assert_eq!(got_up, (up, sent_up));
    // A clean EOF on the TLS side: rustls reports a close without close_notify as an error.
    assert_eq!(got_down, (down, sent_down));
    let moved = relay.await.unwrap();
    assert_eq!((moved.from_client, moved.to_client), (up as u64, down as u64));
}

/// A relay between two loopback socket pairs; the test holds the far ends.
async fn tcp_rig(pool: &'static BufferPool) -> (TcpStream, TcpStream, JoinHandle<(io::Result<()>, Moved)>) {
    let (client_far, mut client_near) = socket_pair().await;
    let (mut backend_near, backend_far) = socket_pair().await;
    let relay = tokio::spawn(async move {
        let mut moved = Moved::default();
        let result = relay(&mut client_near, &mut backend_near, pool, &Activity::new(), &mut moved).await;
        (result, moved)
    });
    (client_far, backend_far, relay)
}

#[tokio::test]
async fn over_tcp_half_close_either_way_and_no_buffer_held_while_idle() {
    let pool = leaked_pool();
    let (mut client, mut backend, relay) = tcp_rig(pool).await;
    for round in 0..3u8 {
        client.write_all(&[round; 100]).await.unwrap();
        assert_eq!(read_exactly(&mut backend, 100).await, [round; 100]);
        backend.write_all(&[round; 3000]).await.unwrap();
        assert_eq!(read_exactly(&mut client, 3000).await, [round; 3000]);
        // The relay task ran until its reads would block before this one read the reply.
        assert_eq!(pool.lent(), 0, "round {round}: both directions idle, no buffer lent");
    }
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    backend.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the backend sees the client's EOF");
    backend.write_all(b"* BYE\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut client, 7).await, b"* BYE\r\n", "and can still answer");
    backend.shutdown().await.unwrap();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let (result, moved) = relay.await.unwrap();
    result.unwrap();
    assert_eq!((moved.from_client, moved.to_client), (300, 9007));
}

#[tokio::test]
async fn over_tcp_the_backends_half_close_reaches_the_client_first() {
    let (mut client, mut backend, relay) = tcp_rig(leaked_pool()).await;
    backend.write_all(b"* BYE going away\r\n").await.unwrap();
    backend.shutdown().await.unwrap();
    let mut seen = Vec::new();
    client.read_to_end(&mut seen).await.unwrap();
    assert_eq!(seen, b"* BYE going away\r\n");
    client.write_all(b"a LOGOUT\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut backend, 10).await, b"a LOGOUT\r\n");
    drop(client);
    let (result, moved) = relay.await.unwrap();
    result.unwrap();
    assert_eq!((moved.from_client, moved.to_client), (10, 18));
}

/// Relays for a moment, until both pipes have nothing more to move.
async fn relay_a_while(near: &mut (DuplexStream, DuplexStream), moved: &mut Moved) {
    let (pool, activity) = (leaked_pool(), Activity::new());
    let relayed = relay(&mut near.0, &mut near.1, pool, &activity, moved);
    assert!(tokio::time::timeout(Duration::from_millis(50), relayed).await.is_err(), "the relay ended");
}

#[tokio::test(start_paused = true)]
async fn the_relay_knows_whether_the_client_leg_is_between_lines() {
    let (mut client, near_client) = duplex(32);
    let (mut backend, near_backend) = duplex(1024);
    let mut near = (near_client, near_backend);
    let mut moved = Moved { to_client_between_lines: true, ..Moved::default() };
    relay_a_while(&mut near, &mut moved).await;
    assert!(moved.to_client_between_lines, "nothing relayed yet: as the verdict left it");
    backend.write_all(b"* 1 FETCH (BODY[] {10}\r\n01234").await.unwrap();
    relay_a_while(&mut near, &mut moved).await;
    assert_eq!(read_exactly(&mut client, 29).await, b"* 1 FETCH (BODY[] {10}\r\n01234");
    assert!(!moved.to_client_between_lines, "in the middle of a line");
    backend.write_all(b"56789)\r\n").await.unwrap();
    relay_a_while(&mut near, &mut moved).await;
    assert_eq!(read_exactly(&mut client, 8).await, b"56789)\r\n");
    assert!(moved.to_client_between_lines);
    // A client that does not read: the line's end is still on its way.
    backend.write_all(&[b"x".repeat(60), b"\r\n".to_vec()].concat()).await.unwrap();
    relay_a_while(&mut near, &mut moved).await;
    assert!(!moved.to_client_between_lines, "62 bytes cannot all fit a 32-byte pipe");
}
