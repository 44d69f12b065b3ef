//! Accept loops: one task per bound address, one span and one task per client connection.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ListenerConfig, TlsMode};
use crate::node::Node;
use crate::pipeline::SessionCtx;
use crate::protocol;
use crate::tls::{MaybeTls, TlsAcceptor};

/// A listener from the config with its sockets already bound (fail fast at start-up).
pub struct BoundListener {
    pub id: String,
    pub config: ListenerConfig,
    pub sockets: Vec<TcpListener>,
}

/// Accepts until shutdown. Past `max_connections` a client gets the protocol's busy reply.
pub async fn serve(node: Arc<Node>, bound: BoundListener, tls: Option<TlsAcceptor>, sessions: TaskTracker) {
    let limit = Arc::new(Semaphore::new(bound.config.max_connections));
    let id: Arc<str> = Arc::from(bound.id.as_str());
    let config = Arc::new(bound.config);
    let accepts = TaskTracker::new();
    for socket in bound.sockets {
        let node = Arc::clone(&node);
        let (id, config, limit, sessions, tls) =
            (Arc::clone(&id), Arc::clone(&config), Arc::clone(&limit), sessions.clone(), tls.clone());
        accepts.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = socket.accept() => accepted,
                    _ = node.shutdown.cancelled() => return,
                };
                let (stream, client) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = %id, error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ctx = SessionCtx {
                    node: Arc::clone(&node),
                    listener_id: Arc::clone(&id),
                    listener: Arc::clone(&config),
                    client,
                    tls: tls.clone(),
                };
                let span = tracing::info_span!("conn", listener = %id, protocol = %config.protocol, client = %client);
                match Arc::clone(&limit).try_acquire_owned() {
                    Ok(permit) => {
                        sessions.spawn(
                            async move {
                                let _guard = ctx.node.sessions.connection(ctx.protocol());
                                let stream = MaybeTls::Plain(stream);
                                let stream = match ctx.listener.tls {
                                    TlsMode::Implicit => match ctx.accept_tls(stream).await {
                                        Ok(stream) => stream,
                                        Err(e) => {
                                            tracing::debug!(error = %e, "client TLS handshake failed");
                                            return;
                                        }
                                    },
                                    _ => stream,
                                };
                                protocol::serve(ctx, stream).await;
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    }
                    Err(_) => {
                        sessions.spawn(
                            async move {
                                tracing::warn!("connection limit reached; refusing");
                                let mut stream = stream;
                                let _ = stream.write_all(protocol::busy(ctx.protocol())).await;
                                let _ = stream.shutdown().await;
                            }
                            .instrument(span),
                        );
                    }
                }
            }
        });
    }
    accepts.close();
    accepts.wait().await;
}
