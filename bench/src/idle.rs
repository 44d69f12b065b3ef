//! Scenario 3, idle sessions: many authenticated IMAP sessions parked on one node (against
//! the scripted backend), the node's RSS per session and its CPU while they rest.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use tokio::sync::Mutex;

use crate::client::{open_session, Conn};
use crate::fleet::{self, ControlPlane, Node};
use crate::load::{warm_account, PASSWORD};
use crate::procs::{Proc, Usage};
use crate::report::{Figure, Target};

/// Accounts the sessions cycle through (their routes are cached after the first login).
const ACCOUNTS: usize = 100;
/// Logins in flight while the sessions are opened.
const OPENERS: usize = 64;
/// File descriptors a process keeps for itself beyond the sessions' sockets.
const FD_MARGIN: u64 = 64;

#[derive(Clone, Copy)]
pub struct Opts {
    pub sessions: usize,
    pub rest: Duration,
    pub runs: usize,
}

pub async fn scenario(opts: &Opts, runs: &mut [Vec<Figure>], notes: &mut Vec<String>) -> Result<()> {
    for (r, figures) in runs.iter_mut().enumerate().take(opts.runs) {
        eprintln!("scenario 3 (idle sessions), run {}/{}", r + 1, opts.runs);
        figures.extend(one_run(opts, notes, r == 0).await?);
    }
    Ok(())
}

async fn one_run(opts: &Opts, notes: &mut Vec<String>, first: bool) -> Result<Vec<Figure>> {
    let dir = tempfile::Builder::new().prefix("switchyard-bench-idle-").tempdir()?;
    let (backend, backend_addr) = fleet::start_backend(dir.path(), 4096).await?;
    let cp = ControlPlane::start(dir.path(), &[("backend", backend_addr.port())], "backend", None).await?;
    let node = Node::start(dir.path(), cp.grpc).await?;
    // Touch every lazily built structure (route cache, worker stacks, allocator arenas) first.
    let warm = open(node.imap, OPENERS * 2).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let want = reachable(opts.sessions, &node.proc, &backend)?;
    if first && want < opts.sessions {
        notes.push(format!(
            "idle sessions: {want} of the {} asked for fit under the file-descriptor hard limit \
             ({} here; each session is 2 sockets on the node)",
            opts.sessions,
            nofile_limit(node.proc.pid()).unwrap_or(0)
        ));
    }
    let (node_before, backend_before) = (node.proc.usage()?, backend.usage()?);
    let sessions = open(node.imap, want).await?;
    let n = sessions.len();
    ensure!(n > 0, "no idle session could be opened");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (node_open, backend_open) = (node.proc.usage()?, backend.usage()?);
    tokio::time::sleep(opts.rest).await;
    let (node_rest, backend_rest) = (node.proc.usage()?, backend.usage()?);
    let per_session = |after: &Usage, before: &Usage| (after.rss_kib as f64 - before.rss_kib as f64) / n as f64;
    let node_kib = per_session(&node_open, &node_before);
    let backend_kib = per_session(&backend_open, &backend_before);
    let node_cpu = node_rest.cpu_since(&node_open).1 * 100.0;
    let backend_cpu = backend_rest.cpu_since(&backend_open).1 * 100.0;
    eprintln!("  {n} sessions: node {node_kib:.1} KiB/session, {node_cpu:.2}% of a core at rest");
    let scenario = "3 idle sessions · scripted";
    let rest = opts.rest.as_secs();
    let rows = vec![
        Figure::new(scenario, "sessions open", n as f64).vs("asked", opts.sessions as f64),
        Figure::new(scenario, "node RSS KiB per session", node_kib)
            .vs("backend's, 1 socket + task", backend_kib)
            .target(Target::AtMost(16.0)),
        Figure::new(scenario, &format!("node CPU over {rest} s at rest, % of a core"), node_cpu)
            .vs("backend's", backend_cpu)
            .target(Target::AtMost(1.0)),
        Figure::new(scenario, "node RSS MiB with sessions open", node_open.rss_kib as f64 / 1024.0)
            .vs("before", node_before.rss_kib as f64 / 1024.0),
    ];
    drop(sessions);
    Ok(rows)
}

/// Sessions that fit under the fd limits: two sockets each on the node, one each in this
/// process (the client side) and in the backend.
fn reachable(asked: usize, node: &Proc, backend: &Proc) -> Result<usize> {
    let node_room = nofile_limit(node.pid())?.saturating_sub(node.fds()? as u64 + FD_MARGIN) / 2;
    let own = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    let own_room = nofile_limit(std::process::id())?.saturating_sub(own + FD_MARGIN);
    let backend_room = nofile_limit(backend.pid())?.saturating_sub(backend.fds()? as u64 + FD_MARGIN);
    Ok((asked as u64).min(node_room).min(own_room).min(backend_room) as usize)
}

/// The soft `Max open files` of a process.
fn nofile_limit(pid: u32) -> Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    let soft = line.split_whitespace().nth(3).unwrap_or("0");
    Ok(soft.parse().unwrap_or(u64::MAX))
}

/// Opens `count` authenticated sessions with INBOX selected, `OPENERS` at a time.
async fn open(addr: SocketAddr, count: usize) -> Result<Vec<Conn>> {
    let next = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..OPENERS.min(count) {
        let (next, opened, failed) = (Arc::clone(&next), Arc::clone(&opened), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                match open_session(addr, &warm_account(i % ACCOUNTS), PASSWORD).await {
                    Ok(conn) => opened.lock().await.push(conn),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("  opening session {i} failed: {e:#}");
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("  {failed} of {count} sessions could not be opened");
    }
    let opened = std::mem::take(&mut *opened.lock().await);
    Ok(opened)
}
