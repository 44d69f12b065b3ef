//! A real `dataplane` process for fleet tests: one plain IMAP listener, its config in a
//! temp dir, its addresses read from its log; it can be stopped and continued (SIGSTOP,
//! SIGCONT) and is killed with SIGKILL (even while stopped) when dropped.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use rustix::process::Signal;
use serde_json::Value;

use crate::config::{Listener, NodeConfig};
use crate::fleet::NODE_TOKEN;
use crate::procs::{write_file, Proc};

pub struct NodeProc {
    pub proc: Proc,
    pub imap: SocketAddr,
    pub health: SocketAddr,
    _dir: tempfile::TempDir,
}

impl NodeProc {
    /// Starts `dataplane` with node id `id` against `endpoints` (the test node token) and
    /// waits until its listeners are bound; it may not be connected yet.
    pub async fn start(id: &str, endpoints: &[String]) -> Result<NodeProc> {
        let dir = tempfile::tempdir()?;
        let toml =
            NodeConfig::new(id, endpoints).shutdown_grace("1s").listener(Listener::new("imap", "imap")).to_toml();
        let env = [("SWITCHYARD_NODE_TOKEN", NODE_TOKEN), ("RUST_LOG", "info")];
        let proc = Proc::spawn("dataplane", &write_file(dir.path(), "dp.toml", &toml)?, &env)?;
        let imap = proc.bound(&["listening", "listener=imap"]).await?;
        let health = proc.bound(&["health endpoint listening"]).await?;
        Ok(NodeProc { proc, imap, health, _dir: dir })
    }

    /// `GET /readyz`: (status code, body).
    pub async fn readyz(&self) -> Result<(u16, Value)> {
        let r = reqwest::get(format!("http://{}/readyz", self.health)).await?;
        Ok((r.status().as_u16(), r.json().await?))
    }

    /// This process's instance id (from `/readyz`).
    pub async fn instance_id(&self) -> Result<String> {
        let (_, body) = self.readyz().await?;
        body["instance_id"].as_str().map(String::from).context("readyz has no instance_id")
    }

    /// SIGSTOP: the process keeps its sockets open but reads and writes nothing.
    pub fn stop(&self) -> Result<()> {
        self.proc.signal(Signal::STOP)
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn resume(&self) -> Result<()> {
        self.proc.signal(Signal::CONT)
    }

    pub async fn wait_for(&self, needles: &[&str]) -> Result<String> {
        self.proc.wait_for(needles).await
    }
}
