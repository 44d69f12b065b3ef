//! The node's link to the control plane: one long-lived Session stream, reconnected with
//! jittered backoff across the configured endpoints, plus the `Resolve` client. What the
//! node sends is queued without waiting ([`outbound`]), so the stream's loop always
//! notices a control plane that fell silent.

mod outbound;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_client::ControlClient;
use tokio::time::{sleep_until, Instant};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::commands::Acked;
use crate::config::ControlConfig;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::route::{Resolved, Resolver, RouteError};
use crate::settings::FleetSettings;
use outbound::Outbound;

/// How long the control plane may take to answer a Session with its Welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds the node token to every call.
#[derive(Clone)]
pub(crate) struct NodeAuth(Option<AsciiMetadataValue>);

pub(crate) use switchyard_common::config::MIN_TOKEN_LEN;

impl NodeAuth {
    pub(crate) fn new(token: Option<&str>) -> Result<Self> {
        if token.is_some_and(|t| t.len() < MIN_TOKEN_LEN) {
            return Err(Error::Control(format!("the node token must be at least {MIN_TOKEN_LEN} characters")));
        }
        let value = token
            .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
            .transpose()
            .map_err(|_| Error::Control("the node token contains invalid characters".into()))?;
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for NodeAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// TLS towards `https://` endpoints: the `[control]` trust and client certificate. Files
/// are read at each connect, so a renewed certificate is used from the next reconnect on.
#[derive(Debug, Clone, Default)]
pub(crate) struct ControlTls {
    ca: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
}

impl ControlTls {
    pub(crate) fn from_config(control: &ControlConfig) -> Self {
        let client = control.tls_client_cert.clone().zip(control.tls_client_key.clone());
        ControlTls { ca: control.tls_ca.clone(), client }
    }

    /// `tls_ca` alone when set (a private CA is not diluted by the system store), else the
    /// system trust store. The control plane's certificate must name the endpoint's host.
    fn client_config(&self) -> Result<ClientTlsConfig> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| Error::Control(format!("cannot read {}: {e}", path.display())))
        };
        let config = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        Ok(match &self.client {
            Some((cert, key)) => config.identity(Identity::from_pem(read(cert)?, read(key)?)),
            None => config,
        })
    }
}

type Client = ControlClient<InterceptedService<Channel, NodeAuth>>;

/// The client of the current Session, shared with the resolver: `None` while disconnected,
/// so a miss during an outage fails fast instead of waiting on a dead channel.
#[derive(Clone, Default)]
pub(crate) struct ClientSlot(Arc<RwLock<Option<Client>>>);

impl ClientSlot {
    fn set(&self, client: Option<Client>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = client;
    }

    fn get(&self) -> Option<Client> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Answers route-cache misses with the control plane's `Resolve`.
pub(crate) struct ControlResolver {
    pub slot: ClientSlot,
    pub timeout: Duration,
}

impl Resolver for ControlResolver {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        let client = self.slot.get();
        let timeout = self.timeout;
        async move {
            let mut client = client.ok_or_else(|| RouteError::Unavailable("not connected".into()))?;
            let call = client.resolve(pb::ResolveRequest { key });
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    Ok(Resolved { destination: answer.destination, mapped: answer.mapped })
                }
                Ok(Err(status)) => Err(RouteError::Unavailable(status.message().to_string())),
                Err(_) => Err(RouteError::Unavailable("resolve timed out".into())),
            }
        }
        .boxed()
    }
}

/// The node side of the Session stream.
pub(crate) struct Link {
    pub endpoints: Vec<String>,
    pub auth: NodeAuth,
    pub tls: ControlTls,
    pub slot: ClientSlot,
    pub node: Arc<Node>,
    pub listeners: Vec<pb::Listener>,
}

/// Recently applied command ids and their acks: a replayed command is acked again, not re-run.
#[derive(Default)]
struct SeenCommands {
    order: VecDeque<String>,
    acks: HashMap<String, pb::CommandAck>,
}

