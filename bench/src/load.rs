//! Closed-loop load: N client tasks repeating login cycles against one address for a fixed
//! time, with per-cycle latencies and the CPU each process spent meanwhile.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::client::login_cycle;
use crate::procs::{machine_busy, Proc, Usage};
use crate::stats::Latencies;

pub const PASSWORD: &str = "pw";

/// Which account each cycle logs in as.
#[derive(Clone)]
pub enum Accounts {
    /// Client `i` always uses `names[i % len]`: after the first login, every lookup hits.
    Fixed(Arc<Vec<String>>),
    /// Every cycle takes the next `cold{n}@example.test`: every login is a cache miss, as
    /// long as `n` stays below `pool` (Dovecot knows only that many accounts).
    Fresh { next: Arc<AtomicUsize>, pool: Option<usize> },
}

impl Accounts {
    pub fn fixed(names: &[String]) -> Accounts {
        Accounts::Fixed(Arc::new(names.to_vec()))
    }

    pub fn fresh(pool: Option<usize>) -> Accounts {
        Accounts::Fresh { next: Arc::new(AtomicUsize::new(0)), pool }
    }

    fn pick(&self, client: usize) -> String {
        match self {
            Accounts::Fixed(names) => names[client % names.len()].clone(),
            Accounts::Fresh { next, pool } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                cold_account(pool.map_or(n, |p| n % p))
            }
        }
    }

    /// How many fresh accounts were used, and whether the pool wrapped (then some hit).
    pub fn used(&self) -> Option<(usize, bool)> {
        match self {
            Accounts::Fixed(_) => None,
            Accounts::Fresh { next, pool } => {
                let n = next.load(Ordering::Relaxed);
                Some((n, pool.is_some_and(|p| n > p)))
            }
        }
    }
}

pub fn warm_account(i: usize) -> String {
    format!("bench{i}@example.test")
}

pub fn cold_account(i: usize) -> String {
    format!("cold{i}@example.test")
}

/// One measured phase.
pub struct Phase {
    pub cycles: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies: Latencies,
    pub elapsed: Duration,
    /// CPU seconds per process over the phase: load client, node, backend (when measured).
    pub client_cpu: f64,
    pub node_cpu: Option<f64>,
    pub backend_cpu: Option<f64>,
    pub cp_cpu: Option<f64>,
    /// Busy CPU seconds of the whole machine (other sessions' builds included).
    pub machine_cpu: f64,
}

impl Phase {
    pub fn empty() -> Phase {
        Phase {
            cycles: 0,
            errors: 0,
            first_error: None,
            latencies: Latencies::default(),
            elapsed: Duration::ZERO,
            client_cpu: 0.0,
            node_cpu: None,
            backend_cpu: None,
            cp_cpu: None,
            machine_cpu: 0.0,
        }
    }

    /// Adds a later slice of the same phase.
    pub fn merge(&mut self, other: Phase) {
        let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self.cycles += other.cycles;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
        self.client_cpu += other.client_cpu;
        self.node_cpu = add(self.node_cpu, other.node_cpu);
        self.backend_cpu = add(self.backend_cpu, other.backend_cpu);
        self.cp_cpu = add(self.cp_cpu, other.cp_cpu);
        self.machine_cpu += other.machine_cpu;
    }

    /// `cpu` seconds as a share of one core over the phase, in percent.
    pub fn share(&self, cpu: f64) -> f64 {
        cpu / self.elapsed.as_secs_f64().max(1e-9) * 100.0
    }

    pub fn rate(&self) -> f64 {
        self.cycles as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p(&mut self, percentile: f64) -> f64 {
        self.latencies.percentile_ms(percentile)
    }

    /// CPU microseconds per completed cycle.
    pub fn per_cycle_us(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.cycles.max(1) as f64
    }
}

/// The processes whose CPU time a phase records.
#[derive(Clone, Copy, Default)]
pub struct Watch<'a> {
    pub node: Option<&'a Proc>,
    pub backend: Option<&'a Proc>,
    pub cp: Option<&'a Proc>,
}

impl Watch<'_> {
    fn usage(&self) -> Result<[Option<Usage>; 3]> {
        let one = |p: Option<&Proc>| p.map(Proc::usage).transpose();
        Ok([one(self.node)?, one(self.backend)?, one(self.cp)?])
    }
}

/// Runs `clients` loops of login cycles against `addr` for `duration`.
pub async fn run(
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
    accounts: &Accounts,
    watch: Watch<'_>,
) -> Result<Phase> {
    let before = (Usage::of_self()?, watch.usage()?);
    let machine_before = machine_busy()?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let (mut errors, mut first_error) = (0u64, None);
            while Instant::now() < deadline {
                let user = accounts.pick(client);
                let t0 = Instant::now();
                match login_cycle(addr, &user, PASSWORD).await {
                    Ok(()) => latencies.push(t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut phase = Phase::empty();
    for task in tasks {
        let (latencies, errors, first_error) = task.await?;
        phase.latencies.extend(latencies);
        phase.errors += errors;
        if phase.first_error.is_none() {
            phase.first_error = first_error;
        }
    }
    phase.elapsed = started.elapsed();
    phase.cycles = phase.latencies.len() as u64;
    phase.client_cpu = Usage::of_self()?.cpu_since(&before.0).0;
    phase.machine_cpu = (machine_busy()? - machine_before).as_secs_f64();
    let after = watch.usage()?;
    let spent = |i: usize| match (after[i], before.1[i]) {
        (Some(a), Some(b)) => Some(a.cpu_since(&b).0),
        _ => None,
    };
    (phase.node_cpu, phase.backend_cpu, phase.cp_cpu) = (spent(0), spent(1), spent(2));
    if phase.errors > 0 {
        eprintln!(
            "  {} of {} cycles failed; first: {}",
            phase.errors,
            phase.errors + phase.cycles,
            phase.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(phase)
}
