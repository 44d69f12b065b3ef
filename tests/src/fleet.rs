//! A fleet on ephemeral ports, in this process: control planes (by default a SQLite store
//! in a temp dir; any mapping store, and replicas that list each other as cluster peers)
//! and data-plane nodes, started through the same `bind` + `run` the binaries use.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::builder::{Fleet, FleetBuilder};
use crate::config::{ControlPlaneConfig, Destination, Listener, MappingStore, NodeConfig};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";
pub const NODE_TOKEN: &str = "test-node-token-abcdef0123456789abcdef";

/// A running control plane.
pub struct ControlPlane {
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    url: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
    config: String,
    /// The other replicas' API base URLs (`[cluster] peers`), kept across a restart.
    peers: Vec<String>,
}

/// A destination on 127.0.0.1 with plain endpoints `(protocol, port)` (cleartext allowed:
/// tests run on loopback). Extra keys (TLS, forwarding) go in `extra`, one per line.
/// Shorthand for [`Destination`].
pub fn destination_toml(id: &str, endpoints: &[(&str, u16)], extra: &str) -> String {
    Destination::new(id).endpoints(endpoints).key(extra).to_toml()
}

/// Destinations for a test fleet: `(id, imap port)`, all on 127.0.0.1 over plain IMAP.
pub fn controlplane_toml(db: &std::path::Path, destinations: &[(&str, u16)], default: &str) -> String {
    imap_destinations(ControlPlaneConfig::sqlite(db, default), destinations).to_toml()
}

/// `config` with one plain-IMAP destination per `(id, port)`.
fn imap_destinations(config: ControlPlaneConfig, destinations: &[(&str, u16)]) -> ControlPlaneConfig {
    destinations.iter().fold(config, |c, (id, port)| c.destination(Destination::new(id).endpoint("imap", *port)))
}

/// A control-plane config with destination tables written by the caller.
pub fn controlplane_toml_with(db: &std::path::Path, destination_tables: &str, default: &str) -> String {
    ControlPlaneConfig::sqlite(db, default).to_toml_with(destination_tables)
}

/// The `[mapping]` tables of a SQLite store in `db` (several control planes may share it).
pub fn sqlite_mapping(db: &std::path::Path) -> String {
    MappingStore::Sqlite(db.to_path_buf()).to_toml()
}

/// The `[mapping]` tables of a PostgreSQL store at `url`.
pub fn postgres_mapping(url: &str) -> String {
    MappingStore::Postgres(url.to_string()).to_toml()
}

/// A control-plane config with the mapping store's tables (e.g. [`postgres_mapping`]) and
/// the destination tables written by the caller.
pub fn controlplane_toml_store(mapping_tables: &str, destination_tables: &str, default: &str) -> String {
    ControlPlaneConfig::with_store(MappingStore::Tables(mapping_tables.to_string()), default)
        .to_toml_with(destination_tables)
}

impl ControlPlane {
    pub async fn start(destinations: &[(&str, u16)], default: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = controlplane_toml(&dir.path().join("mappings.db"), destinations, default);
        Self::start_with(dir, config).await
    }

    /// Like [`start`](Self::start) with extra lines `(table, line)` in the tables the typed
    /// config writes (`server`, `grpc`, `api`, `routing`, `breaker`; see [`ControlPlaneConfig::key`]).
    pub async fn start_keyed(destinations: &[(&str, u16)], default: &str, keys: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config =
            imap_destinations(ControlPlaneConfig::sqlite(&dir.path().join("mappings.db"), default), destinations);
        let config = keys.iter().fold(config, |c, (table, line)| c.key(table, line));
        Self::start_with(dir, config.to_toml()).await
    }

    /// With destination tables from [`destination_toml`] (any protocols, TLS, forwarding).
    pub async fn start_destinations(destination_tables: &str, default: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = controlplane_toml_with(&dir.path().join("mappings.db"), destination_tables, default);
        Self::start_with(dir, config).await
    }

    /// With a whole config (e.g. from [`controlplane_toml_store`]).
    pub async fn start_config(config: String) -> Result<Self> {
        Self::start_with(tempfile::tempdir()?, config).await
    }

    pub(crate) async fn start_with(dir: tempfile::TempDir, config: String) -> Result<Self> {
        let (parsed, bound) = Self::bind(&config).await?;
        Self::launch(parsed, bound, dir, config, Vec::new())
    }

    /// Replicas of one control plane, one per config (they should share a mapping store):
    /// every API is bound first, then each replica starts with the others as its peers.
    pub async fn start_replicas(configs: Vec<String>) -> Result<Vec<Self>> {
        let mut bound = Vec::new();
        for config in configs {
            let (parsed, b) = Self::bind(&config).await?;
            let url = api_url(&parsed, b.api_addr()?);
            bound.push((parsed, b, config, url));
        }
        let urls: Vec<String> = bound.iter().map(|(.., url)| url.clone()).collect();
        let mut replicas = Vec::new();
        for (parsed, b, config, url) in bound {
            let peers = urls.iter().filter(|u| **u != url).cloned().collect();
            replicas.push(Self::launch(parsed, b, tempfile::tempdir()?, config, peers)?);
        }
        Ok(replicas)
    }

    async fn bind(config: &str) -> Result<(controlplane::config::Config, controlplane::Bound)> {
        let parsed = controlplane::config::Config::from_toml_str(config)?;
        let bound = controlplane::bind(&parsed).await?;
        Ok((parsed, bound))
    }

