//! A fleet of real binaries: one `controlplane` and one `dataplane` child process, their
//! configs in a temp dir (the control plane's from [`controlplane_toml_with`], the node's
//! listener tables written by the caller), addresses read from their logs.

use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::config::NodeConfig;
use crate::fleet::{controlplane_toml_with, Api, ADMIN_TOKEN, NODE_TOKEN};
use crate::procs::{write_file, Proc};

pub struct BinFleet {
    pub cp: Proc,
    pub node: Proc,
    pub api: Api,
    /// Every listener of the node, by id, as its log named them.
    listeners: Vec<(String, SocketAddr)>,
    _dir: tempfile::TempDir,
}

impl BinFleet {
    /// A control plane declaring `destination_tables` (default destination `default`), its
    /// config text passed through `edit` first, and a node with `listener_tables`
    /// (`[listener.<id>]` each) connected to it.
    pub async fn start(
        destination_tables: &str,
        default: &str,
        edit: impl FnOnce(String) -> String,
        listener_tables: &str,
    ) -> Result<BinFleet> {
        Self::start_edited(destination_tables, default, edit, |node| node, listener_tables).await
    }

    /// Like [`start`](Self::start) with the node's config text passed through `edit_node`.
    pub async fn start_edited(
        destination_tables: &str,
        default: &str,
        edit: impl FnOnce(String) -> String,
        edit_node: impl FnOnce(String) -> String,
        listener_tables: &str,
    ) -> Result<BinFleet> {
        let dir = tempfile::tempdir()?;
        let cp_toml = edit(controlplane_toml_with(&dir.path().join("mappings.db"), destination_tables, default));
        let tokens = [("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN), ("SWITCHYARD_NODE_TOKEN", NODE_TOKEN)];
        let cp = Proc::spawn("controlplane", &write_file(dir.path(), "cp.toml", &cp_toml)?, &tokens)?;
        let grpc = cp.bound(&["grpc listening"]).await?;
        let api = Api::new(cp.bound(&["management api listening"]).await?);
        let node = NodeConfig::new("dp-bin", &[format!("http://{grpc}")]).shutdown_grace("1s").tables(listener_tables);
        let dp_toml = edit_node(node.to_toml());
        let env = [("SWITCHYARD_NODE_TOKEN", NODE_TOKEN), ("RUST_LOG", "info,dataplane=debug")];
        let node = Proc::spawn("dataplane", &write_file(dir.path(), "dp.toml", &dp_toml)?, &env)?;
        let mut listeners = Vec::new();
        for id in listener_ids(listener_tables) {
            let addr = node.bound(&["listening", &format!("listener={id} ")]).await?;
            listeners.push((id, addr));
        }
        node.wait_for(&["connected to the control plane"]).await?;
        Ok(BinFleet { cp, node, api, listeners, _dir: dir })
    }

    /// The bound address of listener `id`.
    pub fn addr(&self, id: &str) -> Result<SocketAddr> {
        self.listeners.iter().find(|(l, _)| l == id).map(|(_, a)| *a).with_context(|| format!("no listener {id}"))
    }

    /// The node's and the control plane's log so far, for failure messages.
    pub fn logs(&self) -> String {
        format!("--- node\n{}\n--- control plane\n{}", self.node.lines().join("\n"), self.cp.lines().join("\n"))
    }
}

/// The ids of the `[listener.<id>]` tables in `tables`.
fn listener_ids(tables: &str) -> Vec<String> {
    tables
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[listener.").and_then(|rest| rest.strip_suffix(']')))
        .map(str::to_owned)
        .collect()
}
