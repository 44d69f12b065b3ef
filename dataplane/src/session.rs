//! The steps every credential-bearing protocol shares: route → connect → (protocol replays
//! the credential) → bridge. Protocol files only speak their protocol around these.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::breaker::Permit;
use crate::bridge::{self, BufferPool, Moved};
use crate::client;
use crate::codec::proxy;
use crate::config::{Forwarding, ListenerConfig, Protocol, TlsMode};
use crate::error::{Blame, Error, Result};
use crate::idle::Activity;
use crate::node::Node;
use crate::protocol;
use crate::route::{ResolveBudget, Resolved, RouteError};
use crate::routekey::{redact, Identifier};
use crate::sessions::KickHandle;
use crate::settings::{Destination, Endpoint, FleetSettings};
use crate::tls::{Connector, MaybeTls, TlsAcceptor};

/// Everything a protocol session needs to know about where it runs.
#[derive(Clone)]
pub(crate) struct SessionCtx {
    pub node: Arc<Node>,
    pub listener: Arc<ListenerConfig>,
    /// The real client (from a trusted PROXY header, else the peer).
    pub client: SocketAddr,
    /// The listener address the client connected to.
    pub local: SocketAddr,
    /// The node's certificates, when it has any (implicit TLS and STARTTLS).
    pub tls: Option<TlsAcceptor>,
    /// When the connection was accepted: the pre-auth budget runs from here.
    pub accepted: Instant,
}

/// Where one login (or one delivery's recipients) goes, and the fleet settings the decision
/// was made with: the connect, the establishment, the login timeout and the delivery read
/// their timeouts from this one snapshot, never from the node again.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub destination: Arc<Destination>,
    pub endpoint: Endpoint,
    pub settings: Arc<FleetSettings>,
}

impl SessionCtx {
    pub(crate) fn protocol(&self) -> Protocol {
        self.listener.protocol
    }

    /// The end of the pre-auth budget: one deadline from accept to authenticated that the
    /// PROXY header, the TLS handshakes and the dialogue before and after STARTTLS share.
    pub(crate) fn preauth_deadline(&self) -> Instant {
        self.accepted + self.listener.preauth_timeout
    }

    /// The route for a session that replays no credentials (delivery by recipient):
    /// the destination's `allow_plaintext_auth` guards credentials, so it does not apply.
    /// Keyed as a recipient: cut at the recipient delimiter, never at a master-user separator.
    /// A miss is taken out of the session's `budget`: `None`, without asking the control
    /// plane, for a recipient not in the cache once it is spent.
    pub(crate) async fn route_delivery_within(&self, recipient: &str, budget: &ResolveBudget) -> Result<Option<Route>> {
        let (settings, key) = self.route_key(&Identifier::Recipient(recipient.to_owned()))?;
        match self.lookup(key, Some(budget)).await {
            Err(RouteError::OverBudget) => Ok(None),
            looked_up => self.routed(&settings, looked_up, false).map(Some),
        }
    }

    /// A route to one named destination without a lookup (a listener's fixed
    /// pass-through), for a session that replays no credentials.
    pub(crate) fn route_fixed(&self, destination: &str) -> Result<Route> {
        let settings = self
            .node
            .settings()
            .ok_or_else(|| Error::Routing("no fleet settings from the control plane yet".into()))?;
        let destination = settings
            .destination(destination)
            .cloned()
            .ok_or_else(|| Error::Routing(format!("pass-through destination {destination} is not declared")))?;
        let endpoint = self.endpoint(&destination, false)?;
        Ok(Route { destination, endpoint, settings })
    }

    /// The fleet settings this decision is taken with, and the identifier's route key.
    pub(crate) fn route_key(&self, identifier: &Identifier) -> Result<(Arc<FleetSettings>, String)> {
        let settings = self
            .node
            .settings()
            .ok_or_else(|| Error::Routing("no fleet settings from the control plane yet".into()))?;
        // The control plane refuses such a key; asking it would only turn the client's
        // mistake into a temporary failure.
        let key = settings
            .route_key
            .checked_key(identifier)
            .ok_or_else(|| Error::Client("the account identifier gives an empty or too long route key".into()))?;
        Ok((settings, key))
    }

    /// Routing a route key: login delay, cache/control plane, declared destination.
    pub(crate) async fn route_key_to(
        &self,
        settings: &Arc<FleetSettings>,
        key: String,
        credentials: bool,
    ) -> Result<Route> {
        let looked_up = self.lookup(key, None).await;
        self.routed(settings, looked_up, credentials)
    }

