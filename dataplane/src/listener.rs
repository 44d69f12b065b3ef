//! Accept loops: one task per bound address, one span and one task per client connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ListenerConfig, TlsMode};
use crate::inbound_proxy;
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

/// What every connection of one listener shares.
#[derive(Clone)]
struct Shared {
    node: Arc<Node>,
    id: Arc<str>,
    config: Arc<ListenerConfig>,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
}

/// Accepts until shutdown. Past `max_connections` a client gets the protocol's busy reply.
pub async fn serve(node: Arc<Node>, bound: BoundListener, tls: Option<TlsAcceptor>, sessions: TaskTracker) {
    let shared = Shared {
        node,
        id: Arc::from(bound.id.as_str()),
        limit: Arc::new(Semaphore::new(bound.config.max_connections)),
        config: Arc::new(bound.config),
        tls,
    };
    let accepts = TaskTracker::new();
    for socket in bound.sockets {
        let (shared, sessions) = (shared.clone(), sessions.clone());
        accepts.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = socket.accept() => accepted,
                    _ = shared.node.shutdown.cancelled() => return,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let span = tracing::info_span!(
                            "conn",
                            listener = %shared.id,
                            protocol = %shared.config.protocol,
                            client = %peer,
                            via = tracing::field::Empty
                        );
                        let permit = Arc::clone(&shared.limit).try_acquire_owned().ok();
                        sessions.spawn(connection(shared.clone(), stream, peer, permit).instrument(span));
                    }
                    Err(e) => tracing::warn!(listener = %shared.id, error = %e, "accept failed"),
                }
            }
        });
    }
    accepts.close();
    accepts.wait().await;
}

/// One client connection: the busy reply past the limit, else PROXY header, implicit TLS
/// and the protocol's session.
async fn connection(shared: Shared, mut stream: TcpStream, peer: SocketAddr, permit: Option<OwnedSemaphorePermit>) {
    let Some(_permit) = permit else {
        tracing::warn!("connection limit reached; refusing");
        let _ = stream.write_all(protocol::busy(shared.config.protocol)).await;
        let _ = stream.shutdown().await;
        return;
    };
    let _guard = shared.node.sessions.connection(shared.config.protocol);
    let client = match inbound_proxy::client_address(&mut stream, &shared.config, peer).await {
        Ok(client) => client,
        Err(e) => return tracing::warn!(error = %e, "PROXY header from a trusted peer missing or invalid; closing"),
    };
    if client != peer {
        // The span's `client` is the load balancer; `via` keeps both visible.
        tracing::Span::current().record("via", tracing::field::display(peer));
        tracing::Span::current().record("client", tracing::field::display(client));
    }
    let local = stream.local_addr().unwrap_or(peer);
    let ctx = SessionCtx {
        node: shared.node,
        listener_id: shared.id,
        listener: shared.config,
        client,
        local,
        tls: shared.tls,
    };
    let stream = MaybeTls::Plain(stream);
    let stream = match ctx.listener.tls {
        TlsMode::Implicit => match ctx.accept_tls(stream).await {
            Ok(stream) => stream,
            Err(e) => return tracing::debug!(error = %e, "client TLS handshake failed"),
        },
        _ => stream,
    };
    protocol::serve(ctx, stream).await;
}
