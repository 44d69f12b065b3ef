//! Scenario 6, the node's route cache under a steady write load, in this process: 64 clients
//! look up accounts that are not cached yet (each lookup a `Resolve`, answered after a
//! simulated 1 ms round trip), first alone, then while route changes of other accounts are
//! pushed at 2,000 a second. A change to one account must not make lookups of others ask
//! the control plane again: the figures are `Resolve` calls per lookup and lookups per
//! second with the write load against the same phase without it, in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use dataplane::route::{Resolved, Resolver, RouteCache, RouteError};
use dataplane::settings::CacheSettings;
use futures::future::{BoxFuture, FutureExt};

use crate::report::{Figure, Target};
use crate::stats::Latencies;

const CLIENTS: usize = 64;
const RTT: Duration = Duration::from_millis(1);
const WRITES_PER_SEC: u64 = 2000;

#[derive(Clone, Copy)]
pub struct Opts {
    pub duration: Duration,
    pub runs: usize,
}

/// A control plane that answers every key after [`RTT`], counting the calls.
struct Remote {
    calls: Arc<AtomicU64>,
}

impl Resolver for Remote {
    fn resolve(&self, _key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        async {
            tokio::time::sleep(RTT).await;
            Ok(Resolved { destination: "new".into(), mapped: true })
        }
        .boxed()
    }
}

/// What one phase measured.
struct Phase {
    lookups: u64,
    resolves: u64,
    writes: u64,
    elapsed: Duration,
    latencies: Latencies,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.lookups as f64 / self.elapsed.as_secs_f64()
    }

    fn resolves_per_lookup(&self) -> f64 {
        self.resolves as f64 / self.lookups.max(1) as f64
    }
}

pub async fn scenario(opts: &Opts, runs: &mut [Vec<Figure>]) -> Result<()> {
    for (r, figures) in runs.iter_mut().enumerate().take(opts.runs) {
        eprintln!("scenario 6 (route cache under writes), run {}/{}", r + 1, opts.runs);
        let mut quiet = phase(opts.duration, 0).await?;
        let mut busy = phase(opts.duration, WRITES_PER_SEC).await?;
        eprintln!(
            "  {:.0} lookups/s, {:.3} Resolve per lookup alone; {:.0}/s, {:.3} with {} writes",
            quiet.per_sec(),
            quiet.resolves_per_lookup(),
            busy.per_sec(),
            busy.resolves_per_lookup(),
            busy.writes
        );
        let s = format!("6 route cache · {WRITES_PER_SEC} writes/s to other accounts");
        figures.push(
            Figure::new(&s, "uncached lookups/s", busy.per_sec())
                .vs("no writes", quiet.per_sec())
                .target(Target::RatioAtLeast(0.95)),
        );
        figures.push(
            Figure::new(&s, "Resolve calls per lookup", busy.resolves_per_lookup())
                .vs("no writes", quiet.resolves_per_lookup())
                .target(Target::AtMost(1.0)),
        );
        figures.push(
            Figure::new(&s, "lookup p99 ms", busy.latencies.percentile_ms(99.0))
                .vs("no writes", quiet.latencies.percentile_ms(99.0)),
        );
    }
    Ok(())
}

/// [`CLIENTS`] closed-loop clients looking up fresh accounts for `duration`, while another
/// task pushes `writes_per_sec` changes of other accounts (0: none).
async fn phase(duration: Duration, writes_per_sec: u64) -> Result<Phase> {
    let calls = Arc::new(AtomicU64::new(0));
    let settings = CacheSettings {
        positive_ttl: Duration::from_secs(600),
        negative_ttl: Duration::from_secs(30),
        max_stale: Duration::from_secs(3600),
        // Nothing is evicted: the scenario measures lookups, not eviction.
        max_bytes: 64 << 30,
        negative_max_bytes: 64 << 30,
    };
    let cache = RouteCache::new(settings, Arc::new(Remote { calls: Arc::clone(&calls) }));
    let started = Instant::now();
    let deadline = started + duration;
    let writer = tokio::spawn(write_load(Arc::clone(&cache), writes_per_sec, deadline));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                let mut latencies = Latencies::default();
                for i in 0.. {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let asked = Instant::now();
                    cache.lookup(&format!("client{c}-{i}@example.test")).await?;
                    latencies.push(asked.elapsed());
                }
                Ok::<_, RouteError>(latencies)
            })
        })
        .collect();
    let mut latencies = Latencies::default();
    for client in clients {
        latencies.extend(client.await??);
    }
    let elapsed = started.elapsed();
    let writes = writer.await?;
    ensure!(writes_per_sec == 0 || writes > 0, "the write load never ran");
    let lookups = latencies.len() as u64;
    Ok(Phase { lookups, resolves: calls.load(Ordering::Relaxed), writes, elapsed, latencies })
}

/// Pushes route changes of accounts nobody looks up, `per_sec` of them a second in 1 ms
/// ticks, until `deadline`; returns how many.
async fn write_load(cache: Arc<RouteCache>, per_sec: u64, deadline: Instant) -> u64 {
    if per_sec == 0 {
        return 0;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    let mut written = 0;
    while Instant::now() < deadline {
        tick.tick().await;
        // Catch up with the rate whatever the timer's granularity.
        let due = (started.elapsed().as_secs_f64() * per_sec as f64) as u64;
        while written < due {
            cache.upsert(&format!("moved{written}@example.test"), "new");
            written += 1;
        }
    }
    written
}