    /// Login delay, then the route cache (or the control plane); the key comes back with
    /// the answer.
    async fn lookup(&self, key: String, budget: Option<&ResolveBudget>) -> Result<(String, Resolved), RouteError> {
        self.node.honour_delay(&key).await;
        let routes = self.node.routes().ok_or_else(|| RouteError::Unavailable("no route cache yet".into()))?;
        let resolved = routes.lookup_within(&key, budget).await?;
        Ok((key, resolved))
    }

    /// The route for a lookup's answer: a destination these settings declare, its endpoint.
    fn routed(
        &self,
        settings: &Arc<FleetSettings>,
        looked_up: Result<(String, Resolved), RouteError>,
        credentials: bool,
    ) -> Result<Route> {
        let (key, resolved) = looked_up.map_err(|e| Error::Routing(e.to_string()))?;
        let destination = declared(settings, &key, &resolved.destination)?;
        tracing::debug!(
            account = %redact(&key),
            destination = %destination.id,
            mapped = resolved.mapped,
            "routing decision"
        );
        let endpoint = self.endpoint(&destination, credentials)?;
        Ok(Route { destination, endpoint, settings: Arc::clone(settings) })
    }

    fn endpoint(&self, destination: &Destination, credentials: bool) -> Result<Endpoint> {
        let protocol = self.protocol();
        let endpoint = *destination
            .endpoints
            .get(&protocol)
            .ok_or_else(|| Error::unavailable(&destination.id, format!("no {} endpoint", protocol.as_str())))?;
        match endpoint.tls {
            TlsMode::Plain if credentials && !destination.allow_plaintext_auth => Err(Error::unavailable(
                &destination.id,
                "credentials may not cross a plain backend leg (allow_plaintext_auth = false)",
            )),
            TlsMode::Plain | TlsMode::Starttls | TlsMode::Implicit => Ok(endpoint),
        }
    }

    /// Connecting to the backend: breaker gate, connect timeout and retries (the route's settings),
    /// and the TLS handshake for an implicit-TLS endpoint. Every failed attempt fails its
    /// permit; the caller settles the one returned (see [`SessionCtx::establish`]).
    pub(crate) async fn connect(&self, route: &Route) -> Result<(MaybeTls, Permit)> {
        let dest = &route.destination;
        if self.node.is_own_listener(&dest.host, route.endpoint.port) {
            return Err(Error::unavailable(&dest.id, "endpoint is this node's own listener (routing loop)"));
        }
        let breaker = self.node.breakers.get(&dest.id);
        let (timeout, retries) = (route.settings.breaker.connect_timeout, route.settings.breaker.connect_retries);
        let mut last = Error::backend(&dest.id, "not attempted");
        for attempt in 0..=retries {
            let permit = breaker.admit().map_err(|_| Error::BreakerOpen { destination: dest.id.clone() })?;
            match self.dial(route, timeout).await {
                Ok(stream) => return Ok((stream, permit)),
                Err(e) if e.blame() != Blame::Backend => return Err(e),
                Err(e) => last = e,
            }
            permit.failure();
            tracing::debug!(destination = %dest.id, attempt, error = %last, "backend connect failed");
        }
        Err(last)
    }

