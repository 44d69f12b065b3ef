//! A data-plane node as a real `dataplane` child process, for tests that suspend it
//! (SIGSTOP/SIGCONT: a node that stops answering without closing its connections) or kill it.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use rustix::process::Signal;

use crate::fleet::NODE_TOKEN;
use crate::procs::{write_file, Proc};

/// A running node process with one plain IMAP listener on 127.0.0.1:0.
pub struct NodeProc {
    pub proc: Proc,
    pub imap: SocketAddr,
    // Kept for the config file; deleted after the process (fields drop in order).
    _dir: tempfile::TempDir,
}

impl NodeProc {
    /// Starts `dataplane` as node `id` with `endpoints` and waits until it is connected to a
    /// control plane.
    pub async fn start(id: &str, endpoints: &[String]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let endpoints = endpoints.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
        let toml = format!(
            "[node]\nid = \"{id}\"\nmetrics_interval = \"1s\"\nshutdown_grace = \"1s\"\n\
             [control]\nendpoints = [{endpoints}]\nresolve_timeout = \"2s\"\n[health]\nbind = \"127.0.0.1:0\"\n\
             [listener.imap]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\nallow_plaintext_auth = true\n"
        );
        let config = write_file(dir.path(), "dataplane.toml", &toml)?;
        let proc = Proc::spawn("dataplane", &config, &[("SWITCHYARD_NODE_TOKEN", NODE_TOKEN)])?;
        let imap = proc.bound(&["listening", "listener=imap"]).await?;
        proc.wait_for(&["connected to the control plane"]).await?;
        Ok(NodeProc { proc, imap, _dir: dir })
    }

    /// Suspends the process (SIGSTOP): its connections stay open and nothing is answered.
    pub fn freeze(&self) -> Result<()> {
        self.signal(Signal::STOP)
    }

    /// Resumes it (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.signal(Signal::CONT)
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(self.proc.pid() as i32).context("pid")?;
        rustix::process::kill_process(pid, signal).with_context(|| format!("sending {signal:?} to the node"))
    }
}
