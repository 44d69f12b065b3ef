//! The client leg never hangs, against the real `dataplane` binary: a client that never
//! reads its replies loses its connection and its `max_connections` slot (IMAP within the
//! pre-auth budget, SMTP and LMTP within the wait for a reply to be read), and the pre-auth
//! budget is one deadline from accept that a slow PROXY header, the implicit TLS handshake,
//! STARTTLS and the dialogue all draw on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use switchyard_tests::fleet::ControlPlane;
use switchyard_tests::lineclient::{DataplaneProc, LineConn, Stuffer};
use switchyard_tests::{eventually, first_certificate_der, TestPki};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout};

/// "Within a few preauth_timeouts" of a 1 s pre-auth timeout.
const FREED_WITHIN: Duration = Duration::from_secs(5);
/// The pre-auth budget of the budget test.
const BUDGET: Duration = Duration::from_secs(4);
/// How far from the budget's end a session may end: a loaded 2-core machine is slow.
const EARLY: Duration = Duration::from_millis(300);
const LATE: Duration = Duration::from_millis(1200);
/// A v1 header from a trusted load balancer, sent one byte every 25 ms (about 1.1 s).
const PROXY_HEADER: &str = "PROXY TCP4 192.0.2.7 127.0.0.1 40000 993\r\n";

fn listener(id: &str, protocol: &str, tls: &str, extra: &str) -> String {
    format!(
        "[listener.{id}]\nprotocol = \"{protocol}\"\nbind = [\"127.0.0.1:0\"]\ntls = \"{tls}\"\n\
         allow_plaintext_auth = true\n{extra}\n"
    )
}

