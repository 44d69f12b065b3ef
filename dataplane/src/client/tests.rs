//! The client leg's bounds on an in-memory pipe whose far end reads only when told to.

use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;

#[tokio::test(start_paused = true)]
async fn a_write_the_client_does_not_read_fails_at_its_deadline() {
    let (mut node, _client) = duplex(64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3);
    let sent = send(&mut node, &[b'x'; 1024], deadline).await;
    assert!(matches!(sent, Err(Error::Client(_))), "{sent:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_write_the_client_reads_completes() {
    let (mut node, mut client) = duplex(64);
    let reader = tokio::spawn(async move {
        let mut got = vec![0; 1024];
        client.read_exact(&mut got).await.map(|_| got)
    });
    send(&mut node, &[b'x'; 1024], Instant::now() + Duration::from_secs(3)).await.unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), vec![b'x'; 1024]);
}

#[tokio::test(start_paused = true)]
async fn a_read_past_its_deadline_times_out_even_with_bytes_waiting() {
    let (mut node, mut client) = duplex(64);
    client.write_all(b"a1 NOOP\r\n").await.unwrap();
    let mut buf = Vec::new();
    let past = Instant::now();
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(read(&mut node, &mut buf, past).await.unwrap(), Read::TimedOut);
    assert!(buf.is_empty());
    let later = Instant::now() + Duration::from_secs(1);
    assert_eq!(read(&mut node, &mut buf, later).await.unwrap(), Read::Data(9));
    let started = Instant::now();
    assert_eq!(read(&mut node, &mut buf, started + Duration::from_secs(2)).await.unwrap(), Read::TimedOut);
    assert_eq!(started.elapsed(), Duration::from_secs(2), "waited for data until the deadline");
    drop(client);
    assert_eq!(read(&mut node, &mut buf, Instant::now() + Duration::from_secs(1)).await.unwrap(), Read::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_goodbye_is_given_up_on_a_client_that_does_not_read() {
    let (mut node, _client) = duplex(16);
    let started = Instant::now();
    goodbye(&mut node, &[b'x'; 64]).await;
    assert_eq!(started.elapsed(), GOODBYE_WAIT);
    let deadline = at_least_goodbye(started);
    assert_eq!(deadline, Instant::now() + GOODBYE_WAIT, "a passed deadline still leaves the goodbye its wait");
    let later = Instant::now() + Duration::from_secs(30);
    assert_eq!(at_least_goodbye(later), later);
}
