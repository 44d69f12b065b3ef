//! The steps every credential-bearing protocol shares: route → connect → (protocol replays
//! the credential) → bridge. Protocol files only speak their protocol around these.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::breaker::Permit;
use crate::config::{ListenerConfig, Protocol, TlsMode};
use crate::error::{Error, Result};
use crate::idle::{Activity, Watched};
use crate::node::Node;
use crate::routekey::redact;
use crate::settings::{Destination, Endpoint};

/// Everything a protocol session needs to know about where it runs.
#[derive(Clone)]
pub struct SessionCtx {
    pub node: Arc<Node>,
    pub listener_id: Arc<str>,
    pub listener: Arc<ListenerConfig>,
    pub client: SocketAddr,
}

/// Where one login goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub key: String,
    pub destination: Arc<Destination>,
    pub endpoint: Endpoint,
}

impl SessionCtx {
    pub fn protocol(&self) -> Protocol {
        self.listener.protocol
    }

    /// Steps 4–5: route key, login delay, cache/control plane, declared destination.
    pub async fn route(&self, identifier: &str) -> Result<Route> {
        self.resolve(identifier, true).await
    }

    /// [`Self::route`] for a session that replays no credentials (delivery by recipient):
    /// the destination's `allow_plaintext_auth` guards credentials, so it does not apply.
    pub async fn route_delivery(&self, identifier: &str) -> Result<Route> {
        self.resolve(identifier, false).await
    }

    /// A route to one named destination without a lookup (a listener's fixed
    /// pass-through), for a session that replays no credentials.
    pub fn route_fixed(&self, destination: &str, key: String) -> Result<Route> {
        let settings = self
            .node
            .settings()
            .ok_or_else(|| Error::Routing("no fleet settings from the control plane yet".into()))?;
        let destination = settings
            .destination(destination)
            .cloned()
            .ok_or_else(|| Error::Routing(format!("pass-through destination {destination} is not declared")))?;
        let endpoint = self.endpoint(&destination, false)?;
        Ok(Route { key, destination, endpoint })
    }

    async fn resolve(&self, identifier: &str, credentials: bool) -> Result<Route> {
        let settings = self
            .node
            .settings()
            .ok_or_else(|| Error::Routing("no fleet settings from the control plane yet".into()))?;
        let key = settings.route_key.key(identifier);
        if key.is_empty() {
            return Err(Error::Client("empty account identifier".into()));
        }
        self.node.honour_delay(&key).await;
        let routes = self.node.routes().ok_or_else(|| Error::Routing("no route cache yet".into()))?;
        let resolved = routes.lookup(&key).await.map_err(|e| Error::Routing(e.to_string()))?;
        let destination = match settings.destination(&resolved.destination) {
            Some(d) => Arc::clone(d),
            None => {
                // The control plane already maps undeclared names to the default; a node
                // with older settings may still see one.
                tracing::warn!(destination = %resolved.destination, "route names an undeclared destination; using the default");
                settings
                    .destination(&settings.default_destination)
                    .cloned()
                    .ok_or_else(|| Error::Routing("default destination is not declared".into()))?
            }
        };
        tracing::debug!(
            account = %redact(&key),
            destination = %destination.id,
            mapped = resolved.mapped,
            "routing decision"
        );
        let endpoint = self.endpoint(&destination, credentials)?;
        Ok(Route { key, destination, endpoint })
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
            TlsMode::Plain => Ok(endpoint),
            TlsMode::Starttls | TlsMode::Implicit => {
                Err(Error::unavailable(&destination.id, "backend TLS is not available in this build"))
            }
        }
    }

    /// Step 6 (transport): breaker gate, connect timeout and retries. The caller settles
    /// the permit once the backend greeted (success) or failed to (failure).
    pub async fn connect(&self, route: &Route) -> Result<(TcpStream, Permit)> {
        let dest = &route.destination;
        let breaker = self.node.breakers.get(&dest.id);
        let settings = self.node.settings().map(|s| s.breaker);
        let (timeout, retries) =
            settings.map(|b| (b.connect_timeout, b.connect_retries)).unwrap_or((Duration::from_secs(10), 0));
        let mut last = String::new();
        for attempt in 0..=retries {
            let permit = breaker.admit().map_err(|_| Error::unavailable(&dest.id, "circuit breaker open"))?;
            let addr = (dest.host.as_str(), route.endpoint.port);
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, permit));
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("connect timed out after {timeout:?}"),
            }
            permit.failure();
            tracing::debug!(destination = %dest.id, attempt, error = %last, "backend connect failed");
        }
        Err(Error::backend(&dest.id, last))
    }

    /// Step 7: relays bytes both ways until one side closes, the session is kicked or
    /// nothing moved for the listener's `idle_timeout`, then logs the completed session.
    pub async fn bridge<C, B>(&self, route: &Route, client: C, to_backend: Vec<u8>, backend: B, to_client: Vec<u8>)
    where
        C: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let kick = self.node.sessions.register(&route.key, &self.node.kill_sessions);
        let activity = Activity::new();
        let mut client = Watched::new(client, activity.clone());
        let mut backend = Watched::new(backend, activity.clone());
        let primed = async {
            backend.write_all(&to_backend).await?;
            client.write_all(&to_client).await?;
            tokio::io::copy_bidirectional(&mut client, &mut backend).await
        };
        let (from_client, to_client_bytes, how) = tokio::select! {
            result = primed => match result {
                Ok((up, down)) => (up, down, "closed"),
                Err(_) => (0, 0, "broken"),
            },
            _ = kick.token.cancelled() => (0, 0, "kicked"),
            _ = activity.idle_for(self.listener.idle_timeout) => (0, 0, "idle"),
        };
        let from_client = from_client + to_backend.len() as u64;
        let to_client_bytes = to_client_bytes + to_client.len() as u64;
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
}
