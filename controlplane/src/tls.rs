//! TLS on the control plane's two listeners: the rustls server configs `[api]` and `[grpc]`
//! ask for (ring provider, PEM files read with the data plane's loaders, node certificates
//! checked against `[grpc] client_ca`), and an accept loop that runs every handshake in a
//! task of its own, so a slow or garbage-sending client never holds up the next one.

use std::future::pending;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use switchyard_common::tls::{read_chain, read_key};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{Error, Result};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight per listener; past it accepting waits (the kernel's backlog
/// queues), which bounds the memory a flood of half-open clients can take.
const MAX_HANDSHAKES: usize = 256;
/// The management API speaks HTTP/1.1 (axum's `http1`); gRPC needs HTTP/2.
const API_ALPN: &[&[u8]] = &[b"http/1.1"];
const GRPC_ALPN: &[&[u8]] = &[b"h2"];

/// A problem with one listener's TLS files: the config key at fault and what is wrong.
pub type FileProblem = (&'static str, String);

/// The server configs for the listeners that have TLS; `None` serves plain TCP.
#[derive(Debug, Default)]
pub struct ServerTls {
    pub api: Option<Arc<ServerConfig>>,
    pub grpc: Option<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads every configured file; validation has already reported problems with their
    /// keys, so this only fails when a file changed since.
    pub fn load(config: &Config) -> Result<ServerTls> {
        let (api, grpc) = (&config.api, &config.grpc);
        let load = |section: &str, cert: &Option<PathBuf>, key: &Option<PathBuf>, ca: Option<&Path>, alpn| {
            let (Some(cert), Some(key)) = (cert, key) else {
                return Ok(None);
            };
            server_config(cert, key, ca, alpn).map(Some).map_err(|problems| {
                let listed: Vec<String> = problems.into_iter().map(|(k, m)| format!("{section}.{k}: {m}")).collect();
                Error::Config(listed.join("; "))
            })
        };
        Ok(ServerTls {
            api: load("api", &api.tls_cert, &api.tls_key, None, API_ALPN)?,
            grpc: load("grpc", &grpc.tls_cert, &grpc.tls_key, grpc.client_ca.as_deref(), GRPC_ALPN)?,
        })
    }
}

/// Validation hook: every problem with one listener's TLS files, each with its key.
pub(crate) fn check_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Vec<FileProblem> {
    server_config(cert, key, client_ca, &[]).err().unwrap_or_default()
}

/// A server config presenting `cert` (chain, leaf first) with `key`; with `client_ca`,
/// clients must present a certificate that CA signed.
fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, Vec<FileProblem>> {
    let mut problems = Vec::new();
    let chain = read_chain(cert).map_err(|m| problems.push(("tls_cert", m)));
    let private = read_key(key).map_err(|m| problems.push(("tls_key", m)));
    let verifier = client_ca.map(client_verifier).transpose().map_err(|m| problems.push(("client_ca", m)));
    let (Ok(chain), Ok(private), Ok(verifier)) = (chain, private, verifier) else {
        return Err(problems);
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![("tls_cert", e.to_string())])?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|e| {
        let message = match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("{} does not match the certificate in {}", key.display(), cert.display())
            }
            e => format!("{}: unusable certificate or key: {e}", key.display()),
        };
        vec![("tls_key", message)]
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_chain(ca)?);
    if added == 0 {
        return Err(format!("no usable CA certificate in {}", ca.display()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))
}

/// Passed to every builder explicitly, like the data plane's, so no process-wide default
/// provider is installed or relied on.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connections that completed their TLS handshake, in the order they did.
#[derive(Debug)]
pub struct TlsIncoming {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    /// Starts accepting on `listener` (on `tasks`, until `shutdown`).
    pub fn spawn(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> io::Result<TlsIncoming> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        tasks.spawn(accept_loop(listener, TlsAcceptor::from(config), tx, shutdown));
        Ok(TlsIncoming { ready, local })
    }

    /// For tonic's `serve_with_incoming_shutdown`.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> {
        ReceiverStream::new(self.ready).map(|(stream, _)| Ok(stream))
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop stopped for shutdown; axum stops calling us then too.
            None => pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &slots) => accepted,
            _ = shutdown.cancelled() => return,
        };
        let Some((slot, tcp, peer)) = accepted else {
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(slot);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// One connection with a handshake slot; `None` after an accept error (already handled).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(tokio::sync::OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((tcp, peer)) => Some((slot, tcp, peer)),
        // The peer gave up before we got to it: nothing to do.
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => None,
        Err(e) => {
            // Out of file descriptors, most likely: give live connections time to close.
            tracing::error!(error = %e, "accepting a connection failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}
