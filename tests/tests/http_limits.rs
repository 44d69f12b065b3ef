//! Slowloris against the two small HTTP servers, on the real binaries: the management API
//! and a node's health listener. 1,200 connections that each send half a request head and
//! then nothing must not take the process's file descriptors (it runs with the common
//! soft limit of 1024), and `/healthz` must answer throughout; a half-sent head is closed
//! after `header_read_timeout`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use switchyard_tests::binfleet::BinFleet;
use switchyard_tests::fleet::listener_toml;
use switchyard_tests::procs::raise_fd_limit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HALF_HEADS: usize = 1200;
/// What the processes get, as many distributions set it.
const CHILD_FD_LIMIT: u64 = 1024;
const DESTINATION: &str =
    "[destination.legacy]\nhost = \"127.0.0.1\"\n[destination.legacy.protocol.imap]\nport = 143\n";

async fn fleet(edit_cp: impl FnOnce(String) -> String, health: &str) -> Result<BinFleet> {
    let health = format!("[health]\n{health}");
    let edit_node = move |node: String| node.replacen("[health]\n", &health, 1);
    BinFleet::start_edited(DESTINATION, "legacy", edit_cp, edit_node, &listener_toml("imap", "imap", "")).await
}

/// Lowers `pid`'s soft limit on open files to `soft` (its hard limit stays this process's).
fn limit_fds(pid: u32, soft: u64) -> Result<()> {
    use rustix::process::{getrlimit, prlimit, Pid, Resource, Rlimit};
    let pid = Pid::from_raw(pid as i32).context("pid")?;
    let maximum = getrlimit(Resource::Nofile).maximum;
    prlimit(Some(pid), Resource::Nofile, Rlimit { current: Some(soft), maximum })?;
    Ok(())
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// `GET /healthz` on a fresh connection: the status line, within `within`.
async fn healthz(addr: SocketAddr, within: Duration) -> Result<String> {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string())
    };
    tokio::time::timeout(within, probe)
        .await
        .with_context(|| format!("/healthz on {addr}: no answer within {within:?}"))?
}

/// Opens `count` connections that each send half a request head and keep quiet.
async fn half_heads(addr: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await else {
            // The backlog is full: the attack already holds what it can.
            break;
        };
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ").await;
        held.push(stream);
    }
    Ok(held)
}

/// Holds 1,200 half-sent heads against `addr` of process `pid` and probes `/healthz`.
async fn survives_slowloris(pid: u32, addr: SocketAddr, what: &str) -> Result<()> {
    limit_fds(pid, CHILD_FD_LIMIT)?;
    let before = open_fds(pid)?;
    let held = half_heads(addr, HALF_HEADS).await?;
    ensure!(held.len() > CHILD_FD_LIMIT as usize, "{what}: only {} connections opened", held.len());
    for round in 0..5 {
        let started = Instant::now();
        let status = healthz(addr, Duration::from_secs(3)).await.with_context(|| format!("{what}: probe {round}"))?;
        ensure!(status.starts_with("HTTP/1.1 200"), "{what}: probe {round} answered {status:?}");
        ensure!(started.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = open_fds(pid)?;
    eprintln!("{what}: {} half-sent heads held, {before} descriptors before, {during} under attack", held.len());
    ensure!(during < before + 600, "{what}: {during} descriptors open under attack ({before} before)");
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_heads_never_starve_the_api_or_the_health_listener() -> Result<()> {
    raise_fd_limit(2 * HALF_HEADS as u64 + 512)?;
    let fleet = fleet(|c| c, "").await?;
    let api = fleet.cp.bound(&["management api listening"]).await?;
    survives_slowloris(fleet.cp.pid(), api, "management api").await?;
    let health = fleet.node.bound(&["health endpoint listening"]).await?;
    survives_slowloris(fleet.node.pid(), health, "node health").await?;
    // Both still serve their own clients afterwards.
    let (code, body) = fleet.api.get("/stats").await?;
    ensure!(code == 200, "/stats after the attack: {code} {body}");
    Ok(())
}

/// Whether the server closed `stream` within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 before the close is fine; keep reading to the end.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_not_finished_within_header_read_timeout_is_closed() -> Result<()> {
    let fleet =
        fleet(|c| c.replacen("[api]\n", "[api]\nheader_read_timeout = \"1s\"\n", 1), "header_read_timeout = \"1s\"\n")
            .await?;
    for what in ["management api listening", "health endpoint listening"] {
        let addr = if what.starts_with("management") {
            fleet.cp.bound(&[what]).await?
        } else {
            fleet.node.bound(&[what]).await?
        };
        let mut slow = half_heads(addr, 1).await?.pop().context("connect")?;
        let started = Instant::now();
        ensure!(
            closed_within(&mut slow, Duration::from_secs(5)).await,
            "{what}: a half-sent head still open after 5 s"
        );
        ensure!(started.elapsed() >= Duration::from_millis(800), "{what}: closed before its timeout");
        ensure!(healthz(addr, Duration::from_secs(3)).await?.starts_with("HTTP/1.1 200"));
    }
    Ok(())
}
