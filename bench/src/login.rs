//! Scenario 1, the IMAP login cycle: direct to the backend vs through the node, with a warm
//! route cache (the same few accounts) and a cold one (every login a `Resolve`), against the
//! scripted backend and against real Dovecot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::fleet::{self, ControlPlane, Node};
use crate::load::{self, cold_account, warm_account, Accounts, Phase, Watch, PASSWORD};
use crate::peers;
use crate::procs::Proc;
use crate::report::{Figure, Target};

/// Length of one interleaved slice of a phase.
const SLICE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
pub struct Opts {
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub runs: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Scripted,
    Dovecot,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Scripted => "scripted",
            Backend::Dovecot => "Dovecot",
        }
    }
}

/// What the backend is: its address, and its process when the bench runs it.
struct Server {
    addr: SocketAddr,
    proc: Option<Proc>,
    /// Fresh accounts the backend knows (Dovecot); `None` accepts any.
    pool: Option<usize>,
    _dovecot: Option<switchyard_tests::Dovecot>,
}

/// Runs scenario 1 against `backend` for every run; figures go to `runs[r]`.
pub async fn scenario(backend: Backend, opts: &Opts, runs: &mut [Vec<Figure>], notes: &mut Vec<String>) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("switchyard-bench-login-").tempdir()?;
    let warm: Vec<String> = (0..opts.clients).map(warm_account).collect();
    let target = start_backend(backend, dir.path(), &warm, opts).await?;
    let cp = ControlPlane::start(dir.path(), &[("backend", target.addr.port())], "backend", None).await?;
    let node = Node::start(dir.path(), cp.grpc).await?;
    let peers = peers::start(dir.path(), target.addr).await?;
    fleet::map_accounts(&cp.api, &warm, "backend").await?;
    let label = backend.label();
    let fixed = Accounts::fixed(&warm);
    let direct_watch = Watch { backend: target.proc.as_ref(), ..Watch::default() };
    let proxy_watch = Watch { node: Some(&node.proc), cp: Some(&cp.proc), ..direct_watch };
    for (r, figures) in runs.iter_mut().enumerate().take(opts.runs) {
        eprintln!("scenario 1 ({label}), run {}/{}", r + 1, opts.runs);
        load::run(target.addr, opts.clients, opts.warmup, &fixed, direct_watch).await?;
        load::run(node.imap, opts.clients, opts.warmup, &fixed, proxy_watch).await?;
        for peer in &peers.list {
            load::run(peer.addr, opts.clients, opts.warmup, &fixed, direct_watch).await?;
        }
        let mut peer_phases: Vec<Phase> = peers.list.iter().map(|_| Phase::empty()).collect();
        // Slices of each phase interleave, so load from outside the bench (the machine is
        // shared) falls on direct and proxied phases alike.
        let slices = (opts.duration.as_secs_f64() / SLICE.as_secs_f64()).ceil().max(1.0) as u32;
        let slice = opts.duration / slices;
        let fresh = Accounts::fresh(target.pool);
        let (mut direct, mut warm_phase, mut cold) = (Phase::empty(), Phase::empty(), Phase::empty());
        for _ in 0..slices {
            direct.merge(load::run(target.addr, opts.clients, slice, &fixed, direct_watch).await?);
            fleet::invalidate_cache(&cp.api).await?;
            cold.merge(load::run(node.imap, opts.clients, slice, &fresh, proxy_watch).await?);
            rewarm(node.imap, &warm).await?;
            warm_phase.merge(load::run(node.imap, opts.clients, slice, &fixed, proxy_watch).await?);
            for (peer, phase) in peers.list.iter().zip(&mut peer_phases) {
                let watch = Watch { node: Some(&peer.proc), ..direct_watch };
                phase.merge(load::run(peer.addr, opts.clients, slice, &fixed, watch).await?);
            }
        }
        if let Some((used, true)) = fresh.used() {
            notes.push(format!("{label} cold run {}: {used} logins wrapped the {:?}-account pool", r + 1, target.pool));
        }
        eprintln!("  direct {:.0}/s, warm {:.0}/s, cold {:.0}/s", direct.rate(), warm_phase.rate(), cold.rate());
        let clients = opts.clients;
        let warm_name = format!("1 login · {label} · warm, {clients} clients");
        figures.extend(compare(&warm_name, &mut direct, &mut warm_phase, backend));
        if backend == Backend::Scripted {
            figures.extend(cpu_rows(&warm_name, &direct, &warm_phase));
        }
        figures.extend(compare(
            &format!("1 login · {label} · cold, {clients} clients"),
            &mut direct,
            &mut cold,
            backend,
        ));
        for (peer, phase) in peers.list.iter().zip(&mut peer_phases) {
            eprintln!("  {} {:.0}/s", peer.name, phase.rate());
            let scenario = format!("1 login · {label} · {}, {clients} clients", peer.name);
            figures.extend(compare(&scenario, &mut direct, phase, backend));
            let scenario = format!("1 login · {label} · Switchyard vs peers");
            figures.extend(versus(&scenario, peer.name, &warm_phase, &cold, phase));
        }
        if backend == Backend::Scripted {
            // One client: the hop's own latency, without queueing behind other logins.
            let (mut direct1, mut warm1, mut cold1) = (Phase::empty(), Phase::empty(), Phase::empty());
            for _ in 0..slices {
                direct1.merge(load::run(target.addr, 1, slice / 2, &fixed, direct_watch).await?);
                warm1.merge(load::run(node.imap, 1, slice / 2, &fixed, proxy_watch).await?);
                fleet::invalidate_cache(&cp.api).await?;
                cold1.merge(load::run(node.imap, 1, slice / 2, &fresh, proxy_watch).await?);
                rewarm(node.imap, &warm).await?;
            }
            figures.extend(latency_rows(
                &format!("1 login · {label} · warm, 1 client"),
                &mut direct1,
                &mut warm1,
                true,
            ));
            figures.extend(latency_rows(
                &format!("1 login · {label} · cold, 1 client"),
                &mut direct1,
                &mut cold1,
                false,
            ));
        }
    }
    drop(node);
    drop(cp);
    Ok(())
}