    /// One connection attempt: TCP within `timeout`, the PROXY header on a `proxy`
    /// endpoint, and the handshake on an implicit-TLS one.
    async fn dial(&self, route: &Route, timeout: Duration) -> Result<MaybeTls> {
        let dest = &route.destination;
        let addr = (dest.host.as_str(), route.endpoint.port);
        let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(Error::backend(&dest.id, e)),
            Err(_) => return Err(Error::backend_timeout(&dest.id, format!("connect timed out after {timeout:?}"))),
        };
        let _ = stream.set_nodelay(true);
        if route.endpoint.forwarding == Forwarding::Proxy {
            // The header precedes everything, TLS included.
            let header = proxy::encode_v2(self.client, self.local);
            stream.write_all(&header).await.map_err(|e| Error::backend(&dest.id, format!("PROXY header: {e}")))?;
        }
        match route.endpoint.tls {
            TlsMode::Implicit => self.backend_tls(route, MaybeTls::Plain(stream)).await,
            TlsMode::Plain | TlsMode::Starttls => Ok(MaybeTls::Plain(stream)),
        }
    }

    /// The TLS handshake on a backend leg (implicit, or after the protocol's STARTTLS),
    /// within the route's `connect_timeout`. A problem on the node's side (its client
    /// certificate, a bad server name) is the node's fault, not the backend's, so it does
    /// not feed the breaker.
    pub(crate) async fn backend_tls(&self, route: &Route, stream: MaybeTls) -> Result<MaybeTls> {
        let dest = &route.destination;
        let wait = route.settings.breaker.connect_timeout;
        match tokio::time::timeout(wait, stream.connect(Connector::global(), dest)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => Err(Error::Node(format!("TLS set-up: {e}"))),
            Ok(Err(e)) => Err(Error::backend(&dest.id, format!("TLS handshake: {e}"))),
            Err(_) => Err(Error::backend_timeout(&dest.id, "TLS handshake timed out")),
        }
    }

    /// Whether the client may still ask for STARTTLS on this connection.
    pub(crate) fn starttls_offered(&self, client: &MaybeTls) -> bool {
        self.listener.tls == TlsMode::Starttls && self.tls.is_some() && !client.is_tls()
    }

    /// The client-leg TLS handshake (implicit TLS, or after the STARTTLS go-ahead), over
    /// by `deadline` (the pre-auth budget's end, or an SMTP/LMTP session's next step).
    pub(crate) async fn accept_tls(&self, client: MaybeTls, deadline: Instant) -> Result<MaybeTls> {
        let acceptor = self.tls.as_ref().ok_or_else(|| Error::Node("no certificate for TLS".into()))?;
        match tokio::time::timeout_at(deadline, client.accept(acceptor)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(Error::Client(format!("TLS handshake: {e}"))),
            Err(_) => Err(Error::Client("TLS handshake timed out".into())),
        }
    }

    /// The bridge: relays bytes both ways until one side closes, the session is kicked or
    /// nothing moved for the listener's `idle_timeout`, then logs the completed session.
    /// `kick` is the registration the login took before it looked the route up.
    pub(crate) async fn bridge<C, B>(
        &self,
        route: &Route,
        kick: KickHandle,
        mut client: C,
        to_backend: Vec<u8>,
        mut backend: B,
        to_client: Vec<u8>,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let activity = Activity::new();
        // The verdict before this ended with its line end.
        let mut moved = Moved { to_client_between_lines: to_client.is_empty(), ..Moved::default() };
        let relayed = async {
            // What either side sent past the login belongs to the other one.
            backend.write_all(&to_backend).await?;
            client.write_all(&to_client).await?;
            moved.to_client_between_lines = to_client.last().is_none_or(|b| *b == b'\n');
            bridge::relay(&mut client, &mut backend, BufferPool::shared(), &activity, &mut moved).await
        };
        let mut how = tokio::select! {
            result = relayed => if result.is_ok() { "closed" } else { "broken" },
            _ = kick.token.cancelled() => "kicked",
            _ = activity.idle_for(self.listener.idle_timeout) => "idle",
        };
        if how == "kicked" && self.node.kill_sessions.is_cancelled() {
            how = "shutdown";
            self.shutdown_goodbye(&mut client, moved.to_client_between_lines).await;
        }
        let from_client = moved.from_client + to_backend.len() as u64;
        let to_client_bytes = moved.to_client + to_client.len() as u64;
        self.node.sessions.add_bytes(from_client, to_client_bytes);
        tracing::info!(
            protocol = %self.protocol(),
            destination = %route.destination.id,
            bytes_from_client = from_client,
            bytes_to_client = to_client_bytes,
            duration_ms = started.elapsed().as_millis() as u64,
            end = %how,
            "session closed"
        );
    }

    /// The protocol's goodbye to a bridged client at shutdown, when the client leg is
    /// between two lines; in the middle of one it would corrupt the response being relayed,
    /// so the client only sees the close. (A chunk that happened to end at a line end inside
    /// an IMAP literal gets the goodbye inside a literal the close cuts short anyway.)
    async fn shutdown_goodbye<C: AsyncWrite + Unpin>(&self, client: &mut C, between_lines: bool) {
        match between_lines {
            true => client::goodbye(client, protocol::shutting_down(self.protocol())).await,
            false => client::close(client).await,
        }
    }
}

/// The destination a route names, if the fleet settings this node holds declare it. A
/// mapping to one they do not declare (settings lagging the control plane, or a replica
/// whose config lacks it) is a temporary failure, never the default destination: sending an
/// explicitly mapped account to the default is the misroute a migration must never see.
fn declared(settings: &FleetSettings, key: &str, destination: &str) -> Result<Arc<Destination>> {
    match settings.destination(destination) {
        Some(d) => Ok(Arc::clone(d)),
        None => {
            tracing::warn!(
                account = %redact(key),
                destination = %destination,
                "route names a destination this node's fleet settings do not declare; answering a temporary failure"
            );
            Err(Error::unavailable(destination, "not declared in this node's fleet settings"))
        }
    }
}