impl Link {
    /// Keeps a Session open until shutdown, rotating endpoints with jittered backoff.
    pub(crate) async fn run(self) {
        let mut failures = 0u32;
        let mut seen = SeenCommands::default();
        for endpoint in self.endpoints.iter().cycle() {
            let started = Instant::now();
            let result = self.session(endpoint, &mut seen).await;
            self.slot.set(None);
            self.node.connected.store(false, Ordering::Release);
            if self.node.shutdown.is_cancelled() {
                return;
            }
            match result {
                Ok(()) => tracing::info!(endpoint, "control stream closed; reconnecting"),
                Err(Error::NodeIdInUse(reason)) => {
                    tracing::error!(endpoint, node = %self.node.id, instance = %self.node.instance_id, %reason, "refused by the control plane: another live process holds this node id; retrying");
                    self.node.refuse(&reason);
                }
                Err(e) => tracing::warn!(endpoint, error = %e, "control plane unreachable"),
            }
            // A session that lived a while was healthy: start the backoff over.
            failures = if started.elapsed() > Duration::from_secs(30) { 1 } else { failures + 1 };
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures)) => {}
                _ = self.node.shutdown.cancelled() => return,
            }
        }
    }

    async fn session(&self, endpoint: &str, seen: &mut SeenCommands) -> Result<()> {
        let mut target = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| Error::Control(format!("bad endpoint {endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if target.uri().scheme_str() == Some("https") {
            target = target.tls_config(self.tls.client_config()?).map_err(|e| Error::Control(format!("tls: {e}")))?;
        }
        let channel =
            target.connect().await.map_err(|e| Error::Control(format!("connect: {}", crate::error::chain(&e))))?;
        let client = ControlClient::with_interceptor(channel, self.auth.clone());
        let out = Outbound::new();
        let result = self.open(client, &out, endpoint, seen).await;
        // Ends the request stream, which would otherwise wait for messages forever.
        out.close();
        result
    }

    /// Says hello on `client`, takes the Welcome and runs the stream.
    async fn open(&self, client: Client, out: &Arc<Outbound>, endpoint: &str, seen: &mut SeenCommands) -> Result<()> {
        let (epoch, last_revision) = self.node.revision();
        let hello = pb::Hello {
            node_id: self.node.id.clone(),
            instance_id: self.node.instance_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            listeners: self.listeners.clone(),
            epoch,
            last_revision,
        };
        out.queue(pb::node_message::Kind::Hello(hello))?;
        let (mut inbound, welcome) = tokio::time::timeout(WELCOME_TIMEOUT, welcomed(client.clone(), out))
            .await
            .map_err(|_| Error::Control(format!("no welcome within {WELCOME_TIMEOUT:?}")))??;
        let settings = self.welcome(welcome)?;
        self.slot.set(Some(client));
        self.node.connected.store(true, Ordering::Release);
        self.node.synced_once.store(true, Ordering::Release);
        self.node.accepted();
        tracing::info!(endpoint, node = %self.node.id, "connected to the control plane");
        self.stream(out, &mut inbound, &settings, seen).await
    }

    fn welcome(&self, welcome: pb::Welcome) -> Result<Arc<FleetSettings>> {
        let settings = welcome.settings.ok_or_else(|| Error::Control("welcome without settings".into()))?;
        let settings = FleetSettings::try_from(settings).map_err(|e| Error::Control(e.to_string()))?;
        self.node.apply_settings(settings);
        if welcome.flush_cache {
            if let Some(routes) = self.node.routes() {
                routes.clear();
            }
            self.node.set_revision(&welcome.epoch, welcome.revision);
        }
        self.node.settings().ok_or_else(|| Error::Control("settings not applied".into()))
    }

    async fn stream(
        &self,
        out: &Arc<Outbound>,
        inbound: &mut tonic::Streaming<pb::ControlMessage>,
        settings: &FleetSettings,
        seen: &mut SeenCommands,
    ) -> Result<()> {
        let mut report_tick = tokio::time::interval(settings.report_interval);
        let mut heartbeat_tick = tokio::time::interval(settings.heartbeat_interval);
        let silence = settings.heartbeat_interval * 3;
        let transitions = self.node.breakers.transitions();
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let Some(message) = message.map_err(status_error)? else { return Ok(()) };
                    last_heard = Instant::now();
                    if let Some(kind) = message.kind {
                        self.handle(kind, out, seen).await?;
                    }
                }
                _ = report_tick.tick() => out.queue(self.report().await)?,
                _ = transitions.notified() => out.queue(self.report().await)?,
                _ = heartbeat_tick.tick() => out.queue(heartbeat())?,
                _ = sleep_until(last_heard + silence) => {
                    return Err(Error::Control(format!("control plane silent for {silence:?}")));
                }
                _ = self.node.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    async fn handle(
        &self,
        kind: pb::control_message::Kind,
        out: &Arc<Outbound>,
        seen: &mut SeenCommands,
    ) -> Result<()> {
        use pb::control_message::Kind;
        match kind {
            Kind::RouteUpdate(update) => {
                let ack = crate::commands::apply_update(&self.node, update).await;
                out.queue(pb::node_message::Kind::RevisionAck(ack))
            }
            Kind::Command(command) => {
                if let Some(ack) = seen.acks.get(&command.id) {
                    return out.queue(pb::node_message::Kind::CommandAck(ack.clone()));
                }
                match crate::commands::apply_command(&self.node, command) {
                    Acked::Now(ack) => {
                        seen.remember(ack.clone());
                        out.queue(pb::node_message::Kind::CommandAck(ack))
                    }
                    Acked::Later(ack) => {
                        // Waiting for it must not hold up the link; a replay re-runs it
                        // (kicks are idempotent).
                        let out = Arc::clone(out);
                        tokio::spawn(async move { out.queue(pb::node_message::Kind::CommandAck(ack.await)) });
                        Ok(())
                    }
                }
            }
            Kind::Settings(settings) => {
                let settings = FleetSettings::try_from(settings).map_err(|e| Error::Control(e.to_string()))?;
                self.node.apply_settings(settings);
                Ok(())
            }
            Kind::Heartbeat(_) | Kind::Welcome(_) => Ok(()),
        }
    }

    async fn report(&self) -> pb::node_message::Kind {
        pb::node_message::Kind::Report(crate::commands::report(&self.node).await)
    }
}

