//! `Resolve` load on the control plane's gRPC API: a few HTTP/2 connections with many
//! requests in flight, the node token in `authorization: Bearer` metadata.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_client::ControlClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

use crate::stats::Latencies;

/// HTTP/2 connections, and requests in flight on each.
const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 32;
/// Keys looked up: a mix of accounts the PUT phases mapped and unmapped ones.
const KEYS: usize = 1000;

/// Answers counted over a phase.
pub struct Rate {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn throughput(endpoint: &str, duration: Duration) -> Result<Rate> {
    let bearer = bearer()?;
    let keys: Vec<String> = (0..KEYS)
        .map(|i| if i % 2 == 0 { format!("put1-{}@example.test", i / 2) } else { format!("user{i}@example.test") })
        .collect();
    let keys = std::sync::Arc::new(keys);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let channel = Endpoint::from_shared(endpoint.to_string())?.connect().await.context("connect")?;
        for t in 0..IN_FLIGHT {
            let bearer = bearer.clone();
            let mut client = ControlClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            });
            let keys = std::sync::Arc::clone(&keys);
            let mut k = (c * IN_FLIGHT + t) * 7;
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut errors, mut first) = (0u64, 0u64, None);
                while Instant::now() < deadline {
                    k = (k + 1) % keys.len();
                    let request = pb::ResolveRequest { key: keys[k].clone() };
                    match client.resolve(request).await {
                        Ok(_) => ok += 1,
                        Err(s) => {
                            errors += 1;
                            first.get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                        }
                    }
                }
                (ok, errors, first)
            }));
        }
    }
    let mut rate = Rate { ok: 0, errors: 0, elapsed: Duration::ZERO };
    let mut first_error = None;
    for t in tasks {
        let (ok, errors, first) = t.await?;
        rate.ok += ok;
        rate.errors += errors;
        first_error = first_error.or(first);
    }
    rate.elapsed = started.elapsed();
    if let Some(first) = first_error {
        eprintln!("  {} of {} Resolve calls failed; first: {first}", rate.errors, rate.errors + rate.ok);
    }
    Ok(rate)
}

/// Latencies of sequential calls (one in flight) for `duration`: the round trip a node's
/// cache miss waits for when the control plane is idle.
pub async fn latency(endpoint: &str, duration: Duration) -> Result<Latencies> {
    let bearer = bearer()?;
    let channel = Endpoint::from_shared(endpoint.to_string())?.connect().await.context("connect")?;
    let mut client = ControlClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    let mut latencies = Latencies::default();
    let deadline = Instant::now() + duration;
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let t0 = Instant::now();
        let answer = client.resolve(pb::ResolveRequest { key: format!("user{i}@example.test") }).await;
        latencies.push(t0.elapsed());
        if let Err(s) = answer {
            anyhow::bail!("Resolve failed: {s}");
        }
    }
    Ok(latencies)
}

/// `authorization: Bearer <node token>`, as every node sends it.
fn bearer() -> Result<MetadataValue<tonic::metadata::Ascii>> {
    format!("Bearer {}", crate::fleet::node_token()).parse().context("token")
}
