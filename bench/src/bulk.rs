//! Scenario 2, bulk transfer, one client at a time: fetching large messages whole (IMAP
//! FETCH of 20 × 5 MB per session) and delivering them (LMTP, 20 × 5 MB per session),
//! direct vs through the node vs the peers, against the scripted backend and against
//! Dovecot (seeded with the same messages by APPEND; deliveries removed after each slice).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::{fetch_all, open_session};
use crate::fleet::{self, ControlPlane, Dest, Node};
use crate::load::PASSWORD;
use crate::peers::{self, Peers};
use crate::procs::Proc;
use crate::report::{Figure, Target};

const USER: &str = "bulk@example.test";
/// The LMTP recipient (its own mailbox at Dovecot, emptied after each slice).
const RECIPIENT: &str = "deliver@example.test";
/// Length of one interleaved slice of a phase.
const SLICE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
pub struct Opts {
    pub messages: usize,
    pub message_size: usize,
    pub duration: Duration,
    pub runs: usize,
}

/// What one session of a phase does.
#[derive(Clone)]
enum Workload {
    /// FETCH messages 1..=n whole.
    Fetch,
    /// Deliver the message n times over LMTP; the delivered files are then removed from
    /// `spool` (Dovecot's maildir of the recipient), so the disk does not fill up.
    Deliver { message: Arc<[u8]>, spool: Option<PathBuf> },
}

impl Workload {
    fn label(&self) -> &'static str {
        match self {
            Workload::Fetch => "FETCH",
            Workload::Deliver { .. } => "LMTP",
        }
    }

    async fn session(&self, addr: SocketAddr, opts: &Opts) -> Result<u64> {
        match self {
            Workload::Fetch => fetch_all(addr, USER, PASSWORD, opts.messages).await,
            Workload::Deliver { message, .. } => {
                crate::lmtp::deliver_all(addr, RECIPIENT, message, opts.messages).await
            }
        }
    }

    fn clean_up(&self) -> Result<()> {
        if let Workload::Deliver { spool: Some(maildir), .. } = self {
            for sub in ["new", "cur"] {
                let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else { continue };
                for entry in entries {
                    std::fs::remove_file(entry?.path())?;
                }
            }
        }
        Ok(())
    }
}

/// One backend the scenario runs against.
struct Backend {
    name: &'static str,
    destination: &'static str,
    imap: SocketAddr,
    lmtp: SocketAddr,
    /// The LMTP recipient's maildir, for a backend that keeps what it is sent.
    spool: Option<PathBuf>,
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
    let (mut scripted, scripted_imap) = fleet::start_backend(dir.path(), opts.message_size).await?;
    let scripted_lmtp = fleet::backend_lmtp(&mut scripted).await?;
    let mut backends = vec![Backend {
        name: "scripted",
        destination: "scripted",
        imap: scripted_imap,
        lmtp: scripted_lmtp,
        spool: None,
    }];
    let _dovecot = match dovecot {
        true => {
            let users = [(USER, PASSWORD), (RECIPIENT, PASSWORD)];
            let server = switchyard_tests::Dovecot::start(&users).context("starting Dovecot")?;
            seed(server.imap_addr(), opts).await?;
            // Homes are numbered in the order of `users`.
            let spool = server.dir().join("home").join("user1").join("Maildir");
            backends.push(Backend {
                name: "Dovecot",
                destination: "dovecot",
                imap: server.imap_addr(),
                lmtp: server.lmtp_addr(),
                spool: Some(spool),
            });
            Some(server)
        }
        false => None,
    };
    let destinations: Vec<Dest<'_>> =
        backends.iter().map(|b| Dest { id: b.destination, imap: b.imap.port(), lmtp: Some(b.lmtp.port()) }).collect();
    let cp = ControlPlane::start_with(dir.path(), &destinations, "scripted", None).await?;
    let node = Node::start(dir.path(), cp.grpc).await?;
    let message: Arc<[u8]> = crate::backend::message(opts.message_size).into();
    for backend in &backends {
        fleet::map_accounts(&cp.api, &[USER.to_string(), RECIPIENT.to_string()], backend.destination).await?;
        let deliver = Workload::Deliver { message: Arc::clone(&message), spool: backend.spool.clone() };
        let fetch_peers = peers::start(dir.path(), backend.imap).await?;
        let lmtp_peers = peers::start_lmtp(dir.path(), backend.lmtp).await?;
        let workloads =
            [(Workload::Fetch, backend.imap, node.imap, &fetch_peers), (deliver, backend.lmtp, node.lmtp, &lmtp_peers)];
        for (workload, direct, through_node, peers) in &workloads {
            let targets = targets(*direct, *through_node, &node.proc, peers);
            for (r, figures) in runs.iter_mut().enumerate().take(opts.runs) {
                eprintln!("scenario 2 ({} {}), run {}/{}", workload.label(), backend.name, r + 1, opts.runs);
                let results = measure(&targets, workload, opts).await?;
                figures.extend(rows(backend.name, workload, &targets, &results, opts));
            }
        }
    }
    Ok(())
}

