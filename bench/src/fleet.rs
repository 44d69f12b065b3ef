//! The processes under test on loopback: the release control plane and data-plane node
//! (configs in a temp dir, ports 0 read back from their logs, tokens in the environment)
//! and the scripted backend (this binary's `backend` subcommand).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use switchyard_tests::fleet::{Api, ADMIN_TOKEN, NODE_TOKEN};

use crate::procs::{binary, Proc};

const TOKENS: [(&str, &str); 2] = [("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN), ("SWITCHYARD_NODE_TOKEN", NODE_TOKEN)];

pub fn node_token() -> &'static str {
    NODE_TOKEN
}

/// A control-plane process and its management API.
pub struct ControlPlane {
    pub proc: Proc,
    pub api: Api,
    pub grpc: SocketAddr,
}

/// A destination on 127.0.0.1: its IMAP port and, for the delivery scenario, its LMTP port.
#[derive(Clone, Copy)]
pub struct Dest<'a> {
    pub id: &'a str,
    pub imap: u16,
    pub lmtp: Option<u16>,
}

impl<'a> From<&(&'a str, u16)> for Dest<'a> {
    fn from(&(id, imap): &(&'a str, u16)) -> Self {
        Dest { id, imap, lmtp: None }
    }
}

/// Destination tables, plain, cleartext allowed (loopback).
fn destinations_toml(destinations: &[Dest<'_>]) -> String {
    destinations
        .iter()
        .map(|Dest { id, imap, lmtp }| {
            let mut table = format!(
                "[destination.{id}]\nhost = \"127.0.0.1\"\nallow_plaintext_auth = true\n\
                 [destination.{id}.protocol.imap]\nport = {imap}\ntls = \"plain\"\n"
            );
            if let Some(lmtp) = lmtp {
                table.push_str(&format!("[destination.{id}.protocol.lmtp]\nport = {lmtp}\ntls = \"plain\"\n"));
            }
            table
        })
        .collect()
}

impl ControlPlane {
    /// Starts `target/release/controlplane` with the defaults of a real deployment, except
    /// ports 0 and a store in `dir`. `cpu` pins it to one core (the Resolve-per-core target).
    pub async fn start(
        dir: &Path,
        destinations: &[(&str, u16)],
        default: &str,
        cpu: Option<usize>,
    ) -> Result<ControlPlane> {
        let destinations: Vec<Dest<'_>> = destinations.iter().map(Dest::from).collect();
        Self::start_with(dir, &destinations, default, cpu).await
    }

    /// [`ControlPlane::start`] with destinations that may have an LMTP endpoint too.
    pub async fn start_with(
        dir: &Path,
        destinations: &[Dest<'_>],
        default: &str,
        cpu: Option<usize>,
    ) -> Result<ControlPlane> {
        let toml = format!(
            "[grpc]\nbind = \"127.0.0.1:0\"\n[api]\nbind = \"127.0.0.1:0\"\n[routing]\ndefault_destination = \"{default}\"\n\
             [mapping.sqlite]\npath = \"{}\"\n{}",
            dir.join("mappings.db").display(),
            destinations_toml(destinations)
        );
        let config = dir.join("controlplane.toml");
        std::fs::write(&config, toml)?;
        let config = config.to_string_lossy().into_owned();
        let program = binary("controlplane")?;
        let mut proc = Proc::spawn("controlplane", &program, &["--config", &config], &TOKENS, dir, cpu)?;
        let grpc = proc.bound(&["grpc listening"]).await?;
        let api_addr = proc.bound(&["management api listening"]).await?;
        Ok(ControlPlane { proc, api: Api::new(api_addr), grpc })
    }
}

/// A data-plane node process with one plain IMAP and one LMTP listener.
pub struct Node {
    pub proc: Proc,
    pub imap: SocketAddr,
    pub lmtp: SocketAddr,
}

impl Node {
    /// Starts `target/release/dataplane` against `grpc` and waits until it is ready.
    pub async fn start(dir: &Path, grpc: SocketAddr) -> Result<Node> {
        // max_connections above what the fd limit allows: the idle scenario finds the ceiling.
        let toml = format!(
            "[node]\nid = \"bench-node\"\n[control]\nendpoints = [\"http://{grpc}\"]\n[health]\nbind = \"127.0.0.1:0\"\n\
             [listener.imap]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\nallow_plaintext_auth = true\n\
             max_connections = 100000\n\
             [listener.lmtp]\nprotocol = \"lmtp\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\n"
        );
        let config = dir.join("dataplane.toml");
        std::fs::write(&config, toml)?;
        let config = config.to_string_lossy().into_owned();
        let program = binary("dataplane")?;
        let mut proc = Proc::spawn("dataplane", &program, &["--config", &config], &TOKENS, dir, None)?;
        let imap = proc.bound(&["listening", "listener=imap"]).await?;
        let lmtp = proc.bound(&["listening", "listener=lmtp"]).await?;
        let health = proc.bound(&["health endpoint listening"]).await?;
        proc.wait_for(&["connected to the control plane"]).await?;
        wait_ready(health).await?;
        Ok(Node { proc, imap, lmtp })
    }
}

/// Polls the node's `/readyz` until it answers 200 (settings received from the control plane).
async fn wait_ready(health: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://{health}/readyz");
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().as_u16() == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("node not ready within 20 s ({url})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scripted backend in its own process; `fetch_size` is the FETCH literal's length.
pub async fn start_backend(dir: &Path, fetch_size: usize) -> Result<(Proc, SocketAddr)> {
    // A rebuild while the bench runs leaves the running binary "(deleted)": use the new one.
    let exe = std::env::current_exe()?;
    let exe = std::path::PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
    let size = fetch_size.to_string();
    let mut proc = Proc::spawn("backend", &exe, &["backend", "--fetch-size", &size], &[], dir, None)?;
    // Both servers log "… backend listening" in either order: match the protocol too.
    let addr = proc.bound(&["imap backend listening"]).await?;
    Ok((proc, addr))
}

/// The scripted backend's LMTP responder (same process as its IMAP server).
pub async fn backend_lmtp(backend: &mut Proc) -> Result<SocketAddr> {
    backend.bound(&["lmtp backend listening"]).await
}

/// Maps each of `accounts` to `destination` (every node acks before the API answers).
pub async fn map_accounts(api: &Api, accounts: &[String], destination: &str) -> Result<()> {
    for account in accounts {
        let (code, body) =
            api.put(&format!("/mappings/{account}"), serde_json::json!({ "destination": destination })).await?;
        if code != 200 {
            bail!("PUT /mappings/{account}: {code} {body}");
        }
    }
    Ok(())
}

/// Drops every cached route on every node, so the next login of each account resolves.
pub async fn invalidate_cache(api: &Api) -> Result<()> {
    let (code, body) = api.post("/cache/invalidate").await?;
    if code != 200 {
        bail!("POST /cache/invalidate: {code} {body}");
    }
    Ok(())
}
