//! Many lightweight simulated data-plane nodes: each is one Session stream that says hello,
//! acks route updates and commands, and heartbeats — enough to load a control plane with a
//! fleet without running the data plane itself. Used by fleet tests and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_client::ControlClient;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Streams multiplexed over one HTTP/2 connection, as many real nodes behind one proxy
/// would not be — but it keeps the client side cheap so the control plane is measured.
const NODES_PER_CHANNEL: usize = 25;

/// One simulated node's view: the revision it acked last and how many commands it acked.
#[derive(Default)]
pub struct SimState {
    /// Sessions the control plane refused (admission) before this node got in.
    pub refused: AtomicU64,
    pub applied: AtomicU64,
    pub commands: AtomicU64,
    pub welcomed: AtomicU64,
}

pub struct SimFleet {
    pub nodes: Vec<(String, Arc<SimState>)>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl SimFleet {
    /// Connects `count` nodes named `{prefix}-{i}` to `endpoint` with `token`.
    pub async fn start(endpoint: &str, token: &str, prefix: &str, count: usize) -> Result<SimFleet> {
        Self::start_reporting(endpoint, token, prefix, count, None).await
    }

    /// Like [`start`](Self::start); each node also sends `report` with every heartbeat.
    pub async fn start_reporting(
        endpoint: &str,
        token: &str,
        prefix: &str,
        count: usize,
        report: Option<pb::Report>,
    ) -> Result<SimFleet> {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut nodes = Vec::new();
        let mut channel = None;
        for i in 0..count {
            if i % NODES_PER_CHANNEL == 0 {
                channel = Some(Endpoint::from_shared(endpoint.to_string())?.connect().await.context("connect")?);
            }
            let id = format!("{prefix}-{i}");
            let state = Arc::new(SimState::default());
            let ch = channel.clone().context("channel")?;
            let node = SimNode { id: id.clone(), token: token.to_string(), report: report.clone() };
            tasks.spawn(run(ch, node, Arc::clone(&state), shutdown.clone()));
            nodes.push((id, state));
        }
        Ok(SimFleet { nodes, shutdown, tasks })
    }

    /// The lowest revision any node acked.
    pub fn min_applied(&self) -> u64 {
        self.nodes.iter().map(|(_, s)| s.applied.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    pub fn refused(&self) -> u64 {
        self.nodes.iter().map(|(_, s)| s.refused.load(Ordering::Acquire)).sum()
    }

    pub fn welcomed(&self) -> usize {
        self.nodes.iter().filter(|(_, s)| s.welcomed.load(Ordering::Acquire) > 0).count()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Who one simulated node is and what it reports.
struct SimNode {
    id: String,
    token: String,
    report: Option<pb::Report>,
}

async fn run(channel: Channel, node: SimNode, state: Arc<SimState>, shutdown: CancellationToken) {
    let SimNode { id, token, report } = node;
    let bearer: MetadataValue<_> = match format!("Bearer {token}").parse() {
        Ok(v) => v,
        Err(_) => return,
    };
    let mut client = ControlClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    let (mut tx, mut rx) = mpsc::channel(64);
    let hello = pb::Hello {
        node_id: id.clone(),
        instance_id: format!("{id}-instance"),
        version: "sim".into(),
        ..Default::default()
    };
    let send = |kind| pb::NodeMessage { kind: Some(kind) };
    if tx.send(send(pb::node_message::Kind::Hello(hello.clone()))).await.is_err() {
        return;
    }
    let mut inbound = loop {
        match client.session(ReceiverStream::new(rx)).await {
            Ok(response) => break response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                state.refused.fetch_add(1, Ordering::AcqRel);
                // Like a real node: back off with jitter, then say hello again.
                let pause = Duration::from_millis(50 + fastrand::u64(0..200));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return,
                }
                let (retry_tx, retry_rx) = mpsc::channel(64);
                if retry_tx.send(send(pb::node_message::Kind::Hello(hello.clone()))).await.is_err() {
                    return;
                }
                tx = retry_tx;
                rx = retry_rx;
            }
            Err(_) => return,
        }
    };
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut epoch = String::new();
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            _ = heartbeat.tick() => {
                let _ = tx.send(send(pb::node_message::Kind::Heartbeat(pb::Heartbeat::default()))).await;
                if let Some(report) = &report {
                    let _ = tx.send(send(pb::node_message::Kind::Report(report.clone()))).await;
                }
                continue;
            }
            _ = shutdown.cancelled() => return,
        };
        let Ok(Some(pb::ControlMessage { kind: Some(kind) })) = message else { return };
        use pb::control_message::Kind;
        let reply = match kind {
            Kind::Welcome(w) => {
                state.welcomed.fetch_add(1, Ordering::AcqRel);
                state.applied.store(w.revision, Ordering::Release);
                epoch = w.epoch;
                continue;
            }
            Kind::RouteUpdate(u) => {
                state.applied.fetch_max(u.revision, Ordering::AcqRel);
                pb::node_message::Kind::RevisionAck(pb::RevisionAck { epoch: epoch.clone(), revision: u.revision })
            }
            Kind::Command(c) => {
                state.commands.fetch_add(1, Ordering::AcqRel);
                pb::node_message::Kind::CommandAck(pb::CommandAck {
                    command_id: c.id,
                    result: pb::CommandResult::Applied as i32,
                    ..Default::default()
                })
            }
            Kind::Heartbeat(_) | Kind::Settings(_) => continue,
        };
        if tx.send(send(reply)).await.is_err() {
            return;
        }
    }
}