/// The rows comparing a proxied phase with the direct one of the same run. Targets: the
/// issue sets the throughput ratio against Dovecot and the added p50 against the fast backend.
fn compare(scenario: &str, direct: &mut Phase, proxy: &mut Phase, backend: Backend) -> Vec<Figure> {
    let warm = scenario.contains("warm");
    let mut rate = Figure::new(scenario, "login cycles/s", proxy.rate()).vs("direct", direct.rate());
    if warm && backend == Backend::Dovecot {
        rate = rate.target(Target::RatioAtLeast(0.85));
    }
    let mut rows = vec![rate];
    rows.extend(latency_rows(scenario, direct, proxy, warm && backend == Backend::Scripted));
    if let Some(cpu) = proxy.node_cpu {
        let row = Figure::new(scenario, "proxy CPU µs per cycle", proxy.per_cycle_us(cpu));
        rows.push(match proxy.backend_cpu {
            Some(b) => row.vs("backend's own", proxy.per_cycle_us(b)),
            None => row,
        });
    }
    if let Some(cpu) = proxy.cp_cpu.filter(|_| !warm) {
        rows.push(Figure::new(scenario, "control-plane CPU µs per cycle", proxy.per_cycle_us(cpu)));
    }
    rows
}

/// Switchyard's login throughput and CPU per login against one peer's, same run. nginx
/// asks its auth service on every login, like Switchyard with a cold cache.
fn versus(scenario: &str, peer: &str, warm: &Phase, cold: &Phase, other: &Phase) -> Vec<Figure> {
    // The target is parity with nginx mail; HAProxy is the floor, no routing.
    let mut rate =
        Figure::new(scenario, &format!("cycles/s, warm cache vs {peer}"), warm.rate()).vs(peer, other.rate());
    if peer == "nginx mail" {
        rate = rate.target(Target::RatioAtLeast(1.0));
    }
    let mut rows = vec![
        rate,
        Figure::new(scenario, &format!("cycles/s, cold cache vs {peer}"), cold.rate()).vs(peer, other.rate()),
    ];
    if let (Some(node), Some(theirs)) = (warm.node_cpu, other.node_cpu) {
        let metric = format!("proxy CPU µs per cycle, warm vs {peer}");
        rows.push(Figure::new(scenario, &metric, warm.per_cycle_us(node)).vs(peer, other.per_cycle_us(theirs)));
    }
    rows
}

