//! What the login protocols' session tests share: a node whose destinations `legacy` (the
//! default) and `new` point at one scripted backend, a listener served through the node's
//! real accept path ([`listener::serve`]: connection limit, PROXY header, implicit TLS), and
//! line-level client helpers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::sasl::{encode_plain, Credentials};
use crate::config::ListenerConfig;
use crate::listener::{self, BoundListener};
use crate::node::Node;
use crate::route::{Resolved, Resolver, RouteError};
use crate::settings::FleetSettings;
use crate::tls::TlsAcceptor;
use switchyard_proto::v1 as pb;

/// Routes every account to `legacy` unless mapped; `None` is a control plane that is down.
pub(crate) struct Table(pub Option<HashMap<String, String>>);

impl Resolver for Table {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        let answer = match &self.0 {
            None => Err(RouteError::Unavailable("control plane down".into())),
            Some(t) => Ok(match t.get(&key) {
                Some(d) => Resolved { destination: d.clone(), mapped: true },
                None => Resolved { destination: "legacy".into(), mapped: false },
            }),
        };
        async move { answer }.boxed()
    }
}

/// A node named `t` resolving with `resolver`, whose destinations have one plain `protocol`
/// endpoint at `port`; a breaker opens after two failures.
pub(crate) fn node(protocol: &str, port: u16, resolver: Arc<dyn Resolver>) -> Arc<Node> {
    let node = Node::new("t".into(), resolver, CancellationToken::new());
    let mut settings = crate::settings::tests::sample();
    settings.breaker.as_mut().unwrap().failure_threshold = 2;
    for d in &mut settings.destinations {
        d.endpoints = vec![pb::Endpoint {
            protocol: protocol.into(),
            port: u32::from(port),
            tls: "plain".into(),
            ..Default::default()
        }];
    }
    node.apply_settings(FleetSettings::try_from(settings).unwrap());
    node
}

/// Listener `id` for `protocol`, plain, two authentication attempts, plus the `extra` keys.
pub(crate) fn listener(id: &str, protocol: &str, allow_plaintext_auth: bool, extra: &str) -> ListenerConfig {
    let toml = format!(
        "[listener.{id}]\nprotocol = \"{protocol}\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\n\
         allow_plaintext_auth = {allow_plaintext_auth}\nmax_auth_attempts = 2\n{extra}\n\
         [control]\nendpoints = [\"http://127.0.0.1:1\"]\n"
    );
    crate::config::Config::from_toml_str(&toml).unwrap().listener[id].clone()
}

/// A backend on port 0 serving each connection with `script`, which counts the logins it
/// accepts in the counter returned.
pub(crate) async fn scripted_backend<F, Fut>(script: F) -> (u16, Arc<AtomicU32>)
where
    F: Fn(TcpStream, Arc<AtomicU32>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let logins = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&logins);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(script(s, Arc::clone(&seen)));
        }
    });
    (port, logins)
}

/// A port nothing listens on (bound once, then released).
pub(crate) async fn closed_port() -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap().port()
}

/// Serves `config` for `node` on a fresh port through the node's accept loop, with the
/// node's certificates in `tls`.
pub(crate) async fn serve(node: &Arc<Node>, config: ListenerConfig, tls: Option<TlsAcceptor>) -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let bound = BoundListener { id: config.protocol.as_str().to_owned(), config, sockets: vec![socket] };
    tokio::spawn(listener::serve(Arc::clone(node), bound, tls, TaskTracker::new()));
    addr
}

/// One line from the proxy, within five seconds.
pub(crate) async fn read<S: AsyncRead + Unpin>(c: &mut BufReader<S>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_line(&mut line)).await.unwrap().unwrap();
    line
}

pub(crate) async fn say<S: AsyncRead + AsyncWrite + Unpin>(c: &mut BufReader<S>, s: &str) {
    c.get_mut().write_all(s.as_bytes()).await.unwrap();
}

/// Everything until the proxy closes the connection.
pub(crate) async fn rest<S: AsyncRead + Unpin>(c: &mut BufReader<S>) -> String {
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut rest)).await.unwrap().unwrap();
    rest
}

/// Whether the proxy closes the connection without another byte.
pub(crate) async fn closed<S: AsyncRead + Unpin>(c: &mut BufReader<S>) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await.unwrap().unwrap();
    rest.is_empty()
}

/// A SASL PLAIN response for `user` and `pass`, base64.
pub(crate) fn b64(user: &str, pass: &str) -> String {
    encode_plain(&Credentials { authzid: String::new(), authcid: user.into(), password: pass.into() })
}
