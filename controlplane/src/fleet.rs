//! The control plane's view of its nodes: who is connected, what they last reported,
//! which revision they applied, and the commands waiting for their acks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::commands::CommandLog;
use crate::outbox::Outbox;

/// What goes down one node's Session stream.
pub type Outbound = mpsc::Sender<Result<pb::ControlMessage, tonic::Status>>;

struct NodeEntry {
    hello: pb::Hello,
    /// Identifies the current stream, so a late disconnect of an old stream is ignored.
    stream_id: u64,
    tx: Option<Outbound>,
    connected_at: Instant,
    last_seen: Instant,
    report: Option<pb::Report>,
    report_at: Option<Instant>,
    applied: (String, u64),
    pending: HashMap<String, oneshot::Sender<pb::CommandAck>>,
    outbox: Outbox,
}

impl NodeEntry {
    /// Sends the node's merged route changes if it acked what was in flight.
    fn flush(&mut self) {
        let (Some(tx), Some(update)) = (&self.tx, self.outbox.ready(self.applied.1)) else { return };
        let message = pb::ControlMessage { kind: Some(pb::control_message::Kind::RouteUpdate(update.clone())) };
        if tx.try_send(Ok(message)).is_err() {
            // The stream is full or gone: keep the changes for the next ack or resync.
            self.outbox.requeue(update, self.applied.1);
        }
    }
}

/// One node's result for a fleet-wide command or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOutcome {
    Applied,
    NotConnected,
    Timeout,
    Rejected,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeResult {
    pub node_id: String,
    pub result: NodeOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// A read-only copy of one node's state for the API and the metrics line.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node_id: String,
    pub instance_id: String,
    pub version: String,
    pub listeners: Vec<pb::Listener>,
    pub connected: bool,
    pub stale: bool,
    pub applied_revision: u64,
    pub applied_epoch: String,
    pub last_report_age: Option<Duration>,
    pub report: Option<pb::Report>,
    /// Messages waiting in the control plane for the node's stream to take them.
    pub queued: usize,
}

pub struct Fleet {
    nodes: Mutex<HashMap<String, NodeEntry>>,
    /// Recent commands, replayed to nodes that come back before they expire.
    pub log: CommandLog,
    /// Woken on every ack and disconnect so waiters re-check.
    changed: Notify,
    next_stream: std::sync::atomic::AtomicU64,
    heartbeat_interval: Duration,
}

impl Fleet {
    pub fn new(heartbeat_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            nodes: Mutex::default(),
            log: CommandLog::default(),
            changed: Notify::new(),
            next_stream: Default::default(),
            heartbeat_interval,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, NodeEntry>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a node's new stream; a new instance id starts its counters afresh.
    /// `in_flight` is the revision of a replay already queued on `tx` (0: none).
    pub fn connect(&self, hello: pb::Hello, applied: (String, u64), in_flight: u64, tx: Outbound) -> u64 {
        let stream_id = self.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let mut nodes = self.lock();
        let entry = nodes.entry(hello.node_id.clone()).or_insert_with(|| NodeEntry {
            hello: hello.clone(),
            stream_id,
            tx: None,
            connected_at: now,
            last_seen: now,
            report: None,
            report_at: None,
            applied: applied.clone(),
            pending: HashMap::new(),
            outbox: Outbox::default(),
        });
        if entry.hello.instance_id != hello.instance_id {
            entry.report = None;
            entry.report_at = None;
        }
        entry.hello = hello;
        entry.stream_id = stream_id;
        entry.tx = Some(tx);
        entry.connected_at = now;
        entry.last_seen = now;
        entry.applied = applied;
        entry.outbox = Outbox::new(in_flight);
        stream_id
    }

    pub fn disconnect(&self, node_id: &str, stream_id: u64) {
        let mut nodes = self.lock();
        if let Some(entry) = nodes.get_mut(node_id).filter(|e| e.stream_id == stream_id) {
            entry.tx = None;
            // Dropping the senders makes every waiting command see "not connected".
            entry.pending.clear();
        }
        drop(nodes);
        self.changed.notify_waiters();
    }

    /// Records one message from a node's stream.
    pub fn on_message(&self, node_id: &str, stream_id: u64, kind: pb::node_message::Kind) {
        use pb::node_message::Kind;
        let mut nodes = self.lock();
        let Some(entry) = nodes.get_mut(node_id).filter(|e| e.stream_id == stream_id) else {
            return;
        };
        entry.last_seen = Instant::now();
        match kind {
            Kind::Report(report) => {
                entry.report = Some(report);
                entry.report_at = Some(Instant::now());
            }
            Kind::RevisionAck(ack) => {
                entry.applied = (ack.epoch, ack.revision);
                entry.flush();
            }
            Kind::CommandAck(ack) => {
                self.log.acked(&ack.command_id, node_id);
                if let Some(waiter) = entry.pending.remove(&ack.command_id) {
                    let _ = waiter.send(ack);
                }
            }
            Kind::Heartbeat(_) | Kind::Hello(_) => return,
        }
        drop(nodes);
        self.changed.notify_waiters();
    }

    fn is_stale(&self, entry: &NodeEntry) -> bool {
        entry.last_seen.elapsed() > self.heartbeat_interval * 3
    }

    pub fn views(&self) -> Vec<NodeView> {
        let nodes = self.lock();
        let mut views: Vec<NodeView> = nodes
            .values()
            .map(|e| NodeView {
                node_id: e.hello.node_id.clone(),
                instance_id: e.hello.instance_id.clone(),
                version: e.hello.version.clone(),
                listeners: e.hello.listeners.clone(),
                connected: e.tx.is_some(),
                stale: e.tx.is_none() || self.is_stale(e),
                applied_revision: e.applied.1,
                applied_epoch: e.applied.0.clone(),
                last_report_age: e.report_at.map(|t| t.elapsed()),
                report: e.report.clone(),
                queued: e.tx.as_ref().map_or(0, |tx| tx.max_capacity() - tx.capacity()),
            })
            .collect();
        views.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        views
    }

    pub fn knows(&self, node_id: &str) -> bool {
        self.lock().contains_key(node_id)
    }

    fn senders(&self) -> Vec<(String, Outbound)> {
        self.lock().values().filter_map(|e| e.tx.clone().map(|tx| (e.hello.node_id.clone(), tx))).collect()
    }

    /// Queues a route update for every connected node (call in revision order): sent at
    /// once to a node that acked everything, merged into the next update otherwise.
    pub fn push(&self, update: pb::RouteUpdate) {
        for entry in self.lock().values_mut().filter(|e| e.tx.is_some()) {
            entry.outbox.add(&update);
            entry.flush();
        }
    }

    /// Waits until every node connected now has applied `revision` of `epoch`, or the timeout.
    pub async fn wait_applied(&self, epoch: &str, revision: u64, timeout: Duration) -> Vec<NodeResult> {
        let deadline = Instant::now() + timeout;
        let targets: Vec<String> = self.senders().into_iter().map(|(id, _)| id).collect();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Checked without building results: at 1000 nodes a rebuild per ack made each
            // write quadratic.
            let waiting = {
                let nodes = self.lock();
                targets.iter().any(|id| applied_outcome(&nodes, id, epoch, revision) == NodeOutcome::Timeout)
            };
            if !waiting || tokio::time::timeout_at(deadline, changed).await.is_err() {
                let nodes = self.lock();
                return targets
                    .iter()
                    .map(|id| NodeResult {
                        node_id: id.clone(),
                        result: applied_outcome(&nodes, id, epoch, revision),
                        count: None,
                    })
                    .collect();
            }
        }
    }