    fn launch(
        mut parsed: controlplane::config::Config,
        bound: controlplane::Bound,
        dir: tempfile::TempDir,
        config: String,
        peers: Vec<String>,
    ) -> Result<Self> {
        if !peers.is_empty() {
            parsed.cluster.peers.clone_from(&peers);
        }
        let (api, grpc) = (bound.api_addr()?, bound.grpc_addr()?);
        let url = api_url(&parsed, api);
        let secrets = controlplane::Secrets { node_token: NODE_TOKEN.into(), admin_token: ADMIN_TOKEN.into() };
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = controlplane::run(parsed, bound, secrets, token).await {
                eprintln!("control plane stopped: {e}");
            }
        });
        Ok(Self { api, grpc, url, shutdown, task: Some(task), dir, config, peers })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn api(&self) -> Api {
        Api { base: format!("http://{}", self.api), token: Some(ADMIN_TOKEN.into()), http: reqwest::Client::new() }
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops and starts again on the same store, the same ports and with the same peers,
    /// as a restarted process would (nodes and peers keep their endpoint).
    pub async fn restart(mut self) -> Result<Self> {
        self.stop().await;
        let config = self.config.replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"{}\"", self.grpc), 1).replacen(
            "bind = \"127.0.0.1:0\"",
            &format!("bind = \"{}\"", self.api),
            1,
        );
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir()?);
        let (parsed, bound) = Self::bind(&config).await?;
        Self::launch(parsed, bound, dir, config, std::mem::take(&mut self.peers))
    }

    /// The management API's base URL (`https://` with `[api]` TLS), as peers name it.
    pub fn api_url(&self) -> String {
        self.url.clone()
    }

    /// The mapping store, opened directly (for changes made while the control plane is down).
    pub async fn open_store(&self) -> Result<controlplane::store::Store> {
        let config = controlplane::config::Config::from_toml_str(&self.config)?;
        Ok(controlplane::store::Store::open(&config.mapping, &config.route_key_rule()).await?)
    }
}

/// `http://ADDR`, or `https://ADDR` when the config gives the API a certificate.
fn api_url(config: &controlplane::config::Config, addr: SocketAddr) -> String {
    let scheme = if config.api.tls_cert.is_some() { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A listener table for [`Node::start_listeners`]: plain TCP on 127.0.0.1:0, cleartext
/// credentials allowed (tests run on loopback). Extra keys go in `extra`, one per line.
/// Shorthand for [`Listener`].
pub fn listener_toml(id: &str, protocol: &str, extra: &str) -> String {
    Listener::new(id, protocol).key(extra).to_toml()
}

/// A running data-plane node (by default one IMAP listener).
pub struct Node {
    pub id: String,
    /// The first address of the first listener.
    pub imap: SocketAddr,
    /// Every listener's bound addresses, by listener id.
    pub listeners: Vec<(String, Vec<SocketAddr>)>,
    pub health: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Node {
    pub async fn start(id: &str, endpoints: &[String], token: Option<&str>) -> Result<Self> {
        Self::start_config(&NodeConfig::new(id, endpoints).listener(Listener::new("imap", "imap")), token).await
    }

    /// With listener tables from [`listener_toml`] (or hand-written ones).
    pub async fn start_listeners(
        id: &str,
        endpoints: &[String],
        token: Option<&str>,
        listener_tables: &str,
    ) -> Result<Self> {
        Self::start_config(&NodeConfig::new(id, endpoints).tables(listener_tables), token).await
    }

    /// With a whole config.
    pub async fn start_config(node: &NodeConfig, token: Option<&str>) -> Result<Self> {
        let config = dataplane::config::Config::from_toml_str(&node.to_toml())?;
        let bound = dataplane::bind(&config).await?;
        let listeners = bound.addresses();
        let imap = listeners.first().and_then(|(_, a)| a.first().copied()).context("the node has no listener")?;
        let health = bound.health.local_addr()?;
        let shutdown = CancellationToken::new();
        let (stop, token) = (shutdown.clone(), token.map(str::to_string));
        let task = tokio::spawn(async move {
            if let Err(e) = dataplane::run(config, bound, token, stop).await {
                eprintln!("node stopped: {e}");
            }
        });
        Ok(Self { id: node.id.clone(), imap, listeners, health, shutdown, task: Some(task) })
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Asks the node to shut down (SIGTERM) without waiting; the task that ends when
    /// it has drained is returned.
    pub fn begin_stop(&mut self) -> Option<JoinHandle<()>> {
        self.shutdown.cancel();
        self.task.take()
    }

    /// The first bound address of listener `id`.
    pub fn addr(&self, id: &str) -> SocketAddr {
        self.listeners.iter().find(|(l, _)| l == id).map(|(_, a)| a[0]).unwrap_or_else(|| panic!("no listener {id}"))
    }

    /// Waits (at most 30 s) until the node holds its fleet settings: `/readyz` says `ready`.
    pub async fn until_ready(&self) -> Result<()> {
        crate::eventually(Duration::from_secs(30), || async {
            let (code, body) = self.readyz().await?;
            anyhow::ensure!(code == 200 && body["status"] == "ready", "{code} {body}");
            Ok(())
        })
        .await
    }

    /// `GET /readyz` on the node's health listener: (status code, body).
    pub async fn readyz(&self) -> Result<(u16, Value)> {
        let r = reqwest::get(format!("http://{}/readyz", self.health)).await?;
        Ok((r.status().as_u16(), r.json().await?))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The management API, as an operator's curl would use it.
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// A client for the API at `addr` with the test admin token.
    pub fn new(addr: SocketAddr) -> Self {
        Api { base: format!("http://{addr}"), token: Some(ADMIN_TOKEN.into()), http: reqwest::Client::new() }
    }

    pub fn without_token(mut self) -> Self {
        self.token = None;
        self
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).timeout(Duration::from_secs(15));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| path.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn post(&self, path: &str) -> Result<(u16, Value)> {
        self.send(reqwest::Method::POST, path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}
