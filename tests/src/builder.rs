//! `Fleet::builder()`: a test names the destinations (real Dovecots' endpoints or any ports),
//! the node listeners, the nodes and the mappings it wants, and gets back an in-process
//! control plane with every node connected and ready (by polling `/nodes` and `/readyz`,
//! never by sleeping), the mappings written. With [`FleetBuilder::replica`] it is several
//! control-plane replicas on one shared store (each other's cluster peers), and a node may
//! list them in any order ([`FleetBuilder::node_on`]); each is ready once it is connected to
//! the first one it lists.
//!
//! ```ignore
//! let legacy = Dovecot::start_marked(USERS, "legacy")?;
//! let new = Dovecot::start_marked(USERS, "new")?;
//! let fleet = Fleet::builder()
//!     .dovecot("legacy", &legacy, &["imap"])
//!     .dovecot("new", &new, &["imap"])
//!     .map("alice@example.test", "new")
//!     .start()
//!     .await?;
//! assert_eq!(inbox_subjects(fleet.node().imap, "alice@example.test", "pw").await?, Ok(vec!["on new".into()]));
//! ```

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use crate::config::{ControlPlaneConfig, Destination, Listener, MappingStore, NodeConfig};
use crate::fleet::{Api, ControlPlane, Node, NODE_TOKEN};
use crate::Dovecot;

/// How long nodes may take to connect and become ready.
const READY: Duration = Duration::from_secs(30);

/// A control plane (and its other replicas) and its nodes, all connected and ready.
pub struct Fleet {
    /// The first control plane (replica 0).
    pub cp: ControlPlane,
    /// The other replicas, in the order declared (replica 1, 2, ...).
    pub replicas: Vec<ControlPlane>,
    pub nodes: Vec<Node>,
}

impl Fleet {
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    /// The first node.
    pub fn node(&self) -> &Node {
        &self.nodes[0]
    }

    pub fn api(&self) -> Api {
        self.cp.api()
    }
}

/// What [`FleetBuilder::start`] builds; see [`Fleet::builder`].
#[derive(Default)]
pub struct FleetBuilder {
    destinations: Vec<Destination>,
    default_destination: Option<String>,
    store: Option<MappingStore>,
    routing: Vec<String>,
    listeners: Vec<Listener>,
    /// Each replica after the first: the destinations it declares (`None`: all of them).
    replicas: Vec<Option<Vec<String>>>,
    /// Each node's id and the replicas it lists, in order (`None`: all, in order).
    nodes: Vec<(String, Option<Vec<usize>>)>,
    mappings: Vec<(String, String)>,
}

impl FleetBuilder {
    /// Declares `destination`; the first one declared is the default unless
    /// [`default_destination`](Self::default_destination) says otherwise.
    pub fn destination(mut self, destination: Destination) -> Self {
        self.destinations.push(destination);
        self
    }

    /// Declares destination `id` with `dovecot`'s plain endpoints for `protocols` (`imap`,
    /// `pop3`, `managesieve`, `lmtp`).
    pub fn dovecot(self, id: &str, dovecot: &Dovecot, protocols: &[&str]) -> Self {
        let destination = protocols.iter().fold(Destination::new(id), |d, protocol| {
            let port = match *protocol {
                "imap" => dovecot.imap_port(),
                "pop3" => dovecot.pop3_port(),
                "managesieve" => dovecot.sieve_port(),
                "lmtp" => dovecot.lmtp_port(),
                other => panic!("Dovecot serves no {other:?} endpoint in the harness"),
            };
            d.endpoint(protocol, port)
        });
        self.destination(destination)
    }

    pub fn default_destination(mut self, id: &str) -> Self {
        self.default_destination = Some(id.to_string());
        self
    }

