//! Accept loops: one task per bound address, one span and one task per client connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client;
use crate::config::{ListenerConfig, TlsMode};
use crate::inbound_proxy;
use crate::node::Node;
use crate::protocol;
use crate::session::SessionCtx;
use crate::tls::{MaybeTls, TlsAcceptor};

/// A listener from the config with its sockets already bound (fail fast at start-up).
#[derive(Debug)]
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
pub(crate) async fn serve(node: Arc<Node>, bound: BoundListener, tls: Option<TlsAcceptor>, sessions: TaskTracker) {
    let shared = Shared {
        node,
        id: Arc::from(bound.id.as_str()),
        limit: Arc::new(Semaphore::new(bound.config.max_connections)),
        config: Arc::new(bound.config),
        tls,
    };
    let mut accepts = tokio::task::JoinSet::new();
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
                        let accepted = Instant::now();
                        let _ = stream.set_nodelay(true);
                        let span = tracing::info_span!(
                            "conn",
                            listener = %shared.id,
                            protocol = %shared.config.protocol,
                            client = %peer,
                            via = tracing::field::Empty
                        );
                        let permit = Arc::clone(&shared.limit).try_acquire_owned().ok();
                        let accepted = Accepted { stream, peer, at: accepted };
                        sessions.spawn(connection(shared.clone(), accepted, permit).instrument(span));
                    }
                    Err(e) => tracing::warn!(listener = %shared.id, error = %e, "accept failed"),
                }
            }
        });
    }
    // An accept loop that panicked takes the listener down with it (see `background`).
    while let Some(ended) = accepts.join_next().await {
        if let Err(e) = ended {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// A connection as the accept loop took it.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    /// Where the pre-auth budget starts.
    at: Instant,
}

/// One client connection: the busy reply past the limit, else PROXY header, implicit TLS
/// and the protocol's session.
async fn connection(shared: Shared, mut accepted: Accepted, permit: Option<OwnedSemaphorePermit>) {
    let Some(_permit) = permit else {
        tracing::warn!("connection limit reached; refusing");
        return client::goodbye(&mut accepted.stream, protocol::busy(shared.config.protocol)).await;
    };
    let _guard = shared.node.sessions.connection(shared.config.protocol);
    let closing = shared.node.kill_sessions.clone();
    // Before the protocol's greeting there is no way to say goodbye: at shutdown the
    // connection just closes.
    let opened = tokio::select! {
        biased;
        _ = closing.cancelled() => return,
        opened = open(shared, accepted) => opened,
    };
    if let Some((ctx, stream)) = opened {
        protocol::serve(ctx, stream).await;
    }
}

/// The PROXY header and the implicit TLS handshake, both drawing on the pre-auth budget;
/// `None` when the connection is to be closed.
async fn open(shared: Shared, accepted: Accepted) -> Option<(SessionCtx, MaybeTls)> {
    let Accepted { mut stream, peer, at } = accepted;
    let budget = at + shared.config.preauth_timeout;
    let client = match inbound_proxy::client_address(&mut stream, &shared.config, peer, budget).await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "PROXY header from a trusted peer missing or invalid; closing");
            return None;
        }
    };
    if client != peer {
        // The span's `client` is the load balancer; `via` keeps both visible.
        tracing::Span::current().record("via", tracing::field::display(peer));
        tracing::Span::current().record("client", tracing::field::display(client));
    }
    let local = stream.local_addr().unwrap_or(peer);
    let ctx = SessionCtx { node: shared.node, listener: shared.config, client, local, tls: shared.tls, accepted: at };
    let stream = MaybeTls::Plain(stream);
    let stream = match ctx.listener.tls {
        TlsMode::Implicit => match ctx.accept_tls(stream, ctx.preauth_deadline()).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "client TLS handshake failed");
                return None;
            }
        },
        _ => stream,
    };
    Some((ctx, stream))
}
