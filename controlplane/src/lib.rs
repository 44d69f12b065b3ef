//! Switchyard control plane: owns the mapping store, serves nodes over gRPC and operators
//! over the management API.
//!
//! `main.rs` loads the config, calls [`bind`] (fail fast) and [`run`]; tests do the same
//! with port 0.

#![warn(unreachable_pub, missing_debug_implementations)]

pub mod admission;
pub mod api;
pub mod bulk;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod error;
pub mod feed;
pub mod fleet;
pub mod grpc;
pub mod lockout;
pub mod metrics;
pub mod node_info;
pub mod outbox;
pub mod publisher;
pub mod route;
pub mod state;
pub mod store;
pub mod tls;
pub mod undeclared;
pub mod wire;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_common::http_server;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::Shared;
use crate::store::Store;
use crate::tls::{ServerTls, TlsIncoming};

/// The control plane's sockets, bound before anything starts, and their TLS configs.
#[derive(Debug)]
pub struct Bound {
    pub grpc: TcpListener,
    pub api: TcpListener,
    tls: ServerTls,
}

impl Bound {
    pub fn grpc_addr(&self) -> Result<SocketAddr> {
        Ok(self.grpc.local_addr()?)
    }

    pub fn api_addr(&self) -> Result<SocketAddr> {
        Ok(self.api.local_addr()?)
    }
}

pub async fn bind(config: &Config) -> Result<Bound> {
    let grpc = TcpListener::bind(config.grpc.bind)
        .await
        .map_err(|e| Error::Config(format!("grpc: cannot bind {}: {e}", config.grpc.bind)))?;
    let api = TcpListener::bind(config.api.bind)
        .await
        .map_err(|e| Error::Config(format!("api: cannot bind {}: {e}", config.api.bind)))?;
    let tls = ServerTls::load(config)?;
    let mtls = config.grpc.client_ca.is_some();
    tracing::info!(addr = %grpc.local_addr()?, tls = tls.grpc.is_some(), client_certificates = mtls, "grpc listening");
    tracing::info!(addr = %api.local_addr()?, tls = tls.api.is_some(), "management api listening");
    Ok(Bound { grpc, api, tls })
}

/// The secrets the control plane needs, loaded by `main` (files or environment).
#[derive(Debug)]
pub struct Secrets {
    pub node_token: String,
    pub admin_token: String,
}

impl Secrets {
    /// Loads both tokens; each is required, and the admin token must be long enough.
    pub fn load(config: &Config) -> Result<Secrets> {
        let load = |file: Option<&std::path::Path>, env: &str, what: &str| {
            config::load_token(file, env)
                .map_err(|e| Error::Config(e.to_string()))?
                .ok_or_else(|| Error::Config(format!("{what} is required: set its file in the config or {env}")))
        };
        let node_token = load(config.grpc.node_token_file.as_deref(), &config.grpc.node_token_env, "the node token")?;
        let admin_token =
            load(config.api.bearer_token_file.as_deref(), &config.api.bearer_token_env, "the admin token")?;
        for (what, token) in [("admin", &admin_token), ("node", &node_token)] {
            if token.len() < api::MIN_TOKEN_LEN {
                let min = api::MIN_TOKEN_LEN;
                return Err(Error::Config(format!("the {what} token must be at least {min} characters")));
            }
        }
        Ok(Secrets { node_token, admin_token })
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: Config, bound: Bound, secrets: Secrets, shutdown: CancellationToken) -> Result<()> {
    // Peers are called with the same admin token; node state is gathered from them.
    let cluster = Arc::new(cluster::Cluster::new(&config.cluster, &secrets.admin_token)?);
    let store = Store::open(&config.mapping, &config.route_key_rule()).await?;
    let revision = store.revision().await?;
    tracing::info!(source = config.mapping.source.as_str(), epoch = %store.epoch(), revision, "mapping store open");
    let metrics_interval = config.server.metrics_interval;
    let poll_interval = config.mapping.poll_interval;
    let api_limits = config.api.http_limits();
    let shared = Shared::new(config, store);
    shared.publisher.resume_at(revision).await;
    let sessions = shared.shutdown.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        sessions.cancel();
    });
    let tasks = TaskTracker::new();
    tasks.spawn(metrics::run(Arc::clone(&shared.fleet), metrics_interval, shutdown.clone()));
    tasks.spawn(feed::follow(Arc::clone(&shared), poll_interval, shutdown.clone()));
    // The lockout keys on the peer address, which the server passes as `ConnectInfo`.
    let limits = api_limits;
    let app = api::router_in_cluster(Arc::clone(&shared), cluster, secrets.admin_token);
    match bound.tls.api {
        None => tasks.spawn(http_server::serve(bound.api, app, limits, shutdown.clone())),
        Some(config) => {
            let listener = TlsIncoming::spawn(bound.api, config, &tasks, shutdown.clone())?;
            tasks.spawn(http_server::serve(listener, app, limits, shutdown.clone()))
        }
    };
    let stop = || shutdown.clone().cancelled_owned();
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(grpc::server(Arc::clone(&shared), secrets.node_token));
    match bound.tls.grpc {
        None => spawn_server(
            &tasks,
            "grpc server",
            grpc.serve_with_incoming_shutdown(TcpListenerStream::new(bound.grpc), stop()),
        ),
        Some(config) => {
            let incoming = TlsIncoming::spawn(bound.grpc, config, &tasks, shutdown.clone())?.into_stream();
            spawn_server(&tasks, "grpc server", grpc.serve_with_incoming_shutdown(incoming, stop()));
        }
    }
    tasks.close();
    shutdown.cancelled().await;
    tasks.wait().await;
    Ok(())
}

fn spawn_server<S, E>(tasks: &TaskTracker, what: &'static str, server: S)
where
    S: IntoFuture<Output = std::result::Result<(), E>> + Send + 'static,
    S::IntoFuture: Send,
    E: std::fmt::Display,
{
    tasks.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "{what} failed");
        }
    });
}