impl SeenCommands {
    const CAPACITY: usize = 1024;

    fn remember(&mut self, ack: pb::CommandAck) {
        if self.order.len() == Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.acks.remove(&old);
            }
        }
        self.order.push_back(ack.command_id.clone());
        self.acks.insert(ack.command_id.clone(), ack);
    }
}

fn heartbeat() -> pb::node_message::Kind {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    pb::node_message::Kind::Heartbeat(pb::Heartbeat { sent_unix_ms: now })
}

/// Opens the Session with `out` as its request stream and reads the Welcome.
async fn welcomed(
    mut client: Client,
    out: &Arc<Outbound>,
) -> Result<(tonic::Streaming<pb::ControlMessage>, pb::Welcome)> {
    let mut inbound = client.session(out.stream()).await.map_err(status_error)?.into_inner();
    match inbound.message().await.map_err(status_error)? {
        Some(pb::ControlMessage { kind: Some(pb::control_message::Kind::Welcome(welcome)) }) => Ok((inbound, welcome)),
        _ => Err(Error::Control("the control plane did not start with a welcome".into())),
    }
}

fn status_error(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::AlreadyExists => Error::NodeIdInUse(status.message().to_string()),
        code => Error::Control(format!("{code}: {}", status.message())),
    }
}

/// Exponential from 200 ms to 10 s, with jitter so a fleet does not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1 << failures.min(6));
    let capped = base.min(Duration::from_secs(10));
    capped.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests;
