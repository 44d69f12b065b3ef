//! The `switchyard.v1.Control` service: node Sessions and `Resolve`, behind the node token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_server::{Control, ControlServer};
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{self, Registration};
use crate::lockout::Lockout;
use crate::node_info::NodeHello;
use crate::publisher::Registered;
use crate::state::Shared;
use crate::wire;

/// Route keys are account names; anything longer is not one.
const MAX_KEY_LEN: usize = switchyard_common::routekey::MAX_KEY_LEN;

/// The `switchyard.v1.Control` service. A Session is admitted (rate-limited), checked for
/// a duplicate node id, then welcomed and registered by the [`crate::publisher::Publisher`];
/// from then on its stream is the fleet's ([`fleet::Messages`]) and its inbound messages
/// are read by [`pump`] until it ends. `Resolve` answers one route key from the store.
#[derive(Debug)]
pub struct ControlService {
    shared: Arc<Shared>,
    /// What every node gets in its Welcome, built once from the config.
    settings: pb::FleetSettings,
}

/// Refuses every call without `authorization: Bearer <node token>` (constant-time compare).
/// A run of wrong tokens from one address locks it out (see [`Lockout`]).
#[derive(Debug, Clone)]
pub struct NodeTokenCheck {
    token: Arc<String>,
    refusals: Arc<RefusalLog>,
    lockout: Arc<Lockout>,
}

impl tonic::service::Interceptor for NodeTokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let client = req.remote_addr().map(|a| a.ip());
        if let Some(retry_after) = client.and_then(|ip| self.lockout.locked(ip)) {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            return Err(Status::resource_exhausted(format!(
                "too many failed node-token attempts from this address; retry in {seconds}s"
            )));
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(self.token.as_bytes())) {
            Ok(req)
        } else {
            if let Some(ip) = client {
                self.lockout.record_failure(ip);
            }
            let peer = req.remote_addr();
            if let Some(suppressed) = self.refusals.should_log(peer.map(|a| a.ip()), Instant::now()) {
                let peer = peer.map_or_else(|| "unknown".to_string(), |a| a.to_string());
                tracing::warn!(%peer, suppressed, "node refused: invalid or missing node token");
            }
            Err(Status::unauthenticated("invalid or missing node token"))
        }
    }
}

/// How often a refused peer is logged at most: a client retrying with a wrong token (or a
/// flood of them) would otherwise write a WARN line per call, tens of thousands a second.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Peers tracked at once; past that, refusals from peers not yet seen go unlogged until
/// the windows of the ones tracked expire.
const REFUSAL_LOG_PEERS: usize = 4096;

/// At most one refusal warning per peer address per [`REFUSAL_LOG_INTERVAL`]; each
/// warning carries how many refusals of that peer went unlogged since the previous one.
#[derive(Debug, Default)]
struct RefusalLog {
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    suppressed: u64,
}

impl RefusalLog {
    /// `Some(unlogged since the last warning)` when this refusal should be logged.
    fn should_log(&self, peer: Option<IpAddr>, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = windows.get_mut(&peer) {
            if now.saturating_duration_since(window.opened) < REFUSAL_LOG_INTERVAL {
                window.suppressed += 1;
                return None;
            }
            let suppressed = std::mem::replace(window, Window { opened: now, suppressed: 0 }).suppressed;
            return Some(suppressed);
        }
        if windows.len() >= REFUSAL_LOG_PEERS {
            windows.retain(|_, w| now.saturating_duration_since(w.opened) < REFUSAL_LOG_INTERVAL);
            if windows.len() >= REFUSAL_LOG_PEERS {
                return None;
            }
        }
        windows.insert(peer, Window { opened: now, suppressed: 0 });
        Some(0)
    }
}

pub fn server(
    shared: Arc<Shared>,
    node_token: String,
) -> InterceptedService<ControlServer<ControlService>, NodeTokenCheck> {
    let warning = "grpc: too many failed node-token attempts; client locked out";
    let lockout = Arc::new(Lockout::new(shared.config.grpc.lockout(), warning));
    let check = NodeTokenCheck { token: Arc::new(node_token), refusals: Arc::default(), lockout };
    let settings = wire::fleet_settings(&shared.config);
    ControlServer::with_interceptor(ControlService { shared, settings }, check)
}

#[tonic::async_trait]
impl Control for ControlService {
    type SessionStream = fleet::Messages;