/// Where the CPU went in the warm phase: node, load client, and everything else on the
/// machine (other sessions' builds and tests share it).
fn cpu_rows(scenario: &str, direct: &Phase, proxy: &Phase) -> Vec<Figure> {
    let others = |p: &Phase| {
        let ours = p.client_cpu + p.node_cpu.unwrap_or(0.0) + p.backend_cpu.unwrap_or(0.0) + p.cp_cpu.unwrap_or(0.0);
        p.share(p.machine_cpu - ours)
    };
    vec![
        Figure::new(scenario, "node CPU, % of a core", proxy.share(proxy.node_cpu.unwrap_or(0.0))),
        Figure::new(scenario, "load client CPU, % of a core", proxy.share(proxy.client_cpu))
            .vs("direct run", direct.share(direct.client_cpu)),
        Figure::new(scenario, "backend CPU, % of a core", proxy.share(proxy.backend_cpu.unwrap_or(0.0)))
            .vs("direct run", direct.share(direct.backend_cpu.unwrap_or(0.0))),
        Figure::new(scenario, "other processes' CPU, % of a core", others(proxy)).vs("direct run", others(direct)),
    ]
}

fn latency_rows(scenario: &str, direct: &mut Phase, proxy: &mut Phase, target: bool) -> Vec<Figure> {
    let (d50, d99, p50, p99) = (direct.p(50.0), direct.p(99.0), proxy.p(50.0), proxy.p(99.0));
    let mut added = Figure::new(scenario, "added p50 ms", p50 - d50);
    if target {
        added = added.target(Target::AtMost(0.5));
    }
    vec![
        Figure::new(scenario, "p50 ms per cycle", p50).vs("direct", d50),
        Figure::new(scenario, "p99 ms per cycle", p99).vs("direct", d99),
        added,
        Figure::new(scenario, "added p99 ms", p99 - d99),
    ]
}

/// One login per warm account through the node, so its routes are cached again after a
/// cold slice invalidated them.
async fn rewarm(node: SocketAddr, accounts: &[String]) -> Result<()> {
    for account in accounts {
        crate::client::login_cycle(node, account, PASSWORD).await?;
    }
    Ok(())
}

async fn start_backend(backend: Backend, dir: &std::path::Path, warm: &[String], opts: &Opts) -> Result<Server> {
    match backend {
        Backend::Scripted => {
            let (proc, addr) = fleet::start_backend(dir, 4096).await?;
            Ok(Server { addr, proc: Some(proc), pool: None, _dovecot: None })
        }
        Backend::Dovecot => {
            // Enough fresh accounts for a cold phase at a generous 400 logins/s.
            let pool = 400 * opts.duration.as_secs().max(1) as usize + 200;
            let mut users: Vec<String> = warm.to_vec();
            users.extend((0..pool).map(cold_account));
            let pairs: Vec<(&str, &str)> = users.iter().map(|u| (u.as_str(), PASSWORD)).collect();
            let dovecot = switchyard_tests::Dovecot::start(&pairs).context("starting Dovecot")?;
            let addr = dovecot.imap_addr();
            eprintln!("scenario 1 (Dovecot): first login of {pool} accounts (creates their maildirs)");
            prewarm(addr, pool, opts.clients).await?;
            Ok(Server { addr, proc: None, pool: Some(pool), _dovecot: Some(dovecot) })
        }
    }
}

/// Logs every pool account in once, directly, so a cold phase costs Dovecot no more than a
/// warm one (its first login creates the maildir).
async fn prewarm(addr: SocketAddr, pool: usize, clients: usize) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pool {
                    return Ok::<_, anyhow::Error>(());
                }
                crate::client::login_cycle(addr, &cold_account(i), PASSWORD).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
