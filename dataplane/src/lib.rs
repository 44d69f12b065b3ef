//! Switchyard data plane: a node that terminates mail sessions, routes each account to its
//! destination and bridges the bytes, following the control plane's fleet settings.
//!
//! `main.rs` parses arguments, loads the config, calls [`bind`] (fail fast) and [`run`].
//! Tests call the same two functions with listeners on port 0.

#![warn(unreachable_pub, missing_debug_implementations)]

pub(crate) mod auth;
pub(crate) mod backend;
pub(crate) mod background;
pub(crate) mod breaker;
pub(crate) mod bridge;
pub mod cli;
pub(crate) mod client;
pub(crate) mod commands;
pub mod config;
pub(crate) mod control;
pub mod error;
pub(crate) mod health;
pub(crate) mod identity;
pub(crate) mod idle;
pub(crate) mod inbound_proxy;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod preauth;
pub(crate) mod protocol;
pub mod route;
pub(crate) mod session;
pub(crate) mod sessions;
pub mod settings;
pub(crate) mod tls;

// What the node shares with the control plane (`switchyard-common`) and the codecs
// (`switchyard-codec`), under the paths the node's modules have always used.
pub use switchyard_codec as codec;
pub use switchyard_common::{http_server, routekey, telemetry};

use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::background::Background;
use crate::config::Config;
use crate::control::{ClientSlot, ControlResolver, ControlTls, Link, NodeAuth};
use crate::error::{Error, Result};
use crate::listener::BoundListener;
use crate::node::Node;

/// How long the sessions get to end after the grace period: a goodbye and the close after
/// it each wait at most [`client::GOODBYE_WAIT`].
const FINAL_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Every socket the node serves, bound before anything starts.
#[derive(Debug)]
pub struct Bound {
    pub listeners: Vec<BoundListener>,
    pub health: TcpListener,
}

impl Bound {
    /// The addresses actually bound, by listener id (port 0 resolved).
    pub fn addresses(&self) -> Vec<(String, Vec<SocketAddr>)> {
        self.listeners
            .iter()
            .map(|l| (l.id.clone(), l.sockets.iter().filter_map(|s| s.local_addr().ok()).collect()))
            .collect()
    }
}

/// Binds every listener and the health endpoint; the first failure is fatal.
pub async fn bind(config: &Config) -> Result<Bound> {
    let mut listeners = Vec::new();
    for (id, listener) in &config.listener {
        let mut sockets = Vec::new();
        for addr in &listener.bind {
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Node(format!("listener {id}: cannot bind {addr}: {e}")))?;
            tracing::info!(listener = %id, protocol = %listener.protocol, addr = %socket.local_addr()?, "listening");
            sockets.push(socket);
        }
        listeners.push(BoundListener { id: id.clone(), config: listener.clone(), sockets });
    }
    let health = TcpListener::bind(config.health.bind)
        .await
        .map_err(|e| Error::Node(format!("health: cannot bind {}: {e}", config.health.bind)))?;
    tracing::info!(addr = %health.local_addr()?, "health endpoint listening");
    Ok(Bound { listeners, health })
}

/// Runs the node until `shutdown` is cancelled, then drains live sessions.
pub async fn run(config: Config, bound: Bound, node_token: Option<String>, shutdown: CancellationToken) -> Result<()> {
    let slot = ClientSlot::default();
    let resolver = ControlResolver { slot: slot.clone(), timeout: config.control.resolve_timeout };
    let node = Node::new(config.node.id.clone(), Arc::new(resolver), shutdown.clone());
    node.set_own_listeners(bound.addresses().into_iter().flat_map(|(_, addrs)| addrs).collect());
    let listeners = bound
        .addresses()
        .into_iter()
        .map(|(id, addrs)| {
            let l = &config.listener[&id];
            pb::Listener {
                id,
                protocol: l.protocol.as_str().into(),
                bind: addrs.iter().map(ToString::to_string).collect(),
                tls: l.tls.as_str().into(),
            }
        })
        .collect();
    let link = Link {
        endpoints: config.control.endpoints.clone(),
        auth: NodeAuth::new(node_token.as_deref())?,
        tls: ControlTls::from_config(&config.control),
        slot,
        node: Arc::clone(&node),
        listeners,
    };
    for url in config.control.endpoints.iter().filter(|u| config::cleartext_off_loopback(u)) {
        tracing::warn!(endpoint = %url, "control endpoint is cleartext http:// off loopback (allow_insecure_control = true): the node token crosses the network in clear");
    }
    let mut background = Background::default();
    background.spawn("control link", link.run());
    background.spawn("metrics line", metrics::run(Arc::clone(&node), config.node.metrics_interval));
    let health = health::router(Arc::clone(&node));
    background.spawn(
        "health endpoint",
        http_server::serve(bound.health, health, config.health.http_limits(), shutdown.clone()),
    );
    let acceptor = tls::TlsAcceptor::from_config(&config.tls).map_err(|e| Error::Node(e.to_string()))?;
    let sessions = TaskTracker::new();
    for bound in bound.listeners {
        let name = format!("listener {}", bound.id);
        background.spawn(name, listener::serve(Arc::clone(&node), bound, acceptor.clone(), sessions.clone()));
    }
    let stopped = background.run_until(&shutdown).await;
    tracing::info!(live = node.sessions.active_total(), "shutting down; draining sessions");
    sessions.close();
    if tokio::time::timeout(config.node.shutdown_grace, sessions.wait()).await.is_err() {
        tracing::info!(live = node.sessions.active_total(), "grace period over; closing the remaining sessions");
        node.kill_sessions.cancel();
        // Every kind of session ends once told to, within its goodbye's bound; the wait is
        // bounded all the same, so no session can keep the process from exiting.
        if tokio::time::timeout(FINAL_WAIT, sessions.wait()).await.is_err() {
            tracing::warn!(live = node.sessions.active_total(), "sessions still open after their goodbyes; exiting");
        }
    }
    stopped
}
