//! Scenario 2, bulk transfer: one client fetching large messages whole (IMAP FETCH of
//! 20 × 5 MB per session), direct vs through the node, against the scripted backend and
//! against Dovecot (seeded with the same messages by APPEND).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::{fetch_all, open_session};
use crate::fleet::{self, ControlPlane, Node};
use crate::load::PASSWORD;
use crate::peers;
use crate::procs::Proc;
use crate::report::{Figure, Target};

const USER: &str = "bulk@example.test";
/// Length of one interleaved slice of a phase.
const SLICE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
pub struct Opts {
    pub messages: usize,
    pub message_size: usize,
    pub duration: Duration,
    pub runs: usize,
}

#[derive(Default)]
struct Transfer {
    bytes: u64,
    elapsed: Duration,
    node_cpu: f64,
}

impl Transfer {
    fn cpu_per_mb(&self) -> f64 {
        self.node_cpu * 1e6 / (self.bytes as f64 / 1e6).max(1e-9)
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs scenario 2 against the scripted backend and, when `dovecot`, against Dovecot.
pub async fn scenario(opts: &Opts, dovecot: bool, runs: &mut [Vec<Figure>]) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("switchyard-bench-bulk-").tempdir()?;
    let (_scripted, scripted_addr) = fleet::start_backend(dir.path(), opts.message_size).await?;
    // (label, destination id, address)
    let mut backends = vec![("scripted", "scripted", scripted_addr)];
    let _dovecot = match dovecot {
        true => {
            let server = switchyard_tests::Dovecot::start(&[(USER, PASSWORD)]).context("starting Dovecot")?;
            seed(server.imap_addr(), opts).await?;
            backends.push(("Dovecot", "dovecot", server.imap_addr()));
            Some(server)
        }
        false => None,
    };
    let destinations: Vec<(&str, u16)> = backends.iter().map(|(_, id, addr)| (*id, addr.port())).collect();
    let cp = ControlPlane::start(dir.path(), &destinations, "scripted", None).await?;
    let node = Node::start(dir.path(), cp.grpc).await?;
    for (name, destination, addr) in &backends {
        fleet::map_accounts(&cp.api, &[USER.to_string()], destination).await?;
        let peers = peers::start(dir.path(), *addr).await?;
        // Direct first (the baseline), then the node, then each peer.
        let mut targets: Vec<(&str, SocketAddr, Option<&Proc>)> =
            vec![("direct", *addr, None), ("Switchyard", node.imap, Some(&node.proc))];
        targets.extend(peers.list.iter().map(|p| (p.name, p.addr, Some(&p.proc))));
        for (r, figures) in runs.iter_mut().enumerate().take(opts.runs) {
            eprintln!("scenario 2 ({name}), run {}/{}", r + 1, opts.runs);
            let results = measure(&targets, opts).await?;
            let line: Vec<String> =
                targets.iter().zip(&results).map(|(t, x)| format!("{} {:.0} MB/s", t.0, x.mb_per_s())).collect();
            eprintln!("  {}", line.join(", "));
            let scenario = format!("2 bulk FETCH {} × {} MB · {name}", opts.messages, opts.message_size / 1_000_000);
            let (direct, proxy) = (&results[0], &results[1]);
            let mut rate = Figure::new(&scenario, "MB/s, 1 client", proxy.mb_per_s()).vs("direct", direct.mb_per_s());
            if *name == "scripted" {
                rate = rate.target(Target::RatioAtLeast(0.95));
            }
            figures.push(rate);
            figures.push(Figure::new(&scenario, "node CPU µs per MB", proxy.cpu_per_mb()));
            for ((peer, _, _), theirs) in targets.iter().zip(&results).skip(2) {
                figures.push(
                    Figure::new(&scenario, &format!("MB/s vs {peer}"), proxy.mb_per_s()).vs(peer, theirs.mb_per_s()),
                );
                figures.push(
                    Figure::new(&scenario, &format!("proxy CPU µs per MB vs {peer}"), proxy.cpu_per_mb())
                        .vs(peer, theirs.cpu_per_mb()),
                );
            }
        }
    }
    Ok(())
}

/// Interleaved slices of whole sessions against each target in turn.
async fn measure(targets: &[(&str, SocketAddr, Option<&Proc>)], opts: &Opts) -> Result<Vec<Transfer>> {
    let mut results: Vec<Transfer> = targets.iter().map(|_| Transfer::default()).collect();
    for (_, addr, _) in targets {
        fetch_all(*addr, USER, PASSWORD, opts.messages).await?;
    }
    let slices = (opts.duration.as_secs_f64() / SLICE.as_secs_f64()).ceil().max(1.0) as u32;
    for _ in 0..slices {
        for ((_, addr, proc), into) in targets.iter().zip(&mut results) {
            sessions(*addr, *proc, opts, opts.duration / slices, into).await?;
        }
    }
    Ok(results)
}

/// Whole sessions until `slice` is used up (at least one).
async fn sessions(
    addr: SocketAddr,
    node: Option<&Proc>,
    opts: &Opts,
    slice: Duration,
    into: &mut Transfer,
) -> Result<()> {
    let before = node.map(Proc::usage).transpose()?;
    let started = Instant::now();
    loop {
        into.bytes += fetch_all(addr, USER, PASSWORD, opts.messages).await?;
        if started.elapsed() >= slice {
            break;
        }
    }
    into.elapsed += started.elapsed();
    if let (Some(node), Some(before)) = (node, before) {
        into.node_cpu += node.usage()?.cpu_since(&before).0;
    }
    Ok(())
}

/// Puts the same messages the scripted backend serves into Dovecot's INBOX.
async fn seed(addr: SocketAddr, opts: &Opts) -> Result<()> {
    let message = crate::backend::message(opts.message_size);
    let mut conn = open_session(addr, USER, PASSWORD).await?;
    for i in 0..opts.messages {
        conn.append(&format!("p{i}"), "INBOX", &message).await?;
    }
    conn.logout().await
}
