//! The `switchyard.v1.Control` service: node Sessions and `Resolve`, behind the node token.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use subtle::ConstantTimeEq;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_server::{Control, ControlServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::state::Shared;

/// Route keys are account names; anything longer is not one.
const MAX_KEY_LEN: usize = 1024;

pub struct ControlService {
    shared: Arc<Shared>,
}

/// Refuses every call without `authorization: Bearer <node token>` (constant-time compare).
#[derive(Clone)]
pub struct NodeTokenCheck(Arc<String>);

impl tonic::service::Interceptor for NodeTokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(self.0.as_bytes())) {
            Ok(req)
        } else {
            let peer = req.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
            tracing::warn!(%peer, "node refused: invalid or missing node token");
            Err(Status::unauthenticated("invalid or missing node token"))
        }
    }
}

pub fn server(
    shared: Arc<Shared>,
    node_token: String,
) -> InterceptedService<ControlServer<ControlService>, NodeTokenCheck> {
    ControlServer::with_interceptor(ControlService { shared }, NodeTokenCheck(Arc::new(node_token)))
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    type SessionStream = Outbound;

    async fn session(&self, request: Request<Streaming<pb::NodeMessage>>) -> Result<Response<Outbound>, Status> {
        if !self.shared.admission.try_admit() {
            // The node retries with its jittered backoff; the fleet trickles back in.
            return Err(Status::unavailable("too many nodes connecting at once; retry later"));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))??;
        let Some(pb::NodeMessage { kind: Some(pb::node_message::Kind::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("a session starts with a hello"));
        };
        if hello.node_id.is_empty() {
            return Err(Status::invalid_argument("hello without a node id"));
        }
        let (tx, rx) = mpsc::channel(256);
        let shared = Arc::clone(&self.shared);
        let stream_id = {
            // Held until the node is registered, so no write slips between its replay and
            // its first live update.
            let mut pushed = shared.writes.lock().await;
            let (welcome, replay) = shared.welcome(&mut pushed, &hello.epoch, hello.last_revision).await?;
            let applied = if welcome.flush_cache {
                (welcome.epoch.clone(), welcome.revision)
            } else {
                (hello.epoch.clone(), hello.last_revision)
            };
            let in_flight = replay.as_ref().map_or(0, |u| u.revision);
            let mut first = vec![pb::control_message::Kind::Welcome(welcome)];
            first.extend(replay.map(pb::control_message::Kind::RouteUpdate));
            for kind in first {
                tx.try_send(Ok(pb::ControlMessage { kind: Some(kind) }))
                    .map_err(|_| Status::internal("session buffer full"))?;
            }
            tracing::info!(node = %hello.node_id, instance = %hello.instance_id, version = %hello.version, "node connected");
            let stream_id = shared.fleet.connect(hello.clone(), applied, in_flight, tx.clone());
            // Commands this node missed while away; one that does not fit is replayed on
            // its next connect.
            for command in shared.fleet.log.pending_for(&hello.node_id) {
                let replay = pb::ControlMessage { kind: Some(pb::control_message::Kind::Command(command)) };
                if tx.try_send(Ok(replay)).is_err() {
                    break;
                }
            }
            stream_id
        };
        tokio::spawn(pump(shared, hello.node_id, stream_id, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

/// Reads one node's messages until its stream ends, sending heartbeats meanwhile.
async fn pump(
    shared: Arc<Shared>,
    node_id: String,
    stream_id: u64,
    mut inbound: Streaming<pb::NodeMessage>,
    tx: mpsc::Sender<Result<pb::ControlMessage, Status>>,
) {
    let mut heartbeat = tokio::time::interval(shared.config.server.heartbeat_interval);
    let silence = shared.config.server.heartbeat_interval * 3;
    let mut last_heard = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(pb::NodeMessage { kind: Some(kind) })) => {
                    last_heard = tokio::time::Instant::now();
                    shared.fleet.on_message(&node_id, stream_id, kind);
                }
                Ok(Some(_)) => {}
                Ok(None) => break "stream closed".to_string(),
                Err(status) => break status.message().to_string(),
            },
            _ = heartbeat.tick() => {
                let beat = pb::ControlMessage { kind: Some(pb::control_message::Kind::Heartbeat(pb::Heartbeat::default())) };
                if tx.send(Ok(beat)).await.is_err() {
                    break "stream closed".to_string();
                }
            }
            _ = tokio::time::sleep_until(last_heard + silence) => break format!("silent for {silence:?}"),
            _ = shared.shutdown.cancelled() => break "control plane shutting down".to_string(),
        }
    };
    shared.fleet.disconnect(&node_id, stream_id);
    tracing::info!(node = %node_id, reason = %reason, "node disconnected");
}
