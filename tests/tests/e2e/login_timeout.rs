//! A backend that greets and then never answers the login, behind the real `dataplane` and
//! `controlplane` binaries: each login waits `breaker.login_timeout` (not 30 s), the silent
//! logins are breaker failures, so after `failure_threshold` of them the destination is
//! down fleet-wide and the next client gets `NO [UNAVAILABLE]` at once, without the node
//! dialling the backend again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use switchyard_tests::binfleet::BinFleet;
use switchyard_tests::eventually;
use switchyard_tests::fleet::{destination_toml, listener_toml};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the test sets `breaker.login_timeout` to.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The fixed wait before this was configurable.
const OLD_WAIT: Duration = Duration::from_secs(30);
/// Longer than the old fixed wait, so a run of the unfixed code shows how long it took.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);

/// A backend that greets like Dovecot, then reads and records everything and never
/// answers. Connections stay open until the test ends.
struct SilentBackend {
    addr: SocketAddr,
    /// Every connection's bytes so far, one entry per connection.
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentBackend {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let index = {
                    let mut all = log.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                tokio::spawn(record(conn, index, Arc::clone(&log)));
            }
        });
        Ok(SilentBackend { addr, received, task })
    }

    fn connections(&self) -> Vec<String> {
        self.received.lock().unwrap().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(mut conn: TcpStream, index: usize, log: Arc<Mutex<Vec<Vec<u8>>>>) {
    let greeting = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID AUTH=PLAIN] Silent ready.\r\n";
    if conn.write_all(greeting).await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            return;
        }
        log.lock().unwrap()[index].extend_from_slice(&buf[..n]);
    }
}

/// One IMAP LOGIN through the node: the tagged answer and how long it took.
async fn login(node: SocketAddr) -> Result<(String, Duration)> {
    let mut conn = BufReader::new(TcpStream::connect(node).await?);
    let mut greeting = String::new();
    tokio::time::timeout(CLIENT_TIMEOUT, conn.read_line(&mut greeting)).await??;
    ensure!(greeting.starts_with("* OK"), "{greeting:?}");
    let started = Instant::now();
    conn.get_mut().write_all(b"a1 LOGIN alice@example.test secret\r\n").await?;
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(CLIENT_TIMEOUT, conn.read_line(&mut line))
            .await
            .with_context(|| format!("no answer to LOGIN within {CLIENT_TIMEOUT:?}"))??;
        ensure!(n > 0, "the node closed the connection without answering LOGIN");
        if line.starts_with("a1 ") {
            return Ok((line.trim_end().to_owned(), started.elapsed()));
        }
    }
}

async fn legacy(fleet: &BinFleet) -> Result<Value> {
    let (code, all) = fleet.api.get("/destinations").await?;
    ensure!(code == 200, "{all}");
    all.as_array()
        .and_then(|a| a.iter().find(|d| d["destination"] == "legacy").cloned())
        .with_context(|| format!("legacy missing from {all}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_silent_after_its_greeting_costs_login_timeout_and_trips_the_breaker() -> Result<()> {
    let backend = SilentBackend::start().await?;
    let tables = destination_toml("legacy", &[("imap", backend.addr.port())], "");
    // The harness's [breaker]: failure_threshold = 2, cooldown = "5m", connect_timeout = "2s".
    let login_timeout = format!("login_timeout = \"{}s\"\n", LOGIN_TIMEOUT.as_secs());
    let edit = |toml: String| toml.replacen("[breaker]\n", &format!("[breaker]\n{login_timeout}"), 1);
    let fleet = BinFleet::start(&tables, "legacy", edit, &listener_toml("imap", "imap", "")).await?;
    let node = fleet.addr("imap")?;

    for attempt in 1..=2 {
        let (tagged, took) = login(node).await?;
        assert!(tagged.contains("NO [UNAVAILABLE]"), "login {attempt}: {tagged}");
        assert!(took >= LOGIN_TIMEOUT - Duration::from_millis(100), "login {attempt} gave up early: {took:?}");
        assert!(
            took < LOGIN_TIMEOUT + Duration::from_secs(3),
            "login {attempt} waited {took:?}, not about login_timeout = {LOGIN_TIMEOUT:?} (the old wait was {OLD_WAIT:?})"
        );
    }
    let seen = backend.connections();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|c| c.contains("AUTHENTICATE PLAIN")), "the credential reached the backend: {seen:?}");

    // Two silent logins = failure_threshold: down fleet-wide, as the node reports at once.
    let down = eventually(Duration::from_secs(10), || async {
        let view = legacy(&fleet).await?;
        ensure!(view["down"] == true && view["consecutive_failures"] == 2, "{view}");
        Ok(view)
    })
    .await
    .with_context(|| fleet.logs())?;
    assert_eq!(down["nodes_down"], 1, "{down}");

    // The next client is turned away at once; the node does not dial the backend.
    let (tagged, took) = login(node).await?;
    assert!(tagged.contains("NO [UNAVAILABLE]"), "{tagged}");
    assert!(took < Duration::from_secs(1), "an open breaker answers at once, took {took:?}");
    assert_eq!(backend.connections().len(), 2, "the open breaker let a connection through");
    let warned = fleet.node.wait_for(&["backend unavailable", "circuit breaker open"]).await?;
    assert!(warned.contains("legacy"), "{warned}");
    Ok(())
}