    /// The mapping store (default: SQLite in the control plane's temp dir).
    pub fn store(mut self, store: MappingStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Adds a `[routing]` line (or several) to the control plane's config.
    pub fn routing(mut self, line: &str) -> Self {
        self.routing.push(line.to_string());
        self
    }

    /// Adds a listener `id` of `protocol` to every node (default: one IMAP listener `imap`).
    pub fn listener(self, id: &str, protocol: &str) -> Self {
        self.listener_with(Listener::new(id, protocol))
    }

    pub fn listener_with(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Adds a node listing every replica in order (default: one node `dp-1`).
    pub fn node(mut self, id: &str) -> Self {
        self.nodes.push((id.to_string(), None));
        self
    }

    /// Adds a node that lists the replicas `on` (0 is the first control plane) in this order.
    pub fn node_on(mut self, id: &str, on: &[usize]) -> Self {
        self.nodes.push((id.to_string(), Some(on.to_vec())));
        self
    }

    /// Adds a control-plane replica on the same store (which must be given: [`store`](Self::store)),
    /// declaring every destination.
    pub fn replica(mut self) -> Self {
        self.replicas.push(None);
        self
    }

    /// Adds a replica whose config declares only the destinations `ids`.
    pub fn replica_declaring(mut self, ids: &[&str]) -> Self {
        self.replicas.push(Some(ids.iter().map(|id| id.to_string()).collect()));
        self
    }

    /// Maps `user` to `destination` once the nodes are ready (`PUT /mappings/<user>`).
    pub fn map(mut self, user: &str, destination: &str) -> Self {
        self.mappings.push((user.to_string(), destination.to_string()));
        self
    }

    /// The control plane's config as this builder would write it (its SQLite store in `dir`),
    /// declaring the destinations `declares` allows (`None`: all).
    fn control_plane_config(&self, dir: &std::path::Path, declares: Option<&[String]>) -> Result<String> {
        let default = match (&self.default_destination, self.destinations.first()) {
            (Some(id), _) => id.clone(),
            (None, Some(first)) => first.id.clone(),
            (None, None) => bail!("a fleet needs at least one destination"),
        };
        let store = self.store.clone().unwrap_or_else(|| MappingStore::Sqlite(dir.join("mappings.db")));
        let config = ControlPlaneConfig::with_store(store, &default);
        let config = self.routing.iter().fold(config, |c, line| c.routing(line));
        let declared = self.destinations.iter().filter(|d| declares.is_none_or(|ids| ids.contains(&d.id)));
        let config = declared.cloned().fold(config, ControlPlaneConfig::destination);
        Ok(config.to_toml())
    }

    /// The first control plane and the other replicas, started as peers of each other.
    async fn start_control_planes(&self) -> Result<(ControlPlane, Vec<ControlPlane>)> {
        let dir = tempfile::tempdir()?;
        if self.replicas.is_empty() {
            let config = self.control_plane_config(dir.path(), None)?;
            return Ok((ControlPlane::start_with(dir, config).await?, Vec::new()));
        }
        ensure!(self.store.is_some(), "replicas need a shared store: FleetBuilder::store");
        let mut configs = vec![self.control_plane_config(dir.path(), None)?];
        for declares in &self.replicas {
            configs.push(self.control_plane_config(dir.path(), declares.as_deref())?);
        }
        let mut all = ControlPlane::start_replicas(configs).await?.into_iter();
        let first = all.next().context("no control plane started")?;
        Ok((first, all.collect()))
    }

    /// Starts the control plane, then the nodes; returns once every node is connected and
    /// ready and every mapping is written.
    pub async fn start(self) -> Result<Fleet> {
        let (cp, replicas) = self.start_control_planes().await?;
        let all: Vec<&ControlPlane> = std::iter::once(&cp).chain(&replicas).collect();
        let listeners = if self.listeners.is_empty() { vec![Listener::new("imap", "imap")] } else { self.listeners };
        let wanted = if self.nodes.is_empty() { vec![("dp-1".to_string(), None)] } else { self.nodes };
        let mut nodes = Vec::new();
        let mut first_listed = Vec::new();
        for (id, on) in &wanted {
            let on = on.clone().unwrap_or_else(|| (0..all.len()).collect());
            let endpoints = on
                .iter()
                .map(|&i| all.get(i).map(|cp| cp.endpoint()).with_context(|| format!("{id} lists no replica {i}")))
                .collect::<Result<Vec<_>>>()?;
            let config = listeners.iter().cloned().fold(NodeConfig::new(id, &endpoints), NodeConfig::listener);
            nodes.push(Node::start_config(&config, Some(NODE_TOKEN)).await?);
            first_listed.push((id.as_str(), on.first().copied().unwrap_or(0)));
        }
        // One control plane: everything it lists. Replicas: each its own (`scope=local`).
        let query = if replicas.is_empty() { "" } else { "?scope=local" };
        for (i, replica) in all.iter().enumerate() {
            let here: Vec<&str> = first_listed.iter().filter(|(_, on)| *on == i).map(|(id, _)| *id).collect();
            if !here.is_empty() {
                let accept = |connected: &[String]| here.iter().all(|id| connected.iter().any(|c| c == id));
                replica.api().until_nodes(query, READY, accept).await?;
            }
        }
        for node in &nodes {
            node.until_ready().await?;
        }
        let api = cp.api();
        for (user, destination) in &self.mappings {
            let (code, body) = api.put(&format!("/mappings/{user}"), json!({ "destination": destination })).await?;
            ensure!(code == 200, "mapping {user} to {destination}: {code} {body}");
        }
        Ok(Fleet { cp, replicas, nodes })
    }
}

impl Api {
    /// The ids of the nodes `GET /nodes{query}` (e.g. `?scope=local`) lists as connected,
    /// and the whole answer.
    pub async fn connected_nodes(&self, query: &str) -> Result<(Vec<String>, serde_json::Value)> {
        let (code, nodes) = self.get(&format!("/nodes{query}")).await?;
        ensure!(code == 200, "/nodes{query}: {code} {nodes}");
        let all = nodes.as_array().with_context(|| format!("/nodes{query} is no list: {nodes}"))?;
        let ids = all
            .iter()
            .filter(|n| n["connected"] == true)
            .filter_map(|n| n["node_id"].as_str().map(String::from))
            .collect();
        Ok((ids, nodes))
    }

    /// Waits (at most `within`) until the connected node ids satisfy `accept`; returns
    /// them and the last `GET /nodes{query}` answer.
    pub async fn until_nodes(
        &self,
        query: &str,
        within: Duration,
        accept: impl Fn(&[String]) -> bool,
    ) -> Result<(Vec<String>, serde_json::Value)> {
        crate::eventually(within, || async {
            let (ids, nodes) = self.connected_nodes(query).await?;
            ensure!(accept(&ids), "connected {ids:?}: {nodes}");
            Ok((ids, nodes))
        })
        .await
    }
}