/// Direct first (the baseline), then the node, then each peer.
fn targets<'a>(
    direct: SocketAddr,
    node: SocketAddr,
    node_proc: &'a Proc,
    peers: &'a Peers,
) -> Vec<(&'a str, SocketAddr, Option<&'a Proc>)> {
    let mut targets = vec![("direct", direct, None), ("Switchyard", node, Some(node_proc))];
    targets.extend(peers.list.iter().map(|p| (p.name, p.addr, Some(&p.proc))));
    targets
}

/// One run's rows: throughput against direct (the target, on the fast backend), the node's
/// CPU per MB, and both against each peer.
fn rows(
    backend: &str,
    workload: &Workload,
    targets: &[(&str, SocketAddr, Option<&Proc>)],
    results: &[Transfer],
    opts: &Opts,
) -> Vec<Figure> {
    let line: Vec<String> =
        targets.iter().zip(results).map(|(t, x)| format!("{} {:.0} MB/s", t.0, x.mb_per_s())).collect();
    eprintln!("  {}", line.join(", "));
    let size = opts.message_size / 1_000_000;
    let scenario = format!("2 bulk {} {} × {size} MB · {backend}", workload.label(), opts.messages);
    let (direct, proxy) = (&results[0], &results[1]);
    let mut rate = Figure::new(&scenario, "MB/s, 1 client", proxy.mb_per_s()).vs("direct", direct.mb_per_s());
    if backend == "scripted" {
        rate = rate.target(Target::RatioAtLeast(0.95));
    }
    let mut figures = vec![rate, Figure::new(&scenario, "node CPU µs per MB", proxy.cpu_per_mb())];
    for ((peer, _, _), theirs) in targets.iter().zip(results).skip(2) {
        figures.push(Figure::new(&scenario, &format!("MB/s vs {peer}"), proxy.mb_per_s()).vs(peer, theirs.mb_per_s()));
        figures.push(
            Figure::new(&scenario, &format!("proxy CPU µs per MB vs {peer}"), proxy.cpu_per_mb())
                .vs(peer, theirs.cpu_per_mb()),
        );
    }
    figures
}

/// Interleaved slices of whole sessions against each target in turn.
async fn measure(
    targets: &[(&str, SocketAddr, Option<&Proc>)],
    workload: &Workload,
    opts: &Opts,
) -> Result<Vec<Transfer>> {
    let mut results: Vec<Transfer> = targets.iter().map(|_| Transfer::default()).collect();
    for (_, addr, _) in targets {
        workload.session(*addr, opts).await?;
        workload.clean_up()?;
    }
    let slices = (opts.duration.as_secs_f64() / SLICE.as_secs_f64()).ceil().max(1.0) as u32;
    for _ in 0..slices {
        for ((_, addr, proc), into) in targets.iter().zip(&mut results) {
            sessions(*addr, *proc, workload, opts, opts.duration / slices, into).await?;
            workload.clean_up()?;
        }
    }
    Ok(results)
}

/// Whole sessions until `slice` is used up (at least one).
async fn sessions(
    addr: SocketAddr,
    node: Option<&Proc>,
    workload: &Workload,
    opts: &Opts,
    slice: Duration,
    into: &mut Transfer,
) -> Result<()> {
    let before = node.map(Proc::usage).transpose()?;
    let started = Instant::now();
    loop {
        into.bytes += workload.session(addr, opts).await?;
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