/// A control plane whose one destination nobody connects to (no login happens here).
async fn control_plane() -> Result<ControlPlane> {
    ControlPlane::start(&[("legacy", 1)], "legacy").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_gives_up_its_connection_slot() -> Result<()> {
    let cp = control_plane().await?;
    let limited = "max_connections = 1\npreauth_timeout = \"1s\"";
    // Out of reach, so what frees the SMTP/LMTP slot is the wait for the client to read,
    // not the cap on NOOPs.
    let no_junk_cap = format!("{limited}\njunk_command_limit = 1000000");
    let tables = [("imap", limited), ("smtp", &no_junk_cap), ("lmtp", &no_junk_cap)]
        .map(|(p, keys)| listener(p, p, "plain", keys))
        .concat();
    let node = DataplaneProc::start("dp-stuffed", &cp.endpoint(), "", &tables).await?;
    let mut held = Vec::new();
    for (id, command, greeting) in
        [("imap", "a CAPABILITY", "* OK"), ("smtp", "NOOP", "220 "), ("lmtp", "NOOP", "220 ")]
    {
        let addr = node.listener(id).await?;
        let stuffer = Stuffer::start(addr, command, 200_000).await?;
        let started = Instant::now();
        // Accepted in order: the stuffer holds the only slot, so the next client is refused…
        let (_, first) = LineConn::open(addr).await?;
        ensure!(!first.starts_with(greeting), "{id}: served a second client while the slot was held: {first:?}");
        // …until the node gives up on the client that does not read.
        let served = eventually(FREED_WITHIN, || async {
            let (_, reply) = LineConn::open(addr).await?;
            ensure!(reply.starts_with(greeting), "a new client got {reply:?}");
            Ok(())
        })
        .await;
        match served {
            Ok(()) => println!("{id}: 200000 × {command:?} never read; slot free again after {:?}", started.elapsed()),
            Err(e) => held.push(format!("{id}: the client that never reads still holds the slot: {e:#}")),
        }
        drop(stuffer);
    }
    ensure!(held.is_empty(), "{}", held.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preauth_budget_runs_from_accept_through_proxy_header_tls_and_starttls() -> Result<()> {
    let pki = TestPki::new()?;
    let (cert, key) = pki.issue(&["127.0.0.1"])?;
    let cp = control_plane().await?;
    let budget = format!("preauth_timeout = \"{}s\"", BUDGET.as_secs());
    let proxied = format!("{budget}\nproxy_protocol = \"required\"\nproxy_trusted = [\"127.0.0.0/8\"]");
    let tables = format!(
        "[tls.certificate.main]\ncert = {cert:?}\nkey = {key:?}\n{}{}",
        listener("proxied", "imap", "implicit", &proxied),
        listener("starttls", "imap", "starttls", &budget),
    );
    let node = DataplaneProc::start("dp-budget", &cp.endpoint(), "", &tables).await?;
    let (proxied, starttls) = (node.listener("proxied").await?, node.listener("starttls").await?);
    let tls = connector(&pki)?;
    let (header_then_tls, tls_withheld, after_starttls) = tokio::join!(
        proxy_header_then_tls(proxied, &tls),
        starttls_without_handshake(starttls),
        idle_after_starttls(starttls, &tls),
    );
    let ended = [
        ("slow PROXY header, TLS handshake at 2.5 s, then silence", header_then_tls),
        ("STARTTLS at 2 s, handshake never started", tls_withheld),
        ("STARTTLS and handshake at 2 s, then silence", after_starttls),
    ];
    let mut wrong = Vec::new();
    for (case, ended) in ended {
        match ended {
            Ok(at) if at + EARLY >= BUDGET && at <= BUDGET + LATE => println!("{case}: ended {at:?} after accept"),
            Ok(at) => wrong.push(format!("{case}: ended {at:?} after accept, the budget is {BUDGET:?}")),
            Err(e) => wrong.push(format!("{case}: {e:#}")),
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// PROXY header byte by byte, the TLS handshake 2.5 s after accept, the greeting, then
/// nothing: how long after accept the node closed the connection.
async fn proxy_header_then_tls(addr: std::net::SocketAddr, tls: &tokio_rustls::TlsConnector) -> Result<Duration> {
    let accepted = Instant::now();
    let mut tcp = TcpStream::connect(addr).await?;
    for byte in PROXY_HEADER.as_bytes() {
        tcp.write_all(&[*byte]).await?;
        sleep(Duration::from_millis(25)).await;
    }
    sleep_until((accepted + Duration::from_millis(2500)).into()).await;
    let stream = tls.connect(server_name(), tcp).await.context("TLS handshake")?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).await?;
    ensure!(greeting.starts_with("* OK"), "greeting {greeting:?}");
    until_closed(reader, accepted).await
}

/// STARTTLS 2 s after accept, and then no ClientHello.
async fn starttls_without_handshake(addr: std::net::SocketAddr) -> Result<Duration> {
    let accepted = Instant::now();
    let conn = starttls_at(addr, accepted).await?;
    let closed = conn.rest(BUDGET * 3).await;
    closed.map(|_| accepted.elapsed())
}

/// STARTTLS and the handshake 2 s after accept, then silence over TLS.
async fn idle_after_starttls(addr: std::net::SocketAddr, tls: &tokio_rustls::TlsConnector) -> Result<Duration> {
    let accepted = Instant::now();
    let conn = starttls_at(addr, accepted).await?;
    let tcp = conn.into_stream()?;
    let stream = tls.connect(server_name(), tcp).await.context("TLS handshake after STARTTLS")?;
    until_closed(BufReader::new(stream), accepted).await
}

/// A connection to the STARTTLS listener that asked for TLS 2 s after `accepted`.
async fn starttls_at(addr: std::net::SocketAddr, accepted: Instant) -> Result<LineConn> {
    let (mut conn, greeting) = LineConn::open(addr).await?;
    ensure!(greeting.starts_with("* OK"), "greeting {greeting:?}");
    sleep_until((accepted + Duration::from_secs(2)).into()).await;
    conn.send("a1 STARTTLS\r\n").await?;
    conn.expect("a1 OK").await?;
    Ok(conn)
}

/// Reads until the node ends the session (a TLS error counts as the end); the time since
/// `accepted`.
async fn until_closed<R: AsyncReadExt + Unpin>(mut reader: R, accepted: Instant) -> Result<Duration> {
    let mut rest = Vec::new();
    let read = timeout(BUDGET * 3, reader.read_to_end(&mut rest)).await.context("session left open")?;
    let at = accepted.elapsed();
    if let Err(e) = read {
        println!("read ended with {e} after {at:?}");
    }
    Ok(at)
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A TLS client trusting only the test CA.
fn connector(pki: &TestPki) -> Result<tokio_rustls::TlsConnector> {
    let pem = std::fs::read_to_string(pki.ca_pem_path())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(first_certificate_der(&pem)?))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
