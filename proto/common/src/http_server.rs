//! The small HTTP servers: the node's health listener and the control plane's management
//! API. An axum router served over hyper's HTTP/1 connection with a header-read timeout,
//! and at most `max_connections` connections at once. A connection past the cap closes the
//! oldest one that is not in the middle of a request (a half-sent head, an idle keep-alive),
//! so a flood of silent clients can neither use up the process's file descriptors nor keep
//! a probe out. When every connection is in the middle of a request, a newcomer gets a
//! `503` with `Retry-After` at once, never a wait of unknown length.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// How long a client may take to send a whole request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may finish its request after shutdown begins.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// `max_connections` and `header_read_timeout` of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets each connection finish its
/// request (at most [`SHUTDOWN_WAIT`]). Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(mut listener: L, router: Router, limits: HttpLimits, shutdown: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let table = Arc::new(Table::default());
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let Some(admitted) = table.admit(limits.max_connections) else {
            connections.spawn(busy(io, peer));
            continue;
        };
        let connection = Connection { table: Arc::clone(&table), admitted, peer, limits };
        connections.spawn(connection.serve(io, router.clone(), shutdown.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// One accepted connection: its entry in the table and what it is served with.
struct Connection {
    table: Arc<Table>,
    admitted: Admitted,
    peer: SocketAddr,
    limits: HttpLimits,
}

impl Connection {
    async fn serve<I>(self, io: I, router: Router, shutdown: CancellationToken)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { table, admitted, peer, limits } = self;
        let busy = Arc::clone(&admitted.busy);
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::enter(&busy);
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await;
                drop(busy);
                response
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
            }
            // Dropping the connection closes it at once.
            _ = admitted.evicted.cancelled() => tracing::debug!(%peer, "http connection closed for a newer one"),
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, connection).await;
            }
        }
        table.remove(admitted.id);
    }
}

/// What a client gets when every connection is serving a request.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// How long the busy reply may take to be written.
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// Reads what the client sent first: closing a socket with unread bytes resets it, and
/// the client would see a reset instead of the answer.
async fn busy<I>(mut io: I, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tracing::debug!(%peer, "every http connection is busy; answering 503");
    let mut head = [0u8; 4096];
    let _ = tokio::time::timeout(BUSY_WAIT, async {
        let _ = io.read(&mut head).await?;
        io.write_all(BUSY).await?;
        io.shutdown().await?;
        while io.read(&mut head).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// The open connections, oldest first.
#[derive(Default)]
struct Table {
    open: Mutex<(u64, BTreeMap<u64, Entry>)>,
}

struct Entry {
    /// Requests in progress on the connection.
    busy: Arc<AtomicUsize>,
    evicted: CancellationToken,
}

/// A connection's place in the table.
struct Admitted {
    id: u64,
    busy: Arc<AtomicUsize>,
    evicted: CancellationToken,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, (u64, BTreeMap<u64, Entry>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection: free, or taken from the oldest idle connection;
    /// none while every one of `max` connections is serving a request.
    fn admit(&self, max: usize) -> Option<Admitted> {
        let mut guard = self.lock();
        let (next, open) = &mut *guard;
        if open.len() >= max {
            let idle = open.iter().find(|(_, e)| e.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id)?;
            if let Some(entry) = open.remove(&idle) {
                entry.evicted.cancel();
            }
        }
        *next += 1;
        let entry = Entry { busy: Arc::default(), evicted: CancellationToken::new() };
        let admitted = Admitted { id: *next, busy: Arc::clone(&entry.busy), evicted: entry.evicted.clone() };
        open.insert(*next, entry);
        Some(admitted)
    }

    fn remove(&self, id: u64) {
        self.lock().1.remove(&id);
    }
}

/// Marks a connection busy while one of its requests is handled.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(count))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_gives_the_oldest_idle_place_away_and_never_a_busy_one() {
        let table = Table::default();
        let first = table.admit(2).unwrap();
        let second = table.admit(2).unwrap();
        let _busy = Busy::enter(&first.busy);
        let third = table.admit(2).expect("the idle second connection makes room");
        assert!(second.evicted.is_cancelled() && !first.evicted.is_cancelled());
        let _also_busy = Busy::enter(&third.busy);
        assert!(table.admit(2).is_none(), "every connection is busy: the newcomer gets a 503");
        table.remove(first.id);
        assert!(table.admit(2).is_some(), "a closed connection frees its place");
    }
}
