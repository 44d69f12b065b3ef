//! Scenario 5, the control plane: a release control-plane process (pinned to one core) with
//! 0, 100 and 1000 simulated nodes connected; `PUT /mappings` until every node acked,
//! `/stats`, `Resolve` throughput on the gRPC API, and memory per connected node.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;
use switchyard_tests::fleet::Api;
use switchyard_tests::simnodes::SimFleet;

use crate::fleet::{node_token, ControlPlane};
use crate::procs::Usage;
use crate::report::{Figure, Target};
use crate::resolve;
use crate::stats::Latencies;

/// The core the control plane is pinned to (the load client has the other one mostly).
const CP_CORE: usize = 1;

#[derive(Clone, Copy)]
pub struct Opts {
    /// PUTs (and `/stats` GETs) timed per fleet size.
    pub requests: usize,
    pub resolve_duration: Duration,
    pub fleet_sizes: [usize; 2],
    pub runs: usize,
}

pub async fn scenario(opts: &Opts, runs: &mut [Vec<Figure>]) -> Result<()> {
    for (r, figures) in runs.iter_mut().enumerate().take(opts.runs) {
        eprintln!("scenario 5 (control plane), run {}/{}", r + 1, opts.runs);
        figures.extend(one_run(opts).await?);
    }
    Ok(())
}

/// PUT and `/stats` latencies at one fleet size.
struct ApiTimes {
    put: Latencies,
    stats: Latencies,
}

async fn one_run(opts: &Opts) -> Result<Vec<Figure>> {
    let dir = tempfile::Builder::new().prefix("switchyard-bench-cp-").tempdir()?;
    let cp = ControlPlane::start(dir.path(), &[("a", 1143), ("b", 1144)], "a", Some(CP_CORE)).await?;
    let endpoint = format!("http://{}", cp.grpc);
    let mut zero = time_api(&cp.api, opts.requests, 0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = cp.proc.usage()?.rss_kib;

    let [small, large] = opts.fleet_sizes;
    let first = connect(&endpoint, "sim", small).await?;
    let mut at_small = time_api(&cp.api, opts.requests, 1).await?;
    let before = (cp.proc.usage()?, Usage::of_self()?);
    let rate = resolve::throughput(&endpoint, opts.resolve_duration).await?;
    let after = (cp.proc.usage()?, Usage::of_self()?);
    let mut one = resolve::latency(&endpoint, Duration::from_secs(1)).await?;
    let (cp_cpu_s, cp_share) = after.0.cpu_since(&before.0);
    let client_share = after.1.cpu_since(&before.1).1;
    let per_core = rate.ok as f64 / cp_cpu_s.max(1e-9);
    eprintln!(
        "  Resolve {:.0}/s (control plane {:.0}% of a core, client {:.0}%)",
        rate.per_sec(),
        cp_share * 100.0,
        client_share * 100.0
    );

    let second = connect(&endpoint, "sim-more", large - small).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_large = cp.proc.usage()?.rss_kib;
    let mut at_large = time_api(&cp.api, opts.requests, 2).await?;
    first.stop().await;
    second.stop().await;

    let mut rows = Vec::new();
    for (n, times) in [(small, &mut at_small), (large, &mut at_large)] {
        let s = format!("5 control plane · {n} nodes");
        let mut p99 = Figure::new(&s, "PUT → every ack, p99 ms", times.put.percentile_ms(99.0))
            .vs("0 nodes", zero.put.percentile_ms(99.0));
        if n == 100 {
            p99 = p99.target(Target::AtMost(100.0));
        }
        rows.push(
            Figure::new(&s, "PUT → every ack, p50 ms", times.put.percentile_ms(50.0))
                .vs("0 nodes", zero.put.percentile_ms(50.0)),
        );
        rows.push(p99);
        rows.push(
            Figure::new(&s, "GET /stats p50 ms", times.stats.percentile_ms(50.0))
                .vs("0 nodes", zero.stats.percentile_ms(50.0)),
        );
        rows.push(
            Figure::new(&s, "GET /stats p99 ms", times.stats.percentile_ms(99.0))
                .vs("0 nodes", zero.stats.percentile_ms(99.0)),
        );
    }
    let s = format!("5 control plane · Resolve, {small} nodes");
    rows.push(Figure::new(&s, "Resolve/s, control plane on 1 core", rate.per_sec()));
    rows.push(Figure::new(&s, "Resolve per control-plane CPU-second", per_core).target(Target::AtLeast(20_000.0)));
    rows.push(Figure::new(&s, "control-plane CPU, % of a core", cp_share * 100.0));
    let failed = rate.errors as f64 * 1e6 / (rate.ok + rate.errors).max(1) as f64;
    rows.push(Figure::new(&s, "Resolve calls failed per million", failed));
    rows.push(Figure::new(&s, "Resolve p50 ms, 1 in flight", one.percentile_ms(50.0)));
    rows.push(Figure::new(&s, "Resolve p99 ms, 1 in flight", one.percentile_ms(99.0)));
    rows.push(Figure::new(&s, "load client CPU, % of a core", client_share * 100.0));
    let s = format!("5 control plane · memory, {large} nodes");
    rows.push(Figure::new(&s, "RSS KiB per connected node", (rss_large as f64 - rss0 as f64) / large as f64));
    rows.push(Figure::new(&s, "RSS MiB", rss_large as f64 / 1024.0).vs("0 nodes", rss0 as f64 / 1024.0));
    Ok(rows)
}

/// Connects `count` simulated nodes and waits until every one was welcomed.
async fn connect(endpoint: &str, prefix: &str, count: usize) -> Result<SimFleet> {
    let started = Instant::now();
    let fleet = SimFleet::start(endpoint, node_token(), prefix, count).await?;
    while fleet.welcomed() < count {
        if started.elapsed() > Duration::from_secs(90) {
            bail!("only {} of {count} simulated nodes welcomed after 90 s", fleet.welcomed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("  {count} simulated nodes connected in {:.1} s", started.elapsed().as_secs_f64());
    Ok(fleet)
}

/// Times `requests` PUTs (each answered once every connected node acked) and as many
/// `GET /stats`. `round` keeps keys apart between fleet sizes so every PUT is a change.
async fn time_api(api: &Api, requests: usize, round: usize) -> Result<ApiTimes> {
    let mut times = ApiTimes { put: Latencies::default(), stats: Latencies::default() };
    for i in 0..requests {
        let destination = if i % 2 == 0 { "b" } else { "a" };
        let t0 = Instant::now();
        let (code, body) =
            api.put(&format!("/mappings/put{round}-{i}@example.test"), json!({ "destination": destination })).await?;
        times.put.push(t0.elapsed());
        if code != 200 {
            bail!("PUT answered {code}: {body}");
        }
        if body["nodes"].as_array().is_some_and(|n| n.iter().any(|n| n["result"] != "applied")) {
            bail!("a node did not ack the PUT: {body}");
        }
    }
    for _ in 0..requests {
        let t0 = Instant::now();
        let (code, body) = api.get("/stats").await?;
        times.stats.push(t0.elapsed());
        if code != 200 {
            bail!("GET /stats answered {code}: {body}");
        }
    }
    Ok(times)
}