    /// Sends one command to every connected node (or just `only`) and collects the acks.
    /// Known nodes that are not connected are listed as `not_connected`.
    pub async fn command(&self, kind: pb::command::Kind, only: Option<&str>, timeout: Duration) -> Vec<NodeResult> {
        let id = uuid::Uuid::new_v4().to_string();
        self.log.record(&id, &kind, only);
        let message = pb::ControlMessage {
            kind: Some(pb::control_message::Kind::Command(pb::Command { id: id.clone(), kind: Some(kind) })),
        };
        let mut waiting = Vec::new();
        let mut results = Vec::new();
        {
            let mut nodes = self.lock();
            for entry in nodes.values_mut().filter(|e| only.is_none_or(|o| o == e.hello.node_id)) {
                let node_id = entry.hello.node_id.clone();
                match &entry.tx {
                    Some(tx) => {
                        let (done, ack) = oneshot::channel();
                        entry.pending.insert(id.clone(), done);
                        waiting.push((node_id, tx.clone(), ack));
                    }
                    None => results.push(NodeResult { node_id, result: NodeOutcome::NotConnected, count: None }),
                }
            }
        }
        let deadline = Instant::now() + timeout;
        let acks = waiting.into_iter().map(|(node_id, tx, ack)| {
            let message = message.clone();
            async move {
                if tx.send(Ok(message)).await.is_err() {
                    return NodeResult { node_id, result: NodeOutcome::NotConnected, count: None };
                }
                match tokio::time::timeout_at(deadline, ack).await {
                    Ok(Ok(ack)) if ack.result == pb::CommandResult::Applied as i32 => {
                        NodeResult { node_id, result: NodeOutcome::Applied, count: Some(ack.count) }
                    }
                    Ok(Ok(_)) => NodeResult { node_id, result: NodeOutcome::Rejected, count: None },
                    Ok(Err(_)) => NodeResult { node_id, result: NodeOutcome::NotConnected, count: None },
                    Err(_) => NodeResult { node_id, result: NodeOutcome::Timeout, count: None },
                }
            }
        });
        results.extend(futures::future::join_all(acks).await);
        self.forget(&id);
        results.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        results
    }

    fn forget(&self, command_id: &str) {
        for entry in self.lock().values_mut() {
            entry.pending.remove(command_id);
        }
    }
}

/// Where one node stands with `revision` of `epoch`.
fn applied_outcome(nodes: &HashMap<String, NodeEntry>, id: &str, epoch: &str, revision: u64) -> NodeOutcome {
    match nodes.get(id) {
        Some(e) if e.applied.0 == epoch && e.applied.1 >= revision => NodeOutcome::Applied,
        Some(e) if e.tx.is_some() => NodeOutcome::Timeout,
        _ => NodeOutcome::NotConnected,
    }
}