    async fn session(&self, request: Request<Streaming<pb::NodeMessage>>) -> Result<Response<fleet::Messages>, Status> {
        if !self.shared.admission.try_admit() {
            // The node retries with its jittered backoff; the fleet trickles back in.
            return Err(Status::unavailable("too many nodes connecting at once; retry later"));
        }
        let address = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))??;
        let Some(pb::NodeMessage { kind: Some(pb::node_message::Kind::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("a session starts with a hello"));
        };
        let hello = NodeHello::from(hello);
        if hello.node_id.is_empty() {
            return Err(Status::invalid_argument("hello without a node id"));
        }
        // A duplicate of a live node is turned away before any work is done for it.
        self.shared.fleet.check_claim(&hello, address)?;
        let (tx, rx) = mpsc::channel(256);
        let shared = Arc::clone(&self.shared);
        let Registered { registration, welcome, replay } =
            shared.publisher.register(hello.clone(), address, tx.clone()).await?;
        tracing::info!(node = %hello.node_id, instance = %hello.instance_id, version = %hello.version, "node connected");
        let mut first = vec![wire::welcome_message(welcome, &self.settings)];
        first.extend(replay.map(wire::route_update_message));
        replay_commands(&shared, &hello.node_id, &tx);
        let messages = shared.fleet.messages(&hello.node_id, &registration, first, rx);
        tokio::spawn(pump(shared, hello.node_id, registration, inbound, tx));
        Ok(Response::new(messages))
    }

    async fn resolve(&self, request: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        let key = request.into_inner().key;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(Status::invalid_argument("route key must be 1..=1024 bytes"));
        }
        let answer = self.shared.resolve(&key).await?;
        Ok(Response::new(pb::ResolveResponse {
            destination: answer.destination,
            mapped: answer.mapped,
            epoch: self.shared.epoch().to_string(),
            revision: 0,
        }))
    }
}

/// Queues the commands `node_id` missed while away (they follow its Welcome); one that
/// does not fit is replayed on its next connect.
fn replay_commands(shared: &Shared, node_id: &str, tx: &fleet::CommandSender) {
    for command in shared.fleet.log.pending_for(node_id) {
        if tx.try_send(wire::command_message(command)).is_err() {
            break;
        }
    }
}

/// Reads one node's messages until its stream ends, it falls silent or a newer stream
/// replaces it, sending heartbeats meanwhile. Nothing here waits on the node: a heartbeat
/// that finds its stream full is skipped (the stream is not idle then).
async fn pump(
    shared: Arc<Shared>,
    node_id: String,
    registration: Registration,
    mut inbound: Streaming<pb::NodeMessage>,
    tx: fleet::CommandSender,
) {
    let stream_id = registration.stream_id;
    let mut heartbeat = tokio::time::interval(shared.config.server.heartbeat_interval);
    let silence = shared.config.server.heartbeat_interval * 3;
    let mut last_heard = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(pb::NodeMessage { kind: Some(kind) })) => {
                    last_heard = tokio::time::Instant::now();
                    shared.fleet.on_message(&node_id, stream_id, kind.into());
                }
                Ok(Some(_)) => {}
                Ok(None) => break "stream closed".to_string(),
                Err(status) => break status.message().to_string(),
            },
            _ = heartbeat.tick() => {
                let beat = pb::ControlMessage { kind: Some(pb::control_message::Kind::Heartbeat(pb::Heartbeat::default())) };
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(beat) {
                    break "stream closed".to_string();
                }
            }
            _ = tokio::time::sleep_until(last_heard + silence) => break format!("silent for {silence:?}"),
            _ = registration.stop.cancelled() => break "replaced by a newer stream with this node id".to_string(),
            _ = shared.shutdown.cancelled() => break "control plane shutting down".to_string(),
        }
    };
    shared.fleet.disconnect(&node_id, stream_id);
    tracing::info!(node = %node_id, reason = %reason, "node disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn a_peer_is_logged_once_per_interval_with_the_refusals_in_between() {
        let log = RefusalLog::default();
        let start = Instant::now();
        assert_eq!(log.should_log(ip(1), start), Some(0));
        for i in 1..=500 {
            assert_eq!(log.should_log(ip(1), start + Duration::from_millis(i)), None);
        }
        assert_eq!(log.should_log(ip(2), start + Duration::from_secs(1)), Some(0), "another peer has its own window");
        assert_eq!(log.should_log(None, start), Some(0), "so does a call without a peer address");
        assert_eq!(log.should_log(ip(1), start + REFUSAL_LOG_INTERVAL), Some(500));
        assert_eq!(log.should_log(ip(1), start + REFUSAL_LOG_INTERVAL + Duration::from_secs(1)), None);
    }

    #[test]
    fn the_peers_tracked_are_bounded_and_expired_windows_make_room() {
        let log = RefusalLog::default();
        let start = Instant::now();
        let peer = |i: usize| Some(IpAddr::from(std::net::Ipv6Addr::from(i as u128)));
        for i in 0..REFUSAL_LOG_PEERS {
            assert_eq!(log.should_log(peer(i), start), Some(0));
        }
        assert_eq!(log.should_log(peer(REFUSAL_LOG_PEERS), start), None, "full: a new peer goes unlogged");
        let later = start + REFUSAL_LOG_INTERVAL;
        assert_eq!(log.should_log(peer(REFUSAL_LOG_PEERS), later), Some(0), "expired windows were dropped");
        assert!(log.windows.lock().unwrap().len() <= 1);
    }
}
